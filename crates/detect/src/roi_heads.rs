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
//!
//! Batched over the images on the device: a training batch's RoIs are `batch_per_image`
//! slots per image (positives first). With device kernels the slots and proposals keep their
//! padding (an image with fewer candidates than slots, or fewer proposals than the count
//! kept, has invalid entries) and an `exact` flag says whether there was any; BN statistics
//! (training mode) would see the padding, so a caller reruns such a step with host kernels,
//! which drop the padding after one host read.

use crate::boxes::{BoxCoder, clip_each, pairwise_iou, sizes_tensor, strictly_nonempty};
use crate::layers::{bn_if, conv_unit};
use crate::losses::smooth_l1_elementwise;
use crate::matcher::{Matcher, sample_balanced};
use crate::nms::final_detections;
use crate::roi_align::MultiScaleRoiAlign;
use crate::target::{Detections, Proposals, Targets};
use detnas_device::{host, phase};
use detnas_nn::LossTerm;
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
    /// `[R]` i64: 0 background, `k + 1` foreground class `k`, −100 padding (ignored).
    pub labels: Tensor,
    /// `[R]` bool: foreground RoIs.
    pub positive: Tensor,
    /// `[R, 4]`: encoded regression targets (meaningful for the foreground RoIs).
    pub regression_targets: Tensor,
    /// Scalar (`Kind::Double`): the sampled RoIs, the losses' normaliser.
    pub count: Tensor,
    /// Scalar bool: no padding among the RoIs (see the module documentation).
    pub exact: Tensor,
}

