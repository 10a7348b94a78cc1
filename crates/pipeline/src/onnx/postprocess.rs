//! Decoding, clipping and NMS inside the graph (`detnas export --onnx-nms`), as
//! `crates/detect` computes them: RetinaNet's candidates (`retinanet.rs`), the RPN's proposals
//! (`rpn.rs`), the box head's candidates (`roi_heads.rs`) and the final class-wise NMS
//! (`nms.rs`), with ONNX `NonMaxSuppression` and `RoiAlign`.
//!
//! Extra input `image_sizes` `[N, 2]` (float): each image's `(height, width)` after resizing,
//! before padding (boxes are clipped to it). Extra outputs, in the layout of TensorRT's
//! `EfficientNMS` plugin: `num_detections` `[N]` (int64), `detection_boxes` `[N, D, 4]`
//! (`x1, y1, x2, y2`, network-input pixels), `detection_scores` `[N, D]` and
//! `detection_classes` `[N, D]` (int64 labels, `0..K`), by descending score; the rows past
//! `num_detections` are zero with class −1. `D` is at most the detector's
//! `detections_per_image`.

use super::{FLOAT, Graph, INT64, ValueInfo, float, int, string, typed_info};
use crate::PipelineError;
use detnas_detect::BoxCoder;
use detnas_detect::anchors::AnchorGenerator;
use detnas_detect::rcnn::FasterRcnnConfig;
use detnas_detect::retinanet::RetinaNetConfig;
use tch::{Kind, Tensor};

/// The graph input of the images' sizes.
pub(super) const IMAGE_SIZES: &str = "image_sizes";

/// The graph input `image_sizes` (module docs).
pub(super) fn sizes_input() -> ValueInfo {
    typed_info(IMAGE_SIZES, FLOAT, &[Err("batch"), Ok(2)])
}

/// The graph's detection outputs (module docs).
fn detection_outputs() -> Vec<ValueInfo> {
    vec![
        typed_info("num_detections", INT64, &[Err("batch")]),
        typed_info("detection_boxes", FLOAT, &[Err("batch"), Err("detections"), Ok(4)]),
        typed_info("detection_scores", FLOAT, &[Err("batch"), Err("detections")]),
        typed_info("detection_classes", INT64, &[Err("batch"), Err("detections")]),
    ]
}

/// The coordinates of boxes `[..., 4]`, each `[..., 1]`.
struct Coords {
    x1: String,
    y1: String,
    x2: String,
    y2: String,
}

