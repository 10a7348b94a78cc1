//! RetinaNet (Lin et al. 2017) head, loss and post-processing, with maskrcnn_benchmark's
//! defaults as DetNAS configures them (`retinanet_DETNAS_COCO_FPN_300M_*.yaml`;
//! `modeling/rpn/retinanet/{retinanet,loss,inference}.py`): levels P3–P7, anchors
//! `32·2^(l−3)` × 3 octave scales × ratios {0.5, 1, 2}, matcher 0.5/0.4 with low-quality
//! matches, two towers of 4 conv3×3+ReLU (BN optional; option: one BN per level) shared
//! across levels, classification prior 0.01; inference: per level score > 0.05 and top 1000,
//! class-wise NMS 0.5, at most 100 detections per image.
//!
//! Losses, as `RetinaNetLossComputation`: the sigmoid focal loss (α 0.25, γ 2) summed over
//! every anchor that is not between the thresholds, divided by `num_pos + N` (positive
//! anchors over the batch plus the number of images); smooth-L1 (β 0.11) summed over the
//! positive anchors, divided by `max(1, num_pos)`. Box deltas use the no-`+1` box
//! convention of [`crate::boxes`] (torchvision's), not maskrcnn_benchmark's `TO_REMOVE = 1`.

use crate::anchors::AnchorGenerator;
use crate::boxes::{BoxCoder, clip, pairwise_iou};
use crate::layers::{bn_if, conv_unit, predictor};
use crate::losses::{LossTerm, sigmoid_focal_loss, smooth_l1_sum};
use crate::matcher::Matcher;
use crate::nms::batched_nms;
use crate::target::{Detections, Target};
use detnas_nn::layers::{ConvBn, NormKind};
use serde::{Deserialize, Serialize};
use tch::nn::Module;
use tch::{Kind, Tensor, nn};

/// RetinaNet settings (`[detector.head]` with `kind = "retinanet"`). Defaults are
/// maskrcnn_benchmark's (`MODEL.RETINANET.*`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetinaNetConfig {
    /// Convs in each tower. Default 4.
    pub num_convs: usize,
    /// BN after each tower conv (DetNAS trains BN everywhere). Default true.
    pub tower_bn: bool,
    /// One BN per pyramid level after each (level-shared) tower conv, instead of one BN
    /// shared by all levels as in maskrcnn_benchmark. Levels have different statistics; a
    /// shared BN's running averages mix them, which costs accuracy in short schedules.
    /// Default false.
    pub level_bn: bool,
    /// Prior probability of the classification bias init. Default 0.01.
    pub prior: f64,
    /// Anchor base size (√area, pixels of the network input) of each level P3..P7. Default
    /// `[32, 64, 128, 256, 512]`.
    pub anchor_sizes: Vec<f64>,
    /// Anchor scales per octave (sizes `base·2^(i/n)`). Default 3.
    pub scales_per_octave: usize,
    /// Anchor aspect ratios (height / width). Default `[0.5, 1, 2]`.
    pub aspect_ratios: Vec<f64>,
    /// IoU from which an anchor is positive. Default 0.5.
    pub fg_iou: f64,
    /// IoU below which an anchor is negative (in between: ignored). Default 0.4.
    pub bg_iou: f64,
    /// Focal loss α. Default 0.25.
    pub focal_alpha: f64,
    /// Focal loss γ. Default 2.
    pub focal_gamma: f64,
    /// Smooth-L1 transition of the box loss. Default 0.11.
    pub smooth_l1_beta: f64,
    /// Detections below this score are dropped before NMS. Default 0.05.
    pub score_threshold: f64,
    /// Candidates kept per level (per image) before NMS. Default 1000.
    pub pre_nms_top_n: i64,
    /// IoU of the class-wise NMS. Default 0.5.
    pub nms_threshold: f64,
    /// Detections kept per image. Default 100.
    pub detections_per_image: i64,
}

impl Default for RetinaNetConfig {
    fn default() -> Self {
        RetinaNetConfig {
            num_convs: 4,
            tower_bn: true,
            level_bn: false,
            prior: 0.01,
            anchor_sizes: vec![32.0, 64.0, 128.0, 256.0, 512.0],
            scales_per_octave: 3,
            aspect_ratios: vec![0.5, 1.0, 2.0],
            fg_iou: 0.5,
            bg_iou: 0.4,
            focal_alpha: 0.25,
            focal_gamma: 2.0,
            smooth_l1_beta: 0.11,
            score_threshold: 0.05,
            pre_nms_top_n: 1000,
            nms_threshold: 0.5,
            detections_per_image: 100,
        }
    }
}

impl RetinaNetConfig {
    /// The anchors of pyramid levels of `strides` (pixels, one per level of `anchor_sizes`).
    pub fn anchors(&self, strides: &[i64]) -> AnchorGenerator {
        AnchorGenerator::retinanet(&self.anchor_sizes, strides, self.scales_per_octave, &self.aspect_ratios)
    }
}

