//! BN recalibration against statistics computed directly.

use detnas_nn::{BnMode, Recalibration, Supernet, SupernetConfig};
use detnas_space::{Arch, SearchSpace};
use std::collections::HashMap;
use tch::{Device, Kind, Tensor, nn};

fn setup() -> (nn::VarStore, Supernet, Arch, Tensor) {
    tch::manual_seed(21);
    let space = SearchSpace::small().scaled(0.25).unwrap();
    let vs = nn::VarStore::new(Device::Cpu);
    let net = SupernetConfig { space, classes: Some(3) }.build(&vs.root());
    let arch: Arch = "32103210321032103210".parse().unwrap();
    let x = Tensor::randn([12, 3, 40, 40], (Kind::Float, Device::Cpu)) * 60.0 + 100.0;
    (vs, net, arch, x)
}

fn recalibrate(net: &Supernet, arch: &Arch, batches: &[Tensor], mode: BnMode) -> usize {
    let r = Recalibration::begin(mode);
    for b in batches {
        let _ = tch::no_grad(|| net.forward_t(b, arch, true)).unwrap();
    }
    r.finish()
}

fn stats(vs: &nn::VarStore) -> HashMap<String, Tensor> {
    vs.variables().into_iter().filter(|(k, _)| k.contains("running_")).map(|(k, v)| (k, v.copy())).collect()
}

/// The stem BN's input does not depend on any normalisation: its recalibrated statistics
/// equal the mean and unbiased variance of the stem conv output over all images, whatever
/// the batch split.
#[test]
fn exact_mode_equals_direct_statistics_for_any_split() {
    let (vs, net, arch, x) = setup();
    let v = vs.variables();
    let y =
        x.conv2d(&v["stem.conv.weight"], Some(&v["stem.conv.bias"]), [2, 2], [1, 1], [1, 1], 1).to_kind(Kind::Double);
    let mean = y.mean_dim(&[0i64, 2, 3][..], false, Kind::Double);
    let var = y.var_dim(&[0i64, 2, 3][..], true, false);
    for split in [vec![12], vec![4, 4, 4], vec![5, 7], vec![1; 12]] {
        let batches: Vec<Tensor> = x.split_with_sizes(&split, 0);
        let n = recalibrate(&net, &arch, &batches, BnMode::Exact);
        assert!(n > 60, "{n} BN layers");
        let rm = v["stem.bn.running_mean"].to_kind(Kind::Double);
        let rv = v["stem.bn.running_var"].to_kind(Kind::Double);
        let dm = f64::try_from((&rm - &mean).abs().max()).unwrap();
        let dv = f64::try_from(((&rv - &var).abs() / &var).max()).unwrap();
        assert!(dm < 1e-3 && dv < 1e-5, "split {split:?}: mean diff {dm}, relative var diff {dv}");
    }
}

/// Deeper BNs: the exact statistics do not depend on the order of the batches.
#[test]
fn exact_mode_is_order_independent() {
    let (vs, net, arch, x) = setup();
    let parts = x.split(4, 0);
    recalibrate(&net, &arch, &parts, BnMode::Exact);
    let a = stats(&vs);
    let reversed: Vec<Tensor> = parts.iter().rev().map(|t| t.shallow_clone()).collect();
    recalibrate(&net, &arch, &reversed, BnMode::Exact);
    let b = stats(&vs);
    let mut compared = 0;
    for (k, t) in &a {
        if k.starts_with("features.19.") || k.starts_with("head.") {
            let d = f64::try_from((t - &b[k]).abs().max()).unwrap();
            let s = f64::try_from(t.abs().max()).unwrap().max(1.0);
            assert!(d <= 1e-5 * s, "{k}: {d}");
            compared += 1;
        }
    }
    assert!(compared > 4);
}

/// EMA mode is the official recursion: reset to (0, 1), then `r ← 0.9 r + 0.1 batch_stat`
/// (unbiased batch variance).
#[test]
fn ema_mode_follows_the_recursion() {
    let (vs, net, arch, x) = setup();
    let v = vs.variables();
    let parts = x.split(6, 0);
    recalibrate(&net, &arch, &parts, BnMode::Ema);
    let (mut m, mut var) =
        (Tensor::zeros([4], (Kind::Double, Device::Cpu)), Tensor::ones([4], (Kind::Double, Device::Cpu)));
    for p in &parts {
        let y = p
            .conv2d(&v["stem.conv.weight"], Some(&v["stem.conv.bias"]), [2, 2], [1, 1], [1, 1], 1)
            .to_kind(Kind::Double);
        m = &m * 0.9 + y.mean_dim(&[0i64, 2, 3][..], false, Kind::Double) * 0.1;
        var = &var * 0.9 + y.var_dim(&[0i64, 2, 3][..], true, false) * 0.1;
    }
    let dm = f64::try_from((v["stem.bn.running_mean"].to_kind(Kind::Double) - &m).abs().max()).unwrap();
    let dv = f64::try_from(((v["stem.bn.running_var"].to_kind(Kind::Double) - &var).abs() / &var).max()).unwrap();
    assert!(dm < 1e-3 && dv < 1e-5, "{dm} {dv}");
}

