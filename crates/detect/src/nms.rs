//! Greedy non-maximum suppression (on the CPU, in Rust; boxes on another device are copied).
//!
//! Boxes are visited by descending score (ties: lower index first, a stable order); a box is
//! kept unless it overlaps an already kept box by IoU **>** `threshold` (torchvision's rule).

use crate::boxes::rows_of;
use detnas_data::det::iou;
use tch::{Kind, Tensor};

/// Kept indices (i64, by descending score) of `[N, 4]` boxes with scores `[N]`.
pub fn nms(boxes: &Tensor, scores: &Tensor, threshold: f64) -> Tensor {
    let keep = nms_rows(&rows_of(boxes), &f32s(scores), threshold);
    Tensor::from_slice(&keep).to_device(boxes.device())
}

/// NMS within each label: boxes of different `labels` `[N]` never suppress each other.
pub fn batched_nms(boxes: &Tensor, scores: &Tensor, labels: &Tensor, threshold: f64) -> Tensor {
    let rows = rows_of(boxes);
    let labels: Vec<i64> =
        Vec::<i64>::try_from(labels.to_kind(Kind::Int64).to_device(tch::Device::Cpu)).unwrap_or_default();
    let scores = f32s(scores);
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    let mut kept: Vec<usize> = Vec::new();
    for &i in &order {
        if kept.iter().all(|&k| labels[k] != labels[i] || iou(&rows[k], &rows[i]) <= threshold as f32) {
            kept.push(i);
        }
    }
    let keep: Vec<i64> = kept.into_iter().map(|i| i as i64).collect();
    Tensor::from_slice(&keep).to_device(boxes.device())
}

fn f32s(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.to_kind(Kind::Float).to_device(tch::Device::Cpu).contiguous().reshape([-1]))
        .unwrap_or_default()
}

/// Greedy NMS on rows; returns kept indices by descending score.
pub fn nms_rows(rows: &[[f32; 4]], scores: &[f32], threshold: f64) -> Vec<i64> {
    greedy(rows, scores, None, threshold)
}

/// Greedy NMS; with `labels`, only boxes of the same label suppress each other.
fn greedy(rows: &[[f32; 4]], scores: &[f32], labels: Option<&[i64]>, threshold: f64) -> Vec<i64> {
    let same = |i: usize, j: usize| labels.is_none_or(|l| l[i] == l[j]);
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    let mut suppressed = vec![false; rows.len()];
    let mut keep = Vec::new();
    for (oi, &i) in order.iter().enumerate() {
        if suppressed[i] {
            continue;
        }
        keep.push(i as i64);
        for &j in &order[oi + 1..] {
            if !suppressed[j] && same(i, j) && iou(&rows[i], &rows[j]) > threshold as f32 {
                suppressed[j] = true;
            }
        }
    }
    keep
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boxes::tensor_of;
    use proptest::prelude::*;

    /// Definition-level reference: a box is kept iff no higher-ranked *kept* box overlaps it.
    fn brute(rows: &[[f32; 4]], scores: &[f32], thr: f32) -> Vec<i64> {
        let mut idx: Vec<usize> = (0..rows.len()).collect();
        idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
        let mut keep: Vec<usize> = Vec::new();
        for i in idx {
            if keep.iter().all(|&k| iou(&rows[k], &rows[i]) <= thr) {
                keep.push(i);
            }
        }
        keep.into_iter().map(|i| i as i64).collect()
    }

    #[test]
    fn hand_case() {
        let b = tensor_of(&[
            [0.0, 0.0, 10.0, 10.0],
            [1.0, 1.0, 11.0, 11.0],
            [20.0, 20.0, 30.0, 30.0],
            [0.0, 0.0, 10.0, 10.0],
        ]);
        let s = Tensor::from_slice(&[0.9f32, 0.95, 0.5, 0.3]);
        assert_eq!(Vec::<i64>::try_from(nms(&b, &s, 0.5)).unwrap(), vec![1, 2]);
        let l = Tensor::from_slice(&[0i64, 1, 0, 0]);
        assert_eq!(Vec::<i64>::try_from(batched_nms(&b, &s, &l, 0.5)).unwrap(), vec![1, 0, 2]);
    }

    proptest! {
        #[test]
        fn matches_brute_force(raw in prop::collection::vec((0f32..50.0, 0f32..50.0, 1f32..30.0, 1f32..30.0, 0u8..20), 0..60), thr in 0.1f64..0.9) {
            let rows: Vec<[f32; 4]> = raw.iter().map(|&(x, y, w, h, _)| [x, y, x + w, y + h]).collect();
            // Coarse scores: many ties.
            let scores: Vec<f32> = raw.iter().map(|r| r.4 as f32 / 20.0).collect();
            prop_assert_eq!(nms_rows(&rows, &scores, thr), brute(&rows, &scores, thr as f32));
            // Batched: the union of per-label NMS, in descending-score order.
            let labels: Vec<i64> = raw.iter().map(|r| i64::from(r.4 % 3)).collect();
            let mut want: Vec<i64> = Vec::new();
            for l in 0..3 {
                let idx: Vec<usize> = (0..rows.len()).filter(|&i| labels[i] == l).collect();
                let sub: Vec<[f32; 4]> = idx.iter().map(|&i| rows[i]).collect();
                let sc: Vec<f32> = idx.iter().map(|&i| scores[i]).collect();
                want.extend(brute(&sub, &sc, thr as f32).into_iter().map(|k| idx[k as usize] as i64));
            }
            want.sort_by(|&a, &b| scores[b as usize].total_cmp(&scores[a as usize]).then(a.cmp(&b)));
            let got = batched_nms(&tensor_of(&rows), &Tensor::from_slice(&scores), &Tensor::from_slice(&labels), thr);
            prop_assert_eq!(Vec::<i64>::try_from(got).unwrap(), want);
        }
    }
}
