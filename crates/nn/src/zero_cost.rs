//! Training-free proxies of a child backbone: scores of an architecture at initialisation,
//! with no training and no supernet.
//!
//! * [`entropy`]: MAE-DET's entropy score (Sun et al., "MAE-DET: Revisiting Maximum Entropy
//!   Principle in Zero-Shot NAS for Efficient Object Detection", ICML 2022,
//!   arXiv:2111.13336, §3–4; alibaba/lightweight-neural-architecture-search
//!   `nas/scores/compute_entropy.py`, the blocks' `entropy_forward` and `masternet.py`'s
//!   `get_stage_info`). Conv weights N(0, 1), biases zero, BN and ReLU skipped, a Gaussian
//!   input; each conv's output is divided by its standard deviation (unbiased, over the whole
//!   tensor), and a block's deviation σ_b is the product of its main chain's. Stage `i` scores
//!   `S_i = Σ_{b ≤ its last block} ln σ_b + ln C_i` (`C_i` its output channels); the score is
//!   `Σ_i w_i S_i` over the stem and C2–C5 with the official detection weights
//!   [`STAGE_WEIGHTS`], averaged over repeats. For ShuffleNetV2 the main chain of a block is
//!   its branch; the passed half (stride 1) or the projection (stride 2, its convs divided by
//!   their deviations alike but not counted) is the shortcut, concatenated as the network
//!   does, so every block sees the network's channel layout.
//! * [`naswot`]: NASWOT (Mellor et al., "Neural Architecture Search without Training", ICML
//!   2021, arXiv:2006.04647, §3; BayesWatch/nas-without-training `score_networks.py`): the
//!   binary codes `c` (`x > 0`) of every ReLU's input over a batch of images,
//!   `K = Σ_ReLU c cᵀ + (1 − c)(1 − c)ᵀ`, score `ln |det K|`. Weights N(0, 1), BN with the
//!   batch's statistics (as the official score runs the network in training mode), which
//!   makes the codes independent of the weights' scale.
//! * [`synflow`]: SynFlow (Tanaka et al., "Pruning neural networks without any data by
//!   iteratively conserving synaptic flow", NeurIPS 2020, arXiv:2006.05467; as a NAS proxy,
//!   Abdelfattah et al., "Zero-Cost Proxies for Lightweight NAS", ICLR 2021, the official
//!   `foresight/pruners/measures/synflow.py` of SamsungLabs/zero-cost-nas): BN removed, every
//!   weight replaced by its absolute value, an all-ones input of one image in float64,
//!   `R = Σ output`, score `Σ_θ |θ · ∂R/∂θ|` over every conv weight; reported as its natural
//!   logarithm (the sum overflows a float's range in deep networks otherwise).
//!
//! All follow the child's graph as [`crate::ChoiceOp`] and [`crate::layers::stem`] build it.

use crate::block::{channel_shuffle_split, even_odd_split, units};
use crate::layers::{ConvBnConfig, stem_config};
use detnas_device::host;
use detnas_space::{Arch, ChannelShuffle, SearchSpace};
use tch::{Kind, Tensor};

/// MAE-DET's stage weights for detection (`score_multi_ratio` of the official detection
/// configs): the stem, C2, C3, C4, C5.
pub const STAGE_WEIGHTS: [f64; 5] = [0.0, 0.0, 1.0, 1.0, 6.0];

/// Where a conv sits in the child.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// The stem.
    Stem,
    /// Unit `unit` of block `block`'s branch (the main chain); `last` when the block's ReLU
    /// follows it.
    Branch {
        /// Block index.
        block: usize,
        /// Unit index in the branch.
        unit: usize,
        /// The branch's last unit.
        last: bool,
    },
    /// Unit `unit` of a stride-2 block's projection (the shortcut).
    Proj {
        /// Block index.
        block: usize,
        /// Unit index in the projection.
        unit: usize,
    },
}

impl Place {
    /// The child's variable prefix of the conv (`stem`, `features.{b}.branch.{u}`,
    /// `features.{b}.proj.{u}`).
    pub fn name(self) -> String {
        match self {
            Place::Stem => "stem".into(),
            Place::Branch { block, unit, .. } => format!("features.{block}.branch.{unit}"),
            Place::Proj { block, unit } => format!("features.{block}.proj.{unit}"),
        }
    }
}

/// The weight `[cout, cin / groups, k, k]` of the conv at a place.
pub type WeightFn<'a> = dyn FnMut(Place, &ConvBnConfig) -> Tensor + 'a;

