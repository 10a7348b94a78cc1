//! The supernet reproduces the official network definition: outputs of a PyTorch
//! restatement of the official blocks (fixture made by `fixtures/golden/make_golden.py` with
//! torch 2.11.0, seed in `golden.json`), from the same weights, to 1e-5 (eval), 1e-4
//! (training-mode BN), and the backward pass: every gradient of the path to 3e-4 of its
//! scale (measured: at most 7.6e-5). In both memory layouts (`runtime.memory_format`).

use detnas_device::settings::with_memory_format;
use detnas_device::{Layout, MemoryFormat};
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
fn supernet_matches_pytorch_reference_channels_last() {
    with_memory_format(MemoryFormat::ChannelsLast, || check(Layout::ChannelsLast));
}

#[test]
fn supernet_matches_pytorch_reference_nchw() {
    with_memory_format(MemoryFormat::Nchw, || check(Layout::Nchw));
}

fn check(layout: Layout) {
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
            assert_eq!(detnas_nn::layout::is_channels_last(f), layout == Layout::ChannelsLast, "layout of c{}", s + 2);
            assert_close(&format!("p{i}.eval.c{}", s + 2), f, &io[&format!("p{i}.eval.c{}", s + 2)]);
        }
        let logits = tch::no_grad(|| net.forward_t(x, &arch, false)).unwrap();
        assert_close(&format!("p{i}.eval.logits"), &logits, &io[&format!("p{i}.eval.logits")]);
        // Train-mode BN (batch statistics) on the backbone.
        let before = vs.variables();
        let before: Vec<(String, Tensor)> = before.into_iter().map(|(k, v)| (k, v.copy())).collect();
        let feats = tch::no_grad(|| net.features_t(x, &arch, true)).unwrap();
        // 1e-4: with channels-last, detnas runs NHWC kernels, the fixture NCHW ones; batch
        // statistics accumulate in another order and the normalisation by the small batch
        // variances of deep layers amplifies that float32 rounding (measured: 1.03e-5).
        assert_close_to(&format!("p{i}.train.c5"), feats.last().unwrap(), &io[&format!("p{i}.train.c5")], 1e-4);
        // The backward pass: gradients of L = Σ c5 · r (fixed r, as the fixture) for every
        // variable of the path, and none for the others.
        let c5 = net.features_t(x, &arch, true).unwrap().pop().unwrap();
        let r = Tensor::arange(c5.numel() as i64, (tch::Kind::Float, Device::Cpu)).sin().reshape(c5.size());
        (c5 * r).sum(tch::Kind::Float).backward();
        // Tolerance relative to the largest gradient of the path: a conv bias before a
        // training-mode BN has a gradient of exactly 0 in theory, float noise on both sides.
        let largest = io
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("p{i}.grad.")))
            .map(|(_, t)| f64::try_from(t.abs().max()).unwrap())
            .fold(0.0, f64::max);
        let mut compared = 0;
        let mut worst: f64 = 0.0;
        for (name, v) in vs.variables() {
            let g = v.grad();
            match io.get(&format!("p{i}.grad.{name}")) {
                Some(want) => {
                    assert!(g.defined(), "p{i}: no gradient for {name}");
                    assert_eq!(g.size(), want.size(), "{name}");
                    let diff = f64::try_from((&g - want).abs().max()).unwrap();
                    let scale = f64::try_from(want.abs().max()).unwrap().max(1e-2 * largest);
                    worst = worst.max(diff / scale);
                    assert!(diff <= 3e-4 * scale, "p{i}.grad.{name}: max |diff| {diff:e} (scale {scale:e})");
                    compared += 1;
                }
                None => assert!(
                    !g.defined() || f64::try_from(g.abs().max()).unwrap() == 0.0,
                    "p{i}: gradient for {name}, which the path does not use"
                ),
            }
        }
        assert!(compared > 20, "p{i}: only {compared} gradients compared");
        eprintln!("p{i}: {compared} gradients, worst relative difference {worst:.2e}");
        for (_, v) in vs.variables() {
            let mut g = v.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
        tch::no_grad(|| {
            for (k, v) in before {
                vs.variables()[&k].shallow_clone().copy_(&v);
            }
        });
    }
}
