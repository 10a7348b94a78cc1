//! A detector = backbone (supernet or child) + FPN + RetinaNet or Faster R-CNN heads.
//!
//! Variables: `backbone.*`, `fpn.*`, and `retina.*` or `rpn.*` + `roi_heads.*`. Images are
//! `[N, 3, H, W]` padded batches; `sizes` the unpadded `(height, width)` of each image.

use crate::DetectError;
use crate::backbone::Backbone;
use crate::fpn::{Fpn, TopBlock};
use crate::rcnn::{FasterRcnnConfig, RoiHeads, Rpn};
use crate::retinanet::{RetinaHead, RetinaNetConfig};
use crate::target::{Detections, Targets};
use detnas_device::settings::with_kernels;
use detnas_device::{Kernels, autocast, phase};
use detnas_nn::LossTerm;
use detnas_space::{Arch, SearchSpace};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor, nn};

/// The detection head (`[detector.head]`, by `kind`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum HeadConfig {
    /// RetinaNet (Lin et al., arXiv:1708.02002).
    Retinanet(#[serde(default)] RetinaNetConfig),
    /// Faster R-CNN with FPN (Ren et al. arXiv:1506.01497; Lin et al. arXiv:1612.03144).
    FasterRcnn(#[serde(default)] FasterRcnnConfig),
}

/// A detector on the supernet backbone (`[detector]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectorConfig {
    /// FPN output channels. Default 256, as the reference.
    pub fpn_channels: i64,
    /// BN in the FPN convs. Default true (DetNAS: synchronized BN).
    pub fpn_bn: bool,
    /// The head (`[detector.head] kind = …`). Required.
    pub head: HeadConfig,
}

/// The defaults; `head` is required (a Faster R-CNN placeholder here).
impl Default for DetectorConfig {
    fn default() -> DetectorConfig {
        DetectorConfig { fpn_channels: 256, fpn_bn: true, head: HeadConfig::FasterRcnn(FasterRcnnConfig::default()) }
    }
}

impl DetectorConfig {
    /// Sets the score a final detection must exceed (RetinaNet's, or the box head's).
    pub fn set_score_threshold(&mut self, threshold: f64) {
        match &mut self.head {
            HeadConfig::Retinanet(c) => c.score_threshold = threshold,
            HeadConfig::FasterRcnn(c) => c.roi.score_threshold = threshold,
        }
    }

    /// Builds a detector with `classes` foreground classes under `p`; `arch` fixes a child
    /// backbone, `None` builds the supernet.
    ///
    /// # Errors
    /// [`DetectError::Config`] for fewer than one class, a space without exactly 4 stages, or
    /// anchor sizes not given for 5 levels; [`DetectError::Nn`] when `arch` does not fit `space`.
    pub fn build(
        &self,
        p: &nn::Path,
        space: &SearchSpace,
        arch: Option<&Arch>,
        classes: i64,
    ) -> Result<Detector, DetectError> {
        if classes < 1 {
            return Err(DetectError::Config("a detector needs at least one class".into()));
        }
        let backbone = match arch {
            Some(a) => Backbone::child(&(p / "backbone"), space, a)?,
            None => Backbone::supernet(&(p / "backbone"), space),
        };
        let (ch, st) = (backbone.channels(), backbone.strides());
        if ch.len() != 4 {
            return Err(DetectError::Config(format!("FPN needs 4 backbone stages, the space has {}", ch.len())));
        }
        let c = self.fpn_channels;
        let (fpn, head) = match &self.head {
            HeadConfig::Retinanet(r) => {
                if r.anchor_sizes.len() != 5 {
                    return Err(DetectError::Config("retinanet.anchor_sizes needs 5 levels (P3–P7)".into()));
                }
                let fpn = Fpn::new(&(p / "fpn"), &ch[1..], &st[1..], c, self.fpn_bn, TopBlock::P6P7);
                let head = RetinaHead::new(&(p / "retina"), r, c, classes, fpn.strides());
                (fpn, Heads::Retina(head))
            }
            HeadConfig::FasterRcnn(f) => {
                if f.rpn.anchor_sizes.len() != 5 {
                    return Err(DetectError::Config("rpn.anchor_sizes needs 5 levels (P2–P6)".into()));
                }
                let fpn = Fpn::new(&(p / "fpn"), &ch, &st, c, self.fpn_bn, TopBlock::MaxPool);
                let rpn = Rpn::new(&(p / "rpn"), &f.rpn, c, fpn.strides());
                let roi = RoiHeads::new(&(p / "roi_heads"), &f.roi, c, classes, fpn.input_strides());
                (fpn, Heads::Rcnn(Box::new(FasterRcnnHeads { rpn, roi_heads: roi })))
            }
        };
        Ok(Detector { backbone, fpn, head, classes })
    }
}

/// One detector holds one of these; the size difference does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Heads {
    Retina(RetinaHead),
    Rcnn(Box<FasterRcnnHeads>),
}

