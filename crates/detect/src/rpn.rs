//! The region proposal network of FPN Faster R-CNN (Ren et al. 2015; Lin et al. 2017) with
//! maskrcnn_benchmark's defaults as DetNAS configures them
//! (`e2e_faster_rcnn_DETNAS_COCO_FPN_300M_*.yaml`; `modeling/rpn/{rpn,loss,inference}.py`):
//! one head shared by the levels P2–P6 (conv3×3 + ReLU, 1×1 objectness and box deltas), one
//! anchor size per level × ratios {0.5, 1, 2}.
//!
//! Three separate calls: [`Rpn::raw_outputs`] (the head), [`Rpn::proposals`] (per level top
//! `pre_nms_top_n` by objectness, decode, clip, drop empty boxes, NMS per level, top
//! `post_nms_top_n` per image; no gradient) and [`Rpn::losses`] (matcher 0.7/0.3 with
//! low-quality matches, `batch_per_image` sampled anchors per image of which at most
//! `positive_fraction` positive, BCE + smooth-L1, both normalised by the number of sampled
//! anchors over the batch, as `RPNLossComputation`). Every step is batched over the images
//! on the device; with device kernels none reads anything back to the host.

use crate::anchors::{AnchorGenerator, AnchorGrids};
use crate::boxes::{BoxCoder, clip_each, nonempty_mask, pairwise_iou, sizes_tensor};
use crate::layers::predictor;
use crate::losses::smooth_l1_elementwise;
use crate::matcher::{Matcher, sample_balanced};
use crate::nms::{Group, keep_levels};
use crate::retinanet::flatten_level;
use crate::target::{Proposals, Targets};
use detnas_device::phase;
use detnas_nn::LossTerm;
use serde::{Deserialize, Serialize};
use tch::nn::Module;
use tch::{Kind, Reduction, Tensor, nn};

/// RPN settings. Defaults are maskrcnn_benchmark's (`MODEL.RPN.*`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RpnConfig {
    /// Anchor size (√area, pixels of the network input) of each level P2..P6. Default
    /// `[32, 64, 128, 256, 512]`.
    pub anchor_sizes: Vec<f64>,
    /// Anchor aspect ratios (height / width), shared by the levels. Default `[0.5, 1, 2]`.
    pub aspect_ratios: Vec<f64>,
    /// IoU from which an anchor is positive. Default 0.7.
    pub fg_iou: f64,
    /// IoU below which an anchor is negative (in between: ignored). Default 0.3.
    pub bg_iou: f64,
    /// Anchors sampled per image for the losses. Default 256.
    pub batch_per_image: i64,
    /// Largest fraction of positives among the sampled anchors. Default 0.5.
    pub positive_fraction: f64,
    /// Proposals kept per level (per image) before NMS, in training. Default 2000.
    pub pre_nms_top_n_train: i64,
    /// Proposals kept per level (per image) before NMS, at test time. Default 1000.
    pub pre_nms_top_n_test: i64,
    /// Proposals kept per image after NMS, in training. Default 2000.
    pub post_nms_top_n_train: i64,
    /// Proposals kept per image after NMS, at test time. Default 1000.
    pub post_nms_top_n_test: i64,
    /// IoU of the per-level NMS. Default 0.7.
    pub nms_threshold: f64,
    /// Proposals with a side below this (pixels) are dropped. Default 0 (only empty boxes).
    pub min_size: f64,
    /// Smooth-L1 transition of the box loss. Default 1/9.
    pub smooth_l1_beta: f64,
}

impl Default for RpnConfig {
    fn default() -> Self {
        RpnConfig {
            anchor_sizes: vec![32.0, 64.0, 128.0, 256.0, 512.0],
            aspect_ratios: vec![0.5, 1.0, 2.0],
            fg_iou: 0.7,
            bg_iou: 0.3,
            batch_per_image: 256,
            positive_fraction: 0.5,
            pre_nms_top_n_train: 2000,
            pre_nms_top_n_test: 1000,
            post_nms_top_n_train: 2000,
            post_nms_top_n_test: 1000,
            nms_threshold: 0.7,
            min_size: 0.0,
            smooth_l1_beta: 1.0 / 9.0,
        }
    }
}

