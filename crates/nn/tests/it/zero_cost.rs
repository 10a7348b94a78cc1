//! The training-free proxies match a PyTorch restatement of the official code
//! (`fixtures/zero_cost/make_zero_cost.py`, torch 2.11.0: MAE-DET's entropy score with the
//! official blocks' `entropy_forward`, NASWOT with forward hooks on every ReLU, SynFlow on a
//! BN-free float64 copy with autograd) on the same
//! weights and inputs, to 1e-5, for both channel shuffles and all four choices.

use detnas_nn::zero_cost::{EntropySettings, entropy, entropy_once, naswot, naswot_with, synflow, synflow_with};
use detnas_space::SearchSpace;
use std::path::PathBuf;
use tch::Tensor;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/zero_cost").join(name)
}

fn space(meta: &serde_json::Value, shuffle: &str) -> SearchSpace {
    let s = &meta["space"];
    let text = format!(
        "name = \"zero-cost\"\nstem = {}\nwidths = {}\ndepths = {}\nlast_conv = {}\nchoices = {}\nshuffle = \"{shuffle}\"\n",
        s["stem"], s["widths"], s["depths"], s["last_conv"], s["choices"]
    );
    SearchSpace::from_toml_str(&text, "zero-cost").unwrap()
}

#[test]
fn proxies_match_the_pytorch_restatement_of_the_official_code() {
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("zero_cost.json")).unwrap()).unwrap();
    let file: std::collections::HashMap<String, Tensor> =
        Tensor::read_safetensors(fixture("zero_cost.safetensors")).unwrap().into_iter().collect();
    for (k, case) in meta["cases"].as_array().unwrap().iter().enumerate() {
        let space = space(&meta, case["shuffle"].as_str().unwrap());
        let arch = space.parse_arch(case["arch"].as_str().unwrap()).unwrap();
        let mut weights = |place: detnas_nn::zero_cost::Place, _: &detnas_nn::layers::ConvBnConfig| {
            file[&format!("{k}.w.{}", place.name())].shallow_clone()
        };
        let x = &file[&format!("{k}.entropy_input")];
        let e = entropy_once(&space, &arch, x, &mut weights).unwrap();
        let want_e = case["entropy"].as_f64().unwrap();
        assert!((e - want_e).abs() <= 1e-5 * want_e.abs(), "case {k} entropy: {e} vs PyTorch {want_e}");
        let images = &file[&format!("{k}.naswot_input")];
        let n = naswot_with(&space, &arch, images, &mut weights).unwrap();
        let want_n = case["naswot"].as_f64().unwrap();
        assert!((n - want_n).abs() <= 1e-5 * want_n.abs(), "case {k} NASWOT: {n} vs PyTorch {want_n}");
        let hw: Vec<i64> = case["synflow_input"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
        let f = synflow_with(&space, &arch, [hw[0], hw[1]], &mut weights).unwrap();
        let want_f = case["synflow"].as_f64().unwrap();
        assert!((f - want_f).abs() <= 1e-5 * want_f.abs(), "case {k} SynFlow: {f} vs PyTorch {want_f}");
        eprintln!("case {k}: entropy {e} (PyTorch {want_e}), NASWOT {n} (PyTorch {want_n}), SynFlow {f} ({want_f})");
    }
}

/// With drawn weights, a seed gives the same scores, repeats reduce to their mean, and a wider
/// or larger-kernel architecture has the higher entropy (ln σ of a conv grows as ½ ln fan-in).
#[test]
fn drawn_scores_repeat_and_rank_bigger_kernels_higher() {
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("zero_cost.json")).unwrap()).unwrap();
    let space = space(&meta, "detnas");
    let s = EntropySettings { batch: 2, input: [32, 32], repeats: 3, seed: 5 };
    let small = space.parse_arch("000000").unwrap();
    let large = space.parse_arch("222222").unwrap();
    let (a, sd) = entropy(&space, &small, &s).unwrap();
    assert_eq!(entropy(&space, &small, &s).unwrap(), (a, sd));
    assert!(sd > 0.0 && sd < 0.05 * a, "{a} ± {sd}");
    let (b, _) = entropy(&space, &large, &s).unwrap();
    // 7×7 against 3×3 depthwise in 6 blocks: about ½ ln(49/9) per block, in the weighted sum.
    assert!(b > a + 3.0, "7x7 {b} vs 3x3 {a}");
    let images = detnas_nn::zero_cost::Gaussian::new(1).tensor(&[4, 3, 32, 32]);
    let n = naswot(&space, &small, &images, 9).unwrap();
    assert_eq!(naswot(&space, &small, &images, 9), Some(n));
    assert!(n.is_finite() && n > 0.0, "{n}");
    // SynFlow grows with the kernels' fan-in too, and a seed repeats it.
    let (fa, fb) = (synflow(&space, &small, [32, 32], 4).unwrap(), synflow(&space, &large, [32, 32], 4).unwrap());
    assert!(fb > fa && synflow(&space, &small, [32, 32], 4) == Some(fa), "{fa} {fb}");
}
