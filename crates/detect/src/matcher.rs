//! Anchor/proposal-to-ground-truth matching and balanced sampling (torchvision's `Matcher`
//! and `BalancedPositiveNegativeSampler`), batched over the images and on the device: no host
//! round-trip, a fixed number of operators whatever the batch size.

use tch::{Kind, Tensor};

/// Matched index of a prediction below the low threshold (background).
pub const BELOW_LOW: i64 = -1;
/// Matched index of a prediction between the thresholds (ignored in the loss).
pub const BETWEEN: i64 = -2;

/// Assigns each prediction the ground truth it overlaps most, if that IoU ≥ `high`;
/// `BELOW_LOW` if < `low`, `BETWEEN` otherwise. With `allow_low_quality`, each ground
/// truth's best predictions (ties included) are matched even below `high` (RPN, RetinaNet).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Matcher {
    /// IoU at or above which an anchor is foreground.
    pub high: f64,
    /// IoU below which an anchor is background (between: ignored).
    pub low: f64,
    /// Also match each box to its best anchors below `high` (Faster R-CNN's RPN).
    pub allow_low_quality: bool,
}

impl Matcher {
    /// Matches `[N, P]` (i64) for IoU matrices `[N, G, P]` of `N` images whose ground-truth
    /// rows `valid` `[N, G]` are real (padding rows never match). An image without ground
    /// truth is all background.
    pub fn matches(&self, iou: &Tensor, valid: &Tensor) -> Tensor {
        let s = iou.size();
        if s[1] == 0 {
            return Tensor::full([s[0], s[2]], BELOW_LOW, (Kind::Int64, iou.device()));
        }
        let iou = iou.masked_fill(&valid.logical_not().unsqueeze(2), -1.0);
        let (vals, idx) = iou.max_dim(1, false);
        let below = vals.lt(self.low);
        let between = vals.ge(self.low).logical_and(&vals.lt(self.high));
        let mut m = idx.masked_fill(&below, BELOW_LOW).masked_fill(&between, BETWEEN);
        if self.allow_low_quality {
            let (best, _) = iou.max_dim(2, true);
            // Predictions that reach some ground truth's best (non-zero) overlap.
            let hit = iou.eq_tensor(&best).logical_and(&best.gt(0.0)).any_dim(1, false);
            m = idx.where_self(&hit, &m);
        }
        m
    }
}

/// The samplers' keys `[N, P]` (i64): a hash of each image's seed words `[N, 2]` and the
/// candidate index, times 2²⁴ plus the index (so keys are distinct within an image). Integer
/// arithmetic below 2⁶³ only (multiply-mod-prime rounds with xor-shifts), so the keys are the
/// same on every device and rank.
///
/// # Panics
/// When `p` ≥ 2²⁴.
pub fn sample_keys(seed_words: &Tensor, p: i64) -> Tensor {
    assert!(p < 1 << 24, "{p} candidates per image: the sampler's keys hold at most 2^24");
    const P31: i64 = 0x7FFF_FFFF;
    let idx = Tensor::arange(p, (Kind::Int64, seed_words.device())).unsqueeze(0);
    let a = seed_words.select(1, 0).unsqueeze(1);
    let b = seed_words.select(1, 1).unsqueeze(1);
    let round = |x: Tensor, m: i64, c: i64| (x * m + c).remainder(P31);
    let mut x = (idx.shallow_clone() * 48_271 + a).remainder(P31);
    x = round(x.bitwise_xor_tensor(&b), 1_103_515_245, 12_345);
    x = round(x.bitwise_xor_tensor(&x.bitwise_right_shift_tensor_scalar(11)), 16_807, 7_919);
    x = round(x.bitwise_xor_tensor(&x.bitwise_right_shift_tensor_scalar(7)), 69_621, 104_729);
    x = round(x.bitwise_xor_tensor(&x.bitwise_right_shift_tensor_scalar(13)), 1_566_083_941, 15_485_863);
    x * (1i64 << 24) + idx
}

/// Up to `k` candidates per image drawn uniformly without replacement: those of `candidates`
/// `[N, P]` with the smallest `keys`, the first `quota[n]` of them valid. Returns the drawn
/// indices `[N, k']` (`k' = min(k, P)`, in draw order) and their validity `[N, k']`.
pub fn draw(candidates: &Tensor, keys: &Tensor, k: i64, quota: &Tensor) -> (Tensor, Tensor) {
    let p = candidates.size()[1];
    let k = k.min(p);
    let masked = keys.masked_fill(&candidates.logical_not(), i64::MAX);
    let (_, idx) = masked.topk(k, 1, false, true);
    let rank = Tensor::arange(k, (Kind::Int64, keys.device())).unsqueeze(0);
    (idx, rank.lt_tensor(&quota.unsqueeze(1)))
}

