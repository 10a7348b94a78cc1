//! Rank agreement between a proxy (the supernet's scores) and a ground truth (architectures
//! trained stand-alone): Kendall τ-b, Spearman ρ, a percentile-bootstrap confidence interval
//! of τ and the chance level of τ at a given number of architectures.
//!
//! The supernet's ranking quality is what one-shot NAS rests on; Yu et al., "Evaluating the
//! Search Phase of Neural Architecture Search" (ICLR 2020), measure it with Kendall τ.
//! Definitions follow SciPy's `kendalltau` (variant b) and `spearmanr`.

use crate::ledger::LedgerEntry;
use detnas_space::rng::seeded;
use rand::Rng;
use rand::seq::SliceRandom;

/// Kendall's τ-b of paired scores: `(concordant − discordant) / √((n₀ − n₁)(n₀ − n₂))` over all
/// pairs, where `n₁`/`n₂` count the pairs tied in `x`/`y` (SciPy's `kendalltau`).
///
/// `None` when the lengths differ, there are fewer than 2 pairs, a score is not finite, or
/// either side is constant (τ undefined).
pub fn kendall_tau(x: &[f64], y: &[f64]) -> Option<f64> {
    if x.len() != y.len() || x.len() < 2 || x.iter().chain(y).any(|v| !v.is_finite()) {
        return None;
    }
    let (mut s, mut tied_x, mut tied_y, mut pairs) = (0i64, 0i64, 0i64, 0i64);
    for i in 0..x.len() {
        for j in i + 1..x.len() {
            pairs += 1;
            let dx = x[i].total_cmp(&x[j]) as i64;
            let dy = y[i].total_cmp(&y[j]) as i64;
            if dx == 0 {
                tied_x += 1;
            }
            if dy == 0 {
                tied_y += 1;
            }
            s += dx * dy;
        }
    }
    let denom = (((pairs - tied_x) as f64) * ((pairs - tied_y) as f64)).sqrt();
    (denom > 0.0).then(|| s as f64 / denom)
}

/// Ranks 1..=n with ties given their average rank (SciPy's `rankdata`, method `average`).
pub fn average_ranks(v: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..v.len()).collect();
    order.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut ranks = vec![0.0; v.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && v[order[j + 1]] == v[order[i]] {
            j += 1;
        }
        let r = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            ranks[k] = r;
        }
        i = j + 1;
    }
    ranks
}

fn pearson(x: &[f64], y: &[f64]) -> Option<f64> {
    let n = x.len() as f64;
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx) * (a - mx);
        syy += (b - my) * (b - my);
    }
    let d = (sxx * syy).sqrt();
    (d > 0.0).then(|| sxy / d)
}

/// Spearman's ρ: Pearson's correlation of the average ranks (SciPy's `spearmanr`). `None` as
/// for [`kendall_tau`].
pub fn spearman(x: &[f64], y: &[f64]) -> Option<f64> {
    if x.len() != y.len() || x.len() < 2 || x.iter().chain(y).any(|v| !v.is_finite()) {
        return None;
    }
    pearson(&average_ranks(x), &average_ranks(y))
}

/// A confidence interval of Kendall's τ by the percentile bootstrap over architectures:
/// `resamples` draws of n pairs with replacement (ChaCha8 from `seed`), τ of each (draws where
/// τ is undefined, e.g. all one architecture, are left out), and the `(1 − level)/2` and
/// `(1 + level)/2` quantiles (linear interpolation, NumPy's default).
///
/// `None` when τ of the data itself is undefined or no draw gives a τ.
pub fn bootstrap_tau_ci(x: &[f64], y: &[f64], resamples: usize, level: f64, seed: u64) -> Option<(f64, f64)> {
    kendall_tau(x, y)?;
    let n = x.len();
    let mut rng = seeded(seed);
    let (mut bx, mut by) = (vec![0.0; n], vec![0.0; n]);
    let mut taus = Vec::with_capacity(resamples);
    for _ in 0..resamples {
        for k in 0..n {
            let i = rng.random_range(0..n);
            bx[k] = x[i];
            by[k] = y[i];
        }
        if let Some(t) = kendall_tau(&bx, &by) {
            taus.push(t);
        }
    }
    if taus.is_empty() {
        return None;
    }
    taus.sort_by(f64::total_cmp);
    Some((quantile(&taus, (1.0 - level) / 2.0), quantile(&taus, (1.0 + level) / 2.0)))
}

