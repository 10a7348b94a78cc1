//! FPN Faster R-CNN (Ren et al. 2015; Lin et al. 2017) with maskrcnn_benchmark's defaults as
//! DetNAS configures them (`e2e_faster_rcnn_DETNAS_COCO_FPN_300M_*.yaml`).
//!
//! * **RPN** on P2–P6: shared head (conv3×3+ReLU, 1×1 objectness and deltas), one anchor size
//!   per level (32…512) × ratios {0.5, 1, 2}; matcher 0.7/0.3 with low-quality matches,
//!   256 sampled anchors per image (half positive), BCE + smooth-L1 (β 1/9) normalised by
//!   the sampled count; proposals: per level top 2000 (train) / 1000 (test) by objectness,
//!   decode, clip, drop empty, NMS 0.7 per level, top 2000 / 1000 per image; ground-truth
//!   boxes are added to the proposals in training.
//! * **Box head** on P2–P5 via RoIAlign 7×7 (sampling ratio 2, FPN level mapping): matcher
//!   0.5/0.5, 512 sampled RoIs per image (a quarter positive), `4conv1fc` (DetNAS:
//!   `FPNXconv1fcFeatureExtractor`, 4 × conv3×3 256 + BN + ReLU, FC 1024) or `2fc`
//!   (2 × FC 1024); class-specific regression with weights (10, 10, 5, 5); CE + smooth-L1
//!   (β 1) normalised by the sampled count. Inference: softmax, score > 0.05, per-class NMS
//!   0.5, at most 100 detections.
//!
//! Internally class 0 is background; foreground class `k` of the data is `k + 1`.

