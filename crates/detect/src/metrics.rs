//! Detection metrics: COCO box AP through `hotcoco` (pycocotools-exact), and Pascal VOC AP.

use crate::DetectError;
use hotcoco::params::IouType;
use hotcoco::{COCO, COCOeval};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Names of the 12 COCO summary numbers, in pycocotools' order.
pub const COCO_STAT_NAMES: [&str; 12] =
    ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"];

/// The 12 COCO box summary numbers (pycocotools' `COCOeval.stats`), by name; −1 where
/// undefined (no ground truth in an area range). Serialised as the 12-number array.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CocoStats(pub [f64; 12]);

impl CocoStats {
    /// AP averaged over IoU 0.50:0.95 (the COCO metric; DetNAS's fitness).
    pub fn ap(&self) -> f64 {
        self.0[0]
    }
    /// AP at IoU 0.5 (the VOC-style threshold, all areas).
    pub fn ap50(&self) -> f64 {
        self.0[1]
    }
    /// AP at IoU 0.75.
    pub fn ap75(&self) -> f64 {
        self.0[2]
    }
    /// AP of small objects (area < 32²).
    pub fn ap_small(&self) -> f64 {
        self.0[3]
    }
    /// AP of medium objects (32² ≤ area < 96²).
    pub fn ap_medium(&self) -> f64 {
        self.0[4]
    }
    /// AP of large objects (area ≥ 96²).
    pub fn ap_large(&self) -> f64 {
        self.0[5]
    }
    /// AR with at most 100 detections per image.
    pub fn ar100(&self) -> f64 {
        self.0[8]
    }
    /// `(name, value)` in pycocotools' order ([`COCO_STAT_NAMES`]).
    pub fn named(&self) -> impl Iterator<Item = (&'static str, f64)> + '_ {
        COCO_STAT_NAMES.iter().copied().zip(self.0)
    }
}

/// One detection in COCO results form (original image coordinates, dataset category id).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CocoDetection {
    /// COCO image id.
    pub image_id: u64,
    /// COCO category id.
    pub category_id: u64,
    /// `[x, y, w, h]`.
    pub bbox: [f64; 4],
    /// Confidence.
    pub score: f64,
}

/// Box AP and AR of one category: pycocotools' accumulated `precision[:, :, k, all, 100]` and
/// `recall[:, k, all, 100]` averaged over their defined entries, as detectron2's
/// `COCOEvaluator._derive_coco_results` (`evaluation/coco_evaluation.py`) reads AP; −1 for a
/// category without ground truth.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassScore {
    /// COCO category id.
    pub category_id: u64,
    /// Category name, from the ground truth.
    pub name: String,
    /// AP over IoU 0.50:0.95, all areas, up to 100 detections per image.
    pub ap: f64,
    /// AR with up to 100 detections per image, all areas.
    pub ar100: f64,
}

/// A COCO box evaluation: the 12 summary numbers and each category's AP and AR.
#[derive(Clone, Debug, PartialEq)]
pub struct CocoEvaluation {
    /// pycocotools' `COCOeval.stats`.
    pub stats: CocoStats,
    /// Every category of the ground truth, in its id order.
    pub classes: Vec<ClassScore>,
}

/// The COCO box evaluation of `dt` against `gt`.
///
/// # Errors
/// [`DetectError::Eval`] when a detection cannot be converted, `hotcoco` rejects the results,
/// or the evaluation fails or yields no statistics.
pub fn coco_evaluation(gt: COCO, dt: &[CocoDetection]) -> Result<CocoEvaluation, DetectError> {
    let anns: Vec<hotcoco::Annotation> = dt
        .iter()
        .map(|d| {
            serde_json::from_value(serde_json::json!({
                "image_id": d.image_id, "category_id": d.category_id, "bbox": d.bbox, "score": d.score,
            }))
            .map_err(|e| DetectError::Eval(format!("detection record: {e}")))
        })
        .collect::<Result<_, _>>()?;
    let dt = gt.load_res_anns(anns).map_err(|e| DetectError::Eval(e.to_string()))?;
    run_eval(gt, dt)
}

