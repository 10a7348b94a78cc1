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

use crate::anchors::{AnchorGenerator, AnchorGrids};
use crate::boxes::{BoxCoder, clip_each, pairwise_iou, sizes_tensor, strictly_nonempty};
use crate::layers::{bn_if, conv_unit, predictor};
use crate::losses::{sigmoid_focal_loss_elementwise, smooth_l1_elementwise};
use crate::matcher::Matcher;
use crate::nms::final_detections;
use crate::target::{Detections, Targets};
use detnas_device::phase;
use detnas_nn::LossTerm;
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

/// RetinaNet's class and box subnets, shared by the pyramid levels.
#[derive(Debug)]
pub struct RetinaHead {
    cfg: RetinaNetConfig,
    classes: i64,
    cls_tower: Vec<ConvBn>,
    box_tower: Vec<ConvBn>,
    cls_logits: nn::Conv2D,
    bbox_pred: nn::Conv2D,
    anchors: AnchorGrids,
    coder: BoxCoder,
}

/// Head outputs per level: `cls[l]` `[N, H_l·W_l·A, K]` logits, `reg[l]` `[N, H_l·W_l·A, 4]`
/// deltas, in the anchor grid's order.
#[derive(Debug)]
pub struct RetinaOutputs {
    /// Class logits per level `[N, A·K, H, W]`.
    pub cls: Vec<Tensor>,
    /// Box deltas per level `[N, A·4, H, W]`.
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
            anchors: AnchorGrids::new(cfg.anchors(strides)),
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

    /// The head's outputs on pyramid `feats` (P3..P7, `[N, C, H_l, W_l]`), in the precision of
    /// the towers (fp32 or bf16 under autocast).
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

    /// Anchors `[H_l·W_l·A, 4]` of each level of `feats` (kept on the device).
    pub fn level_anchors(&self, feats: &[Tensor]) -> Vec<Tensor> {
        let hw: Vec<(i64, i64)> = feats.iter().map(|f| (f.size()[2], f.size()[3])).collect();
        phase::time("anchors", feats[0].device(), || self.anchors.grids(&hw, feats[0].device()))
    }

    /// Training losses `(classification, box regression)` for pyramid `feats` (P3..P7).
    pub fn losses(&self, feats: &[Tensor], targets: &Targets) -> (LossTerm, LossTerm) {
        let out = phase::time("head", feats[0].device(), || self.run(feats, true));
        let anchors = self.level_anchors(feats);
        self.loss(&out, &anchors, targets)
    }