/// A paired percentile-bootstrap interval of `τ(a, truth) − τ(b, truth)`: two proxies of the
/// same architectures against the same ground truth, resampled together (ChaCha8 from
/// `seed`; draws where either τ is undefined are left out). Positive: `a` ranks better.
///
/// `None` when either τ of the data is undefined or no draw gives both.
pub fn bootstrap_tau_difference_ci(
    a: &[f64],
    b: &[f64],
    truth: &[f64],
    resamples: usize,
    level: f64,
    seed: u64,
) -> Option<(f64, f64)> {
    if a.len() != b.len() {
        return None;
    }
    kendall_tau(a, truth)?;
    kendall_tau(b, truth)?;
    let n = truth.len();
    let mut rng = seeded(seed);
    let (mut ba, mut bb, mut bt) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
    let mut diffs = Vec::with_capacity(resamples);
    for _ in 0..resamples {
        for k in 0..n {
            let i = rng.random_range(0..n);
            (ba[k], bb[k], bt[k]) = (a[i], b[i], truth[i]);
        }
        if let (Some(x), Some(y)) = (kendall_tau(&ba, &bt), kendall_tau(&bb, &bt)) {
            diffs.push(x - y);
        }
    }
    if diffs.is_empty() {
        return None;
    }
    diffs.sort_by(f64::total_cmp);
    Some((quantile(&diffs, (1.0 - level) / 2.0), quantile(&diffs, (1.0 + level) / 2.0)))
}

/// Indices by descending score, ties in listed order.
fn descending(v: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..v.len()).collect();
    order.sort_by(|&i, &j| v[j].total_cmp(&v[i]).then(i.cmp(&j)));
    order
}

/// Precision at the top quartile: of the `⌈n/4⌉` architectures the proxy ranks highest, the
/// share that are among the `⌈n/4⌉` best of the ground truth (ties ranked in listed order).
/// `None` for different lengths, no pair or a score that is not finite.
pub fn precision_top_quartile(proxy: &[f64], truth: &[f64]) -> Option<f64> {
    if proxy.len() != truth.len() || proxy.is_empty() || proxy.iter().chain(truth).any(|v| !v.is_finite()) {
        return None;
    }
    let k = proxy.len().div_ceil(4);
    let best: Vec<usize> = descending(truth)[..k].to_vec();
    Some(descending(proxy)[..k].iter().filter(|i| best.contains(i)).count() as f64 / k as f64)
}

/// Regret of picking by the proxy: the best ground truth minus the ground truth of the
/// architecture the proxy scores highest (the first listed among equals); 0 when the proxy
/// picks the best. `None` as for [`precision_top_quartile`].
pub fn regret(proxy: &[f64], truth: &[f64]) -> Option<f64> {
    precision_top_quartile(proxy, truth)?;
    let pick = descending(proxy)[0];
    Some(truth[descending(truth)[0]] - truth[pick])
}

/// The `q` quantile of sorted `v` with linear interpolation between order statistics.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    let pos = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// Standard deviation of τ between two independent rankings of `n` items, √(2(2n+5) /
/// (9n(n−1))) (Kendall 1938): the noise floor against which a measured τ is read. 0.16 at n = 20.
pub fn tau_chance_sd(n: usize) -> f64 {
    let n = n as f64;
    (2.0 * (2.0 * n + 5.0) / (9.0 * n * (n - 1.0))).sqrt()
}

