//! Structural contracts over whole spaces.

use detnas_nn::{ChildNetConfig, Supernet, SupernetConfig, inherit, measure_child};
use detnas_space::{Arch, CostModel, InputSize, SearchSpace, cost, rng, sample_uniform};
use std::collections::HashMap;
use tch::{Device, Kind, Tensor, nn};

fn ceil_div(n: i64, d: i64) -> i64 {
    (n + d - 1) / d
}

/// Feature levels have the declared channels and strides (rounded up like the convs), and
/// are finite.
fn assert_levels(space: &SearchSpace, feats: &[Tensor], n: i64, h: i64, w: i64) {
    assert_eq!(feats.len(), space.widths.len());
    for (s, f) in feats.iter().enumerate() {
        let stride = space.stage_strides()[s] as i64;
        assert_eq!(
            f.size(),
            vec![n, space.widths[s] as i64, ceil_div(h, stride), ceil_div(w, stride)],
            "level C{}",
            s + 2
        );
        assert!(bool::try_from(f.isfinite().all()).unwrap(), "non-finite C{}", s + 2);
    }
}

fn supernet(space: &SearchSpace, classes: Option<i64>) -> (nn::VarStore, Supernet) {
    let vs = nn::VarStore::new(Device::Cpu);
    let net = SupernetConfig { space: space.clone(), classes }.build(&vs.root());
    (vs, net)
}

#[test]
fn supernet_levels_for_every_space() {
    // Full-width Small; width-scaled Large and Large-3.8G (same depths, same strides).
    for (space, h, w) in [
        (SearchSpace::small(), 224, 224),
        (SearchSpace::small(), 97, 130),
        (SearchSpace::large().scaled(0.25).unwrap(), 128, 96),
        (SearchSpace::large_3_8g().scaled(0.125).unwrap(), 64, 64),
    ] {
        tch::manual_seed(0);
        let (_vs, net) = supernet(&space, Some(7));
        let x = Tensor::randn([2, 3, h, w], (Kind::Float, Device::Cpu));
        let mut r = rng::seeded(1);
        for _ in 0..2 {
            let arch = sample_uniform(&space, &mut r);
            let feats = tch::no_grad(|| net.features_t(&x, &arch, false)).unwrap();
            assert_levels(&space, &feats, 2, h, w);
            let logits = tch::no_grad(|| net.forward_t(&x, &arch, false)).unwrap();
            assert_eq!(logits.size(), vec![2, 7]);
        }
    }
}

#[test]
fn full_width_children_of_large_spaces() {
    for space in [SearchSpace::large(), SearchSpace::large_3_8g()] {
        let arch = sample_uniform(&space, &mut rng::seeded(2));
        let vs = nn::VarStore::new(Device::Cpu);
        let child = ChildNetConfig { space: space.clone(), arch, classes: None }.build(&vs.root()).unwrap();
        let x = Tensor::randn([1, 3, 128, 160], (Kind::Float, Device::Cpu));
        let feats = tch::no_grad(|| child.features_t(&x, false));
        assert_levels(&space, &feats, 1, 128, 160);
    }
}

#[test]
fn wrong_architectures_are_errors() {
    let space = SearchSpace::small().scaled(0.25).unwrap();
    let (_vs, net) = supernet(&space, None);
    let x = Tensor::zeros([1, 3, 32, 32], (Kind::Float, Device::Cpu));
    let short: Arch = "0123".parse().unwrap();
    let e = net.features_t(&x, &short, false).unwrap_err().to_string();
    assert!(e.contains("4 genes"), "{e}");
    let mut only0 = space.clone();
    only0.choices = vec![0];
    let (_vs, net0) = supernet(&only0, None);
    let e = net0.features_t(&x, &Arch::uniform(detnas_space::Choice::Xception, 20), false).unwrap_err().to_string();
    assert!(e.contains("not in space"), "{e}");
}