/// Runs the child's backbone on `x` with the convs' weights from `weights` (no bias), each
/// conv's output passed through `after` (which normalises, records and applies the ReLU as
/// the proxy defines). Returns the output.
fn traverse(
    space: &SearchSpace,
    arch: &Arch,
    x: &Tensor,
    weights: &mut WeightFn,
    after: &mut dyn FnMut(Tensor, Place, &ConvBnConfig) -> Tensor,
) -> Tensor {
    let conv = |x: &Tensor, place: Place, u: &ConvBnConfig, weights: &mut WeightFn| {
        let w = weights(place, u);
        let groups = if u.depthwise { u.cin } else { 1 };
        let p = u.kernel / 2;
        x.conv2d(&w, None::<Tensor>, [u.stride, u.stride], [p, p], [1, 1], groups)
    };
    let stem = stem_config(space.stem as i64);
    let mut y = after(conv(x, Place::Stem, &stem, weights), Place::Stem, &stem);
    for (slot, &choice) in space.slots().iter().zip(arch.choices()) {
        let (branch, proj) = units(slot, choice);
        let block = slot.index;
        let (passed, mut z) = if slot.stride == 2 {
            let mut p = y.shallow_clone();
            for (unit, u) in proj.iter().enumerate() {
                let place = Place::Proj { block, unit };
                p = after(conv(&p, place, u, weights), place, u);
            }
            (p, y.shallow_clone())
        } else {
            match slot.shuffle {
                ChannelShuffle::Detnas => channel_shuffle_split(&y),
                ChannelShuffle::EvenOdd => even_odd_split(&y),
            }
        };
        for (unit, u) in branch.iter().enumerate() {
            let place = Place::Branch { block, unit, last: unit + 1 == branch.len() };
            z = after(conv(&z, place, u, weights), place, u);
        }
        y = Tensor::cat(&[passed, z], 1);
    }
    y
}

/// N(0, 1) draws from a ChaCha stream (Box–Muller), so a seed gives the same weights and
/// inputs on every machine and libtorch version.
pub struct Gaussian {
    rng: detnas_space::rng::ChaCha8Rng,
}

impl Gaussian {
    /// The stream of `seed`.
    pub fn new(seed: u64) -> Gaussian {
        Gaussian { rng: detnas_space::rng::seeded(seed) }
    }

    /// A float tensor of `shape` with independent N(0, 1) entries.
    pub fn tensor(&mut self, shape: &[i64]) -> Tensor {
        let n: i64 = shape.iter().product();
        let mut v = Vec::with_capacity(n as usize);
        while v.len() < n as usize {
            // u1 in (0, 1], so its logarithm is finite.
            let u1 = 1.0 - detnas_space::rng::unit(&mut self.rng);
            let u2 = detnas_space::rng::unit(&mut self.rng);
            let r = (-2.0 * u1.ln()).sqrt();
            let t = std::f64::consts::TAU * u2;
            v.push((r * t.cos()) as f32);
            v.push((r * t.sin()) as f32);
        }
        v.truncate(n as usize);
        host::upload(&v, shape, tch::Device::Cpu, "nn.zero_cost.gaussian")
    }

    /// A conv weight for `u`, `[cout, cin / groups, k, k]`.
    pub fn weight(&mut self, u: &ConvBnConfig) -> Tensor {
        let cin = if u.depthwise { 1 } else { u.cin };
        self.tensor(&[u.cout, cin, u.kernel, u.kernel])
    }

    fn next_seed(&mut self) -> u64 {
        detnas_space::rng::below(&mut self.rng, u64::MAX)
    }
}