/// Where `score` stands among `others`: the share of them it beats, ties counting half (1 =
/// better than all, 0 = worse than all; the top quartile is ≥ 0.75). `None` for no others.
pub fn percentile(score: f64, others: &[f64]) -> Option<f64> {
    if others.is_empty() {
        return None;
    }
    let beaten: f64 = others
        .iter()
        .map(|&o| match score.total_cmp(&o) {
            std::cmp::Ordering::Greater => 1.0,
            std::cmp::Ordering::Equal => 0.5,
            std::cmp::Ordering::Less => 0.0,
        })
        .sum();
    Some(beaten / others.len() as f64)
}

/// Draws `n` of `entries` (one per architecture) stratified over proxy score and MACs: the
/// entries sorted by fitness are cut into `n` equal strata, each stratum gets a MACs stratum of
/// a seeded permutation (a Latin hypercube over the two ranks) and gives the entry whose MACs
/// quantile is nearest that stratum's centre. All entries when there are at most `n`.
///
/// # Panics
/// Never: no stratum is empty when `n` is below the number of entries.
pub fn stratified_sample(entries: &[LedgerEntry], n: usize, seed: u64) -> Vec<usize> {
    let len = entries.len();
    if len <= n {
        return (0..len).collect();
    }
    let mut by_macs: Vec<usize> = (0..len).collect();
    by_macs.sort_by_key(|&i| (entries[i].backbone_macs, i));
    let mut macs_q = vec![0.0; len];
    for (r, &i) in by_macs.iter().enumerate() {
        macs_q[i] = r as f64 / (len - 1) as f64;
    }
    let mut by_fit: Vec<usize> = (0..len).collect();
    by_fit.sort_by(|&a, &b| entries[a].fitness.total_cmp(&entries[b].fitness).then(a.cmp(&b)));
    let mut cells: Vec<usize> = (0..n).collect();
    cells.shuffle(&mut seeded(seed));
    (0..n)
        .map(|k| {
            let stratum = &by_fit[k * len / n..(k + 1) * len / n];
            let target = (cells[k] as f64 + 0.5) / n as f64;
            *stratum
                .iter()
                .min_by(|&&a, &&b| (macs_q[a] - target).abs().total_cmp(&(macs_q[b] - target).abs()).then(a.cmp(&b)))
                .expect("strata are not empty")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_cases() {
        // 4 items, one swap: 5 concordant, 1 discordant of 6 pairs → τ = 4/6.
        assert!((kendall_tau(&[1.0, 2.0, 3.0, 4.0], &[1.0, 3.0, 2.0, 4.0]).unwrap() - 2.0 / 3.0).abs() < 1e-15);
        // d = (0, 1, −1, 0): ρ = 1 − 6·2 / (4·15) = 0.8.
        assert!((spearman(&[1.0, 2.0, 3.0, 4.0], &[1.0, 3.0, 2.0, 4.0]).unwrap() - 0.8).abs() < 1e-15);
        assert_eq!(kendall_tau(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]), Some(-1.0));
        // A constant side: undefined.
        assert_eq!(kendall_tau(&[1.0, 1.0, 1.0], &[1.0, 2.0, 3.0]), None);
        assert_eq!(spearman(&[1.0, 2.0], &[5.0, 5.0]), None);
        assert_eq!(kendall_tau(&[1.0], &[1.0]), None);
        assert_eq!(kendall_tau(&[1.0, f64::NAN], &[1.0, 2.0]), None);
        assert_eq!(average_ranks(&[10.0, 20.0, 10.0, 30.0]), vec![1.5, 3.0, 1.5, 4.0]);
        assert!((tau_chance_sd(20) - 0.1622).abs() < 1e-4);
        assert_eq!(percentile(3.0, &[1.0, 2.0, 3.0, 4.0]), Some(0.625));
        assert_eq!(percentile(5.0, &[1.0, 2.0]), Some(1.0));
        assert_eq!(percentile(5.0, &[]), None);
        assert_eq!(quantile(&[0.0, 1.0, 2.0, 3.0, 4.0], 0.975), 3.9);
    }

    #[test]
    fn picking_statistics_by_hand() {
        // 8 items: top quartile = 2. Truth best: items 7 (0.9), 6 (0.8). Proxy best: 7, 0.
        let truth = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 0.9];
        let proxy = [5.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 9.0];
        assert_eq!(precision_top_quartile(&proxy, &truth), Some(0.5));
        assert_eq!(regret(&proxy, &truth), Some(0.0));
        // Picks item 0 (0.1): regret 0.9 − 0.1. 5 items: ⌈5/4⌉ = 2.
        let (t5, p5) = ([0.1, 0.5, 0.9, 0.3, 0.2], [3.0, 2.0, 1.0, 0.0, 2.5]);
        assert!((regret(&p5, &t5).unwrap() - 0.8).abs() < 1e-15);
        assert_eq!(precision_top_quartile(&p5, &t5), Some(0.0));
        // Ties go to the first listed: items 1 and 2 tie at the top; item 1 is picked.
        assert!((regret(&[0.0, 1.0, 1.0], &[0.3, 0.1, 0.2]).unwrap() - 0.2).abs() < 1e-15);
        assert_eq!(regret(&[1.0], &[f64::NAN]), None);
        // A proxy against itself: Δτ is exactly 0 in every draw.
        let x = [1.0, 3.0, 2.0, 5.0, 4.0, 6.0];
        let t = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        assert_eq!(bootstrap_tau_difference_ci(&x, &x, &t, 500, 0.95, 1), Some((0.0, 0.0)));
        // The ground truth itself against a reversed proxy: τ 1 − (−1) = 2 in every draw.
        let rev: Vec<f64> = t.iter().map(|v| -v).collect();
        assert_eq!(bootstrap_tau_difference_ci(&t, &rev, &t, 500, 0.95, 1), Some((2.0, 2.0)));
    }

    fn entry(i: usize, fitness: f64, macs: u64) -> LedgerEntry {
        LedgerEntry {
            generation: 0,
            index: i,
            origin: crate::Origin::Random,
            arch: format!("{i:05}"),
            backbone_macs: macs,
            backbone_params: 1,
            latency_ms: None,
            fitness,
            metrics: vec![],
            recalibration_seconds: 0.0,
            evaluation_seconds: 0.0,
            worker: 0,
            rss_mib: None,
            threads: None,
        }
    }

    #[test]
    fn stratified_sample_covers_both_ranks() {
        // Fitness = i; MACs a permutation of 0..100 unrelated to it.
        let entries: Vec<LedgerEntry> = (0..100).map(|i| entry(i, i as f64, (i as u64 * 37) % 100)).collect();
        let pick = stratified_sample(&entries, 10, 4);
        assert_eq!(pick, stratified_sample(&entries, 10, 4), "seeded");
        // One per fitness decile, in order.
        for (k, &i) in pick.iter().enumerate() {
            assert!((10 * k..10 * k + 10).contains(&i), "{pick:?}");
        }
        let mut deciles: Vec<u64> = pick.iter().map(|&i| entries[i].backbone_macs / 10).collect();
        deciles.sort_unstable();
        deciles.dedup();
        assert!(deciles.len() >= 8, "MACs deciles {deciles:?}");
        assert_eq!(stratified_sample(&entries[..5], 10, 4), vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn bootstrap_is_seeded_and_degenerate_cases_are_exact() {
        let x: Vec<f64> = (0..12).map(f64::from).collect();
        // A perfect ranking stays perfect in every resample.
        assert_eq!(bootstrap_tau_ci(&x, &x, 200, 0.95, 1), Some((1.0, 1.0)));
        let y = [3.0, 1.0, 2.0, 6.0, 4.0, 5.0, 9.0, 7.0, 8.0, 12.0, 10.0, 11.0];
        let a = bootstrap_tau_ci(&x, &y, 500, 0.95, 7).unwrap();
        assert_eq!(bootstrap_tau_ci(&x, &y, 500, 0.95, 7).unwrap(), a);
        let t = kendall_tau(&x, &y).unwrap();
        assert!(a.0 < t && t < a.1, "{a:?} around {t}");
        assert_eq!(bootstrap_tau_ci(&[1.0, 1.0], &[1.0, 2.0], 10, 0.95, 0), None);
    }
}