#[derive(Debug)]
pub struct RetinaHead {
    cfg: RetinaNetConfig,
    classes: i64,
    cls_tower: Vec<ConvBn>,
    box_tower: Vec<ConvBn>,
    cls_logits: nn::Conv2D,
    bbox_pred: nn::Conv2D,
    anchors: AnchorGenerator,
    coder: BoxCoder,
}

/// Head outputs per level: `cls[l]` `[N, H_l·W_l·A, K]` logits, `reg[l]` `[N, H_l·W_l·A, 4]`
/// deltas, in the anchor grid's order.
#[derive(Debug)]
pub struct RetinaOutputs {
    pub cls: Vec<Tensor>,
    pub reg: Vec<Tensor>,
}

/// `[N, A·C, H, W]` → `[N, H·W·A, C]` (the anchor grid's order).
pub fn flatten_level(t: &Tensor, c: i64) -> Tensor {
    let s = t.size();
    t.view([s[0], -1, c, s[2], s[3]]).permute([0, 3, 4, 1, 2]).reshape([s[0], -1, c])
}

impl RetinaHead {
    /// The head under `p` for pyramid levels of `channels` channels and `strides` (pixels),
    /// with `classes` foreground classes.
    pub fn new(p: &nn::Path, cfg: &RetinaNetConfig, channels: i64, classes: i64, strides: &[i64]) -> RetinaHead {
        let a = (cfg.scales_per_octave * cfg.aspect_ratios.len()) as i64;
        let levels = cfg.anchor_sizes.len();
        // Tower convs are shared by the levels; their BN is one shared BN, one per level
        // (`bn_p3`…), or none.
        let norm = match (cfg.tower_bn, cfg.level_bn) {
            (true, true) => NormKind::PerLevel { levels, first: 3 },
            (bn, _) => bn_if(bn),
        };
        let tower = |name: &str| {
            (0..cfg.num_convs)
                .map(|i| conv_unit(&(p / name / i), (channels, channels, 3, 1), norm, true, Some(0.01)))
                .collect()
        };
        let bias = -((1.0 - cfg.prior) / cfg.prior).ln();
        RetinaHead {
            cls_tower: tower("cls_tower"),
            box_tower: tower("bbox_tower"),
            cls_logits: predictor(p / "cls_logits", channels, a * classes, 3, 0.01, bias),
            bbox_pred: predictor(p / "bbox_pred", channels, a * 4, 3, 0.01, 0.0),
            anchors: cfg.anchors(strides),
            coder: BoxCoder::new([1.0; 4]),
            cfg: cfg.clone(),
            classes,
        }
    }

    /// The towers' outputs of level `l` (classification, box).
    fn towers(&self, f: &Tensor, l: usize, train: bool) -> (Tensor, Tensor) {
        let mut c = f.shallow_clone();
        for u in &self.cls_tower {
            c = u.forward_level(&c, l, train);
        }
        let mut b = f.shallow_clone();
        for u in &self.box_tower {
            b = u.forward_level(&b, l, train);
        }
        (c, b)
    }

    /// The head's outputs on pyramid `feats` (P3..P7, `[N, C, H_l, W_l]`).
    pub fn run(&self, feats: &[Tensor], train: bool) -> RetinaOutputs {
        let (mut cls, mut reg) = (Vec::new(), Vec::new());
        for (l, f) in feats.iter().enumerate() {
            let (c, b) = self.towers(f, l, train);
            let c = flatten_level(&self.cls_logits.forward(&c), self.classes);
            cls.push(c);
            reg.push(flatten_level(&self.bbox_pred.forward(&b), 4));
        }
        RetinaOutputs { cls, reg }
    }

    /// Anchors `[H_l·W_l·A, 4]` of each level of `feats`.
    pub fn level_anchors(&self, feats: &[Tensor]) -> Vec<Tensor> {
        let hw: Vec<(i64, i64)> = feats.iter().map(|f| (f.size()[2], f.size()[3])).collect();
        self.anchors.grid(&hw, feats[0].device())
    }

    /// Training losses `(classification, box regression)` for pyramid `feats` (P3..P7).
    pub fn losses(&self, feats: &[Tensor], targets: &[Target]) -> (LossTerm, LossTerm) {
        let out = self.run(feats, true);
        self.loss(&out, &self.level_anchors(feats), targets)
    }