/// A balanced draw of a batch (see [`sample_balanced`]).
#[derive(Debug)]
pub struct Sampled {
    /// Drawn positive indices `[N, kp]` and their validity.
    pub pos: Tensor,
    /// Which drawn positives are real (not padding) `[N, kp]`.
    pub pos_valid: Tensor,
    /// Drawn negative indices `[N, kn]` and their validity.
    pub neg: Tensor,
    /// Which drawn negatives are real `[N, kn]`.
    pub neg_valid: Tensor,
    /// Positives drawn per image `[N]` (i64).
    pub n_pos: Tensor,
}

impl Sampled {
    /// `[N, P]` masks of the drawn positives and negatives.
    pub fn masks(&self, p: i64) -> (Tensor, Tensor) {
        let mask = |idx: &Tensor, valid: &Tensor| {
            Tensor::zeros([idx.size()[0], p], (Kind::Bool, idx.device())).scatter(1, idx, valid)
        };
        (mask(&self.pos, &self.pos_valid), mask(&self.neg, &self.neg_valid))
    }
}

/// Samples at most `per_image` predictions per image from matches `[N, P]`, at most
/// `positive_fraction·per_image` of them positive (`match ≥ 0`), the rest background
/// (`match == BELOW_LOW`), as torchvision's `BalancedPositiveNegativeSampler`; `allowed`
/// `[N, P]` excludes predictions that are not candidates (padding). Each image's draw is
/// uniform without replacement and depends only on its seed words `[N, 2]` ([`sample_keys`]).
pub fn sample_balanced(
    matches: &Tensor,
    allowed: Option<&Tensor>,
    per_image: i64,
    positive_fraction: f64,
    seed_words: &Tensor,
) -> Sampled {
    let p = matches.size()[1];
    let (mut pos, mut neg) = (matches.ge(0), matches.eq(BELOW_LOW));
    if let Some(a) = allowed {
        pos = pos.logical_and(a);
        neg = neg.logical_and(a);
    }
    let keys = sample_keys(seed_words, p);
    let max_pos = (per_image as f64 * positive_fraction) as i64;
    let n_pos = pos.sum_dim_intlist(&[1i64][..], false, Kind::Int64).clamp_max(max_pos);
    let n_neg = neg.sum_dim_intlist(&[1i64][..], false, Kind::Int64).minimum(&(-&n_pos + per_image));
    let (pos_idx, pos_valid) = draw(&pos, &keys, max_pos, &n_pos);
    let (neg_idx, neg_valid) = draw(&neg, &keys, per_image, &n_neg);
    Sampled { pos: pos_idx, pos_valid, neg: neg_idx, neg_valid, n_pos }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::seed_words;
    use tch::Device;

    fn t(rows: &[&[f32]]) -> Tensor {
        let g = rows.len() as i64;
        let flat: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        Tensor::from_slice(&flat).reshape([g, -1])
    }

    fn v(t: &Tensor) -> Vec<i64> {
        Vec::<i64>::try_from(t.reshape([-1])).unwrap()
    }

    fn words(seeds: &[u64]) -> Tensor {
        let w: Vec<i64> = seeds.iter().flat_map(|&s| seed_words(s)).collect();
        Tensor::from_slice(&w).reshape([seeds.len() as i64, 2])
    }

    #[test]
    fn thresholds_and_low_quality() {
        // 2 ground truths × 5 predictions, and a padding row that must never match.
        let iou =
            t(&[&[0.9, 0.45, 0.2, 0.3, 0.0], &[0.1, 0.5, 0.35, 0.3, 0.0], &[1.0, 1.0, 1.0, 1.0, 1.0]]).unsqueeze(0);
        let valid = Tensor::from_slice(&[true, true, false]).unsqueeze(0);
        let strict = Matcher { high: 0.5, low: 0.4, allow_low_quality: false };
        assert_eq!(v(&strict.matches(&iou, &valid)), vec![0, 1, BELOW_LOW, BELOW_LOW, BELOW_LOW]);
        let m = Matcher { high: 0.7, low: 0.3, allow_low_quality: true };
        // GT 0's best is prediction 0 (0.9 ≥ 0.7 anyway); GT 1's best (0.5) is prediction 1.
        assert_eq!(v(&m.matches(&iou, &valid)), vec![0, 1, BETWEEN, BETWEEN, BELOW_LOW]);
        let none = Tensor::zeros([2, 0, 3], (Kind::Float, Device::Cpu));
        assert_eq!(v(&m.matches(&none, &Tensor::zeros([2, 0], (Kind::Bool, Device::Cpu)))), vec![-1; 6]);
        // A batch of two: the second image has only padding.
        let two = Tensor::cat(&[&iou, &iou], 0);
        let valid2 = Tensor::cat(&[valid.shallow_clone(), Tensor::zeros([1, 3], (Kind::Bool, Device::Cpu))], 0);
        assert_eq!(v(&m.matches(&two, &valid2)), vec![0, 1, BETWEEN, BETWEEN, BELOW_LOW, -1, -1, -1, -1, -1]);
    }

    #[test]
    fn low_quality_keeps_ties() {
        let iou = t(&[&[0.2, 0.2, 0.1]]).unsqueeze(0);
        let m = Matcher { high: 0.5, low: 0.4, allow_low_quality: true };
        assert_eq!(v(&m.matches(&iou, &Tensor::ones([1, 1], (Kind::Bool, Device::Cpu)))), vec![0, 0, BELOW_LOW]);
    }

    fn drawn(idx: &Tensor, valid: &Tensor, row: i64) -> Vec<i64> {
        v(&idx.get(row))
            .into_iter()
            .zip(v(&valid.get(row).to_kind(Kind::Int64)))
            .filter(|p| p.1 == 1)
            .map(|p| p.0)
            .collect()
    }

    #[test]
    fn balanced_sampling_respects_quota_and_seed() {
        let mut row = vec![BELOW_LOW; 100];
        for x in row.iter_mut().take(10) {
            *x = 0;
        }
        row[50] = BETWEEN;
        let m = Tensor::from_slice(&[row.clone(), row].concat()).reshape([2, 100]);
        let w = words(&[7, 8]);
        let s = sample_balanced(&m, None, 16, 0.25, &w);
        for i in 0..2 {
            let (p, n) = (drawn(&s.pos, &s.pos_valid, i), drawn(&s.neg, &s.neg_valid, i));
            assert_eq!((p.len(), n.len()), (4, 12));
            assert!(p.iter().all(|&i| i < 10));
            assert!(n.iter().all(|&i| i >= 10 && i != 50));
            let mut all = [p, n].concat();
            all.sort_unstable();
            all.dedup();
            assert_eq!(all.len(), 16, "no duplicates");
        }
        assert_ne!(drawn(&s.neg, &s.neg_valid, 0), drawn(&s.neg, &s.neg_valid, 1), "images draw on their own seeds");
        let s = sample_balanced(&m, None, 512, 0.25, &w);
        assert_eq!((drawn(&s.pos, &s.pos_valid, 0).len(), drawn(&s.neg, &s.neg_valid, 0).len()), (10, 89));
        // Candidates left out by `allowed` are never drawn.
        let allowed =
            Tensor::ones([2, 100], (Kind::Bool, Device::Cpu)).index_fill(1, &Tensor::from_slice(&[0i64, 60]), 0);
        let s = sample_balanced(&m, Some(&allowed), 512, 0.25, &w);
        let (p, n) = (drawn(&s.pos, &s.pos_valid, 1), drawn(&s.neg, &s.neg_valid, 1));
        assert_eq!((p.len(), n.len()), (9, 88));
        assert!(!p.contains(&0) && !n.contains(&60));
        // The draw is a function of the seed alone.
        let a = sample_balanced(&m, None, 16, 0.25, &words(&[7, 8]));
        let b = sample_balanced(&m, None, 16, 0.25, &words(&[7, 8]));
        assert!(a.neg.equal(&b.neg) && a.pos.equal(&b.pos));
        let (pm, nm) = a.masks(100);
        assert_eq!(v(&pm.sum_dim_intlist(&[1i64][..], false, Kind::Int64)), vec![4, 4]);
        assert_eq!(v(&nm.sum_dim_intlist(&[1i64][..], false, Kind::Int64)), vec![12, 12]);
    }

    /// Uniform without replacement: over 4000 seeds, each of 40 candidates is drawn 10 times in
    /// 40 draws per 10 → inclusion probability 1/4; every candidate's frequency lies within 5
    /// binomial standard deviations of 1000, and the pairwise co-occurrence of neighbours is
    /// near 1/4 · 9/39 (no correlation between adjacent indices).
    #[test]
    fn draws_are_uniform() {
        let seeds: Vec<u64> = (0..4000u64).map(|s| s * 7919 + 3).collect();
        let keys = sample_keys(&words(&seeds), 40);
        let cand = Tensor::ones([4000, 40], (Kind::Bool, Device::Cpu));
        let quota = Tensor::full([4000], 10, (Kind::Int64, Device::Cpu));
        let (idx, valid) = draw(&cand, &keys, 10, &quota);
        assert!(bool::try_from(valid.all()).unwrap());
        let mask = Tensor::zeros([4000, 40], (Kind::Float, Device::Cpu)).scatter_value(1, &idx, 1.0);
        let freq = Vec::<f64>::try_from(mask.sum_dim_intlist(&[0i64][..], false, Kind::Double)).unwrap();
        let sd = (4000.0f64 * 0.25 * 0.75).sqrt();
        for (i, f) in freq.iter().enumerate() {
            assert!((f - 1000.0).abs() < 5.0 * sd, "candidate {i}: {f}");
        }
        let pair = (mask.narrow(1, 0, 39) * mask.narrow(1, 1, 39)).mean(Kind::Double).double_value(&[]);
        let want = 0.25 * 9.0 / 39.0;
        assert!((pair - want).abs() < 0.01, "{pair} vs {want}");
    }
}