/// Counting from modules (tensor sizes, recorded output shapes) equals the closed form.
#[test]
fn measured_counts_equal_closed_form() {
    let cases = [
        (SearchSpace::small(), InputSize::square(224), 1000, 6),
        (SearchSpace::small(), InputSize { height: 225, width: 301 }, 81, 2),
        (SearchSpace::large(), InputSize::square(224), 1000, 2),
        (SearchSpace::large_3_8g(), InputSize::square(224), 1000, 1),
        (SearchSpace::large_3_8g().scaled(0.3).unwrap(), InputSize::square(96), 10, 2),
    ];
    let mut r = rng::seeded(3);
    for (space, input, classes, n) in cases {
        for _ in 0..n {
            let arch = sample_uniform(&space, &mut r);
            let vs = nn::VarStore::new(Device::Cpu);
            let child = ChildNetConfig { space: space.clone(), arch: arch.clone(), classes: Some(classes as i64) }
                .build(&vs.root())
                .unwrap();
            let m = measure_child(&child, &vs, input.height as i64, input.width as i64);
            let c = cost(&space, &arch, &CostModel { input, classes });
            assert_eq!(
                (m.backbone_macs, m.total_macs, m.backbone_params, m.total_params),
                (c.backbone_macs, c.total_macs, c.backbone_params, c.total_params),
                "{} {arch} at {input:?}",
                space.name
            );
        }
    }
}

#[test]
fn inherited_child_equals_supernet_path() {
    let space = SearchSpace::small().scaled(0.5).unwrap();
    tch::manual_seed(4);
    let (svs, net) = supernet(&space, Some(11));
    // Give the BN statistics non-trivial values so that inheriting them matters.
    tch::no_grad(|| {
        for (name, mut t) in svs.variables() {
            if name.ends_with("running_var") {
                let _ = t.uniform_(0.5, 2.0);
            } else if name.ends_with("running_mean") {
                let _ = t.normal_(0.0, 0.2);
            }
        }
    });
    let x = Tensor::randn([2, 3, 96, 96], (Kind::Float, Device::Cpu));
    let mut r = rng::seeded(5);
    for _ in 0..3 {
        let arch = sample_uniform(&space, &mut r);
        let mut cvs = nn::VarStore::new(Device::Cpu);
        let child =
            ChildNetConfig { space: space.clone(), arch: arch.clone(), classes: Some(11) }.build(&cvs.root()).unwrap();
        inherit(&svs, &mut cvs, &arch).unwrap();
        let a = tch::no_grad(|| net.forward_t(&x, &arch, false)).unwrap();
        let b = tch::no_grad(|| child.forward_t(&x, false));
        assert_eq!(f64::try_from((&a - &b).abs().max()).unwrap(), 0.0, "{arch}");
        let fa = tch::no_grad(|| net.features_t(&x, &arch, false)).unwrap();
        let fb = tch::no_grad(|| child.features_t(&x, false));
        for (p, q) in fa.iter().zip(&fb) {
            assert!(p.equal(q));
        }
    }
    // A child of another space cannot inherit.
    let other = SearchSpace::small().scaled(0.25).unwrap();
    let arch = sample_uniform(&other, &mut r);
    let mut cvs = nn::VarStore::new(Device::Cpu);
    ChildNetConfig { space: other, arch: arch.clone(), classes: Some(11) }.build(&cvs.root()).unwrap();
    let e = inherit(&svs, &mut cvs, &arch).unwrap_err().to_string();
    assert!(e.contains("shape"), "{e}");
}

fn snapshot(vs: &nn::VarStore) -> HashMap<String, Tensor> {
    vs.variables().into_iter().map(|(k, v)| (k, v.detach().copy())).collect()
}

/// Whether variable `name` belongs to path `arch` (stem and head belong to every path).
fn on_path(name: &str, arch: &Arch) -> bool {
    match name.strip_prefix("features.") {
        None => true,
        Some(rest) => {
            let mut it = rest.split('.');
            let i: usize = it.next().unwrap().parse().unwrap();
            let c: u8 = it.next().unwrap().parse().unwrap();
            arch.choices()[i].id() == c
        }
    }
}