/// The two stages of FPN Faster R-CNN after the pyramid.
#[derive(Debug)]
struct FasterRcnnHeads {
    rpn: Rpn,
    roi_heads: RoiHeads,
}

/// A training step's losses.
#[derive(Debug)]
pub struct Losses {
    /// RetinaNet's `cls`, `box`; Faster R-CNN's `rpn_obj`, `rpn_box`, `cls`, `box`.
    pub terms: Vec<LossTerm>,
    /// Scalar bool on the device: the step's data-dependent parts (proposal NMS, RoI
    /// sampling) ran exactly as host kernels would (see [`crate::nms`], [`crate::roi_heads`]).
    /// Always true with host kernels and for RetinaNet. A step with `false` must be run again
    /// with host kernels; [`Detector::losses_exact`] does.
    pub exact: Tensor,
}

/// Backbone, FPN and head.
#[derive(Debug)]
pub struct Detector {
    /// The backbone.
    pub backbone: Backbone,
    fpn: Fpn,
    head: Heads,
    classes: i64,
}

impl Detector {
    /// Object classes (without background).
    pub fn classes(&self) -> i64 {
        self.classes
    }

    fn pyramid(&self, images: &Tensor, arch: Option<&Arch>, train: bool) -> Result<Vec<Tensor>, DetectError> {
        let device = images.device();
        let mut c = phase::time("backbone", device, || self.backbone.features(images, arch, train))?;
        let _p = phase::enter("fpn", device);
        if train {
            // In training the neck and heads run NCHW whatever the backbone's layout: on the CPU
            // their backward kernels are faster for the wide 3×3 convs on large maps than
            // channels-last ones (measured, Small + RetinaNet at 800×1344 batch 2, one step on 2
            // cores: 42.1 s channels-last vs 28.6 s; 128×128 demo: 0.248 vs 0.237 s). Inference
            // keeps the backbone's layout.
            c = c.iter().map(|t| t.contiguous()).collect();
        }
        Ok(match self.head {
            Heads::Retina(_) => self.fpn.forward_t(&c[1..], train),
            Heads::Rcnn(_) => self.fpn.forward_t(&c, train),
        })
    }

    /// The training losses, each as a sum and its normaliser on the device (BN in training
    /// mode everywhere), batched over the images: RetinaNet's `cls`, `box`; Faster R-CNN's
    /// `rpn_obj`, `rpn_box`, `cls`, `box`. With device kernels nothing is read back to the
    /// host; check [`Losses::exact`] (or call [`Detector::losses_exact`]).
    ///
    /// # Errors
    /// [`DetectError`] for a supernet without a path, or a child given another one.
    pub fn losses(
        &self,
        images: &Tensor,
        sizes: &[(i64, i64)],
        targets: &Targets,
        arch: Option<&Arch>,
    ) -> Result<Losses, DetectError> {
        let device = images.device();
        let _amp = autocast::for_setting(device, true).map_err(|e| DetectError::Config(e.to_string()))?;
        let p = self.pyramid(images, arch, true)?;
        Ok(match &self.head {
            Heads::Retina(h) => {
                let (c, b) = h.losses(&p, targets);
                Losses { terms: vec![c, b], exact: Tensor::ones([], (Kind::Bool, device)) }
            }
            Heads::Rcnn(h) => {
                let out = h.rpn.run(&p);
                let proposals = h.rpn.proposals(&out, sizes, true)?;
                let (o, rb) = phase::time("losses", device, || h.rpn.losses(&out, targets));
                let sample = h.roi_heads.sample(&proposals, targets)?;
                let (logits, deltas) = h.roi_heads.run(&p, &sample.rois, true)?;
                let (c, b) = h.roi_heads.losses(&logits, &deltas, &sample);
                Losses { terms: vec![o, rb, c, b], exact: proposals.exact.logical_and(&sample.exact) }
            }
        })
    }

    /// [`Detector::losses`] with their exactness checked (one host read): a step whose device
    /// kernels did not reach the host kernels' result runs again with host kernels.
    ///
    /// # Errors
    /// As [`Detector::losses`], and a libtorch error from the read.
    pub fn losses_exact(
        &self,
        images: &Tensor,
        sizes: &[(i64, i64)],
        targets: &Targets,
        arch: Option<&Arch>,
    ) -> Result<Vec<LossTerm>, DetectError> {
        let l = self.losses(images, sizes, targets, arch)?;
        if detnas_device::host::scalar(&l.exact, "detect.losses.exact")? > 0.5 {
            return Ok(l.terms);
        }
        with_kernels(Kernels::Host, || self.losses(images, sizes, targets, arch)).map(|l| l.terms)
    }