use crate::anchors::AnchorGenerator;
use crate::boxes::{BoxCoder, clip, nonempty, pairwise_iou};
use crate::layers::{ConvUnit, predictor};
use crate::losses::smooth_l1_sum;
use crate::matcher::{Matcher, sample_balanced};
use crate::nms::batched_nms;
use crate::retinanet::{empty, flatten_level};
use crate::roi_align::MultiScaleRoiAlign;
use crate::target::{Detections, Target};
use serde::{Deserialize, Serialize};
use tch::nn::Module;
use tch::{Kind, Reduction, Tensor, nn};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RpnConfig {
    /// Anchor size of each level P2..P6.
    pub anchor_sizes: Vec<f64>,
    pub aspect_ratios: Vec<f64>,
    pub fg_iou: f64,
    pub bg_iou: f64,
    pub batch_per_image: i64,
    pub positive_fraction: f64,
    pub pre_nms_top_n_train: i64,
    pub pre_nms_top_n_test: i64,
    pub post_nms_top_n_train: i64,
    pub post_nms_top_n_test: i64,
    pub nms_threshold: f64,
    pub min_size: f64,
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

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BoxHeadKind {
    /// 4 × conv3×3 (+BN+ReLU) then one FC (DetNAS).
    #[serde(rename = "4conv1fc")]
    FourConvOneFc,
    /// Two FCs (torchvision's `TwoMLPHead`).
    #[serde(rename = "2fc")]
    TwoFc,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoiHeadsConfig {
    pub head: BoxHeadKind,
    pub conv_dim: i64,
    pub fc_dim: i64,
    /// BN after the head convs.
    pub head_bn: bool,
    pub pooler_resolution: i64,
    pub sampling_ratio: i64,
    pub fg_iou: f64,
    pub bg_iou: f64,
    pub batch_per_image: i64,
    pub positive_fraction: f64,
    pub bbox_weights: [f64; 4],
    pub smooth_l1_beta: f64,
    pub score_threshold: f64,
    pub nms_threshold: f64,
    pub detections_per_image: i64,
}

impl Default for RoiHeadsConfig {
    fn default() -> Self {
        RoiHeadsConfig {
            head: BoxHeadKind::FourConvOneFc,
            conv_dim: 256,
            fc_dim: 1024,
            head_bn: true,
            pooler_resolution: 7,
            sampling_ratio: 2,
            fg_iou: 0.5,
            bg_iou: 0.5,
            batch_per_image: 512,
            positive_fraction: 0.25,
            bbox_weights: [10.0, 10.0, 5.0, 5.0],
            smooth_l1_beta: 1.0,
            score_threshold: 0.05,
            nms_threshold: 0.5,
            detections_per_image: 100,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FasterRcnnConfig {
    pub rpn: RpnConfig,
    pub roi: RoiHeadsConfig,
}

#[derive(Debug)]
pub struct Rpn {
    cfg: RpnConfig,
    conv: nn::Conv2D,
    cls: nn::Conv2D,
    bbox: nn::Conv2D,
    anchors: AnchorGenerator,
    coder: BoxCoder,
}

impl Rpn {
    pub fn new(p: &nn::Path, cfg: &RpnConfig, channels: i64) -> Rpn {
        let a = cfg.aspect_ratios.len() as i64;
        let strides: Vec<i64> = (2..2 + cfg.anchor_sizes.len() as i64).map(|l| 1 << l).collect();
        Rpn {
            conv: predictor(p / "conv", channels, channels, 3, 0.01, 0.0),
            cls: predictor(p / "cls_logits", channels, a, 1, 0.01, 0.0),
            bbox: predictor(p / "bbox_pred", channels, 4 * a, 1, 0.01, 0.0),
            anchors: AnchorGenerator {
                sizes: cfg.anchor_sizes.iter().map(|&s| vec![s]).collect(),
                ratios: cfg.aspect_ratios.clone(),
                strides,
            },
            coder: BoxCoder::new([1.0; 4]),
            cfg: cfg.clone(),
        }
    }

    /// Objectness `[N, H·W·A]` and deltas `[N, H·W·A, 4]` per level.
    pub fn raw_outputs(&self, feats: &[Tensor]) -> (Vec<Tensor>, Vec<Tensor>) {
        let (mut obj, mut reg) = (Vec::new(), Vec::new());
        for f in feats {
            let t = self.conv.forward(f).relu();
            obj.push(flatten_level(&self.cls.forward(&t), 1).squeeze_dim(2));
            reg.push(flatten_level(&self.bbox.forward(&t), 4));
        }
        (obj, reg)
    }

    /// Proposals `[P_i, 4]` per image, and (with targets) the RPN losses.
    pub fn forward(
        &self,
        feats: &[Tensor],
        sizes: &[(i64, i64)],
        targets: Option<&[Target]>,
        train: bool,
    ) -> (Vec<Tensor>, Option<(Tensor, Tensor)>) {
        let (obj, reg) = self.raw_outputs(feats);
        let hw: Vec<(i64, i64)> = feats.iter().map(|f| (f.size()[2], f.size()[3])).collect();
        let anchors = self.anchors.grid(&hw, feats[0].device());
        let (pre, post) = if train {
            (self.cfg.pre_nms_top_n_train, self.cfg.post_nms_top_n_train)
        } else {
            (self.cfg.pre_nms_top_n_test, self.cfg.post_nms_top_n_test)
        };
        let proposals: Vec<Tensor> = tch::no_grad(|| {
            sizes
                .iter()
                .enumerate()
                .map(|(i, &(h, w))| {
                    let (mut boxes, mut scores, mut levels) = (Vec::new(), Vec::new(), Vec::new());
                    for l in 0..feats.len() {
                        let o = obj[l].get(i as i64);
                        let n = o.size()[0].min(pre);
                        let (s, idx) = o.topk(n, 0, true, true);
                        let d = reg[l].get(i as i64).index_select(0, &idx);
                        let b = clip(&self.coder.decode(&d, &anchors[l].index_select(0, &idx)), h, w);
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
        });
        let losses = targets.map(|targets| {
            let anchors = Tensor::cat(&anchors, 0);
            let obj = Tensor::cat(&obj, 1);
            let reg = Tensor::cat(&reg, 1);
            let matcher = Matcher { high: self.cfg.fg_iou, low: self.cfg.bg_iou, allow_low_quality: true };
            let (mut obj_l, mut box_l, mut sampled) = (Vec::new(), Vec::new(), 0i64);
            for (i, t) in targets.iter().enumerate() {
                let m = tch::no_grad(|| matcher.matches(&pairwise_iou(&t.boxes, &anchors)));
                let (pos, neg) = sample_balanced(&m, self.cfg.batch_per_image, self.cfg.positive_fraction);
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
                    box_l.push(smooth_l1_sum(
                        &reg.get(i as i64).index_select(0, &pos),
                        &target,
                        self.cfg.smooth_l1_beta,
                    ));
                }
            }
            let norm = sampled.max(1) as f64;
            let o = Tensor::stack(&obj_l, 0).sum(Kind::Float) / norm;
            let b = if box_l.is_empty() {
                reg.sum(Kind::Float) * 0.0
            } else {
                Tensor::stack(&box_l, 0).sum(Kind::Float) / norm
            };
            (o, b)
        });
        (proposals, losses)
    }
}

#[derive(Debug)]
enum BoxHead {
    Conv { convs: Vec<ConvUnit>, fc: nn::Linear },
    Mlp { fc6: nn::Linear, fc7: nn::Linear },
}

#[derive(Debug)]
pub struct RoiHeads {
    cfg: RoiHeadsConfig,
    classes: i64,
    pooler: MultiScaleRoiAlign,
    head: BoxHead,
    cls_score: nn::Linear,
    bbox_pred: nn::Linear,
    coder: BoxCoder,
}

fn linear(p: nn::Path, i: i64, o: i64, std: Option<f64>) -> nn::Linear {
    let ws_init = match std {
        Some(s) => nn::Init::Randn { mean: 0.0, stdev: s },
        // maskrcnn_benchmark's `make_fc`: kaiming_uniform_(a=1) → std 1/√fan_in.
        None => nn::Init::Randn { mean: 0.0, stdev: 1.0 / (i as f64).sqrt() },
    };
    nn::linear(p, i, o, nn::LinearConfig { ws_init, bs_init: Some(nn::Init::Const(0.0)), bias: true })
}

impl RoiHeads {
    pub fn new(p: &nn::Path, cfg: &RoiHeadsConfig, channels: i64, classes: i64) -> RoiHeads {
        let r = cfg.pooler_resolution;
        let head = match cfg.head {
            BoxHeadKind::FourConvOneFc => {
                let convs = (0..4)
                    .map(|i| {
                        let cin = if i == 0 { channels } else { cfg.conv_dim };
                        ConvUnit::new(&(p / "convs" / i), cin, cfg.conv_dim, 3, 1, cfg.head_bn, true, None)
                    })
                    .collect();
                BoxHead::Conv { convs, fc: linear(p / "fc6", cfg.conv_dim * r * r, cfg.fc_dim, None) }
            }
            BoxHeadKind::TwoFc => BoxHead::Mlp {
                fc6: linear(p / "fc6", channels * r * r, cfg.fc_dim, None),
                fc7: linear(p / "fc7", cfg.fc_dim, cfg.fc_dim, None),
            },
        };
        RoiHeads {
            pooler: MultiScaleRoiAlign {
                output: (r, r),
                sampling_ratio: cfg.sampling_ratio,
                strides: vec![4, 8, 16, 32],
            },
            head,
            cls_score: linear(p / "cls_score", cfg.fc_dim, classes + 1, Some(0.01)),
            bbox_pred: linear(p / "bbox_pred", cfg.fc_dim, 4 * (classes + 1), Some(0.001)),
            coder: BoxCoder::new(cfg.bbox_weights),
            cfg: cfg.clone(),
            classes,
        }
    }

    /// Class logits `[R, K+1]` and deltas `[R, 4(K+1)]` of RoIs `[R, 5]`.
    fn run(&self, feats: &[Tensor], rois: &Tensor, train: bool) -> (Tensor, Tensor) {
        let x = self.pooler.pool(&feats[..4], rois);
        let x = match &self.head {
            BoxHead::Conv { convs, fc } => {
                let mut y = x;
                for c in convs {
                    y = c.forward_t(&y, train);
                }
                fc.forward(&y.flatten(1, -1)).relu()
            }
            BoxHead::Mlp { fc6, fc7 } => fc7.forward(&fc6.forward(&x.flatten(1, -1)).relu()).relu(),
        };
        (self.cls_score.forward(&x), self.bbox_pred.forward(&x))
    }

    /// Training losses `(classification, box regression)`.
    pub fn losses(&self, feats: &[Tensor], proposals: &[Tensor], targets: &[Target]) -> (Tensor, Tensor) {
        let matcher = Matcher { high: self.cfg.fg_iou, low: self.cfg.bg_iou, allow_low_quality: false };
        let (mut rois, mut labels, mut reg_t) = (Vec::new(), Vec::new(), Vec::new());
        tch::no_grad(|| {
            for (i, (p, t)) in proposals.iter().zip(targets).enumerate() {
                let p = Tensor::cat(&[p, &t.boxes], 0);
                let m = matcher.matches(&pairwise_iou(&t.boxes, &p));
                let (pos, neg) = sample_balanced(&m, self.cfg.batch_per_image, self.cfg.positive_fraction);
                let idx = Tensor::cat(&[&pos, &neg], 0);
                let boxes = p.index_select(0, &idx);
                let matched = m.index_select(0, &pos);
                let mut l = Tensor::zeros([idx.size()[0]], (Kind::Int64, p.device()));
                if pos.size()[0] > 0 {
                    let fg = t.labels.index_select(0, &matched) + 1;
                    l = Tensor::cat(&[fg, Tensor::zeros([neg.size()[0]], (Kind::Int64, p.device()))], 0);
                    reg_t.push(
                        self.coder.encode(&boxes.narrow(0, 0, pos.size()[0]), &t.boxes.index_select(0, &matched)),
                    );
                }
                let bi = Tensor::full([idx.size()[0], 1], i as f64, (Kind::Float, p.device()));
                rois.push(Tensor::cat(&[bi, boxes], 1));
                labels.push(l);
            }
        });
        let rois = Tensor::cat(&rois, 0);
        let labels = Tensor::cat(&labels, 0);
        let (logits, deltas) = self.run(feats, &rois, true);
        let n = labels.size()[0].max(1) as f64;
        let cls = logits.cross_entropy_loss::<Tensor>(&labels, None, Reduction::Sum, -100, 0.0) / n;
        let pos = labels.gt(0).nonzero().squeeze_dim(1);
        let box_loss = if pos.size()[0] == 0 {
            deltas.sum(Kind::Float) * 0.0
        } else {
            let lp = labels.index_select(0, &pos);
            let d = deltas.index_select(0, &pos).reshape([-1, self.classes + 1, 4]);
            let d = d.gather(1, &lp.view([-1, 1, 1]).expand([-1, 1, 4], false), false).squeeze_dim(1);
            smooth_l1_sum(&d, &Tensor::cat(&reg_t, 0), self.cfg.smooth_l1_beta) / n
        };
        (cls, box_loss)
    }

    /// Eval-mode class logits `[R, K+1]` and deltas `[R, 4(K+1)]` of the proposals of all
    /// images, in order (for parity checks against a reference implementation).
    pub fn raw_outputs(&self, feats: &[Tensor], proposals: &[Tensor]) -> (Tensor, Tensor) {
        self.run(feats, &rois_of(proposals), false)
    }

    /// Runs the box head in training mode on `proposals` without losses (BN recalibration).
    pub fn observe(&self, feats: &[Tensor], proposals: &[Tensor]) {
        let _ = self.run(feats, &rois_of(proposals), true);
    }

    /// Detections per image.
    pub fn detect(&self, feats: &[Tensor], proposals: &[Tensor], sizes: &[(i64, i64)]) -> Vec<Detections> {
        let rois = rois_of(proposals);
        if rois.size()[0] == 0 {
            return sizes.iter().map(|_| empty(feats[0].device())).collect();
        }
        let (logits, deltas) = self.run(feats, &rois, false);
        let probs = logits.softmax(-1, Kind::Float);
        let k1 = self.classes + 1;
        let mut start = 0;
        sizes
            .iter()
            .zip(proposals)
            .map(|(&(h, w), p)| {
                let n = p.size()[0];
                let pr = probs.narrow(0, start, n);
                let boxes = self.coder.decode(&deltas.narrow(0, start, n), p).reshape([-1, 4]);
                start += n;
                let boxes = clip(&boxes, h, w).reshape([n, k1, 4]).narrow(1, 1, self.classes).reshape([-1, 4]);
                let scores = pr.narrow(1, 1, self.classes).reshape([-1]);
                let labels = Tensor::arange(self.classes, (Kind::Int64, p.device())).repeat([n]);
                let keep =
                    scores.gt(self.cfg.score_threshold).logical_and(&nonempty_mask(&boxes)).nonzero().squeeze_dim(1);
                let d = Detections {
                    boxes: boxes.index_select(0, &keep),
                    scores: scores.index_select(0, &keep),
                    labels: labels.index_select(0, &keep),
                };
                let keep = batched_nms(&d.boxes, &d.scores, &d.labels, self.cfg.nms_threshold);
                d.select(&keep).top(self.cfg.detections_per_image)
            })
            .collect()
    }
}

fn nonempty_mask(b: &Tensor) -> Tensor {
    let w = b.select(1, 2) - b.select(1, 0);
    let h = b.select(1, 3) - b.select(1, 1);
    w.gt(1e-3).logical_and(&h.gt(1e-3))
}

/// `[R, 5]` RoIs (image index, box) from per-image boxes.
fn rois_of(proposals: &[Tensor]) -> Tensor {
    let v: Vec<Tensor> = proposals
        .iter()
        .enumerate()
        .map(|(i, p)| {
            Tensor::cat(
                &[Tensor::full([p.size()[0], 1], i as f64, (Kind::Float, p.device())), p.to_kind(Kind::Float)],
                1,
            )
        })
        .collect();
    Tensor::cat(&v, 0)
}