/// Only the path's BNs change; without an active recalibration nothing is recorded.
#[test]
fn off_path_statistics_are_untouched() {
    let (vs, net, arch, x) = setup();
    let before = stats(&vs);
    recalibrate(&net, &arch, &[x.shallow_clone()], BnMode::Exact);
    let after = stats(&vs);
    for (k, t) in &before {
        let on_path = match k.strip_prefix("features.") {
            Some(rest) => {
                let mut it = rest.split('.');
                let i: usize = it.next().unwrap().parse().unwrap();
                it.next().unwrap().parse::<u8>().unwrap() == arch.choices()[i].id()
            }
            None => true,
        };
        assert_eq!(t.equal(&after[k]), !on_path, "{k}");
    }
}

/// Eval-mode conv+BN runs folded (`W·s`, `β + (b − μ)·s`); it must equal conv then BN with
/// the running statistics, for plain and depthwise convs, with and without conv bias, at
/// strides 1 and 2, on NCHW and channels-last inputs, and training mode must be untouched.
#[test]
fn folded_eval_equals_conv_then_bn() {
    use detnas_nn::bn::{ConvGeometry, conv_bn_t};
    use detnas_nn::layers::{ConvBnConfig, NormKind};
    use tch::nn::{Module, ModuleT};
    tch::manual_seed(3);
    for (depthwise, bias, stride, k) in
        [(false, false, 1, 1), (true, false, 2, 5), (false, true, 2, 3), (true, false, 1, 3)]
    {
        let vs = nn::VarStore::new(Device::Cpu);
        let (cin, cout) = (8, if depthwise { 8 } else { 12 });
        let unit =
            ConvBnConfig { cin, cout, kernel: k, stride, depthwise, bias, relu: false, std: None, norm: NormKind::Bn }
                .build(&vs.root());
        tch::no_grad(|| {
            // Non-trivial statistics and affine parameters.
            unit.bns[0].running_mean.shallow_clone().copy_(&(Tensor::randn([cout], (Kind::Float, Device::Cpu)) * 3.0));
            unit.bns[0]
                .running_var
                .shallow_clone()
                .copy_(&(Tensor::rand([cout], (Kind::Float, Device::Cpu)) * 4.0 + 0.1));
            unit.bns[0].ws.as_ref().unwrap().shallow_clone().copy_(&Tensor::randn([cout], (Kind::Float, Device::Cpu)));
            unit.bns[0].bs.as_ref().unwrap().shallow_clone().copy_(&Tensor::randn([cout], (Kind::Float, Device::Cpu)));
            if let Some(b) = &unit.conv.bs {
                b.shallow_clone().copy_(&Tensor::randn([cout], (Kind::Float, Device::Cpu)));
            }
        });
        let geometry = ConvGeometry { stride, padding: k / 2, groups: if depthwise { cin } else { 1 } };
        assert_eq!(unit.geometry, geometry);
        let x = Tensor::randn([2, cin, 9, 11], (Kind::Float, Device::Cpu));
        for x in [x.shallow_clone(), detnas_nn::layout::to_channels_last(&x)] {
            let folded = tch::no_grad(|| conv_bn_t(&unit.conv, geometry, &unit.bns[0], &x, false));
            let reference = tch::no_grad(|| unit.bns[0].forward_t(&unit.conv.forward(&x), false));
            let scale = reference.abs().max().double_value(&[]);
            let diff = (&folded - &reference).abs().max().double_value(&[]);
            assert!(
                diff <= 1e-5 * scale.max(1.0),
                "depthwise {depthwise} bias {bias} stride {stride}: {diff} of {scale}"
            );
            assert!(scale > 1.0, "the statistics must matter");
            // Training mode: conv then BN with batch statistics, as before.
            let before = unit.bns[0].running_mean.copy();
            let train = tch::no_grad(|| conv_bn_t(&unit.conv, geometry, &unit.bns[0], &x, true));
            let y = tch::no_grad(|| unit.conv.forward(&x));
            let batch_norm = (&y - y.mean_dim(&[0i64, 2, 3][..], true, None))
                / (y.var_dim(&[0i64, 2, 3][..], false, true) + 1e-5).sqrt();
            let expect = batch_norm * unit.bns[0].ws.as_ref().unwrap().view([1, -1, 1, 1])
                + unit.bns[0].bs.as_ref().unwrap().view([1, -1, 1, 1]);
            let diff = (&train - &expect).abs().max().double_value(&[]);
            assert!(diff < 1e-4, "training mode: {diff}");
            assert!(
                !unit.bns[0].running_mean.allclose(&before, 0.0, 0.0, false),
                "training mode updates the statistics"
            );
        }
    }
}

