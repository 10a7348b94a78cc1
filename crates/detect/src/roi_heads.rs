//! The box head of FPN Faster R-CNN with maskrcnn_benchmark's defaults as DetNAS configures
//! them (`modeling/roi_heads/box_head/{box_head,loss,inference,roi_box_feature_extractors}.py`):
//! RoIAlign on P2–P5 (FPN level mapping), `4conv1fc` (DetNAS's
//! `FPNXconv1fcFeatureExtractor`: 4 × conv3×3 + BN + ReLU, FC) or `2fc`, class-specific box
//! regression. Class 0 is background; foreground class `k` of the data is `k + 1`.
//!
//! Training is three calls: [`RoiHeads::sample`] (ground truth appended to the proposals,
//! matcher 0.5/0.5 without low-quality matches, `batch_per_image` RoIs per image of which at
//! most `positive_fraction` positive), [`RoiHeads::run`] (pool and predict) and
//! [`RoiHeads::losses`] (cross-entropy + smooth-L1 on the positives' own class, both
//! normalised by the number of sampled RoIs, as `FastRCNNLossComputation`). Inference:
//! softmax, score > `score_threshold`, per-class NMS, at most `detections_per_image`.

use crate::boxes::{BoxCoder, clip, pairwise_iou};
use crate::layers::{bn_if, conv_unit};
use crate::losses::{LossTerm, smooth_l1_sum};
use crate::matcher::{Matcher, sample_balanced};
use crate::nms::batched_nms;
use crate::retinanet::empty;
use crate::roi_align::MultiScaleRoiAlign;
use crate::target::{Detections, Target};
use detnas_nn::layers::ConvBn;
use serde::{Deserialize, Serialize};
use tch::nn::Module;
use tch::nn::ModuleT;
use tch::{Kind, Reduction, Tensor, nn};

/// The box head's feature extractor.
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

/// Box head settings. Defaults are DetNAS's (`MODEL.ROI_BOX_HEAD.*`, `MODEL.ROI_HEADS.*`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoiHeadsConfig {
    /// Feature extractor. Default `4conv1fc`.
    pub head: BoxHeadKind,
    /// Channels of the `4conv1fc` convs. Default 256.
    pub conv_dim: i64,
    /// Width of the FC layer(s). Default 1024.
    pub fc_dim: i64,
    /// BN after the head convs. Default true.
    pub head_bn: bool,
    /// RoIAlign output side (bins). Default 7.
    pub pooler_resolution: i64,
    /// RoIAlign sampling points per bin side. Default 2.
    pub sampling_ratio: i64,
    /// IoU from which a proposal is foreground. Default 0.5.
    pub fg_iou: f64,
    /// IoU below which a proposal is background. Default 0.5.
    pub bg_iou: f64,
    /// RoIs sampled per image for the losses. Default 512.
    pub batch_per_image: i64,
    /// Largest fraction of foreground among the sampled RoIs. Default 0.25.
    pub positive_fraction: f64,
    /// Box coder weights `(wx, wy, ww, wh)`. Default `[10, 10, 5, 5]`.
    pub bbox_weights: [f64; 4],
    /// Smooth-L1 transition of the box loss. Default 1.
    pub smooth_l1_beta: f64,
    /// Detections below this class probability are dropped. Default 0.05.
    pub score_threshold: f64,
    /// IoU of the per-class NMS. Default 0.5.
    pub nms_threshold: f64,
    /// Detections kept per image. Default 100.
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

#[derive(Debug)]
enum BoxHead {
    Conv { convs: Vec<ConvBn>, fc: nn::Linear },
    Mlp { fc6: nn::Linear, fc7: nn::Linear },
}

/// The box head.
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