    /// Detections per image (BN in evaluation mode), read to the host once per batch.
    ///
    /// # Errors
    /// As [`Backbone::features`], and a libtorch error from the read.
    pub fn detect(
        &self,
        images: &Tensor,
        sizes: &[(i64, i64)],
        arch: Option<&Arch>,
    ) -> Result<Vec<Detections>, DetectError> {
        let device = images.device();
        let (dets, exact) = tch::no_grad(|| -> Result<(Vec<Detections>, bool), DetectError> {
            let _amp = autocast::for_setting(device, false).map_err(|e| DetectError::Config(e.to_string()))?;
            let p = self.pyramid(images, arch, false)?;
            Ok(match &self.head {
                Heads::Retina(h) => (h.detect(&p, sizes)?, true),
                Heads::Rcnn(h) => {
                    let props = h.rpn.proposals(&h.rpn.run(&p), sizes, false)?;
                    h.roi_heads.detect(&p, &props, sizes)?
                }
            })
        })?;
        if exact {
            return Ok(dets);
        }
        with_kernels(Kernels::Host, || self.detect(images, sizes, arch))
    }

    /// A forward through every BN-bearing module in training mode, without gradients or
    /// losses — what BN recalibration runs (backbone, FPN, heads; the box head on the
    /// test-time proposals). Returns a scalar bool on the device: whether the box head saw
    /// exactly the proposals host kernels give (see [`Losses::exact`]); a recalibration with
    /// a `false` must be run again with host kernels.
    ///
    /// # Errors
    /// As [`Backbone::features`].
    pub fn forward_for_bn_stats(
        &self,
        images: &Tensor,
        sizes: &[(i64, i64)],
        arch: Option<&Arch>,
    ) -> Result<Tensor, DetectError> {
        let device = images.device();
        tch::no_grad(|| {
            let _amp = autocast::for_setting(device, false).map_err(|e| DetectError::Config(e.to_string()))?;
            let p = self.pyramid(images, arch, true)?;
            Ok(match &self.head {
                Heads::Retina(h) => {
                    h.forward_for_bn_stats(&p);
                    Tensor::ones([], (Kind::Bool, device))
                }
                Heads::Rcnn(h) => {
                    let props = h.rpn.proposals(&h.rpn.run(&p), sizes, false)?;
                    let rois_exact = h.roi_heads.forward_for_bn_stats(&p, &props)?;
                    props.exact.logical_and(&rois_exact)
                }
            })
        })
    }

    /// Eval-mode intermediate outputs, named, for parity checks against a reference
    /// implementation: pyramid levels `p{k}` (`p3`..`p7` for RetinaNet, `p2`..`p6` for Faster
    /// R-CNN), then RetinaNet's `cls.{l}` `[N, H·W·A, K]` and `reg.{l}` `[N, H·W·A, 4]`, or
    /// the RPN's `rpn_obj.{l}` and `rpn_reg.{l}`, the test-time `proposals.{i}` `[P_i, 4]`
    /// and the box head's `roi_cls` `[ΣP_i, K+1]` and `roi_reg` `[ΣP_i, 4(K+1)]` on them.
    /// Runs with host kernels (exact proposals, host reads allowed).
    ///
    /// # Errors
    /// As [`Backbone::features`].
    pub fn trace(
        &self,
        images: &Tensor,
        sizes: &[(i64, i64)],
        arch: Option<&Arch>,
    ) -> Result<Vec<(String, Tensor)>, DetectError> {
        with_kernels(Kernels::Host, || {
            tch::no_grad(|| {
                let p = self.pyramid(images, arch, false)?;
                let first = match self.head {
                    Heads::Retina(_) => 3,
                    Heads::Rcnn(_) => 2,
                };
                let mut out: Vec<(String, Tensor)> =
                    p.iter().enumerate().map(|(l, t)| (format!("p{}", l + first), t.shallow_clone())).collect();
                let mut levels = |a: &str, b: &str, (x, y): (Vec<Tensor>, Vec<Tensor>)| {
                    for (l, (x, y)) in x.into_iter().zip(y).enumerate() {
                        out.push((format!("{a}.{l}"), x));
                        out.push((format!("{b}.{l}"), y));
                    }
                };
                match &self.head {
                    Heads::Retina(h) => levels("cls", "reg", h.raw_outputs(&p)),
                    Heads::Rcnn(h) => {
                        let rpn_out = h.rpn.run(&p);
                        let props = h.rpn.proposals(&rpn_out, sizes, false)?;
                        levels("rpn_obj", "rpn_reg", (rpn_out.objectness, rpn_out.deltas));
                        let (rois, _) = h.roi_heads.rois(&props)?;
                        let (c, r) = h.roi_heads.raw_outputs(&p, &rois)?;
                        for (i, b) in props.per_image()?.into_iter().enumerate() {
                            out.push((format!("proposals.{i}"), b));
                        }
                        out.push(("roi_cls".into(), c));
                        out.push(("roi_reg".into(), r));
                    }
                }
                Ok(out)
            })
        })
    }
}