/// The unit's cached fold (eval mode) always equals a fresh fold: after an in-place weight
/// update (an optimizer step), a training-mode forward (running statistics move without a
/// version bump), a recalibration, a loaded state, and for a per-level unit on every level. A
/// repeated eval call reuses the cache (no fold operators). With gradients enabled the fold is
/// part of the graph.
#[test]
fn cached_fold_follows_every_change() {
    use detnas_nn::bn::conv_bn_t;
    use detnas_nn::layers::{ConvBnConfig, NormKind};
    use tch::nn::ModuleT;
    tch::manual_seed(9);
    let vs = nn::VarStore::new(Device::Cpu);
    let unit = ConvBnConfig {
        cin: 6,
        cout: 6,
        kernel: 3,
        stride: 1,
        depthwise: false,
        bias: true,
        relu: false,
        std: None,
        norm: NormKind::PerLevel { levels: 2, first: 3 },
    }
    .build(&vs.root());
    let x = Tensor::randn([2, 6, 7, 7], (Kind::Float, Device::Cpu));
    let check = |what: &str| {
        for l in 0..2 {
            let cached = tch::no_grad(|| unit.forward_level(&x, l, false));
            let fresh = tch::no_grad(|| conv_bn_t(&unit.conv, unit.geometry, &unit.bns[l], &x, false));
            let d = (&cached - &fresh).abs().max().double_value(&[]);
            assert_eq!(d, 0.0, "{what}, level {l}");
        }
    };
    check("fresh");
    let (_, ops) =
        detnas_device::profile::ops_of(false, None, || tch::no_grad(|| unit.forward_level(&x, 1, false))).unwrap();
    assert_eq!(ops.count("aten::rsqrt"), 0, "a repeated eval call folds again: {ops:?}");
    tch::no_grad(|| {
        let mut w = unit.conv.ws.shallow_clone();
        w -= Tensor::ones_like(&w) * 0.01;
    });
    check("after a weight update");
    let _ = tch::no_grad(|| unit.forward_level(&(&x * 3.0 + 1.0), 0, true));
    check("after a training-mode forward");
    let r = Recalibration::begin(BnMode::Exact);
    let _ = tch::no_grad(|| unit.forward_level(&(&x * 0.5), 1, true));
    r.finish();
    check("after a recalibration");
    let dir = std::env::temp_dir().join(format!("detnas-fold-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let saved = dir.join("unit.safetensors");
    vs.save(&saved).unwrap();
    tch::no_grad(|| {
        for (_, mut v) in vs.variables() {
            let _ = v.fill_(0.5);
        }
    });
    check("after a fill");
    let mut vs = vs;
    vs.load(&saved).unwrap();
    check("after a load");
    let _ = std::fs::remove_dir_all(&dir);
    // Gradients flow to the weights through an eval-mode unit when grad mode is on.
    let y = unit.forward_t(&x, false).sum(Kind::Float);
    y.backward();
    assert!(unit.bns[0].running_var.grad().defined() || unit.conv.ws.grad().defined());
    assert!(unit.conv.ws.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0);
}

/// Launch budget of the hot paths: exact recalibration adds no operator per BN per batch to a
/// training-mode forward (the batch statistics come out of the BN forward; pooling runs once
/// per `POOL_EVERY` batches), and a cached eval-mode unit runs its convolution only.
#[test]
fn recalibration_and_folded_eval_launch_budget() {
    use detnas_device::profile::ops_of;
    let (_vs, net, arch, x) = setup();
    let batches: Vec<Tensor> = (0..6).map(|i| x.narrow(0, 2 * i, 2)).collect();
    let plain = |n: usize| {
        ops_of(false, None, || {
            for b in &batches[..n] {
                let _ = tch::no_grad(|| net.forward_t(b, &arch, true)).unwrap();
            }
        })
        .unwrap()
        .1
        .aten_total()
    };
    let recal = |n: usize| {
        ops_of(false, None, || {
            let r = Recalibration::begin(BnMode::Exact);
            for b in &batches[..n] {
                let _ = tch::no_grad(|| net.forward_t(b, &arch, true)).unwrap();
            }
            r.finish()
        })
        .unwrap()
        .1
        .aten_total()
    };
    let per_batch_plain = (plain(6) - plain(2)) as f64 / 4.0;
    let per_batch_recal = (recal(6) - recal(2)) as f64 / 4.0;
    assert!(
        per_batch_recal <= per_batch_plain,
        "recalibration: {per_batch_recal} operators per batch, a training forward {per_batch_plain}"
    );
    // Eval mode: a repeated forward runs the same operators as the first minus the folds.
    let eval = || ops_of(false, None, || tch::no_grad(|| net.forward_t(&x, &arch, false)).unwrap()).unwrap().1;
    let first = eval();
    let again = eval();
    assert_eq!(again.count("aten::rsqrt"), 0, "{again:?}");
    assert!(again.aten_total() < first.aten_total());
    assert_eq!(again.count("aten::convolution"), first.count("aten::convolution"));
}
