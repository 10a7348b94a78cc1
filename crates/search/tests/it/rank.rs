//! Rank statistics against SciPy (`tests/fixtures/rank_gen.py`): Kendall τ-b and Spearman ρ
//! exactly, the percentile-bootstrap CIs of τ and of a paired τ difference within Monte-Carlo
//! error.

use detnas_search::rank::{bootstrap_tau_ci, bootstrap_tau_difference_ci, kendall_tau, spearman};

#[test]
fn tau_spearman_and_bootstrap_agree_with_scipy() {
    let text = include_str!("../fixtures/rank_scipy.json");
    let fixture: serde_json::Value = serde_json::from_str(text).unwrap();
    let floats =
        |v: &serde_json::Value| -> Vec<f64> { v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect() };
    let mut with_ci = 0;
    for case in fixture["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let (x, y) = (floats(&case["x"]), floats(&case["y"]));
        let tau = kendall_tau(&x, &y).unwrap();
        assert!((tau - case["kendall_tau"].as_f64().unwrap()).abs() < 1e-12, "{name}: τ {tau}");
        let rho = spearman(&x, &y).unwrap();
        assert!((rho - case["spearman"].as_f64().unwrap()).abs() < 1e-12, "{name}: ρ {rho}");
        if let Some(ci) = case.get("ci95") {
            let want = floats(ci);
            let (lo, hi) = bootstrap_tau_ci(&x, &y, 20_000, 0.95, 3).unwrap();
            // Both are 20000-draw estimates of the same quantiles; τ moves in steps of
            // about 2 / (n(n−1)/2).
            assert!((lo - want[0]).abs() < 0.03 && (hi - want[1]).abs() < 0.03, "{name}: ({lo}, {hi}) vs {want:?}");
            with_ci += 1;
        }
    }
    assert_eq!(with_ci, 3);
    // Paired intervals of τ(a) − τ(b) against the same ground truth.
    let differences = fixture["differences"].as_array().unwrap();
    assert_eq!(differences.len(), 2);
    for case in differences {
        let name = case["name"].as_str().unwrap();
        let (a, b, t) = (floats(&case["a"]), floats(&case["b"]), floats(&case["truth"]));
        let delta = kendall_tau(&a, &t).unwrap() - kendall_tau(&b, &t).unwrap();
        assert!((delta - case["delta_tau"].as_f64().unwrap()).abs() < 1e-12, "{name}: Δτ {delta}");
        let want = floats(&case["ci95"]);
        let (lo, hi) = bootstrap_tau_difference_ci(&a, &b, &t, 20_000, 0.95, 3).unwrap();
        assert!((lo - want[0]).abs() < 0.04 && (hi - want[1]).abs() < 0.04, "{name}: ({lo}, {hi}) vs {want:?}");
    }
}
