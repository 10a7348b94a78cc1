//! The one-shot supernet, the fixed child network, and weight inheritance between them.

use crate::NnError;
use crate::block::ChoiceOp;
use crate::layers::{ClsHead, ConvBn, stem};
use detnas_space::{Arch, Choice, SearchSpace};
use tch::Tensor;
use tch::nn::{self, ModuleT};

/// Shared forward of stem + blocks: returns the output of each stage's last block.
fn backbone_forward<'a>(
    stem: &ConvBn,
    ops: impl Iterator<Item = &'a ChoiceOp>,
    stage_ends: &[usize],
    x: &Tensor,
    train: bool,
) -> Vec<Tensor> {
    // The layout of `runtime.memory_format` throughout (see `layout`). On the CPU `auto` is
    // channels-last, oneDNN's NHWC kernels; measured on 2 cores against NCHW: demo space 32×32
    // training step 1.19×, inference 1.42×, BN recalibration 1.82×; Small 224×224 training step
    // 1.37×, inference 1.12×, recalibration 1.33×. On CUDA it is NCHW.
    let x = crate::layout::for_network(x);
    let mut y = stem.forward_t(&x, train);
    let mut feats = Vec::with_capacity(stage_ends.len());
    for (i, op) in ops.enumerate() {
        y = op.forward_t(&y, train);
        if stage_ends.contains(&i) {
            feats.push(y.shallow_clone());
        }
    }
    feats
}

/// Builds a [`Supernet`].
#[derive(Clone, Debug)]
pub struct SupernetConfig {
    /// The search space.
    pub space: SearchSpace,
    /// Classes of the classification head; `None` builds the backbone only (detection).
    pub classes: Option<i64>,
}

impl SupernetConfig {
    /// Creates every variable under `p`: `stem.*`, `features.i.c.*` for each block `i` and
    /// allowed choice id `c`, and `head.*` when `classes` is set.
    pub fn build(&self, p: &nn::Path) -> Supernet {
        let fp = p / "features";
        let blocks = self
            .space
            .slots()
            .iter()
            .map(|slot| {
                let bp = &fp / slot.index;
                let mut ops: [Option<ChoiceOp>; 4] = Default::default();
                for c in self.space.allowed() {
                    ops[c.id() as usize] = Some(ChoiceOp::new(&(&bp / c.id()), slot, c));
                }
                ops
            })
            .collect();
        Supernet {
            space: self.space.clone(),
            stem: stem(&(p / "stem"), self.space.stem as i64),
            blocks,
            head: self.classes.map(|k| head(p, &self.space, k)),
        }
    }
}

fn head(p: &nn::Path, space: &SearchSpace, classes: i64) -> ClsHead {
    let c5 = *space.widths.last().expect("checked space") as i64;
    ClsHead::new(&(p / "head"), c5, space.last_conv as i64, classes)
}

/// The one-shot supernet: every block holds all its allowed choices, each with its own BN;
/// the stem and head are shared by all paths. A forward runs only the ops of the given
/// architecture, so unsampled choices get neither activations nor gradients.
#[derive(Debug)]
pub struct Supernet {
    space: SearchSpace,
    stem: ConvBn,
    blocks: Vec<[Option<ChoiceOp>; 4]>,
    head: Option<ClsHead>,
}

impl Supernet {
    /// The search space the supernet was built for.
    pub fn space(&self) -> &SearchSpace {
        &self.space
    }

    fn ops<'a>(&'a self, arch: &'a Arch) -> Result<impl Iterator<Item = &'a ChoiceOp>, NnError> {
        self.space.validate(arch)?;
        Ok(self.blocks.iter().zip(arch.choices()).map(|(ops, c)| ops[c.id() as usize].as_ref().expect("validated")))
    }

    /// Backbone features C2..C5 (one per stage) of path `arch`.
    ///
    /// # Shapes
    /// `[N, 3, H, W] → [[N, widths[s], H/2^(s+2), W/2^(s+2)]; stages]` (rounded up), in the
    /// layout of `runtime.memory_format` (channels-last strides on the CPU by default;
    /// `.contiguous()` for an NCHW copy).
    ///
    /// # Errors
    /// [`NnError::Space`] when `arch` does not fit the space (wrong length or a choice not
    /// allowed).
    pub fn features_t(&self, x: &Tensor, arch: &Arch, train: bool) -> Result<Vec<Tensor>, NnError> {
        Ok(backbone_forward(&self.stem, self.ops(arch)?, &self.space.stage_ends(), x, train))
    }

    /// Classification logits of path `arch`.
    ///
    /// # Shapes
    /// `[N, 3, H, W] → [N, classes]`
    ///
    /// # Errors
    /// As [`Supernet::features_t`].
    ///
    /// # Panics
    /// If built without a head.
    pub fn forward_t(&self, x: &Tensor, arch: &Arch, train: bool) -> Result<Tensor, NnError> {
        self.forward_masked(x, arch, train, None)
    }

