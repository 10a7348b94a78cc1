//! Greedy non-maximum suppression, exactly: boxes are visited by descending score (ties: lower
//! index first, a stable order); a box is kept unless it overlaps an already kept box of the
//! same label by IoU **>** `threshold` (torchvision's rule).
//!
//! Two implementations of the same result:
//! * [`greedy`] — Rust on host memory: fast on the CPU, and what the final detections of a
//!   batch go through after inference's one host read;
//! * [`keep_device`] — tensor operators on the boxes' device, batched over images, without a
//!   host round-trip (for the proposals inside a training step). The greedy result is the
//!   unique fixed point of `keep_j = valid_j ∧ ¬∃ i before j: keep_i ∧ IoU_ij > t`; it is
//!   reached by iterating that map from `keep = valid` (after `r` rounds every box whose chain
//!   of suppressors is shorter than `r` is final). [`keep_device`] runs [`DEVICE_ROUNDS`]
//!   rounds and returns, as a device flag, whether the last round changed nothing — then the
//!   result is the greedy one exactly. A caller that finds the flag false reruns with host
//!   kernels ([`detnas_device::settings::with_kernels`]), so results never depend on it.
//!
//! [`keep_levels`] picks one per the process's kernel setting.

use crate::target::Detections;
use detnas_data::det::iou;
use detnas_device::host;
use tch::{Kind, Tensor};

/// Rounds of the device fixed-point iteration before its convergence is checked.
pub const DEVICE_ROUNDS: usize = 24;

/// Greedy NMS of `rows` by `scores`; with `labels`, only boxes of the same label suppress each
/// other. Returns the kept indices by descending score (ties: lower index first).
pub fn greedy(rows: &[[f32; 4]], scores: &[f32], labels: Option<&[i64]>, threshold: f64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    let same = |i: usize, j: usize| labels.is_none_or(|l| l[i] == l[j]);
    let mut kept: Vec<usize> = Vec::new();
    for &i in &order {
        if kept.iter().all(|&k| !same(k, i) || iou(&rows[k], &rows[i]) <= threshold as f32) {
            kept.push(i);
        }
    }
    kept
}

/// Greedy NMS on rows without labels; returns kept indices by descending score.
pub fn nms_rows(rows: &[[f32; 4]], scores: &[f32], threshold: f64) -> Vec<i64> {
    greedy(rows, scores, None, threshold).into_iter().map(|i| i as i64).collect()
}

/// Greedy NMS on the device, batched over `B` images: `boxes` `[B, M, 4]`, `scores` `[B, M]`,
/// `labels` `[B, M]` (boxes of different labels never suppress each other), `valid` `[B, M]`
/// (invalid boxes are neither kept nor suppress). Returns the kept mask `[B, M]` in the input
/// order, and a scalar bool: whether the iteration converged (the mask is then exactly
/// [`greedy`]'s).
pub fn keep_device(
    boxes: &Tensor,
    scores: &Tensor,
    labels: Option<&Tensor>,
    valid: &Tensor,
    threshold: f64,
) -> (Tensor, Tensor) {
    let (b, m) = (scores.size()[0], scores.size()[1]);
    if m == 0 {
        return (valid.shallow_clone(), Tensor::ones([], (Kind::Bool, scores.device())));
    }
    // Stable: equal scores keep their index order.
    let (_, order) = scores.to_kind(Kind::Float).sort_stable(true, 1, true);
    let sorted = |t: &Tensor| t.gather(1, &order, false);
    let sb = boxes.to_kind(Kind::Float).gather(1, &order.unsqueeze(2).expand([b, m, 4], false), false);
    let sv = sorted(valid);
    let mut sup = crate::boxes::pairwise_iou(&sb, &sb).gt(threshold);
    if let Some(l) = labels {
        let sl = sorted(l);
        sup = sup.logical_and(&sl.unsqueeze(2).eq_tensor(&sl.unsqueeze(1)));
    }
    let upper = Tensor::ones([m, m], (Kind::Bool, scores.device())).triu(1);
    sup = sup.logical_and(&upper).logical_and(&sv.unsqueeze(2)).logical_and(&sv.unsqueeze(1));
    let step = |keep: &Tensor| sv.logical_and(&keep.unsqueeze(2).logical_and(&sup).any_dim(1, false).logical_not());
    let mut keep = sv.shallow_clone();
    let mut previous = keep.shallow_clone();
    for _ in 0..DEVICE_ROUNDS {
        previous = keep;
        keep = step(&previous);
    }
    let converged = keep.eq_tensor(&previous).all();
    let out = Tensor::zeros([b, m], (Kind::Bool, scores.device())).scatter(1, &order, &keep);
    (out, converged)
}