/// Label of a padding RoI (cross-entropy's ignore index).
pub const IGNORE: i64 = -100;

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
    ///
    /// # Errors
    /// A libtorch error from the pooler (host kernels).
    pub fn run(&self, feats: &[Tensor], rois: &Tensor, train: bool) -> Result<(Tensor, Tensor), tch::TchError> {
        let device = rois.device();
        let x = phase::time("roi_pool", device, || self.pooler.pool(&feats[..self.pooler.strides.len()], rois))?;
        let _p = phase::enter("roi_head", device);
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
        Ok((self.cls_score.forward(&x).to_kind(Kind::Float), self.bbox_pred.forward(&x).to_kind(Kind::Float)))
    }

    /// The RoIs of a training batch: each image's proposals with its ground-truth boxes
    /// appended, matched and sampled (`batch_per_image` slots per image, positives first),
    /// with their labels and regression targets.
    ///
    /// # Errors
    /// A libtorch error reading the slots' validity (host kernels).
    pub fn sample(&self, proposals: &Proposals, targets: &Targets) -> Result<RoiSample, tch::TchError> {
        let device = proposals.boxes.device();
        let _p = phase::enter("matching", device);
        tch::no_grad(|| {
            let matcher = Matcher { high: self.cfg.fg_iou, low: self.cfg.bg_iou, allow_low_quality: false };
            let n = targets.len() as i64;
            let cand = Tensor::cat(&[&proposals.boxes, &targets.boxes], 1);
            let allowed = Tensor::cat(&[&proposals.valid, &targets.valid], 1);
            let m = matcher.matches(&pairwise_iou(&targets.boxes, &cand), &targets.valid);
            // A stream of its own: not the RPN sampler's draw of the same image.
            let words = targets.seed_words.bitwise_xor(0x5A1);
            let s = sample_balanced(&m, Some(&allowed), self.cfg.batch_per_image, self.cfg.positive_fraction, &words);
            // Slots: positive j at j, negative j at n_pos + j; invalid draws go to a spare slot.
            let slots = self.cfg.batch_per_image;
            let spare = Tensor::full([], slots, (Kind::Int64, device));
            let kp = s.pos.size()[1];
            let pos_slot = Tensor::arange(kp, (Kind::Int64, device))
                .unsqueeze(0)
                .expand([n, kp], false)
                .where_self(&s.pos_valid, &spare);
            let kn = s.neg.size()[1];
            let neg_slot = (Tensor::arange(kn, (Kind::Int64, device)).unsqueeze(0) + s.n_pos.unsqueeze(1))
                .where_self(&s.neg_valid, &spare);
            let idx = Tensor::zeros([n, slots + 1], (Kind::Int64, device))
                .scatter(1, &pos_slot, &s.pos)
                .scatter(1, &neg_slot, &s.neg)
                .narrow(1, 0, slots);
            let filled = Tensor::zeros([n, slots + 1], (Kind::Bool, device))
                .scatter(1, &pos_slot, &s.pos_valid)
                .scatter(1, &neg_slot, &s.neg_valid)
                .narrow(1, 0, slots);
            let positive = Tensor::arange(slots, (Kind::Int64, device))
                .unsqueeze(0)
                .lt_tensor(&s.n_pos.unsqueeze(1))
                .logical_and(&filled);
            let boxes = cand.gather(1, &idx.unsqueeze(2).expand([n, slots, 4], false), false);
            let matched = m.gather(1, &idx, false).clamp_min(0);
            let (labels, gt) = if targets.max_boxes() > 0 {
                (
                    targets.labels.gather(1, &matched, false) + 1,
                    targets.boxes.gather(1, &matched.unsqueeze(2).expand([n, slots, 4], false), false),
                )
            } else {
                (Tensor::zeros([n, slots], (Kind::Int64, device)), boxes.shallow_clone())
            };
            let labels = labels
                .where_self(&positive, &Tensor::zeros([], (Kind::Int64, device)))
                .masked_fill(&filled.logical_not(), IGNORE);
            let gt = gt.where_self(&positive.unsqueeze(2), &boxes);
            let image = Tensor::arange(n, (Kind::Float, device)).view([n, 1, 1]).expand([n, slots, 1], false);
            let rois = Tensor::cat(&[image, boxes.shallow_clone()], 2).reshape([-1, 5]);
            let regression = self.coder.encode(&boxes, &gt).reshape([-1, 4]);
            let (labels, positive, filled) = (labels.reshape([-1]), positive.reshape([-1]), filled.reshape([-1]));
            let sample = RoiSample {
                count: filled.sum(Kind::Double),
                exact: filled.all(),
                rois,
                labels,
                positive,
                regression_targets: regression,
            };
            if detnas_device::settings::host_kernels(device) { sample.compacted() } else { Ok(sample) }
        })
    }

    /// Training losses `(classification, box regression)` of the head's outputs on `sample`.
    ///
    /// # Shapes
    /// `logits` `[R, K+1]`, `deltas` `[R, 4(K+1)]` for the `R` RoIs of `sample`.
    pub fn losses(&self, logits: &Tensor, deltas: &Tensor, sample: &RoiSample) -> (LossTerm, LossTerm) {
        let device = logits.device();
        let _p = phase::enter("losses", device);
        let labels = &sample.labels;
        let cls = logits.to_kind(Kind::Float).cross_entropy_loss::<Tensor>(labels, None, Reduction::Sum, IGNORE, 0.0);
        let r = labels.size()[0];
        let d = deltas.to_kind(Kind::Float).reshape([r, self.classes + 1, 4]);
        let own = labels.clamp_min(0).view([-1, 1, 1]).expand([r, 1, 4], false);
        let d = d.gather(1, &own, false).squeeze_dim(1);
        let l1 = smooth_l1_elementwise(&d, &sample.regression_targets, self.cfg.smooth_l1_beta);
        let box_loss =
            l1.where_self(&sample.positive.unsqueeze(1), &Tensor::zeros([], (Kind::Float, device))).sum(Kind::Float);
        (
            LossTerm { name: "cls", sum: cls, count: sample.count.shallow_clone() },
            LossTerm { name: "box", sum: box_loss, count: sample.count.shallow_clone() },
        )
    }

    /// The RoIs `[K, 5]` of `proposals` and whether they hold no padding: all `N·R` slots with
    /// device kernels; only the real proposals (after one host read) with host kernels.
    ///
    /// # Errors
    /// A libtorch error from the read (host kernels).
    pub fn rois(&self, proposals: &Proposals) -> Result<(Tensor, Tensor), tch::TchError> {
        let (n, r) = (proposals.valid.size()[0], proposals.valid.size()[1]);
        let device = proposals.boxes.device();
        let image = Tensor::arange(n, (Kind::Float, device)).view([n, 1, 1]).expand([n, r, 1], false);
        let rois = Tensor::cat(&[image, proposals.boxes.to_kind(Kind::Float)], 2).reshape([-1, 5]);
        if detnas_device::settings::host_kernels(device) {
            let idx = true_indices(&proposals.valid.reshape([-1]), "detect.roi_heads.rois")?;
            return Ok((rois.index_select(0, &idx), Tensor::ones([], (Kind::Bool, device))));
        }
        Ok((rois, proposals.valid.all()))
    }

    /// Eval-mode class logits `[R, K+1]` and deltas `[R, 4(K+1)]` of the proposals of all
    /// images, in order (for parity checks against a reference implementation).
    ///
    /// # Errors
    /// As [`RoiHeads::run`].
    pub fn raw_outputs(&self, feats: &[Tensor], rois: &Tensor) -> Result<(Tensor, Tensor), tch::TchError> {
        self.run(feats, rois, false)
    }

    /// Runs the box head in training mode on `proposals` without losses (BN recalibration).
    /// Returns whether the RoIs held no padding (scalar bool).
    ///
    /// # Errors
    /// As [`RoiHeads::run`].
    pub fn forward_for_bn_stats(&self, feats: &[Tensor], proposals: &Proposals) -> Result<Tensor, tch::TchError> {
        let (rois, exact) = self.rois(proposals)?;
        let _ = self.run(feats, &rois, true)?;
        Ok(exact)
    }

    /// The candidates of each image `[N, R·K, 7]` (`(x1, y1, x2, y2, score, label, valid)`,
    /// proposal-major, class-minor) for the final NMS; `sizes` are the unpadded
    /// `(height, width)` for clipping.
    ///
    /// # Errors
    /// As [`RoiHeads::run`].
    pub fn candidates(
        &self,
        feats: &[Tensor],
        proposals: &Proposals,
        sizes: &[(i64, i64)],
    ) -> Result<Tensor, tch::TchError> {
        let device = proposals.boxes.device();
        let (n, r) = (proposals.valid.size()[0], proposals.valid.size()[1]);
        let image = Tensor::arange(n, (Kind::Float, device)).view([n, 1, 1]).expand([n, r, 1], false);
        let rois = Tensor::cat(&[image, proposals.boxes.to_kind(Kind::Float)], 2).reshape([-1, 5]);
        let (logits, deltas) = self.run(feats, &rois, false)?;
        let _p = phase::enter("postprocess", device);
        let k = self.classes;
        let k1 = k + 1;
        let probs = logits.softmax(-1, Kind::Float).view([n, r, k1]).narrow(2, 1, k).reshape([n, r * k]);
        let boxes = self.coder.decode(&deltas, &rois.narrow(1, 1, 4)).view([n, r * k1, 4]);
        let boxes =
            clip_each(&boxes, &sizes_tensor(sizes, device)).view([n, r, k1, 4]).narrow(2, 1, k).reshape([n, r * k, 4]);
        let labels = Tensor::arange(k, (Kind::Float, device)).repeat([n, r]);
        let valid = proposals
            .valid
            .unsqueeze(2)
            .expand([n, r, k], false)
            .reshape([n, r * k])
            .logical_and(&probs.gt(self.cfg.score_threshold))
            .logical_and(&strictly_nonempty(&boxes));
        Ok(Tensor::cat(&[boxes, probs.unsqueeze(2), labels.unsqueeze(2), valid.to_kind(Kind::Float).unsqueeze(2)], 2))
    }

    /// Detections per image; `sizes` are the unpadded `(height, width)` for clipping. The
    /// flag returned beside is `proposals.exact` as read with the detections.
    ///
    /// # Errors
    /// As [`RoiHeads::run`], and a libtorch error from the read.
    pub fn detect(
        &self,
        feats: &[Tensor],
        proposals: &Proposals,
        sizes: &[(i64, i64)],
    ) -> Result<(Vec<Detections>, bool), tch::TchError> {
        let packed = self.candidates(feats, proposals, sizes)?;
        let (dets, extra) =
            final_detections(&packed, Some(&proposals.exact), self.cfg.nms_threshold, self.cfg.detections_per_image)?;
        Ok((dets, extra.first().is_some_and(|&f| f > 0.5)))
    }
}

impl RoiSample {
    /// The sample without its padding slots (one host read).
    fn compacted(self) -> Result<RoiSample, tch::TchError> {
        let keep = self.labels.ne(IGNORE);
        let idx = true_indices(&keep, "detect.roi_heads.sample")?;
        let device = self.rois.device();
        Ok(RoiSample {
            rois: self.rois.index_select(0, &idx),
            labels: self.labels.index_select(0, &idx),
            positive: self.positive.index_select(0, &idx),
            regression_targets: self.regression_targets.index_select(0, &idx),
            count: self.count,
            exact: Tensor::ones([], (Kind::Bool, device)),
        })
    }
}

/// Indices `[K]` (i64, on `mask`'s device) of the true entries of a `[R]` bool mask: one host
/// read (host kernels only) and one upload.
fn true_indices(mask: &Tensor, site: &'static str) -> Result<Tensor, tch::TchError> {
    let v: Vec<u8> = host::read_for_host_kernel(&mask.to_kind(Kind::Uint8), site)?;
    let idx: Vec<i64> = v.iter().enumerate().filter(|&(_, &b)| b != 0).map(|(i, _)| i as i64).collect();
    Ok(host::upload(&idx, &[idx.len() as i64], mask.device(), site))
}