    /// [`Supernet::forward_t`] with the head's channel-dropout mask given (see
    /// [`ClsHead::forward_masked`]).
    ///
    /// # Errors
    /// As [`Supernet::features_t`].
    ///
    /// # Panics
    /// If built without a head.
    pub fn forward_masked(
        &self,
        x: &Tensor,
        arch: &Arch,
        train: bool,
        mask: Option<&Tensor>,
    ) -> Result<Tensor, NnError> {
        let head = self.head.as_ref().expect("supernet built without a classification head");
        let feats = self.features_t(x, arch, train)?;
        Ok(head.forward_masked(feats.last().expect("at least one stage"), train, mask))
    }

    /// The classification head, if built.
    pub fn head(&self) -> Option<&ClsHead> {
        self.head.as_ref()
    }

    /// The choice every block's other choices are aligned to: the smallest-kernel allowed
    /// ShuffleNetV2 choice (`None` when the space allows only Xception).
    pub fn reference_choice(space: &SearchSpace) -> Option<Choice> {
        space.allowed().into_iter().filter(|c| *c != Choice::Xception).min_by_key(|c| c.kernel())
    }

    /// Aligns every block's choices to its reference choice ([`Supernet::reference_choice`]),
    /// so that after a warm start on the reference path every path starts from it (the end
    /// of a warm start in pre-training; see `sampling.warm_start_steps`).
    ///
    /// - ShuffleNetV2 choices take the reference's convolutions and BNs (parameters and
    ///   running statistics); a larger depthwise kernel is the reference's kernel zero-padded
    ///   at its centre, so the 3×3, 5×5 and 7×7 choices compute the same function.
    /// - Xception (depthwise 3×3 → 1×1 → depthwise 3×3 → 1×1 → depthwise 3×3 → 1×1) starts
    ///   close to it: the first and last depthwise convolutions are identities (the first
    ///   keeps the stride), the middle 1×1 is the identity matrix, and the others take the
    ///   reference's 1×1, depthwise (centre 3×3) and 1×1 with their BNs. The projection of a
    ///   stride-2 block is copied.
    ///
    /// The same idea as elastic kernels grown from a trained one (Once-for-All, Cai et al.,
    /// arXiv:1908.09791 §3.2), applied once.
    ///
    /// # Panics
    /// Never: the reference choice is built wherever it is allowed.
    pub fn align_choices(&self) {
        let Some(rc) = Supernet::reference_choice(&self.space) else {
            return;
        };
        tch::no_grad(|| {
            for ops in &self.blocks {
                let reference = ops[rc.id() as usize].as_ref().expect("allowed choices are built");
                let r = &reference.branch;
                for op in ops.iter().flatten().filter(|o| o.choice != rc) {
                    let b = &op.branch;
                    let pairs: Vec<(&ConvBn, &ConvBn)> = if op.choice == Choice::Xception {
                        for unit in [&b[0], &b[4]] {
                            let mut w = unit.conv.ws.shallow_clone();
                            let _ = w.zero_();
                            let _ = w.narrow(2, 1, 1).narrow(3, 1, 1).fill_(1.0);
                        }
                        let mut w = b[3].conv.ws.shallow_clone();
                        let eye = Tensor::eye(w.size()[0], (w.kind(), w.device()));
                        w.copy_(&eye.view([w.size()[0], w.size()[1], 1, 1]));
                        vec![(&r[0], &b[1]), (&r[1], &b[2]), (&r[2], &b[5])]
                    } else {
                        vec![(&r[0], &b[0]), (&r[1], &b[1]), (&r[2], &b[2])]
                    };
                    for (from, to) in pairs.into_iter().chain(reference.proj.iter().zip(&op.proj)) {
                        copy_unit(from, to);
                    }
                }
            }
        });
    }
}

/// Copies a conv + BN unit: the kernel centred ([`copy_centred`]), the BN's parameters and
/// running statistics.
fn copy_unit(from: &ConvBn, to: &ConvBn) {
    copy_centred(&from.conv.ws, &to.conv.ws);
    for (f, t) in from.bns.iter().zip(&to.bns) {
        let pairs = [
            (f.ws.as_ref(), t.ws.as_ref()),
            (f.bs.as_ref(), t.bs.as_ref()),
            (Some(&f.running_mean), Some(&t.running_mean)),
            (Some(&f.running_var), Some(&t.running_var)),
        ];
        for (a, b) in pairs {
            if let (Some(a), Some(b)) = (a, b) {
                b.shallow_clone().copy_(a);
            }
        }
    }
}

/// Copies kernel `from` into `to`: centred and zero-padded when `to` is larger, its centre
/// when `to` is smaller.
fn copy_centred(from: &Tensor, to: &Tensor) {
    let (fk, tk) = (from.size()[2], to.size()[2]);
    let mut to = to.shallow_clone();
    if fk == tk {
        to.copy_(from);
    } else if fk < tk {
        let pad = (tk - fk) / 2;
        let _ = to.zero_();
        to.narrow(2, pad, fk).narrow(3, pad, fk).copy_(from);
    } else {
        let crop = (fk - tk) / 2;
        to.copy_(&from.narrow(2, crop, tk).narrow(3, crop, tk));
    }
}