    /// The losses `(classification, box regression)` of head outputs against `targets` (crowd
    /// regions left out), with the normalisers of the module documentation: `num_pos + N` and
    /// `num_pos`. Batched over the images, without host round-trips: the focal loss is summed
    /// over every anchor not between the thresholds, the box loss over the positive ones.
    ///
    /// # Shapes
    /// `anchors[l]` `[H_l·W_l·A, 4]`, matching `out`'s levels.
    pub fn loss(&self, out: &RetinaOutputs, anchors: &[Tensor], targets: &Targets) -> (LossTerm, LossTerm) {
        let device = anchors[0].device();
        let anchors = Tensor::cat(anchors, 0);
        let cls = Tensor::cat(&out.cls, 1).to_kind(Kind::Float);
        let reg = Tensor::cat(&out.reg, 1).to_kind(Kind::Float);
        let n = targets.len() as i64;
        let a = anchors.size()[0];
        let matcher = Matcher { high: self.cfg.fg_iou, low: self.cfg.bg_iou, allow_low_quality: true };
        let (gt_boxes, onehot, pos, valid) = phase::time("matching", device, || {
            tch::no_grad(|| {
                let m = matcher.matches(&pairwise_iou(&targets.boxes, &anchors.unsqueeze(0)), &targets.valid);
                let valid = m.ne(crate::matcher::BETWEEN);
                let pos = m.ge(0);
                let matched = m.clamp_min(0);
                let g = targets.max_boxes();
                let (labels, gt_boxes) = if g > 0 {
                    let labels = targets.labels.gather(1, &matched, false);
                    let boxes = targets.boxes.gather(1, &matched.unsqueeze(2).expand([n, a, 4], false), false);
                    (labels, boxes)
                } else {
                    (Tensor::zeros([n, a], (Kind::Int64, device)), Tensor::zeros([n, a, 4], (Kind::Float, device)))
                };
                // (`one_hot` would check its input's range with host reads.)
                let classes = Tensor::arange(self.classes, (Kind::Int64, device));
                let onehot =
                    labels.unsqueeze(2).eq_tensor(&classes).logical_and(&pos.unsqueeze(2)).to_kind(Kind::Float);
                // Non-positive anchors regress onto themselves: finite targets, masked out below.
                let gt_boxes = gt_boxes.where_self(&pos.unsqueeze(2), &anchors.unsqueeze(0));
                (gt_boxes, onehot, pos, valid)
            })
        });
        let _p = phase::enter("losses", device);
        let focal = sigmoid_focal_loss_elementwise(&cls, &onehot, self.cfg.focal_alpha, self.cfg.focal_gamma);
        let cls_sum = (focal * valid.unsqueeze(2).to_kind(Kind::Float)).sum(Kind::Float);
        let target = tch::no_grad(|| self.coder.encode(&anchors.unsqueeze(0).expand([n, a, 4], false), &gt_boxes));
        let l1 = smooth_l1_elementwise(&reg, &target, self.cfg.smooth_l1_beta);
        let box_sum = l1.where_self(&pos.unsqueeze(2), &Tensor::zeros([], (Kind::Float, device))).sum(Kind::Float);
        let num_pos = pos.sum(Kind::Double);
        (
            LossTerm { name: "cls", sum: cls_sum, count: &num_pos + n as f64 },
            LossTerm { name: "box", sum: box_sum, count: num_pos },
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
    pub fn forward_for_bn_stats(&self, feats: &[Tensor]) {
        for (l, f) in feats.iter().enumerate() {
            let _ = self.towers(f, l, true);
        }
    }

    /// Detections per image; `sizes` are the unpadded `(height, width)` for clipping. Per
    /// level the `pre_nms_top_n` best scores of each image above the threshold, decoded and
    /// clipped on the device (boxes clipped to zero width or height dropped, as the box head
    /// does); then one host read of the batch's candidates and class-wise NMS on the host.
    ///
    /// # Errors
    /// A libtorch error from the read.
    pub fn detect(&self, feats: &[Tensor], sizes: &[(i64, i64)]) -> Result<Vec<Detections>, tch::TchError> {
        let device = feats[0].device();
        let out = phase::time("head", device, || self.run(feats, false));
        let anchors = self.level_anchors(feats);
        let _p = phase::enter("postprocess", device);
        let packed = self.candidates(&out, &anchors, sizes)?;
        let (dets, _) = final_detections(&packed, None, self.cfg.nms_threshold, self.cfg.detections_per_image)?;
        Ok(dets)
    }

    /// The candidates of each image `[N, M, 7]`: `(x1, y1, x2, y2, score, label, valid)`, level
    /// by level, by descending score within a level. With host kernels (reads are free) a level
    /// keeps only as many as its fullest image has above the threshold.
    fn candidates(
        &self,
        out: &RetinaOutputs,
        anchors: &[Tensor],
        sizes: &[(i64, i64)],
    ) -> Result<Tensor, tch::TchError> {
        let k = self.classes;
        let n = sizes.len() as i64;
        let size_t = sizes_tensor(sizes, anchors[0].device());
        let mut levels = Vec::with_capacity(anchors.len());
        for (l, level_anchors) in anchors.iter().enumerate() {
            let s = out.cls[l].to_kind(Kind::Float).sigmoid().reshape([n, -1]);
            let mut top = s.size()[1].min(self.cfg.pre_nms_top_n);
            if detnas_device::settings::host_kernels(s.device()) {
                let above = s.gt(self.cfg.score_threshold).sum_dim_intlist(&[1i64][..], false, Kind::Int64);
                let above: Vec<i64> = detnas_device::host::read_for_host_kernel(&above, "detect.retinanet.candidates")?;
                top = top.min(above.into_iter().max().unwrap_or(0));
            }
            if top == 0 {
                continue;
            }
            let (score, flat) = s.topk(top, 1, true, true);
            let anchor_idx = flat.divide_scalar_mode(k, "floor");
            let label = flat.remainder(k);
            let deltas =
                out.reg[l].to_kind(Kind::Float).gather(1, &anchor_idx.unsqueeze(2).expand([n, top, 4], false), false);
            let refs = level_anchors.index_select(0, &anchor_idx.reshape([-1])).view([n, top, 4]);
            let boxes = clip_each(&self.coder.decode(&deltas, &refs), &size_t);
            let valid = score.gt(self.cfg.score_threshold).logical_and(&strictly_nonempty(&boxes));
            levels.push(Tensor::cat(
                &[
                    boxes,
                    score.unsqueeze(2),
                    label.to_kind(Kind::Float).unsqueeze(2),
                    valid.to_kind(Kind::Float).unsqueeze(2),
                ],
                2,
            ));
        }
        if levels.is_empty() {
            return Ok(Tensor::zeros([n, 0, 7], (Kind::Float, anchors[0].device())));
        }
        Ok(Tensor::cat(&levels, 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A box decoded outside the image clips to zero width: it is no candidate, however high
    /// its score (torchvision drops such boxes before NMS).
    #[test]
    fn boxes_clipped_to_nothing_are_dropped_before_nms() {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let head = RetinaHead::new(&vs.root(), &RetinaNetConfig::default(), 8, 2, &[8, 16, 32, 64, 128]);
        // Two anchors, both [10, 10, 30, 30]; anchor 0 scores class 0, anchor 1 class 1.
        let cls = Tensor::from_slice(&[6.0f32, -9.0, -9.0, 8.0]).view([1, 2, 2]);
        // Anchor 1's box moves 100 widths to the right: it clips to x1 = x2 = 64.
        let reg = Tensor::from_slice(&[0.0f32, 0.0, 0.0, 0.0, 100.0, 0.0, 0.0, 0.0]).view([1, 2, 4]);
        let anchors = Tensor::from_slice(&[10.0f32, 10.0, 30.0, 30.0, 10.0, 10.0, 30.0, 30.0]).view([2, 4]);
        let out = RetinaOutputs { cls: vec![cls], reg: vec![reg] };
        let packed = head.candidates(&out, &[anchors], &[(64, 64)]).unwrap();
        let rows: Vec<Vec<f32>> = (0..packed.size()[1])
            .map(|i| Vec::<f32>::try_from(packed.get(0).get(i)).unwrap())
            .filter(|r| r[4] > 0.5)
            .collect();
        assert_eq!(rows.len(), 2, "{rows:?}");
        let clipped = rows.iter().find(|r| r[5] == 1.0).unwrap();
        assert_eq!((clipped[0], clipped[2], clipped[6]), (64.0, 64.0, 0.0), "{clipped:?}");
        let kept = rows.iter().find(|r| r[5] == 0.0).unwrap();
        assert_eq!((&kept[..4], kept[6]), (&[10.0, 10.0, 30.0, 30.0][..], 1.0), "{kept:?}");
        let (dets, _) = final_detections(&packed, None, 0.5, 100).unwrap();
        assert_eq!(dets[0].labels, [0]);
    }
}