impl Graph<'_> {
    fn i64s(&mut self, v: &[i64]) -> String {
        self.constant(&Tensor::from_slice(v))
    }

    /// A 0-d constant.
    fn scalar(&mut self, v: f32) -> String {
        self.constant(&Tensor::from(v))
    }

    fn scalar_i64(&mut self, v: i64) -> String {
        self.constant(&Tensor::from(v))
    }

    fn unsqueeze(&mut self, x: &str, axis: i64) -> String {
        let a = self.i64s(&[axis]);
        self.op("Unsqueeze", &[x, &a], vec![])
    }

    fn reshape(&mut self, x: &str, shape: &str) -> String {
        self.op("Reshape", &[x, shape], vec![])
    }

    fn reshape_to(&mut self, x: &str, shape: &[i64]) -> String {
        let s = self.i64s(shape);
        self.reshape(x, &s)
    }

    /// Dimension `axis` of `x`, `[1]` int64.
    fn dim(&mut self, x: &str, axis: i64) -> String {
        self.op("Shape", &[x], vec![int("start", axis), int("end", axis + 1)])
    }

    /// `min(dim axis of x, cap)`, `[1]` int64: the `k` of a TopK.
    fn capped(&mut self, x: &str, axis: i64, cap: i64) -> String {
        let d = self.dim(x, axis);
        let c = self.i64s(&[cap]);
        self.op("Min", &[&d, &c], vec![])
    }

    /// The `k` largest along axis 1, by descending value: `(values, indices)`.
    fn topk(&mut self, x: &str, k: &str) -> (String, String) {
        let mut o = self.op_outputs("TopK", &[x, k], vec![int("axis", 1), int("largest", 1), int("sorted", 1)], 2);
        let idx = o.pop().unwrap_or_default();
        (o.pop().unwrap_or_default(), idx)
    }

    /// Rows `idx` `[N, M]` of each image's `x` `[N, R, C]` → `[N, M, C]`.
    fn gather_rows(&mut self, x: &str, idx: &str) -> String {
        let i = self.unsqueeze(idx, 2);
        self.op("GatherND", &[x, &i], vec![int("batch_dims", 1)])
    }

    /// `0, 1, …, n − 1` for `n` a `[1]` int64.
    fn range(&mut self, n: &str) -> String {
        let n = self.op("Squeeze", &[n], vec![]);
        let (zero, one) = (self.scalar_i64(0), self.scalar_i64(1));
        self.op("Range", &[&zero, &n, &one], vec![])
    }

    fn concat(&mut self, xs: &[&str], axis: i64) -> String {
        self.op("Concat", xs, vec![int("axis", axis)])
    }

    fn split4(&mut self, b: &str) -> Coords {
        let mut o = self.op_outputs("Split", &[b], vec![int("axis", -1)], 4);
        let y2 = o.pop().unwrap_or_default();
        let x2 = o.pop().unwrap_or_default();
        let y1 = o.pop().unwrap_or_default();
        Coords { x1: o.pop().unwrap_or_default(), y1, x2, y2 }
    }

    fn join(&mut self, c: &Coords) -> String {
        self.concat(&[&c.x1, &c.y1, &c.x2, &c.y2], -1)
    }

    fn bin(&mut self, op: &str, a: &str, b: &str) -> String {
        self.op(op, &[a, b], vec![])
    }

    /// Anchors `[H·W·A, 4]` of `generator`'s level `l` on feature map `feat` `[N, C, H, W]`:
    /// base anchor `a` centred at `(x·s, y·s)`, location-major (`detnas_detect::anchors`).
    fn anchors(&mut self, feat: &str, generator: &AnchorGenerator, l: usize) -> String {
        let base = self.constant(&generator.base(l).unsqueeze(0));
        let stride = self.scalar(generator.strides[l] as f32);
        let axis = |g: &mut Self, a: i64| {
            let n = g.dim(feat, a);
            let r = g.range(&n);
            let r = g.op("Cast", &[&r], vec![int("to", i64::from(FLOAT))]);
            (n, g.bin("Mul", &r, &stride))
        };
        let (h, ys) = axis(self, 2);
        let (w, xs) = axis(self, 3);
        let hw = self.concat(&[&h, &w], 0);
        let ys = self.unsqueeze(&ys, 1);
        let xs = self.unsqueeze(&xs, 0);
        let ys = self.bin("Expand", &ys, &hw);
        let xs = self.bin("Expand", &xs, &hw);
        let y = self.reshape_to(&ys, &[-1, 1, 1]);
        let x = self.reshape_to(&xs, &[-1, 1, 1]);
        let shifts = self.concat(&[&x, &y, &x, &y], 2);
        let a = self.bin("Add", &shifts, &base);
        self.reshape_to(&a, &[-1, 4])
    }

    /// `coder`'s decoding (`BoxCoder::decode`) of deltas `[..., 4]` against references `[..., 4]`
    /// that broadcast to them.
    fn decode(&mut self, deltas: &str, refs: &str, coder: &BoxCoder) -> Coords {
        let r = self.split4(refs);
        let d = self.split4(deltas);
        let half = self.scalar(0.5);
        let w = self.bin("Sub", &r.x2, &r.x1);
        let h = self.bin("Sub", &r.y2, &r.y1);
        let t = self.bin("Mul", &w, &half);
        let cx = self.bin("Add", &r.x1, &t);
        let t = self.bin("Mul", &h, &half);
        let cy = self.bin("Add", &r.y1, &t);
        let [wx, wy, ww, wh] = coder.weights.map(|v| self.scalar(v as f32));
        let clip = self.scalar(coder.clip as f32);
        let dx = self.bin("Div", &d.x1, &wx);
        let dy = self.bin("Div", &d.y1, &wy);
        let dw = self.bin("Div", &d.x2, &ww);
        let dw = self.bin("Min", &dw, &clip);
        let dh = self.bin("Div", &d.y2, &wh);
        let dh = self.bin("Min", &dh, &clip);
        let t = self.bin("Mul", &dx, &w);
        let pcx = self.bin("Add", &t, &cx);
        let t = self.bin("Mul", &dy, &h);
        let pcy = self.bin("Add", &t, &cy);
        let e = self.op("Exp", &[&dw], vec![]);
        let pw = self.bin("Mul", &e, &w);
        let e = self.op("Exp", &[&dh], vec![]);
        let ph = self.bin("Mul", &e, &h);
        let hw = self.bin("Mul", &pw, &half);
        let hh = self.bin("Mul", &ph, &half);
        Coords {
            x1: self.bin("Sub", &pcx, &hw),
            y1: self.bin("Sub", &pcy, &hh),
            x2: self.bin("Add", &pcx, &hw),
            y2: self.bin("Add", &pcy, &hh),
        }
    }

    /// Boxes clipped to `[0, w] × [0, h]` (`boxes::clip_each`); `(h, w)` broadcast to them.
    fn clip(&mut self, c: Coords, (h, w): (&str, &str)) -> Coords {
        let zero = self.scalar(0.0);
        let one = |g: &mut Self, v: &str, max: &str| {
            let v = g.bin("Max", v, &zero);
            g.bin("Min", &v, max)
        };
        Coords { x1: one(self, &c.x1, w), y1: one(self, &c.y1, h), x2: one(self, &c.x2, w), y2: one(self, &c.y2, h) }
    }

    /// Whether each box is wider and taller than `min` (`strict`, `boxes::strictly_nonempty`)
    /// or at least `min` (`boxes::nonempty_mask`): bool `[...]`, the last axis squeezed.
    fn nonempty(&mut self, c: &Coords, min: f64, strict: bool) -> String {
        let m = self.scalar(min as f32);
        let op = if strict { "Greater" } else { "GreaterOrEqual" };
        let w = self.bin("Sub", &c.x2, &c.x1);
        let h = self.bin("Sub", &c.y2, &c.y1);
        let a = self.bin(op, &w, &m);
        let b = self.bin(op, &h, &m);
        let ok = self.bin("And", &a, &b);
        let axis = self.i64s(&[-1]);
        self.op("Squeeze", &[&ok, &axis], vec![])
    }

    /// Per image `(height, width)` from `image_sizes`, each `[N, 1, 1]`.
    fn image_sizes(&mut self) -> (String, String) {
        let mut o = self.op_outputs("Split", &[IMAGE_SIZES], vec![int("axis", 1)], 2);
        let w = o.pop().unwrap_or_default();
        let h = o.pop().unwrap_or_default();
        (self.unsqueeze(&h, 2), self.unsqueeze(&w, 2))
    }

    /// Bool `[N, M]`: which of `scores` `[N, M]` NMS output `selected` `[S, 3]` (batch, class,
    /// box) holds (each box at most once).
    fn selected_mask(&mut self, selected: &str, scores: &str) -> String {
        let cols = self.i64s(&[0, 2]);
        let at = self.op("Gather", &[selected, &cols], vec![int("axis", 1)]);
        let shape = self.op("Shape", &[scores], vec![]);
        let zero = self.scalar(0.0);
        let zeros = self.bin("Expand", &zero, &shape);
        let s = self.dim(selected, 0);
        let one = self.scalar(1.0);
        let ones = self.bin("Expand", &one, &s);
        let marked = self.op("ScatterND", &[&zeros, &at, &ones], vec![]);
        let half = self.scalar(0.5);
        self.bin("Greater", &marked, &half)
    }

    /// ONNX NMS of `boxes` `[N, M, 4]` under `scores` `[N, C, M]` at IoU `iou` (a box is
    /// dropped when its IoU with a kept box exceeds it, torchvision's rule), no cap per class,
    /// and only scores above `score_threshold` when given.
    fn nms(&mut self, boxes: &str, scores: &str, iou: f64, score_threshold: Option<f32>) -> String {
        let cap = self.dim(boxes, 1);
        let iou = self.constant(&Tensor::from_slice(&[iou as f32]));
        let mut inputs = vec![boxes.to_string(), scores.to_string(), cap, iou];
        if let Some(t) = score_threshold {
            inputs.push(self.constant(&Tensor::from_slice(&[t])));
        }
        let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        self.op("NonMaxSuppression", &refs, vec![int("center_point_box", 0)])
    }

    /// The detection outputs (module docs) from candidates `boxes` `[N, M, 4]`, `scores`
    /// `[N, M]` in `(0, 1)`, `labels` `[N, M]` (int64, `0..classes`) and `valid` `[N, M]`:
    /// class-wise NMS at IoU `iou`, then the `max` best per image (`nms::final_detections`).
    fn detections(
        &mut self,
        (boxes, scores, labels, valid): (&str, &str, &str, &str),
        classes: i64,
        iou: f64,
        max: i64,
    ) {
        // Scores [N, K, M]: a candidate's score under its own class, −1 elsewhere and when
        // invalid; the NMS keeps only scores above 0.
        let ids = self.constant(&Tensor::arange(classes, (Kind::Int64, tch::Device::Cpu)).view([1, -1, 1]));
        let l = self.unsqueeze(labels, 1);
        let own = self.bin("Equal", &l, &ids);
        let v = self.unsqueeze(valid, 1);
        let own = self.bin("And", &own, &v);
        let s = self.unsqueeze(scores, 1);
        let neg = self.scalar(-1.0);
        let per_class = self.op("Where", &[&own, &s, &neg], vec![]);
        let selected = self.nms(boxes, &per_class, iou, Some(0.0));
        let kept = self.selected_mask(&selected, scores);
        let ranked = self.op("Where", &[&kept, scores, &neg], vec![]);
        let k = self.capped(&ranked, 1, max);
        let (top, idx) = self.topk(&ranked, &k);
        let zero = self.scalar(0.0);
        let ok = self.bin("Greater", &top, &zero);
        let count = self.op("Cast", &[&ok], vec![int("to", i64::from(INT64))]);
        let axis = self.i64s(&[1]);
        self.op_named("ReduceSum", &[&count, &axis], vec![int("keepdims", 0)], Some("num_detections"));
        let b = self.gather_rows(boxes, &idx);
        let ok3 = self.unsqueeze(&ok, 2);
        self.op_named("Where", &[&ok3, &b, &zero], vec![], Some("detection_boxes"));
        self.op_named("Where", &[&ok, &top, &zero], vec![], Some("detection_scores"));
        let lab = self.op("GatherElements", &[labels, &idx], vec![int("axis", 1)]);
        let none = self.scalar_i64(-1);
        self.op_named("Where", &[&ok, &lab, &none], vec![], Some("detection_classes"));
    }
}

