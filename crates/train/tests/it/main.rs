//! detnas-train integration tests that need no binary: path-wise SGD semantics.

use detnas_nn::{PathIndex, SupernetConfig};
use detnas_space::{Arch, SearchSpace};
use detnas_train::PathSgd;
use detnas_train::loss::smooth_cross_entropy;
use std::collections::HashMap;
use tch::{Device, Kind, Tensor, nn};

fn snapshot(vs: &nn::VarStore) -> HashMap<String, Tensor> {
    vs.variables().into_iter().map(|(k, v)| (k, v.detach().copy())).collect()
}

fn changed(a: &HashMap<String, Tensor>, b: &HashMap<String, Tensor>, name: &str) -> bool {
    !a[name].equal(&b[name])
}

/// Two SGD steps (momentum 0.9, weight decay) on two different paths: a choice used only in
/// step 1 must not move in step 2 — no momentum step, no weight decay — and a choice never
/// sampled never moves and never gets a momentum buffer.
#[test]
fn off_path_choices_get_no_update_at_all() {
    let space = SearchSpace::small().scaled(0.25).unwrap();
    tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let net = SupernetConfig { space: space.clone(), classes: Some(4) }.build(&vs.root());
    let index = PathIndex::new(&vs);
    let mut opt = PathSgd::new(0.9, 0.1);
    let a: Arch = "00000000000000000000".parse().unwrap();
    let b: Arch = "11111111111111111111".parse().unwrap();
    let x = Tensor::randn([4, 3, 32, 32], (Kind::Float, Device::Cpu));
    let y = Tensor::from_slice(&[0i64, 1, 2, 3]);
    let step = |arch: &Arch, opt: &mut PathSgd| {
        let loss = smooth_cross_entropy(&net.forward_t(&x, arch, true).unwrap(), &y, 0.1);
        loss.backward();
        opt.step(index.vars(arch), 0.5);
    };
    let s0 = snapshot(&vs);
    step(&a, &mut opt);
    let s1 = snapshot(&vs);
    step(&b, &mut opt);
    let s2 = snapshot(&vs);
    let only_a = "features.5.0.branch.0.conv.weight";
    let only_b = "features.5.1.branch.0.conv.weight";
    let never = "features.5.3.branch.0.conv.weight";
    assert!(changed(&s0, &s1, only_a) && !changed(&s1, &s2, only_a), "choice 0 moved while path b trained");
    assert!(!changed(&s0, &s1, only_b) && changed(&s1, &s2, only_b));
    assert!(!changed(&s0, &s2, never));
    // Also BN affine parameters and statistics of choices off the path.
    assert!(!changed(&s1, &s2, "features.5.0.branch.0.bn.weight"));
    assert!(!changed(&s1, &s2, "features.5.0.branch.0.bn.running_mean"));
    assert!(!changed(&s0, &s2, "features.5.2.branch.1.bn.running_var"));
    // Momentum buffers exist exactly for variables of paths a and b.
    assert!(opt.buffers().contains_key(only_a) && opt.buffers().contains_key(only_b));
    assert!(!opt.buffers().keys().any(|k| k.starts_with("features.5.3.") || k.starts_with("features.0.2.")));
    // Shared variables (stem, head) moved in both steps.
    assert!(changed(&s1, &s2, "stem.conv.weight") && changed(&s1, &s2, "head.fc.weight"));
}

/// The update equals PyTorch's SGD formula, with decay only on conv/FC weights.
#[test]
fn sgd_matches_the_formula() {
    let vs = nn::VarStore::new(Device::Cpu);
    let layer = vs.root() / "layer";
    let w = layer.var("weight", &[2, 2], nn::Init::Const(1.0));
    let b = layer.var("bias", &[2], nn::Init::Const(1.0));
    let vars = [("layer.weight".to_string(), w.shallow_clone()), ("layer.bias".to_string(), b.shallow_clone())];
    let mut opt = PathSgd::new(0.9, 0.01);
    let grad_step = |opt: &mut PathSgd| {
        let loss = (&w * 3.0).sum(Kind::Float) + (&b * 2.0).sum(Kind::Float);
        loss.backward();
        opt.step(vars.iter(), 0.1);
    };
    grad_step(&mut opt);
    // weight: g = 3 + 0.01·1 = 3.01, buf = g, w = 1 − 0.301; bias: g = 2, b = 1 − 0.2.
    assert!((f64::try_from(w.get(0).get(0)).unwrap() - (1.0 - 0.301)).abs() < 1e-6);
    assert!((f64::try_from(b.get(0)).unwrap() - 0.8).abs() < 1e-6);
    grad_step(&mut opt);
    // weight: g = 3 + 0.01·0.699, buf = 0.9·3.01 + g, w −= 0.1·buf.
    let w1 = 0.699f64;
    let buf = 0.9 * 3.01 + (3.0 + 0.01 * w1);
    assert!((f64::try_from(w.get(1).get(1)).unwrap() - (w1 - 0.1 * buf)).abs() < 1e-5);
    assert!((f64::try_from(b.get(1)).unwrap() - (0.8 - 0.1 * (0.9 * 2.0 + 2.0))).abs() < 1e-6);
}

/// Training works at all: one fixed batch, one fixed path, is memorised.
#[test]
fn a_fixed_batch_is_memorised() {
    let space = SearchSpace::small().scaled(0.25).unwrap();
    tch::manual_seed(1);
    let vs = nn::VarStore::new(Device::Cpu);
    let net = SupernetConfig { space: space.clone(), classes: Some(4) }.build(&vs.root());
    let index = PathIndex::new(&vs);
    let mut opt = PathSgd::new(0.9, 0.0);
    let arch: Arch = "01230123012301230123".parse().unwrap();
    // Inputs from a fixed formula: tests of this binary run in parallel and share libtorch's
    // global generator, so randn here would differ from run to run.
    let x =
        (Tensor::arange(8 * 3 * 32 * 32, (Kind::Float, Device::Cpu)) * 0.37).sin().view([8, 3, 32, 32]) * 60.0 + 128.0;
    let y = Tensor::from_slice(&[0i64, 1, 2, 3, 0, 1, 2, 3]);
    let mut losses = Vec::new();
    let head = net.head().unwrap();
    for step in 0..100u64 {
        // Dropout masks from their own seeds, not libtorch's generator (which another test of
        // this binary may reseed meanwhile).
        let seeds: Vec<u64> = (0..8).map(|i| step * 8 + i).collect();
        let mask = detnas_nn::layers::dropout_mask(&seeds, head.channels(), head.dropout, Device::Cpu);
        let logits = net.forward_masked(&x, &arch, true, Some(&mask)).unwrap();
        let loss = smooth_cross_entropy(&logits, &y, 0.0);
        losses.push(f64::try_from(&loss).unwrap());
        loss.backward();
        opt.step(index.vars(&arch), 0.02);
    }
    // With the official recipe (momentum 0.9, N(0, 1/fan_in) init behind BN, dropout) the loss
    // reaches ~0 and then spikes now and then; memorising means reaching near-zero loss.
    let start = losses[..5].iter().sum::<f64>() / 5.0;
    let best = losses[50..].iter().copied().fold(f64::INFINITY, f64::min);
    assert!(best < 0.05 * start, "start {start}, best {best}: {losses:?}");
}