/// One entropy score (module docs) of `arch` on input `x` `[N, 3, H, W]` with the weights
/// `weights` gives: `Σ_i w_i S_i`.
///
/// # Errors
/// A message when the space does not have four stages (C2–C5).
pub fn entropy_once(space: &SearchSpace, arch: &Arch, x: &Tensor, weights: &mut WeightFn) -> Result<f64, String> {
    if space.widths.len() != 4 {
        return Err(format!(
            "space {}: the entropy score weighs the stem and four stages (C2–C5); it has {} stages",
            space.name,
            space.widths.len()
        ));
    }
    // σ_b per block: the stem first, then the blocks in order.
    let mut sigma: Vec<Tensor> = Vec::new();
    let mut after = |y: Tensor, place: Place, _: &ConvBnConfig| {
        let s = y.std(true);
        match place {
            Place::Stem => sigma.push(s.shallow_clone()),
            Place::Branch { unit: 0, .. } => sigma.push(s.shallow_clone()),
            Place::Branch { .. } => {
                // The block's σ so far, pushed at its first unit.
                if let Some(last) = sigma.last_mut() {
                    *last = &*last * &s;
                }
            }
            Place::Proj { .. } => {}
        }
        y / s
    };
    let _ = traverse(space, arch, x, weights, &mut after);
    let ln: Vec<f32> =
        host::read(&Tensor::stack(&sigma, 0).log(), "nn.zero_cost.entropy").map_err(|e| e.to_string())?;
    // Blocks up to the end of each stage (the stem counts as one), and its channels.
    let mut ends = vec![1usize];
    for &d in &space.depths {
        ends.push(ends[ends.len() - 1] + d as usize);
    }
    let channels: Vec<u64> = std::iter::once(space.stem).chain(space.widths.iter().copied()).collect();
    Ok(STAGE_WEIGHTS
        .iter()
        .zip(ends.iter().zip(&channels))
        .filter(|(w, _)| **w != 0.0)
        .map(|(w, (&end, &c))| w * (ln[..end].iter().map(|&v| f64::from(v)).sum::<f64>() + (c as f64).ln()))
        .sum())
}

/// How the entropy score is computed.
#[derive(Clone, Debug, PartialEq)]
pub struct EntropySettings {
    /// Gaussian input `[batch, 3, height, width]`: the batch.
    pub batch: i64,
    /// The input's `[height, width]`, pixels.
    pub input: [i64; 2],
    /// Repeats, each with new weights and input; the score is their mean.
    pub repeats: usize,
    /// The seed of the first repeat's draws.
    pub seed: u64,
}

/// The entropy score of `arch` (module docs): the mean over `s.repeats` of [`entropy_once`]
/// with N(0, 1) weights and input drawn from `s.seed`, and the standard deviation over the
/// repeats.
///
/// # Errors
/// As [`entropy_once`].
pub fn entropy(space: &SearchSpace, arch: &Arch, s: &EntropySettings) -> Result<(f64, f64), String> {
    let _guard = tch::no_grad_guard();
    let mut g = Gaussian::new(s.seed);
    let mut scores = Vec::with_capacity(s.repeats);
    for _ in 0..s.repeats.max(1) {
        let mut draw = Gaussian::new(g.next_seed());
        let x = draw.tensor(&[s.batch, 3, s.input[0], s.input[1]]);
        scores.push(entropy_once(space, arch, &x, &mut |_, u| draw.weight(u))?);
    }
    let mean = scores.iter().sum::<f64>() / scores.len() as f64;
    let sd = (scores.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / scores.len() as f64).sqrt();
    Ok((mean, sd))
}

/// NASWOT's kernel `K = Σ c cᵀ + (1 − c)(1 − c)ᵀ` `[N, N]`, accumulated code by code in f64
/// (its entries are exact integers).
pub struct NaswotKernel {
    k: Option<Tensor>,
}

/// Code columns per accumulation step (bounds the f64 copy of a code).
const CODE_CHUNK: i64 = 1 << 18;

impl NaswotKernel {
    /// An empty kernel.
    pub fn new() -> NaswotKernel {
        NaswotKernel { k: None }
    }

    /// Adds the codes `c` `[N, ...]` (0 or 1) of one ReLU's input.
    pub fn add(&mut self, c: &Tensor) {
        let n = c.size()[0];
        let c = c.reshape([n, -1]);
        let f = c.size()[1];
        let k = self.k.get_or_insert_with(|| Tensor::zeros([n, n], (Kind::Double, c.device())));
        let mut at = 0;
        while at < f {
            let part = c.narrow(1, at, CODE_CHUNK.min(f - at)).to_kind(Kind::Double);
            let other = part.ones_like() - &part;
            *k += part.mm(&part.tr()) + other.mm(&other.tr());
            at += CODE_CHUNK;
        }
    }

    /// `ln |det K|`; `None` when `K` is singular or empty (or cannot be read).
    pub fn logdet(&self) -> Option<f64> {
        let (sign, logdet) = self.k.as_ref()?.slogdet();
        let v: Vec<f64> = host::read(&Tensor::stack(&[sign, logdet], 0), "nn.zero_cost.naswot").ok()?;
        (v[0] > 0.0).then_some(v[1])
    }
}

impl Default for NaswotKernel {
    fn default() -> Self {
        NaswotKernel::new()
    }
}