fn run_eval(gt: COCO, dt: COCO) -> Result<CocoEvaluation, DetectError> {
    let names: std::collections::HashMap<u64, String> =
        gt.dataset.categories.iter().map(|c| (c.id, c.name.clone())).collect();
    let mut ev = COCOeval::new(gt, dt, IouType::Bbox);
    ev.evaluate().map_err(|e| DetectError::Eval(e.to_string()))?;
    ev.accumulate();
    // summarize_lines() computes the stats without printing (summarize() prints them).
    let _ = ev.summarize_lines();
    let s = ev.stats().ok_or_else(|| DetectError::Eval("no statistics were produced".into()))?;
    let mut out = [0.0; 12];
    for (o, v) in out.iter_mut().zip(s) {
        *o = *v;
    }
    let acc = ev.accumulated().ok_or_else(|| DetectError::Eval("nothing was accumulated".into()))?;
    let (a, m, sh) = (ev.params.all_area_idx(), ev.params.max_det_idx(), acc.shape);
    let mean = |v: &mut dyn Iterator<Item = f64>| {
        let (n, s) = v.filter(|&x| x > -1.0).fold((0usize, 0.0), |(n, s), x| (n + 1, s + x));
        if n == 0 { -1.0 } else { s / n as f64 }
    };
    let classes = acc
        .cat_ids
        .iter()
        .enumerate()
        .map(|(k, &id)| ClassScore {
            category_id: id,
            name: names.get(&id).cloned().unwrap_or_default(),
            ap: mean(
                &mut (0..sh.t)
                    .flat_map(|t| (0..sh.r).map(move |r| (t, r)))
                    .map(|(t, r)| acc.precision[acc.precision_idx(t, r, k, a, m)]),
            ),
            ar100: mean(&mut (0..sh.t).map(|t| acc.recall[acc.recall_idx(t, k, a, m)])),
        })
        .collect();
    Ok(CocoEvaluation { stats: CocoStats(out), classes })
}

/// The COCO box evaluation of a results file against a ground-truth file.
///
/// # Errors
/// [`DetectError::Eval`] when either file cannot be read or parsed, or the evaluation fails.
pub fn coco_evaluation_files(gt: &Path, dt: &Path) -> Result<CocoEvaluation, DetectError> {
    let g = COCO::new(gt).map_err(|e| DetectError::Eval(format!("{}: {e}", gt.display())))?;
    // pycocotools refuses results on images the ground truth lacks ("Results do not
    // correspond to current coco set"); so does this (hotcoco would only warn and drop them).
    let text = std::fs::read_to_string(dt).map_err(|e| DetectError::Eval(format!("{}: {e}", dt.display())))?;
    if let Ok(serde_json::Value::Array(results)) = serde_json::from_str::<serde_json::Value>(&text) {
        let known: std::collections::HashSet<u64> = g.dataset.images.iter().map(|i| i.id).collect();
        let mut unknown: Vec<u64> = results
            .iter()
            .filter_map(|r| r.get("image_id").and_then(serde_json::Value::as_u64))
            .filter(|id| !known.contains(id))
            .collect();
        unknown.sort_unstable();
        unknown.dedup();
        if !unknown.is_empty() {
            let shown: Vec<String> = unknown.iter().take(10).map(u64::to_string).collect();
            return Err(DetectError::Eval(format!(
                "{}: results on {} image id{} that {} does not have: {}{} (pycocotools refuses such a file too)",
                dt.display(),
                unknown.len(),
                if unknown.len() == 1 { "" } else { "s" },
                gt.display(),
                shown.join(", "),
                if unknown.len() > 10 { ", …" } else { "" }
            )));
        }
    }
    let d = g.load_res(dt).map_err(|e| DetectError::Eval(format!("{}: {e}", dt.display())))?;
    run_eval(g, d)
}

/// A COCO instances document (hotcoco's type).
pub type GtDataset = hotcoco::Dataset;

/// Ground truth from an in-memory COCO dataset.
pub fn coco_from_dataset(ds: hotcoco::Dataset) -> COCO {
    COCO::from_dataset(ds)
}

/// Pascal VOC average precision of one class from its ranked detections.
///
/// `tp`/`fp` flags are in descending-score order; `npos` counts non-difficult ground truth.
/// `use_07`: the VOC2007 11-point interpolation; else the area under the interpolated
/// precision envelope (VOC2010+).
pub fn voc_ap(tp: &[bool], fp: &[bool], npos: usize, use_07: bool) -> f64 {
    if npos == 0 {
        return f64::NAN;
    }
    let (mut ctp, mut cfp) = (0usize, 0usize);
    let mut rec = Vec::with_capacity(tp.len());
    let mut prec = Vec::with_capacity(tp.len());
    for (&t, &f) in tp.iter().zip(fp) {
        ctp += usize::from(t);
        cfp += usize::from(f);
        rec.push(ctp as f64 / npos as f64);
        prec.push(ctp as f64 / ((ctp + cfp) as f64).max(f64::EPSILON));
    }
    if use_07 {
        (0..=10)
            .map(|i| {
                let t = i as f64 / 10.0;
                rec.iter().zip(&prec).filter(|(r, _)| **r >= t).map(|(_, p)| *p).fold(0.0, f64::max) / 11.0
            })
            .sum()
    } else {
        let mut mrec = vec![0.0];
        mrec.extend(&rec);
        mrec.push(1.0);
        let mut mpre = vec![0.0];
        mpre.extend(&prec);
        mpre.push(0.0);
        for i in (0..mpre.len() - 1).rev() {
            mpre[i] = mpre[i].max(mpre[i + 1]);
        }
        (1..mrec.len()).filter(|&i| mrec[i] != mrec[i - 1]).map(|i| (mrec[i] - mrec[i - 1]) * mpre[i]).sum()
    }
}

