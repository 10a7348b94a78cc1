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
//! anchors over the batch, as `RPNLossComputation`).

use crate::anchors::AnchorGenerator;
use crate::boxes::{BoxCoder, clip, nonempty, pairwise_iou};
use crate::layers::predictor;
use crate::losses::{LossTerm, smooth_l1_sum};
use crate::matcher::{Matcher, sample_balanced};
use crate::nms::batched_nms;
use crate::retinanet::flatten_level;
use crate::target::Target;
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
    anchors: AnchorGenerator,
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
            anchors: AnchorGenerator {
                sizes: cfg.anchor_sizes.iter().map(|&s| vec![s]).collect(),
                ratios: cfg.aspect_ratios.clone(),
                strides: strides.to_vec(),
            },
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
        let (objectness, deltas) = self.raw_outputs(feats);
        let hw: Vec<(i64, i64)> = feats.iter().map(|f| (f.size()[2], f.size()[3])).collect();
        RpnOutputs { objectness, deltas, anchors: self.anchors.grid(&hw, feats[0].device()) }
    }

    /// Proposals `[P_i, 4]` per image (network-input pixels, clipped to `sizes[i]` =
    /// `(height, width)`), without gradient.
    pub fn proposals(&self, out: &RpnOutputs, sizes: &[(i64, i64)], train: bool) -> Vec<Tensor> {
        let (pre, post) = if train {
            (self.cfg.pre_nms_top_n_train, self.cfg.post_nms_top_n_train)
        } else {
            (self.cfg.pre_nms_top_n_test, self.cfg.post_nms_top_n_test)
        };
        tch::no_grad(|| {
            sizes
                .iter()
                .enumerate()
                .map(|(i, &(h, w))| {
                    let (mut boxes, mut scores, mut levels) = (Vec::new(), Vec::new(), Vec::new());
                    for l in 0..out.objectness.len() {
                        let o = out.objectness[l].get(i as i64);
                        let n = o.size()[0].min(pre);
                        let (s, idx) = o.topk(n, 0, true, true);
                        let d = out.deltas[l].get(i as i64).index_select(0, &idx);
                        let b = clip(&self.coder.decode(&d, &out.anchors[l].index_select(0, &idx)), h, w);
                        let keep = nonempty(&b, self.cfg.min_size.max(1e-3));
                        boxes.push(b.index_select(0, &keep));
                        levels.push(Tensor::full([keep.size()[0]], l as i64, (Kind::Int64, b.device())));
                        scores.push(s.index_select(0, &keep));
                    }
                    let (b, s, l) = (Tensor::cat(&boxes, 0), Tensor::cat(&scores, 0), Tensor::cat(&levels, 0));
                    let keep = batched_nms(&b, &s, &l, self.cfg.nms_threshold);
                    let s = s.index_select(0, &keep);
                    let b = b.index_select(0, &keep);
                    let n = s.size()[0].min(post);
                    let (_, top) = s.topk(n, 0, true, true);
                    b.index_select(0, &top)
                })
                .collect()
        })
    }

    /// Training losses `(objectness, box regression)` of the head outputs against `targets`
    /// (one per image; crowd regions left out), both normalised by the number of anchors
    /// sampled over the batch.
    pub fn losses(&self, out: &RpnOutputs, targets: &[Target]) -> (LossTerm, LossTerm) {
        let anchors = Tensor::cat(&out.anchors, 0);
        let obj = Tensor::cat(&out.objectness, 1);
        let reg = Tensor::cat(&out.deltas, 1);
        let matcher = Matcher { high: self.cfg.fg_iou, low: self.cfg.bg_iou, allow_low_quality: true };
        let (mut obj_l, mut box_l, mut sampled) = (Vec::new(), Vec::new(), 0i64);
        for (i, t) in targets.iter().enumerate() {
            let m = tch::no_grad(|| matcher.matches(&pairwise_iou(&t.boxes, &anchors)));
            let (pos, neg) = sample_balanced(&m, self.cfg.batch_per_image, self.cfg.positive_fraction, t.seed);
            let idx = Tensor::cat(&[&pos, &neg], 0);
            sampled += idx.size()[0];
            let labels = Tensor::cat(
                &[
                    Tensor::ones([pos.size()[0]], (Kind::Float, pos.device())),
                    Tensor::zeros([neg.size()[0]], (Kind::Float, neg.device())),
                ],
                0,
            );
            let logits = obj.get(i as i64).index_select(0, &idx);
            obj_l.push(logits.binary_cross_entropy_with_logits::<Tensor>(&labels, None, None, Reduction::Sum));
            if pos.size()[0] > 0 {
                let gt = t.boxes.index_select(0, &m.index_select(0, &pos));
                let target = self.coder.encode(&anchors.index_select(0, &pos), &gt);
                box_l.push(smooth_l1_sum(&reg.get(i as i64).index_select(0, &pos), &target, self.cfg.smooth_l1_beta));
            }
        }
        let o = Tensor::stack(&obj_l, 0).sum(Kind::Float);
        let b = if box_l.is_empty() { reg.sum(Kind::Float) * 0.0 } else { Tensor::stack(&box_l, 0).sum(Kind::Float) };
        (
            LossTerm { name: "rpn_obj", sum: o, count: sampled as f64 },
            LossTerm { name: "rpn_box", sum: b, count: sampled as f64 },
        )
    }
}