/// A gradient step on one path leaves every other choice bit-identical: off-path choices get
/// no gradient at all (undefined, not zero) and their BN statistics do not move.
#[test]
fn gradient_step_touches_only_the_sampled_path() {
    let space = SearchSpace::small().scaled(0.25).unwrap();
    tch::manual_seed(6);
    let (vs, net) = supernet(&space, Some(5));
    let before = snapshot(&vs);
    let arch: Arch = "01230123012301230123".parse().unwrap();
    let x = Tensor::randn([4, 3, 64, 64], (Kind::Float, Device::Cpu));
    let y = Tensor::from_slice(&[0i64, 1, 2, 3]);
    let loss = net.forward_t(&x, &arch, true).unwrap().cross_entropy_for_logits(&y);
    assert!(f64::try_from(&loss).unwrap().is_finite());
    loss.backward();
    let vars = vs.variables();
    tch::no_grad(|| {
        for (name, t) in &vars {
            let g = t.grad();
            if on_path(name, &arch) {
                if t.requires_grad() {
                    assert!(g.defined(), "{name} on the path has no gradient");
                    let mut p = t.shallow_clone();
                    p -= g * 0.1;
                }
            } else {
                assert!(!g.defined(), "{name} is off the path but has a gradient");
            }
        }
    });
    let mut changed_on_path = 0;
    for (name, t) in vs.variables() {
        let same = t.equal(&before[&name]);
        if on_path(&name, &arch) {
            changed_on_path += usize::from(!same);
        } else {
            assert!(same, "{name} is off the path but changed");
        }
    }
    assert!(changed_on_path > 100, "only {changed_on_path} path variables changed");
}

/// The test suite's forward + backward of the full Small supernet at 224×224, batch 2.
#[test]
fn small_supernet_forward_backward_224() {
    let space = SearchSpace::small();
    tch::manual_seed(7);
    let (vs, net) = supernet(&space, Some(1000));
    let arch: Arch = "21202112331300313132".parse().unwrap();
    let x = Tensor::randn([2, 3, 224, 224], (Kind::Float, Device::Cpu));
    let feats = net.features_t(&x, &arch, true).unwrap();
    assert_levels(&space, &feats, 2, 224, 224);
    let logits = net.forward_t(&x, &arch, true).unwrap();
    assert_eq!(logits.size(), vec![2, 1000]);
    let loss = logits.cross_entropy_for_logits(&Tensor::from_slice(&[3i64, 999]));
    let v = f64::try_from(&loss).unwrap();
    // Official init: FC N(0, 0.01) keeps logits small, so the loss is near ln(1000).
    assert!((v - 1000f64.ln()).abs() < 0.5, "loss {v}");
    loss.backward();
    let stem_grad = vs.variables()["stem.conv.weight"].grad();
    assert!(bool::try_from(stem_grad.isfinite().all()).unwrap());
    assert!(f64::try_from(stem_grad.abs().sum(Kind::Float)).unwrap() > 0.0);
}

#[test]
fn official_initialisation() {
    let space = SearchSpace::small().scaled(0.5).unwrap();
    tch::manual_seed(8);
    let (vs, _net) = supernet(&space, Some(1000));
    let v = vs.variables();
    let all = |name: &str, value: f64| f64::try_from((&v[name] - value).abs().max()).unwrap() < 1e-7;
    assert!(all("stem.bn.weight", 1.0) && all("stem.bn.bias", 1e-4));
    assert!(all("features.3.2.branch.1.bn.weight", 1.0) && all("features.3.2.branch.1.bn.bias", 1e-4));
    assert!(all("head.fc.bias", 0.0) && all("stem.conv.bias", 0.0));
    let std = |name: &str| f64::try_from(v[name].std(true)).unwrap();
    assert!((std("stem.conv.weight") - 0.01).abs() < 0.002);
    assert!((std("head.fc.weight") - 0.01).abs() < 0.001);
    // Depthwise: std 1 (fan-in per group is 1); the first 1×1 of a stride-1 block of the last
    // stage (width 320 at ×0.5) sees half the channels, 160: std 1/160.
    assert!((std("features.19.0.branch.1.conv.weight") - 1.0).abs() < 0.05);
    let pw = "features.19.0.branch.0.conv.weight";
    assert_eq!(v[pw].size()[1], 160);
    assert!((std(pw) * 160.0 - 1.0).abs() < 0.05);
}