/// Builds a [`ChildNet`].
#[derive(Clone, Debug)]
pub struct ChildNetConfig {
    /// The search space.
    pub space: SearchSpace,
    /// The architecture.
    pub arch: Arch,
    /// Classifier outputs; none for a detection backbone.
    pub classes: Option<i64>,
}

impl ChildNetConfig {
    /// Creates the child's variables under `p` (`stem.*`, `features.i.*`, `head.*`).
    ///
    /// # Errors
    /// [`NnError::Space`] when `arch` does not fit `space`.
    pub fn build(&self, p: &nn::Path) -> Result<ChildNet, NnError> {
        self.space.validate(&self.arch)?;
        let fp = p / "features";
        let ops = self
            .space
            .slots()
            .iter()
            .zip(self.arch.choices())
            .map(|(slot, &c)| ChoiceOp::new(&(&fp / slot.index), slot, c))
            .collect();
        Ok(ChildNet {
            space: self.space.clone(),
            arch: self.arch.clone(),
            stem: stem(&(p / "stem"), self.space.stem as i64),
            ops,
            head: self.classes.map(|k| head(p, &self.space, k)),
        })
    }
}

/// The stand-alone network of one architecture: only its ops exist.
#[derive(Debug)]
pub struct ChildNet {
    space: SearchSpace,
    arch: Arch,
    stem: ConvBn,
    ops: Vec<ChoiceOp>,
    head: Option<ClsHead>,
}

impl ChildNet {
    /// The architecture this network implements.
    pub fn arch(&self) -> &Arch {
        &self.arch
    }

    /// The space the architecture belongs to.
    pub fn space(&self) -> &SearchSpace {
        &self.space
    }

    /// Backbone features C2..C5; shapes as [`Supernet::features_t`].
    pub fn features_t(&self, x: &Tensor, train: bool) -> Vec<Tensor> {
        backbone_forward(&self.stem, self.ops.iter(), &self.space.stage_ends(), x, train)
    }

    /// Classification logits `[N, classes]`.
    ///
    /// # Panics
    /// If built without a head.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let head = self.head.as_ref().expect("child built without a classification head");
        head.forward_t(self.features_t(x, train).last().expect("at least one stage"), train)
    }

    /// Runs the classification head alone on C5 (used by the MACs counter).
    pub(crate) fn head_forward_t(&self, c5: &Tensor, train: bool) -> Option<Tensor> {
        self.head.as_ref().map(|h| h.forward_t(c5, train))
    }
}

/// The supernet variable that holds child variable `name` for `arch`
/// (`[prefix.]features.i.rest` → `[prefix.]features.i.c.rest`, e.g. a detector's
/// `backbone.features.…`; every other name is shared).
///
/// # Errors
/// [`NnError::Inherit`] when a `features.` name has a malformed block index or no leaf, or
/// its block index is beyond `arch`.
pub fn supernet_name(name: &str, arch: &Arch) -> Result<String, NnError> {
    let (prefix, rest) = match name.strip_prefix("features.") {
        Some(r) => ("", r),
        None => match name.split_once(".features.") {
            Some((p, r)) => (p, r),
            None => return Ok(name.to_string()),
        },
    };
    let dot = if prefix.is_empty() { "" } else { "." };
    let (index, tail) =
        rest.split_once('.').ok_or_else(|| NnError::Inherit { name: name.into(), message: "malformed name".into() })?;
    let i: usize =
        index.parse().map_err(|_| NnError::Inherit { name: name.into(), message: "malformed block index".into() })?;
    let c: Choice = *arch
        .choices()
        .get(i)
        .ok_or_else(|| NnError::Inherit { name: name.into(), message: "block index out of range".into() })?;
    Ok(format!("{prefix}{dot}features.{i}.{}.{tail}", c.id()))
}

/// Copies path `arch`'s weights and BN statistics from a supernet var store into a child's.
/// Every child variable must be found with the same shape; nothing is partially copied on
/// error except variables already visited.
///
/// # Errors
/// [`NnError::Inherit`] when a child variable's name is malformed, has no supernet
/// counterpart, or differs from it in shape.
pub fn inherit(supernet: &nn::VarStore, child: &mut nn::VarStore, arch: &Arch) -> Result<(), NnError> {
    let src = supernet.variables();
    let dst = child.variables();
    let mut plan = Vec::with_capacity(dst.len());
    for (name, var) in &dst {
        let sname = supernet_name(name, arch)?;
        let s = src.get(&sname).ok_or_else(|| NnError::Inherit {
            name: name.clone(),
            message: format!("no supernet variable '{sname}'"),
        })?;
        if s.size() != var.size() {
            return Err(NnError::Inherit {
                name: name.clone(),
                message: format!("shape {:?} in the supernet, {:?} in the child", s.size(), var.size()),
            });
        }
        plan.push((var, s));
    }
    tch::no_grad(|| {
        for (var, s) in plan {
            var.shallow_clone().copy_(s);
        }
    });
    Ok(())
}
