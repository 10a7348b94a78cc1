//! The supernet reproduces the official network definition: outputs of a PyTorch
//! restatement of the official blocks (fixture made by `fixtures/golden/make_golden.py` with
//! torch 2.11.0, seed in `golden.json`), from the same weights, to 1e-5.

use detnas_nn::SupernetConfig;
use detnas_space::{Arch, SearchSpace};
use std::path::PathBuf;
use tch::{Device, Tensor, nn};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden").join(name)
}

fn assert_close(name: &str, got: &Tensor, want: &Tensor) {
    assert_close_to(name, got, want, 1e-5)
}

fn assert_close_to(name: &str, got: &Tensor, want: &Tensor, tol: f64) {
    assert_eq!(got.size(), want.size(), "{name}");
    let diff = f64::try_from((got - want).abs().max()).unwrap();
    let scale = f64::try_from(want.abs().max()).unwrap().max(1.0);
    assert!(diff <= tol * scale, "{name}: max |diff| {diff:e} (scale {scale})");
}

#[test]
fn supernet_matches_pytorch_reference() {
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("golden.json")).unwrap()).unwrap();
    let space = SearchSpace::from_toml_str(
        &format!(
            "name = {}\nstem = {}\nwidths = {}\ndepths = {}\nlast_conv = {}\nchoices = {}\n",
            meta["space"]["name"],
            meta["space"]["stem"],
            meta["space"]["widths"],
            meta["space"]["depths"],
            meta["space"]["last_conv"],
            meta["space"]["choices"]
        ),
        "golden",
    )
    .unwrap();
    let classes = meta["classes"].as_i64().unwrap();
    let mut vs = nn::VarStore::new(Device::Cpu);
    let net = SupernetConfig { space: space.clone(), classes: Some(classes) }.build(&vs.root());
    // Every var-store variable must be in the fixture, and nothing more.
    let file = Tensor::read_safetensors(fixture("supernet.safetensors")).unwrap();
    assert_eq!(file.len(), vs.variables().len(), "fixture and var store hold different variables");
    vs.load(fixture("supernet.safetensors")).unwrap();
    let io: std::collections::HashMap<String, Tensor> =
        Tensor::read_safetensors(fixture("io.safetensors")).unwrap().into_iter().collect();
    let x = &io["x"];
    for (i, p) in meta["paths"].as_array().unwrap().iter().enumerate() {
        let arch: Arch = space.parse_arch(p.as_str().unwrap()).unwrap();
        let feats = tch::no_grad(|| net.features_t(x, &arch, false)).unwrap();
        for (s, f) in feats.iter().enumerate() {
            assert_close(&format!("p{i}.eval.c{}", s + 2), f, &io[&format!("p{i}.eval.c{}", s + 2)]);
        }
        let logits = tch::no_grad(|| net.forward_t(x, &arch, false)).unwrap();
        assert_close(&format!("p{i}.eval.logits"), &logits, &io[&format!("p{i}.eval.logits")]);
        // Train-mode BN (batch statistics) on the backbone.
        let before = vs.variables();
        let before: Vec<(String, Tensor)> = before.into_iter().map(|(k, v)| (k, v.copy())).collect();
        let feats = tch::no_grad(|| net.features_t(x, &arch, true)).unwrap();
        // 1e-4: detnas runs channels-last (NHWC) kernels, the fixture NCHW ones; batch
        // statistics accumulate in another order and the normalisation by the small batch
        // variances of deep layers amplifies that float32 rounding (measured: 1.03e-5).
        assert_close_to(&format!("p{i}.train.c5"), feats.last().unwrap(), &io[&format!("p{i}.train.c5")], 1e-4);
        tch::no_grad(|| {
            for (k, v) in before {
                vs.variables()[&k].shallow_clone().copy_(&v);
            }
        });
    }
}