#[test]
fn aligned_choices_compute_the_reference_function() {
    // Small at ×0.25 (20 blocks, strides 1 and 2). Before alignment the 3×3, 5×5 and 7×7
    // paths differ; after it they are the same function in training and in eval mode, and
    // any mix of them equals the all-3×3 path. Xception takes the reference's 1×1 weights
    // and BNs, its middle 1×1 is the identity and its outer depthwise kernels are
    // centre-one identities.
    let space = SearchSpace::small().scaled(0.25).unwrap();
    tch::manual_seed(5);
    let (vs, net) = supernet(&space, Some(10));
    let x = Tensor::randn([4, 3, 32, 32], (Kind::Float, Device::Cpu));
    let n = space.num_blocks();
    let path = |c: u8| Arch::new(vec![detnas_space::Choice::from_id(c).unwrap(); n]);
    let mixed = Arch::new((0..n).map(|i| detnas_space::Choice::from_id((i % 3) as u8).unwrap()).collect());
    // Backbone features of every stage, concatenated (the head's dropout is random).
    let run = |a: &Arch, train: bool| {
        let feats = tch::no_grad(|| net.features_t(&x, a, train)).unwrap();
        Tensor::cat(&feats.iter().map(|f| f.flatten(0, -1)).collect::<Vec<_>>(), 0)
    };
    let close = |a: &Tensor, b: &Tensor| a.allclose(b, 1e-4, 1e-5, false);
    assert!(!close(&run(&path(0), true), &run(&path(2), true)), "choices differ before alignment");
    assert_eq!(Supernet::reference_choice(&space), Some(detnas_space::Choice::Shuffle3));
    net.align_choices();
    // Eval mode first: a training-mode forward moves the running statistics of its own path.
    for train in [false, true] {
        let reference = run(&path(0), train);
        for a in [path(1), path(2), mixed.clone()] {
            let y = run(&a, train);
            let diff = f64::try_from((&reference - &y).abs().max()).unwrap();
            assert!(close(&reference, &y), "{a} differs from the 3×3 path (train {train}) by {diff}");
        }
    }
    let vars = vs.variables();
    let v = |name: &str| vars.get(name).unwrap_or_else(|| panic!("{name}"));
    for b in [0, 5] {
        let r = |j: usize, what: &str| v(&format!("features.{b}.0.branch.{j}.{what}"));
        let xc = |j: usize, what: &str| v(&format!("features.{b}.3.branch.{j}.{what}"));
        for what in ["conv.weight", "bn.weight", "bn.bias"] {
            assert!(r(0, what).equal(xc(1, what)) && r(2, what).equal(xc(5, what)), "block {b} {what}");
        }
        let mid = xc(3, "conv.weight").size()[0];
        assert!(xc(3, "conv.weight").equal(&Tensor::eye(mid, (Kind::Float, Device::Cpu)).view([mid, mid, 1, 1])));
        for j in [0, 4] {
            let w = xc(j, "conv.weight");
            assert_eq!(f64::try_from(w.sum(Kind::Double)).unwrap(), w.size()[0] as f64);
            assert!(w.narrow(2, 1, 1).narrow(3, 1, 1).eq(1.0).all().int64_value(&[]) == 1);
        }
    }
    // A 7×7 kernel is the 3×3 one in its centre, zero around it.
    let k7 = v("features.0.2.branch.1.conv.weight");
    assert!(k7.narrow(2, 2, 3).narrow(3, 2, 3).equal(v("features.0.0.branch.1.conv.weight")));
    assert_eq!(
        f64::try_from(k7.abs().sum(Kind::Double)).unwrap(),
        f64::try_from(k7.narrow(2, 2, 3).narrow(3, 2, 3).abs().sum(Kind::Double)).unwrap()
    );
}