/// A ground-truth box of one image for VOC evaluation.
#[derive(Clone, Debug)]
pub struct VocGt {
    /// Image index.
    pub image: usize,
    /// Class index.
    pub class: usize,
    /// `(x1, y1, x2, y2)`.
    pub bbox: [f64; 4],
    /// VOC's `difficult` flag (neither true nor false positive).
    pub difficult: bool,
}

/// A detection for VOC evaluation.
#[derive(Clone, Debug)]
pub struct VocDet {
    /// Image index.
    pub image: usize,
    /// Class index.
    pub class: usize,
    /// `(x1, y1, x2, y2)`, pixels.
    pub bbox: [f64; 4],
    /// Confidence.
    pub score: f64,
}

/// Per-class VOC AP at IoU ≥ `iou` (0.5), difficult boxes ignored (neither TP nor FP),
/// each ground truth matched at most once (later matches are FP), as `voc_eval.py`. Box
/// overlap uses continuous coordinates (no +1). Classes without ground truth give NaN.
pub fn voc_eval(gts: &[VocGt], dets: &[VocDet], classes: usize, iou: f64, use_07: bool) -> Vec<f64> {
    (0..classes)
        .map(|c| {
            let g: Vec<&VocGt> = gts.iter().filter(|g| g.class == c).collect();
            let npos = g.iter().filter(|g| !g.difficult).count();
            let mut d: Vec<&VocDet> = dets.iter().filter(|d| d.class == c).collect();
            d.sort_by(|a, b| b.score.total_cmp(&a.score));
            let mut used = vec![false; g.len()];
            let (mut tp, mut fp) = (Vec::new(), Vec::new());
            for det in d {
                let mut best = (-1.0, usize::MAX);
                for (j, gt) in g.iter().enumerate() {
                    if gt.image == det.image {
                        let o = detnas_data::det::iou(&gt.bbox, &det.bbox);
                        if o > best.0 {
                            best = (o, j);
                        }
                    }
                }
                if best.0 >= iou {
                    if g[best.1].difficult {
                        continue;
                    }
                    if !used[best.1] {
                        used[best.1] = true;
                        tp.push(true);
                        fp.push(false);
                    } else {
                        tp.push(false);
                        fp.push(true);
                    }
                } else {
                    tp.push(false);
                    fp.push(true);
                }
            }
            voc_ap(&tp, &fp, npos, use_07)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn voc_ap_hand_computed() {
        // 3 positives; ranked: TP, FP, TP, FP. Recall 1/3, 1/3, 2/3, 2/3; precision 1, .5, 2/3, .5.
        let tp = [true, false, true, false];
        let fp = [false, true, false, true];
        // Area: envelope 1 on (0, 1/3], 2/3 on (1/3, 2/3] → 1/3 + 2/9.
        assert!((voc_ap(&tp, &fp, 3, false) - (1.0 / 3.0 + 2.0 / 9.0)).abs() < 1e-12);
        // 11-point: t = 0..0.3 → 1 (4 points), 0.4..0.6 → 2/3 (3 points), 0.7..1 → 0.
        assert!((voc_ap(&tp, &fp, 3, true) - (4.0 + 2.0) / 11.0).abs() < 1e-12);
    }

    #[test]
    fn voc_eval_difficult_and_duplicates() {
        let gts = vec![
            VocGt { image: 0, class: 0, bbox: [0.0, 0.0, 10.0, 10.0], difficult: false },
            VocGt { image: 0, class: 0, bbox: [20.0, 20.0, 30.0, 30.0], difficult: true },
            VocGt { image: 1, class: 0, bbox: [0.0, 0.0, 10.0, 10.0], difficult: false },
        ];
        let dets = vec![
            VocDet { image: 0, class: 0, bbox: [0.0, 0.0, 10.0, 10.0], score: 0.9 },
            VocDet { image: 0, class: 0, bbox: [0.5, 0.0, 10.0, 10.0], score: 0.8 }, // duplicate → FP
            VocDet { image: 0, class: 0, bbox: [20.0, 20.0, 30.0, 30.0], score: 0.7 }, // difficult → ignored
            VocDet { image: 1, class: 0, bbox: [0.0, 0.0, 10.0, 9.0], score: 0.6 },
        ];
        let ap = voc_eval(&gts, &dets, 1, 0.5, false)[0];
        // Ranked (difficult removed): TP, FP, TP → recall .5, .5, 1; precision 1, .5, 2/3.
        assert!((ap - (0.5 + 0.5 * 2.0 / 3.0)).abs() < 1e-12, "{ap}");
    }
}