/// The RoIs sampled for the losses of one batch.
#[derive(Debug)]
pub struct RoiSample {
    /// `[R, 5]`: image index, box (network-input pixels).
    pub rois: Tensor,
    /// `[R]` i64: 0 background, `k + 1` foreground class `k`.
    pub labels: Tensor,
    /// `[F, 4]`: encoded regression targets of the foreground RoIs, in RoI order.
    pub regression_targets: Tensor,
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
    /// The head under `p` for pyramid levels of `channels` channels, `classes` foreground
    /// classes, pooling from the levels of `strides` (pixels; P2–P5: 4, 8, 16, 32).
    pub fn new(p: &nn::Path, cfg: &RoiHeadsConfig, channels: i64, classes: i64, strides: &[i64]) -> RoiHeads {
        let r = cfg.pooler_resolution;
        let head = match cfg.head {
            BoxHeadKind::FourConvOneFc => {
                let convs = (0..4)
                    .map(|i| {
                        let cin = if i == 0 { channels } else { cfg.conv_dim };
                        conv_unit(&(p / "convs" / i), (cin, cfg.conv_dim, 3, 1), bn_if(cfg.head_bn), true, None)
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
                strides: strides.to_vec(),
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
    ///
    /// # Shapes
    /// `feats`: the pooled levels (at least as many as the pooler's strides), `[N, C, H, W]`.
    pub fn run(&self, feats: &[Tensor], rois: &Tensor, train: bool) -> (Tensor, Tensor) {
        let x = self.pooler.pool(&feats[..self.pooler.strides.len()], rois);
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

    /// The RoIs of a training batch: each image's proposals `[P_i, 4]` with its ground-truth
    /// boxes appended, matched and sampled, with their labels and regression targets.
    pub fn sample(&self, proposals: &[Tensor], targets: &[Target]) -> RoiSample {
        let matcher = Matcher { high: self.cfg.fg_iou, low: self.cfg.bg_iou, allow_low_quality: false };
        let (mut rois, mut labels, mut reg_t) = (Vec::new(), Vec::new(), Vec::new());
        tch::no_grad(|| {
            for (i, (p, t)) in proposals.iter().zip(targets).enumerate() {
                let p = Tensor::cat(&[p, &t.boxes], 0);
                let m = matcher.matches(&pairwise_iou(&t.boxes, &p));
                // A stream of its own: not the RPN sampler's draw of the same image.
                let seed = detnas_data::mix_seed(t.seed, &[0x5A1]);
                let (pos, neg) = sample_balanced(&m, self.cfg.batch_per_image, self.cfg.positive_fraction, seed);
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
        let device = proposals.first().map_or(tch::Device::Cpu, Tensor::device);
        RoiSample {
            rois: Tensor::cat(&rois, 0),
            labels: Tensor::cat(&labels, 0),
            regression_targets: if reg_t.is_empty() {
                Tensor::zeros([0, 4], (Kind::Float, device))
            } else {
                Tensor::cat(&reg_t, 0)
            },
        }
    }

    /// Training losses `(classification, box regression)` of the head's outputs on `sample`.
    ///
    /// # Shapes
    /// `logits` `[R, K+1]`, `deltas` `[R, 4(K+1)]` for the `R` RoIs of `sample`.
    pub fn losses(&self, logits: &Tensor, deltas: &Tensor, sample: &RoiSample) -> (LossTerm, LossTerm) {
        let labels = &sample.labels;
        let n = labels.size()[0] as f64;
        let cls = logits.cross_entropy_loss::<Tensor>(labels, None, Reduction::Sum, -100, 0.0);
        let pos = labels.gt(0).nonzero().squeeze_dim(1);
        let box_loss = if pos.size()[0] == 0 {
            deltas.sum(Kind::Float) * 0.0
        } else {
            let lp = labels.index_select(0, &pos);
            let d = deltas.index_select(0, &pos).reshape([-1, self.classes + 1, 4]);
            let d = d.gather(1, &lp.view([-1, 1, 1]).expand([-1, 1, 4], false), false).squeeze_dim(1);
            smooth_l1_sum(&d, &sample.regression_targets, self.cfg.smooth_l1_beta)
        };
        (LossTerm { name: "cls", sum: cls, count: n }, LossTerm { name: "box", sum: box_loss, count: n })
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

    /// Detections per image; `sizes` are the unpadded `(height, width)` for clipping.
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