/// One level (or group) of boxes of `B` images for [`keep_levels`].
#[derive(Debug)]
pub struct Group {
    /// `[B, M, 4]`.
    pub boxes: Tensor,
    /// `[B, M]`.
    pub scores: Tensor,
    /// `[B, M]` bool.
    pub valid: Tensor,
}

/// Per-image NMS within each group (boxes of different groups never suppress each other):
/// the kept masks `[B, M_g]` and a scalar bool, true when every mask is exactly greedy's.
/// Host kernels: one host read of every group, [`greedy`], one upload of the masks; device
/// kernels: [`keep_device`] per group, no host round-trip.
///
/// # Errors
/// A libtorch error reading the boxes (host kernels).
pub fn keep_levels(groups: &[Group], threshold: f64) -> Result<(Vec<Tensor>, Tensor), tch::TchError> {
    let device = groups[0].scores.device();
    if !detnas_device::settings::host_kernels(device) {
        let mut exact = Tensor::ones([], (Kind::Bool, device));
        let mut keeps = Vec::with_capacity(groups.len());
        for g in groups {
            let (k, ok) = keep_device(&g.boxes, &g.scores, None, &g.valid, threshold);
            exact = exact.logical_and(&ok);
            keeps.push(k);
        }
        return Ok((keeps, exact));
    }
    let b = groups[0].scores.size()[0];
    let packed = Tensor::cat(
        &groups
            .iter()
            .map(|g| {
                Tensor::cat(
                    &[
                        g.boxes.to_kind(Kind::Float),
                        g.scores.to_kind(Kind::Float).unsqueeze(2),
                        g.valid.to_kind(Kind::Float).unsqueeze(2),
                    ],
                    2,
                )
            })
            .collect::<Vec<_>>(),
        1,
    );
    let total = packed.size()[1] as usize;
    let v: Vec<f32> = host::read_for_host_kernel(&packed, "detect.nms.keep_levels")?;
    let mut keep = vec![false; b as usize * total];
    for i in 0..b as usize {
        let mut start = 0;
        for g in groups {
            let m = g.scores.size()[1] as usize;
            let (mut rows, mut scores, mut at) = (Vec::new(), Vec::new(), Vec::new());
            for j in start..start + m {
                let r = &v[(i * total + j) * 6..(i * total + j + 1) * 6];
                if r[5] > 0.5 {
                    rows.push([r[0], r[1], r[2], r[3]]);
                    scores.push(r[4]);
                    at.push(j);
                }
            }
            for k in greedy(&rows, &scores, None, threshold) {
                keep[i * total + at[k]] = true;
            }
            start += m;
        }
    }
    let mask = host::upload(
        &keep.iter().map(|&k| u8::from(k)).collect::<Vec<_>>(),
        &[b, total as i64],
        device,
        "detect.nms.keep_levels",
    )
    .to_kind(Kind::Bool);
    let mut keeps = Vec::with_capacity(groups.len());
    let mut start = 0;
    for g in groups {
        let m = g.scores.size()[1];
        keeps.push(mask.narrow(1, start, m));
        start += m;
    }
    Ok((keeps, Tensor::ones([], (Kind::Bool, device))))
}