/// NASWOT's score (module docs) of `arch` on the images `x` `[N, 3, H, W]` (prepared as the
/// detector's input), with N(0, 1) weights drawn from `seed`; `None` when `K` is singular.
pub fn naswot(space: &SearchSpace, arch: &Arch, x: &Tensor, seed: u64) -> Option<f64> {
    let mut g = Gaussian::new(seed);
    naswot_with(space, arch, x, &mut |_, u| g.weight(u))
}

/// [`naswot`] with the weights `weights` gives.
pub fn naswot_with(space: &SearchSpace, arch: &Arch, x: &Tensor, weights: &mut WeightFn) -> Option<f64> {
    let _guard = tch::no_grad_guard();
    let mut kernel = NaswotKernel::new();
    let mut after = |y: Tensor, place: Place, u: &ConvBnConfig| {
        let y = y.batch_norm(None::<Tensor>, None::<Tensor>, None::<Tensor>, None::<Tensor>, true, 0.1, 1e-5, false);
        if u.relu || matches!(place, Place::Branch { last: true, .. }) {
            kernel.add(&y.gt(0.0));
            y.relu()
        } else {
            y
        }
    };
    let _ = traverse(space, arch, x, weights, &mut after);
    kernel.logdet()
}

/// SynFlow's score (module docs) of `arch` at input size `[height, width]`, with the weights
/// `weights` gives (their absolute values are used), as `ln Σ |θ · ∂R/∂θ|`; `None` when the
/// sum is zero or not finite.
pub fn synflow_with(space: &SearchSpace, arch: &Arch, input: [i64; 2], weights: &mut WeightFn) -> Option<f64> {
    let x = Tensor::ones([1, 3, input[0], input[1]], (Kind::Double, tch::Device::Cpu));
    let mut params: Vec<Tensor> = Vec::new();
    let mut abs = |place: Place, u: &ConvBnConfig| {
        let w = weights(place, u).to_kind(Kind::Double).abs().set_requires_grad(true);
        params.push(w.shallow_clone());
        w
    };
    let mut relu = |y: Tensor, place: Place, u: &ConvBnConfig| {
        if u.relu || matches!(place, Place::Branch { last: true, .. }) { y.relu() } else { y }
    };
    let out = traverse(space, arch, &x, &mut abs, &mut relu);
    out.sum(Kind::Double).backward();
    let terms: Vec<Tensor> = params.iter().map(|w| (w * w.grad()).abs().sum(Kind::Double).detach()).collect();
    let v: Vec<f64> = host::read(&Tensor::stack(&terms, 0).sum(Kind::Double), "nn.zero_cost.synflow").ok()?;
    (v[0] > 0.0 && v[0].is_finite()).then(|| v[0].ln())
}

/// [`synflow_with`] with N(0, 1) weights drawn from `seed`.
pub fn synflow(space: &SearchSpace, arch: &Arch, input: [i64; 2], seed: u64) -> Option<f64> {
    let mut g = Gaussian::new(seed);
    synflow_with(space, arch, input, &mut |_, u| g.weight(u))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two images, codes `[1, 0, 1]` and `[1, 1, 0]` at one ReLU and `[1]`, `[1]` at another:
    /// K = [[4, 2], [2, 4]] (matches per pair: 3 + 1 on the diagonal, 1 + 1 off it), det 12.
    #[test]
    fn naswot_kernel_of_hand_codes() {
        let mut k = NaswotKernel::new();
        k.add(&Tensor::from_slice(&[1u8, 0, 1, 1, 1, 0]).view([2, 3]));
        k.add(&Tensor::from_slice(&[1u8, 1]).view([2, 1]));
        let got = k.logdet().unwrap();
        assert!((got - 12f64.ln()).abs() < 1e-12, "{got}");
        // Identical images: K is singular.
        let mut same = NaswotKernel::new();
        same.add(&Tensor::from_slice(&[1u8, 0, 1, 1, 0, 1]).view([2, 3]));
        assert_eq!(same.logdet(), None);
        assert_eq!(NaswotKernel::new().logdet(), None);
    }

    /// The Gaussian draws have mean 0 and variance 1, and a seed repeats them.
    #[test]
    fn gaussian_draws_are_standard_and_repeatable() {
        let t = Gaussian::new(7).tensor(&[100_000]);
        let (m, v) = (t.mean(Kind::Double).double_value(&[]), t.var(true).double_value(&[]));
        assert!(m.abs() < 0.01 && (v - 1.0).abs() < 0.02, "{m} {v}");
        assert_eq!(t.narrow(0, 0, 5), Gaussian::new(7).tensor(&[5]));
    }
}