/// The RPN head and its anchors.
#[derive(Debug)]
pub struct Rpn {
    cfg: RpnConfig,
    conv: nn::Conv2D,
    cls: nn::Conv2D,
    bbox: nn::Conv2D,
    anchors: AnchorGrids,
    coder: BoxCoder,
}

/// The RPN's outputs over all levels.
#[derive(Debug)]
pub struct RpnOutputs {
    /// Objectness logits per level, `[N, H·W·A]`.
    pub objectness: Vec<Tensor>,
    /// Box deltas per level, `[N, H·W·A, 4]`.
    pub deltas: Vec<Tensor>,
    /// Anchors per level, `[H·W·A, 4]` (network-input pixels).
    pub anchors: Vec<Tensor>,
}

impl Rpn {
    /// The head under `p` for pyramid levels of `channels` channels and `strides` (pixels;
    /// one per level, the levels of `cfg.anchor_sizes`).
    pub fn new(p: &nn::Path, cfg: &RpnConfig, channels: i64, strides: &[i64]) -> Rpn {
        let a = cfg.aspect_ratios.len() as i64;
        Rpn {
            conv: predictor(p / "conv", channels, channels, 3, 0.01, 0.0),
            cls: predictor(p / "cls_logits", channels, a, 1, 0.01, 0.0),
            bbox: predictor(p / "bbox_pred", channels, 4 * a, 1, 0.01, 0.0),
            anchors: AnchorGrids::new(AnchorGenerator {
                sizes: cfg.anchor_sizes.iter().map(|&s| vec![s]).collect(),
                ratios: cfg.aspect_ratios.clone(),
                strides: strides.to_vec(),
            }),
            coder: BoxCoder::new([1.0; 4]),
            cfg: cfg.clone(),
        }
    }

    /// Objectness `[N, H·W·A]` and deltas `[N, H·W·A, 4]` per level.
    ///
    /// # Shapes
    /// `feats[l]`: `[N, C, H_l, W_l]`.
    pub fn raw_outputs(&self, feats: &[Tensor]) -> (Vec<Tensor>, Vec<Tensor>) {
        let (mut obj, mut reg) = (Vec::new(), Vec::new());
        for f in feats {
            let t = self.conv.forward(f).relu();
            obj.push(flatten_level(&self.cls.forward(&t), 1).squeeze_dim(2));
            reg.push(flatten_level(&self.bbox.forward(&t), 4));
        }
        (obj, reg)
    }

    /// The head's outputs and the anchors of `feats`.
    ///
    /// # Shapes
    /// `feats[l]`: `[N, C, H_l, W_l]`; per level, objectness `[N, H_l·W_l·A]`, deltas
    /// `[N, H_l·W_l·A, 4]` and anchors `[H_l·W_l·A, 4]` (x1, y1, x2, y2, input pixels).
    pub fn run(&self, feats: &[Tensor]) -> RpnOutputs {
        let device = feats[0].device();
        let (objectness, deltas) = phase::time("head", device, || self.raw_outputs(feats));
        let hw: Vec<(i64, i64)> = feats.iter().map(|f| (f.size()[2], f.size()[3])).collect();
        let anchors = phase::time("anchors", device, || self.anchors.grids(&hw, device));
        RpnOutputs { objectness, deltas, anchors }
    }