/// Final detections of a batch from its candidates, read to the host in one piece: `packed`
/// `[N, M, 7]` holds per candidate `(x1, y1, x2, y2, score, label, valid)` in the order NMS
/// ties follow; per image, class-wise [`greedy`] NMS of the valid ones, then the first
/// `max_per_image` by descending score. `extra` values appended to the read (flags) are
/// returned beside.
///
/// # Errors
/// A libtorch error from the read.
pub fn final_detections(
    packed: &Tensor,
    extra: Option<&Tensor>,
    threshold: f64,
    max_per_image: i64,
) -> Result<(Vec<Detections>, Vec<f32>), tch::TchError> {
    let s = packed.size();
    let (n, m) = (s[0] as usize, s[1] as usize);
    let flat = packed.to_kind(Kind::Float).reshape([-1]);
    let all = match extra {
        Some(e) => Tensor::cat(&[flat, e.to_kind(Kind::Float).reshape([-1])], 0),
        None => flat,
    };
    let v: Vec<f32> = host::read(&all, "detect.detections")?;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let (mut rows, mut scores, mut labels) = (Vec::new(), Vec::new(), Vec::new());
        for j in 0..m {
            let r = &v[(i * m + j) * 7..(i * m + j + 1) * 7];
            if r[6] > 0.5 {
                rows.push([r[0], r[1], r[2], r[3]]);
                scores.push(r[4]);
                labels.push(r[5] as i64);
            }
        }
        let mut d = Detections::default();
        for k in greedy(&rows, &scores, Some(&labels), threshold).into_iter().take(max_per_image.max(0) as usize) {
            d.boxes.push(rows[k]);
            d.scores.push(scores[k]);
            d.labels.push(labels[k]);
        }
        out.push(d);
    }
    Ok((out, v[n * m * 7..].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tch::Device;

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

    fn device_keep(rows: &[[f32; 4]], scores: &[f32], labels: Option<&[i64]>, valid: &[bool], thr: f64) -> Vec<i64> {
        let n = rows.len() as i64;
        let b = crate::boxes::tensor_of(rows).reshape([1, n, 4]);
        let s = Tensor::from_slice(scores).reshape([1, n]);
        let v = Tensor::from_slice(valid).reshape([1, n]);
        let l = labels.map(|l| Tensor::from_slice(l).reshape([1, n]));
        let (k, ok) = keep_device(&b, &s, l.as_ref(), &v, thr);
        assert!(bool::try_from(ok).unwrap(), "converged");
        let mask = Vec::<bool>::try_from(k.reshape([-1])).unwrap();
        // By descending score (ties: index), as greedy returns them.
        let mut kept: Vec<usize> = (0..rows.len()).filter(|&i| mask[i]).collect();
        kept.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
        kept.into_iter().map(|i| i as i64).collect()
    }

    #[test]
    fn hand_case() {
        let b = [[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0], [20.0, 20.0, 30.0, 30.0], [0.0, 0.0, 10.0, 10.0]];
        let s = [0.9f32, 0.95, 0.5, 0.3];
        assert_eq!(nms_rows(&b, &s, 0.5), vec![1, 2]);
        let l = [0i64, 1, 0, 0];
        assert_eq!(greedy(&b, &s, Some(&l), 0.5), vec![1, 0, 2]);
        assert_eq!(device_keep(&b, &s, Some(&l), &[true; 4], 0.5), vec![1, 0, 2]);
        // An invalid box neither is kept nor suppresses.
        assert_eq!(device_keep(&b, &s, None, &[true, false, true, true], 0.5), vec![0, 2]);
    }

    /// A chain where each box would suppress the next: greedy keeps every other one, which
    /// takes one round per link; longer than the rounds, the flag says so.
    #[test]
    fn chains_converge_or_say_they_did_not() {
        let chain = |n: usize| -> (Vec<[f32; 4]>, Vec<f32>) {
            let rows = (0..n).map(|i| [i as f32, 0.0, i as f32 + 4.0, 4.0]).collect();
            let scores = (0..n).map(|i| 1.0 - i as f32 / 1000.0).collect();
            (rows, scores)
        };
        let (rows, scores) = chain(DEVICE_ROUNDS - 2);
        assert_eq!(device_keep(&rows, &scores, None, &vec![true; rows.len()], 0.5), nms_rows(&rows, &scores, 0.5));
        let (rows, scores) = chain(3 * DEVICE_ROUNDS);
        let n = rows.len() as i64;
        let (_, ok) = keep_device(
            &crate::boxes::tensor_of(&rows).reshape([1, n, 4]),
            &Tensor::from_slice(&scores).reshape([1, n]),
            None,
            &Tensor::ones([1, n], (Kind::Bool, Device::Cpu)),
            0.5,
        );
        assert!(!bool::try_from(ok).unwrap());
    }

    #[test]
    fn keep_levels_agree_between_kernels() {
        let rows: Vec<[f32; 4]> = (0..40)
            .map(|i| {
                let x = (i % 7) as f32 * 3.0;
                let y = (i / 7) as f32 * 2.0;
                [x, y, x + 8.0, y + 6.0]
            })
            .collect();
        let scores: Vec<f32> = (0..40).map(|i| ((i * 37) % 11) as f32 / 11.0).collect();
        let group = |lo: usize, hi: usize| Group {
            boxes: crate::boxes::tensor_of(&[&rows[lo..hi], &rows[lo..hi]].concat()).reshape([2, (hi - lo) as i64, 4]),
            scores: Tensor::from_slice(&[&scores[lo..hi], &scores[lo..hi]].concat()).reshape([2, (hi - lo) as i64]),
            valid: Tensor::ones([2, (hi - lo) as i64], (Kind::Bool, Device::Cpu)),
        };
        let groups = [group(0, 25), group(25, 40)];
        let (host, _) =
            detnas_device::settings::with_kernels(detnas_device::Kernels::Host, || keep_levels(&groups, 0.4)).unwrap();
        let ((dev, ok), counts) = detnas_device::host::measure(|| {
            detnas_device::settings::with_kernels(detnas_device::Kernels::Device, || keep_levels(&groups, 0.4)).unwrap()
        });
        assert_eq!(counts.reads + counts.kernel_reads + counts.uploads, 0, "device kernels make no host transfer");
        assert!(bool::try_from(ok).unwrap());
        for (h, d) in host.iter().zip(&dev) {
            assert!(h.equal(d));
        }
        let want: Vec<bool> = {
            let mut k = vec![false; 25];
            for i in nms_rows(&rows[..25], &scores[..25], 0.4) {
                k[i as usize] = true;
            }
            k
        };
        assert_eq!(Vec::<bool>::try_from(host[0].get(1)).unwrap(), want);
    }

    proptest! {
        #[test]
        fn matches_brute_force(raw in prop::collection::vec((0f32..50.0, 0f32..50.0, 1f32..30.0, 1f32..30.0, 0u8..20), 0..60), thr in 0.1f64..0.9) {
            let rows: Vec<[f32; 4]> = raw.iter().map(|&(x, y, w, h, _)| [x, y, x + w, y + h]).collect();
            // Coarse scores: many ties.
            let scores: Vec<f32> = raw.iter().map(|r| r.4 as f32 / 20.0).collect();
            let want = brute(&rows, &scores, thr as f32);
            prop_assert_eq!(nms_rows(&rows, &scores, thr), want.clone());
            prop_assert_eq!(device_keep(&rows, &scores, None, &vec![true; rows.len()], thr), want);
            // With labels: the union of per-label NMS, in descending-score order.
            let labels: Vec<i64> = raw.iter().map(|r| i64::from(r.4 % 3)).collect();
            let mut want: Vec<i64> = Vec::new();
            for l in 0..3 {
                let idx: Vec<usize> = (0..rows.len()).filter(|&i| labels[i] == l).collect();
                let sub: Vec<[f32; 4]> = idx.iter().map(|&i| rows[i]).collect();
                let sc: Vec<f32> = idx.iter().map(|&i| scores[i]).collect();
                want.extend(brute(&sub, &sc, thr as f32).into_iter().map(|k| idx[k as usize] as i64));
            }
            want.sort_by(|&a, &b| scores[b as usize].total_cmp(&scores[a as usize]).then(a.cmp(&b)));
            let got: Vec<i64> = greedy(&rows, &scores, Some(&labels), thr).into_iter().map(|i| i as i64).collect();
            prop_assert_eq!(got, want.clone());
            prop_assert_eq!(device_keep(&rows, &scores, Some(&labels), &vec![true; rows.len()], thr), want);
        }
    }
}
