//! Anchor/proposal-to-ground-truth matching and balanced sampling (torchvision's `Matcher`
//! and `BalancedPositiveNegativeSampler`).

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
    pub high: f64,
    pub low: f64,
    pub allow_low_quality: bool,
}

impl Matcher {
    /// Matches `[P]` (i64) for an IoU matrix `[G, P]`. With no ground truth everything is
    /// background.
    pub fn matches(&self, iou: &Tensor) -> Tensor {
        let s = iou.size();
        if s[0] == 0 {
            return Tensor::full([s[1]], BELOW_LOW, (Kind::Int64, iou.device()));
        }
        let (vals, idx) = iou.max_dim(0, false);
        let below = vals.lt(self.low);
        let between = vals.ge(self.low).logical_and(&vals.lt(self.high));
        let mut m = idx.masked_fill(&below, BELOW_LOW).masked_fill(&between, BETWEEN);
        if self.allow_low_quality {
            let (best, _) = iou.max_dim(1, true);
            // Predictions that reach some ground truth's best (non-zero) overlap.
            let hit = iou.eq_tensor(&best).logical_and(&best.gt(0.0)).any_dim(0, false);
            m = idx.where_self(&hit, &m);
        }
        m
    }
}

/// Samples at most `per_image` predictions from matches `[P]`, at most
/// `positive_fraction·per_image` of them positive (`match ≥ 0`), the rest background
/// (`match == BELOW_LOW`), as torchvision's `BalancedPositiveNegativeSampler`. Returns
/// (positive indices, negative indices), drawn uniformly without replacement by a ChaCha8
/// stream seeded with `seed` (a partial Fisher–Yates shuffle), so the draw depends only on
/// the image's seed.
pub fn sample_balanced(matches: &Tensor, per_image: i64, positive_fraction: f64, seed: u64) -> (Tensor, Tensor) {
    let pos = matches.ge(0).nonzero().squeeze_dim(1);
    let neg = matches.eq(BELOW_LOW).nonzero().squeeze_dim(1);
    let n_pos = pos.size()[0].min((per_image as f64 * positive_fraction) as i64);
    let n_neg = neg.size()[0].min(per_image - n_pos);
    let mut rng = detnas_space::rng::seeded(seed);
    let mut pick = |t: &Tensor, n: i64| {
        if n == t.size()[0] {
            return t.shallow_clone();
        }
        let mut idx: Vec<i64> = (0..t.size()[0]).collect();
        for k in 0..n as usize {
            let j = k + detnas_space::rng::below(&mut rng, (idx.len() - k) as u64) as usize;
            idx.swap(k, j);
        }
        idx.truncate(n as usize);
        t.index_select(0, &Tensor::from_slice(&idx).to_device(t.device()))
    };
    let p = pick(&pos, n_pos);
    let q = pick(&neg, n_neg);
    (p, q)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(rows: &[&[f32]]) -> Tensor {
        let g = rows.len() as i64;
        let flat: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        Tensor::from_slice(&flat).reshape([g, -1])
    }

    #[test]
    fn thresholds_and_low_quality() {
        // 2 ground truths × 5 predictions.
        let iou = t(&[&[0.9, 0.45, 0.2, 0.3, 0.0], &[0.1, 0.5, 0.35, 0.3, 0.0]]);
        let strict = Matcher { high: 0.5, low: 0.4, allow_low_quality: false };
        assert_eq!(Vec::<i64>::try_from(strict.matches(&iou)).unwrap(), vec![0, 1, BELOW_LOW, BELOW_LOW, BELOW_LOW]);
        let m = Matcher { high: 0.7, low: 0.3, allow_low_quality: true };
        // GT 0's best is prediction 0 (0.9 ≥ 0.7 anyway); GT 1's best (0.5) is prediction 1.
        assert_eq!(Vec::<i64>::try_from(m.matches(&iou)).unwrap(), vec![0, 1, BETWEEN, BETWEEN, BELOW_LOW]);
        let none = Tensor::zeros([0, 3], (Kind::Float, tch::Device::Cpu));
        assert_eq!(Vec::<i64>::try_from(m.matches(&none)).unwrap(), vec![-1, -1, -1]);
    }

    #[test]
    fn low_quality_keeps_ties() {
        let iou = t(&[&[0.2, 0.2, 0.1]]);
        let m = Matcher { high: 0.5, low: 0.4, allow_low_quality: true };
        assert_eq!(Vec::<i64>::try_from(m.matches(&iou)).unwrap(), vec![0, 0, BELOW_LOW]);
    }

    #[test]
    fn balanced_sampling_respects_quota() {
        let mut v = vec![BELOW_LOW; 100];
        for x in v.iter_mut().take(10) {
            *x = 0;
        }
        v[50] = BETWEEN;
        let m = Tensor::from_slice(&v);
        let (p, n) = sample_balanced(&m, 16, 0.25, 7);
        assert_eq!((p.size()[0], n.size()[0]), (4, 12));
        assert!(Vec::<i64>::try_from(&p).unwrap().iter().all(|&i| i < 10));
        assert!(Vec::<i64>::try_from(&n).unwrap().iter().all(|&i| i >= 10 && i != 50));
        let (p, n) = sample_balanced(&m, 512, 0.25, 7);
        assert_eq!((p.size()[0], n.size()[0]), (10, 89));
        // The draw is a function of the seed alone.
        let again = sample_balanced(&m, 16, 0.25, 7);
        assert!(again.0.equal(&sample_balanced(&m, 16, 0.25, 7).0));
        let other: Vec<Vec<i64>> =
            (0..8).map(|s| Vec::<i64>::try_from(&sample_balanced(&m, 16, 0.25, s).1).unwrap()).collect();
        assert!(other.windows(2).any(|w| w[0] != w[1]), "different seeds draw different negatives");
    }
}