    /// Proposals of each image (network-input pixels, clipped to `sizes[i]` =
    /// `(height, width)`), without gradient, padded to a common count `R ≤ post_nms_top_n`.
    ///
    /// # Errors
    /// A libtorch error reading the boxes (host kernels).
    pub fn proposals(&self, out: &RpnOutputs, sizes: &[(i64, i64)], train: bool) -> Result<Proposals, tch::TchError> {
        let (pre, post) = if train {
            (self.cfg.pre_nms_top_n_train, self.cfg.post_nms_top_n_train)
        } else {
            (self.cfg.pre_nms_top_n_test, self.cfg.post_nms_top_n_test)
        };
        let device = out.anchors[0].device();
        let _p = phase::enter("proposals", device);
        tch::no_grad(|| {
            let n = sizes.len() as i64;
            let size_t = sizes_tensor(sizes, device);
            let mut groups = Vec::with_capacity(out.objectness.len());
            for l in 0..out.objectness.len() {
                let o = out.objectness[l].to_kind(Kind::Float);
                let k = o.size()[1].min(pre);
                let (score, idx) = o.topk(k, 1, true, true);
                let d = out.deltas[l].to_kind(Kind::Float).gather(1, &idx.unsqueeze(2).expand([n, k, 4], false), false);
                let refs = out.anchors[l].index_select(0, &idx.reshape([-1])).view([n, k, 4]);
                let boxes = clip_each(&self.coder.decode(&d, &refs), &size_t);
                let valid = nonempty_mask(&boxes, self.cfg.min_size.max(1e-3));
                groups.push(Group { boxes, scores: score, valid });
            }
            let (keeps, exact) = keep_levels(&groups, self.cfg.nms_threshold)?;
            let boxes = Tensor::cat(&groups.iter().map(|g| g.boxes.shallow_clone()).collect::<Vec<_>>(), 1);
            let kept = Tensor::cat(&keeps, 1);
            let scores = Tensor::cat(&groups.iter().map(|g| g.scores.shallow_clone()).collect::<Vec<_>>(), 1)
                .masked_fill(&kept.logical_not(), f64::NEG_INFINITY);
            let r = scores.size()[1].min(post);
            let (top, idx) = scores.topk(r, 1, true, true);
            let boxes = boxes.gather(1, &idx.unsqueeze(2).expand([n, r, 4], false), false);
            Ok(Proposals { boxes, valid: top.gt(f64::NEG_INFINITY), exact })
        })
    }

    /// Training losses `(objectness, box regression)` of the head outputs against `targets`
    /// (crowd regions left out), both normalised by the number of anchors sampled over the
    /// batch.
    pub fn losses(&self, out: &RpnOutputs, targets: &Targets) -> (LossTerm, LossTerm) {
        let device = out.anchors[0].device();
        let anchors = Tensor::cat(&out.anchors, 0);
        let obj = Tensor::cat(&out.objectness, 1).to_kind(Kind::Float);
        let reg = Tensor::cat(&out.deltas, 1).to_kind(Kind::Float);
        let (n, a) = (targets.len() as i64, anchors.size()[0]);
        let matcher = Matcher { high: self.cfg.fg_iou, low: self.cfg.bg_iou, allow_low_quality: true };
        let (pos, sampled, gt_boxes) = phase::time("matching", device, || {
            tch::no_grad(|| {
                let m = matcher.matches(&pairwise_iou(&targets.boxes, &anchors.unsqueeze(0)), &targets.valid);
                let s = sample_balanced(
                    &m,
                    None,
                    self.cfg.batch_per_image,
                    self.cfg.positive_fraction,
                    &targets.seed_words,
                );
                let (pos, neg) = s.masks(a);
                let gt = if targets.max_boxes() > 0 {
                    targets.boxes.gather(1, &m.clamp_min(0).unsqueeze(2).expand([n, a, 4], false), false)
                } else {
                    Tensor::zeros([n, a, 4], (Kind::Float, device))
                };
                let gt = gt.where_self(&pos.unsqueeze(2), &anchors.unsqueeze(0));
                (pos.shallow_clone(), pos.logical_or(&neg), gt)
            })
        });
        let _p = phase::enter("losses", device);
        let labels = pos.to_kind(Kind::Float);
        let bce = obj.binary_cross_entropy_with_logits::<Tensor>(&labels, None, None, Reduction::None);
        let zero = Tensor::zeros([], (Kind::Float, device));
        let o = bce.where_self(&sampled, &zero).sum(Kind::Float);
        let target = tch::no_grad(|| self.coder.encode(&anchors.unsqueeze(0).expand([n, a, 4], false), &gt_boxes));
        let l1 = smooth_l1_elementwise(&reg, &target, self.cfg.smooth_l1_beta);
        let b = l1.where_self(&pos.unsqueeze(2), &zero).sum(Kind::Float);
        let count = sampled.sum(Kind::Double);
        (
            LossTerm { name: "rpn_obj", sum: o, count: count.shallow_clone() },
            LossTerm { name: "rpn_box", sum: b, count },
        )
    }
}