    /// The losses `(classification, box regression)` of head outputs against `targets` (one
    /// per image; crowd regions left out), with the normalisers of the module documentation:
    /// `num_pos + N` and `num_pos`.
    ///
    /// # Shapes
    /// `anchors[l]` `[H_l·W_l·A, 4]`, matching `out`'s levels.
    pub fn loss(&self, out: &RetinaOutputs, anchors: &[Tensor], targets: &[Target]) -> (LossTerm, LossTerm) {
        let anchors = Tensor::cat(anchors, 0);
        let cls = Tensor::cat(&out.cls, 1);
        let reg = Tensor::cat(&out.reg, 1);
        let matcher = Matcher { high: self.cfg.fg_iou, low: self.cfg.bg_iou, allow_low_quality: true };
        let (mut cls_loss, mut box_loss, mut num_pos) = (Vec::new(), Vec::new(), 0i64);
        for (i, t) in targets.iter().enumerate() {
            let m = tch::no_grad(|| matcher.matches(&pairwise_iou(&t.boxes, &anchors)));
            let valid = m.ne(crate::matcher::BETWEEN);
            let pos = m.ge(0);
            let pos_idx = pos.nonzero().squeeze_dim(1);
            num_pos += pos_idx.size()[0];
            let matched = m.clamp_min(0);
            let labels =
                if t.labels.size()[0] > 0 { t.labels.index_select(0, &matched) } else { Tensor::zeros_like(&matched) };
            let onehot = labels.one_hot(self.classes).to_kind(Kind::Float) * pos.unsqueeze(1).to_kind(Kind::Float);
            let vidx = valid.nonzero().squeeze_dim(1);
            let logits = cls.get(i as i64).index_select(0, &vidx);
            cls_loss.push(sigmoid_focal_loss(
                &logits,
                &onehot.index_select(0, &vidx),
                self.cfg.focal_alpha,
                self.cfg.focal_gamma,
            ));
            if pos_idx.size()[0] > 0 {
                let gt = t.boxes.index_select(0, &matched.index_select(0, &pos_idx));
                let target = self.coder.encode(&anchors.index_select(0, &pos_idx), &gt);
                let pred = reg.get(i as i64).index_select(0, &pos_idx);
                box_loss.push(smooth_l1_sum(&pred, &target, self.cfg.smooth_l1_beta));
            }
        }
        let cls_sum = Tensor::stack(&cls_loss, 0).sum(Kind::Float);
        let box_sum =
            if box_loss.is_empty() { reg.sum(Kind::Float) * 0.0 } else { Tensor::stack(&box_loss, 0).sum(Kind::Float) };
        (
            LossTerm { name: "cls", sum: cls_sum, count: (num_pos + targets.len() as i64) as f64 },
            LossTerm { name: "box", sum: box_sum, count: num_pos as f64 },
        )
    }

    /// Eval-mode raw outputs per level: logits `[N, H·W·A, K]` and deltas `[N, H·W·A, 4]`
    /// (for parity checks against a reference implementation).
    pub fn raw_outputs(&self, feats: &[Tensor]) -> (Vec<Tensor>, Vec<Tensor>) {
        let out = self.run(feats, false);
        (out.cls, out.reg)
    }

    /// Runs the head's BN-bearing towers in training mode (BN recalibration); the predictor
    /// convs, which have no BN, are skipped.
    pub fn observe(&self, feats: &[Tensor]) {
        for (l, f) in feats.iter().enumerate() {
            let _ = self.towers(f, l, true);
        }
    }

    /// Detections per image; `sizes` are the unpadded `(height, width)` for clipping.
    pub fn detect(&self, feats: &[Tensor], sizes: &[(i64, i64)]) -> Vec<Detections> {
        let out = self.run(feats, false);
        let anchors = self.level_anchors(feats);
        let k = self.classes;
        sizes
            .iter()
            .enumerate()
            .map(|(i, &(h, w))| {
                let (mut boxes, mut scores, mut labels) = (Vec::new(), Vec::new(), Vec::new());
                for (l, level_anchors) in anchors.iter().enumerate() {
                    let s = out.cls[l].get(i as i64).sigmoid().reshape([-1]);
                    let cand = s.gt(self.cfg.score_threshold).nonzero().squeeze_dim(1);
                    let n = cand.size()[0].min(self.cfg.pre_nms_top_n);
                    if n == 0 {
                        continue;
                    }
                    let (top, order) = s.index_select(0, &cand).topk(n, 0, true, true);
                    let flat = cand.index_select(0, &order);
                    let anchor_idx = flat.divide_scalar_mode(k, "floor");
                    let label = flat.remainder(k);
                    let deltas = out.reg[l].get(i as i64).index_select(0, &anchor_idx);
                    let b = self.coder.decode(&deltas, &level_anchors.index_select(0, &anchor_idx));
                    boxes.push(clip(&b, h, w));
                    scores.push(top);
                    labels.push(label);
                }
                if boxes.is_empty() {
                    return empty(feats[0].device());
                }
                let d = Detections {
                    boxes: Tensor::cat(&boxes, 0),
                    scores: Tensor::cat(&scores, 0),
                    labels: Tensor::cat(&labels, 0),
                };
                let keep = batched_nms(&d.boxes, &d.scores, &d.labels, self.cfg.nms_threshold);
                d.select(&keep).top(self.cfg.detections_per_image)
            })
            .collect()
    }
}

/// No detections.
pub fn empty(device: tch::Device) -> Detections {
    Detections {
        boxes: Tensor::zeros([0, 4], (Kind::Float, device)),
        scores: Tensor::zeros([0], (Kind::Float, device)),
        labels: Tensor::zeros([0], (Kind::Int64, device)),
    }
}