/// RetinaNet's detections in the graph (`retinanet.rs` `candidates`): per level the
/// `pre_nms_top_n` best (anchor, class) scores, decoded against the level's anchors, clipped,
/// those above `score_threshold` and not empty; then [`Graph::detections`]. `levels` are the
/// pyramid outputs P3–P7 (for their sizes); the head outputs are the graph's `cls.{l}` and
/// `reg.{l}`. Returns the extra outputs.
pub(super) fn retinanet(g: &mut Graph, r: &RetinaNetConfig, classes: i64, levels: &[String]) -> Vec<ValueInfo> {
    let strides: Vec<i64> = (0..levels.len() as u32).map(|l| 1i64 << (l + 3)).collect();
    let generator = r.anchors(&strides);
    let coder = BoxCoder::new([1.0; 4]);
    let size = g.image_sizes();
    let k = g.scalar_i64(classes);
    let (mut boxes, mut scores, mut labels, mut valid) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (l, feat) in levels.iter().enumerate() {
        let anchors = g.anchors(feat, &generator, l);
        let s = g.op("Sigmoid", &[&format!("cls.{l}")], vec![]);
        let s = g.reshape_to(&s, &[0, -1]);
        let top = g.capped(&s, 1, r.pre_nms_top_n);
        let (score, flat) = g.topk(&s, &top);
        let anchor = g.bin("Div", &flat, &k);
        let label = g.bin("Mod", &flat, &k);
        let deltas = g.gather_rows(&format!("reg.{l}"), &anchor);
        let refs = g.op("Gather", &[&anchors, &anchor], vec![int("axis", 0)]);
        let d = g.decode(&deltas, &refs, &coder);
        let c = g.clip(d, (&size.0, &size.1));
        let nonempty = g.nonempty(&c, 1e-3, true);
        let thr = g.scalar(r.score_threshold as f32);
        let above = g.bin("Greater", &score, &thr);
        valid.push(g.bin("And", &above, &nonempty));
        boxes.push(g.join(&c));
        scores.push(score);
        labels.push(label);
    }
    let mut cat = |xs: &[String]| {
        let refs: Vec<&str> = xs.iter().map(String::as_str).collect();
        g.concat(&refs, 1)
    };
    let all = (cat(&boxes), cat(&scores), cat(&labels), cat(&valid));
    g.detections((&all.0, &all.1, &all.2, &all.3), classes, r.nms_threshold, r.detections_per_image);
    detection_outputs()
}

/// FPN Faster R-CNN's detections in the graph: the RPN's proposals (`rpn.rs` `proposals`: per
/// level the `pre_nms_top_n_test` best objectness logits, decoded, clipped, at least
/// `min_size`, NMS per level; the `post_nms_top_n_test` best per image), RoIAlign on the level
/// each RoI maps to (`roi_align.rs` `map_levels`, aligned = false), the box head
/// (`box_head(graph, pooled)` → `(logits, deltas)`), then the box head's candidates
/// (`roi_heads.rs` `candidates`) and [`Graph::detections`]. `levels` are P2–P6; the RPN's
/// outputs are the graph's `rpn_obj.{l}` and `rpn_reg.{l}`. Returns the extra outputs.
///
/// # Errors
/// As `box_head`.
pub(super) fn faster_rcnn(
    g: &mut Graph,
    f: &FasterRcnnConfig,
    classes: i64,
    levels: &[String],
    box_head: impl FnOnce(&mut Graph, &str) -> Result<(String, String), PipelineError>,
) -> Result<Vec<ValueInfo>, PipelineError> {
    let (rpn, roi) = (&f.rpn, &f.roi);
    let strides: Vec<i64> = (0..levels.len() as u32).map(|l| 1i64 << (l + 2)).collect();
    let generator = AnchorGenerator {
        sizes: rpn.anchor_sizes.iter().map(|&s| vec![s]).collect(),
        ratios: rpn.aspect_ratios.clone(),
        strides: strides.clone(),
    };
    let size = g.image_sizes();
    let (mut boxes, mut ranked) = (Vec::new(), Vec::new());
    let neg_inf = g.scalar(f32::NEG_INFINITY);
    let zero = g.scalar(0.0);
    for (l, feat) in levels.iter().enumerate() {
        let anchors = g.anchors(feat, &generator, l);
        let obj = format!("rpn_obj.{l}");
        let top = g.capped(&obj, 1, rpn.pre_nms_top_n_test);
        let (score, idx) = g.topk(&obj, &top);
        let deltas = g.gather_rows(&format!("rpn_reg.{l}"), &idx);
        let refs = g.op("Gather", &[&anchors, &idx], vec![int("axis", 0)]);
        let d = g.decode(&deltas, &refs, &BoxCoder::new([1.0; 4]));
        let c = g.clip(d, (&size.0, &size.1));
        let valid = g.nonempty(&c, rpn.min_size.max(1e-3), false);
        let b = g.join(&c);
        // Invalid boxes take part as empty boxes, which suppress nothing, and are dropped after.
        let v3 = g.unsqueeze(&valid, 2);
        let b0 = g.op("Where", &[&v3, &b, &zero], vec![]);
        let s = g.unsqueeze(&score, 1);
        let selected = g.nms(&b0, &s, rpn.nms_threshold, None);
        let kept = g.selected_mask(&selected, &score);
        let kept = g.bin("And", &kept, &valid);
        ranked.push(g.op("Where", &[&kept, &score, &neg_inf], vec![]));
        boxes.push(b);
    }
    let b: Vec<&str> = boxes.iter().map(String::as_str).collect();
    let all = g.concat(&b, 1);
    let r: Vec<&str> = ranked.iter().map(String::as_str).collect();
    let ranked = g.concat(&r, 1);
    let post = g.capped(&ranked, 1, rpn.post_nms_top_n_test);
    let (top, idx) = g.topk(&ranked, &post);
    let proposals = g.gather_rows(&all, &idx);
    let proposal_ok = g.bin("Greater", &top, &neg_inf);

    // RoIAlign, each RoI on its level of P2–P5.
    let n = g.dim(&proposals, 0);
    let r = g.dim(&proposals, 1);
    let rois = g.reshape_to(&proposals, &[-1, 4]);
    let image = g.range(&n);
    let image = g.unsqueeze(&image, 1);
    let nr = g.concat(&[&n, &r], 0);
    let image = g.bin("Expand", &image, &nr);
    let image = g.reshape_to(&image, &[-1]);
    let c = g.split4(&rois);
    let w = g.bin("Sub", &c.x2, &c.x1);
    let w = g.bin("Max", &w, &zero);
    let h = g.bin("Sub", &c.y2, &c.y1);
    let h = g.bin("Max", &h, &zero);
    let area = g.bin("Mul", &w, &h);
    let side = g.op("Sqrt", &[&area], vec![]);
    let canonical = g.scalar(224.0);
    let t = g.bin("Div", &side, &canonical);
    let eps = g.scalar(1e-6);
    let t = g.bin("Add", &t, &eps);
    let t = g.op("Log", &[&t], vec![]);
    let ln2 = g.scalar(std::f32::consts::LN_2);
    let t = g.bin("Div", &t, &ln2);
    let k0 = g.scalar(4.0);
    let t = g.bin("Add", &t, &k0);
    let t = g.op("Floor", &[&t], vec![]);
    let (lo, hi) = (g.scalar(2.0), g.scalar(5.0));
    let t = g.op("Clip", &[&t, &lo, &hi], vec![]);
    let t = g.op("Cast", &[&t], vec![int("to", i64::from(INT64))]);
    let level = g.reshape_to(&t, &[-1]);
    let p = roi.pooler_resolution;
    let channels = g.dim(&levels[0], 1);
    let rest = g.i64s(&[p, p]);
    let count = g.dim(&rois, 0);
    let shape = g.concat(&[&count, &channels, &rest], 0);
    let mut pooled = g.bin("Expand", &zero, &shape);
    for (l, feat) in levels.iter().take(4).enumerate() {
        let at = g.scalar_i64(l as i64 + 2);
        let here = g.bin("Equal", &level, &at);
        let idx = g.op("NonZero", &[&here], vec![]);
        let idx = g.op("Transpose", &[&idx], vec![]);
        let rl = g.op("GatherND", &[&rois, &idx], vec![]);
        let bl = g.op("GatherND", &[&image, &idx], vec![]);
        let a = g.op(
            "RoiAlign",
            &[feat, &rl, &bl],
            vec![
                string("mode", "avg"),
                int("output_height", p),
                int("output_width", p),
                int("sampling_ratio", roi.sampling_ratio.max(1)),
                float("spatial_scale", 1.0 / strides[l] as f32),
                string("coordinate_transformation_mode", "output_half_pixel"),
            ],
        );
        pooled = g.op("ScatterND", &[&pooled, &idx, &a], vec![]);
    }
    let (logits, deltas) = box_head(g, &pooled)?;

    // The box head's candidates: class k ≥ 1's box and probability of each proposal.
    let k1 = classes + 1;
    let probs = g.op("Softmax", &[&logits], vec![int("axis", -1)]);
    let k1c = g.i64s(&[k1]);
    let nrk = g.concat(&[&n, &r, &k1c], 0);
    let probs = g.reshape(&probs, &nrk);
    let (s1, e1, a2) = (g.i64s(&[1]), g.i64s(&[k1]), g.i64s(&[2]));
    let probs = g.op("Slice", &[&probs, &s1, &e1, &a2], vec![]);
    let probs = g.reshape_to(&probs, &[0, -1]);
    let d = g.reshape_to(&deltas, &[-1, k1, 4]);
    let refs = g.unsqueeze(&rois, 1);
    let coder = BoxCoder::new(roi.bbox_weights);
    let dc = g.decode(&d, &refs, &coder);
    let b = g.join(&dc);
    let per_image = g.i64s(&[-1, 4]);
    let shape = g.concat(&[&n, &per_image], 0);
    let b = g.reshape(&b, &shape);
    let c = g.split4(&b);
    let c = g.clip(c, (&size.0, &size.1));
    let b = g.join(&c);
    let k4 = g.i64s(&[k1, 4]);
    let shape = g.concat(&[&n, &r, &k4], 0);
    let b = g.reshape(&b, &shape);
    let b = g.op("Slice", &[&b, &s1, &e1, &a2], vec![]);
    let b = g.reshape_to(&b, &[0, -1, 4]);
    let c = g.split4(&b);
    let nonempty = g.nonempty(&c, 1e-3, true);
    let rk = g.dim(&probs, 1);
    let labels = g.range(&rk);
    let k = g.scalar_i64(classes);
    let labels = g.bin("Mod", &labels, &k);
    let labels = g.unsqueeze(&labels, 0);
    let probs_shape = g.op("Shape", &[&probs], vec![]);
    let labels = g.bin("Expand", &labels, &probs_shape);
    let kc = g.i64s(&[classes]);
    let nrk = g.concat(&[&n, &r, &kc], 0);
    let ok = g.unsqueeze(&proposal_ok, 2);
    let ok = g.bin("Expand", &ok, &nrk);
    let ok = g.reshape_to(&ok, &[0, -1]);
    let thr = g.scalar(roi.score_threshold as f32);
    let above = g.bin("Greater", &probs, &thr);
    let valid = g.bin("And", &ok, &above);
    let valid = g.bin("And", &valid, &nonempty);
    g.detections((&b, &probs, &labels, &valid), classes, roi.nms_threshold, roi.detections_per_image);
    Ok(detection_outputs())
}
