//! Both detectors on the supernet and on a child backbone: shapes, finite losses, gradients
//! only on the sampled path, and child(inherit(supernet)) == supernet path, detection for
//! detection.

use detnas_detect::rcnn::{FasterRcnnConfig, RoiHeadsConfig, RpnConfig};
use detnas_detect::retinanet::RetinaNetConfig;
use detnas_detect::{DetectorConfig, HeadConfig, Target};
use detnas_space::{SearchSpace, SpaceSpec};
use tch::{Device, Kind, Tensor, nn};

fn space() -> SearchSpace {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/demo/space.toml");
    SpaceSpec { space: p.to_string_lossy().into_owned(), width_mult: 1.0 }.resolve().unwrap()
}

fn heads() -> Vec<HeadConfig> {
    let sizes = vec![16.0, 32.0, 64.0, 128.0, 256.0];
    vec![
        HeadConfig::Retinanet(RetinaNetConfig { num_convs: 2, anchor_sizes: sizes.clone(), ..Default::default() }),
        HeadConfig::Retinanet(RetinaNetConfig {
            num_convs: 1,
            level_bn: true,
            anchor_sizes: sizes.clone(),
            ..Default::default()
        }),
        HeadConfig::FasterRcnn(FasterRcnnConfig {
            rpn: RpnConfig { anchor_sizes: sizes.clone(), post_nms_top_n_test: 50, ..Default::default() },
            roi: RoiHeadsConfig { conv_dim: 16, fc_dim: 32, batch_per_image: 64, ..Default::default() },
        }),
        HeadConfig::FasterRcnn(FasterRcnnConfig {
            rpn: RpnConfig { anchor_sizes: sizes, post_nms_top_n_test: 50, ..Default::default() },
            roi: RoiHeadsConfig {
                head: detnas_detect::rcnn::BoxHeadKind::TwoFc,
                fc_dim: 32,
                batch_per_image: 64,
                ..Default::default()
            },
        }),
    ]
}

fn targets() -> Vec<Target> {
    let t = |rows: &[[f32; 4]], labels: &[i64]| Target {
        boxes: detnas_detect::boxes::tensor_of(rows),
        labels: Tensor::from_slice(labels),
        seed: rows.len() as u64,
    };
    vec![t(&[[4.0, 6.0, 30.0, 40.0], [40.0, 10.0, 60.0, 26.0]], &[0, 2]), t(&[[10.0, 10.0, 50.0, 50.0]], &[1])]
}

/// A seeded supernet detector with `head` (16-wide FPN with BN, 3 classes) and a batch of two
/// random 64×64 images with their sizes.
fn supernet_detector(
    space: &SearchSpace,
    head: &HeadConfig,
) -> (DetectorConfig, nn::VarStore, detnas_detect::Detector, Tensor, [(i64, i64); 2]) {
    tch::manual_seed(0);
    let cfg = DetectorConfig { fpn_channels: 16, fpn_bn: true, head: head.clone() };
    let vs = nn::VarStore::new(Device::Cpu);
    let det = cfg.build(&vs.root(), space, None, 3).unwrap();
    let x = Tensor::rand([2, 3, 64, 64], (Kind::Float, Device::Cpu)) * 255.0;
    (cfg, vs, det, x, [(64, 64), (60, 64)])
}

#[test]
fn losses_gradients_and_child_equivalence() {
    let space = space();
    let arch = space.parse_arch("23102").unwrap();
    for head in heads() {
        let (cfg, vs, det, x, sizes) = supernet_detector(&space, &head);
        tch::manual_seed(1);
        let losses = det.losses(&x, &sizes, &targets(), Some(&arch)).unwrap();
        let total = losses.iter().map(|l| l.value()).reduce(|a, b| a + b).unwrap();
        let v = f64::try_from(&total).unwrap();
        assert!(v.is_finite() && v > 0.0, "{head:?}: {losses:?}");
        total.backward();
        for (name, t) in vs.variables().into_iter().filter(|(_, t)| t.requires_grad()) {
            if let Some((i, c)) = detnas_nn::path::parse_choice_var(&name) {
                let on = arch.choices()[i].id() == c;
                assert_eq!(t.grad().defined(), on, "{name}: gradient presence must follow the path");
            }
        }
        // A missing path is a configuration error, not a panic.
        assert!(det.detect(&x, &sizes, None).is_err());

        // Give BN non-trivial statistics, then compare with a child holding the path's weights.
        let fpn_mean = || vs.variables()["fpn.inner0.bn.running_mean"].copy();
        let before = fpn_mean();
        det.observe(&x, &sizes, Some(&arch)).unwrap();
        assert!(!fpn_mean().equal(&before), "{head:?}: observing in training mode moves the running statistics");
        let d_super = det.detect(&x, &sizes, Some(&arch)).unwrap();
        let mut cvs = nn::VarStore::new(Device::Cpu);
        let child = cfg.build(&cvs.root(), &space, Some(&arch), 3).unwrap();
        detnas_nn::inherit(&vs, &mut cvs, &arch).unwrap();
        let d_child = child.detect(&x, &sizes, None).unwrap();
        for (a, b) in d_super.iter().zip(&d_child) {
            assert!(a.len() <= 100);
            assert_eq!(a.len(), b.len(), "{head:?}");
            assert!(a.boxes.allclose(&b.boxes, 1e-5, 1e-4, false), "{head:?}");
            assert!(a.scores.allclose(&b.scores, 1e-5, 1e-6, false), "{head:?}");
            assert_eq!(Vec::<i64>::try_from(&a.labels).unwrap(), Vec::<i64>::try_from(&b.labels).unwrap());
        }
        // A child refuses another architecture.
        let other = space.parse_arch("00000").unwrap();
        assert!(child.detect(&x, &sizes, Some(&other)).is_err());
    }
}

#[test]
fn bn_recalibration_covers_fpn_and_heads() {
    let space = space();
    let arch = space.parse_arch("31130").unwrap();
    for head in heads() {
        let cfg = DetectorConfig { fpn_channels: 16, fpn_bn: true, head };
        let vs = nn::VarStore::new(Device::Cpu);
        let det = cfg.build(&vs.root(), &space, None, 3).unwrap();
        let x = Tensor::rand([2, 3, 64, 64], (Kind::Float, Device::Cpu)) * 255.0;
        let session = detnas_nn::Recalibration::begin(detnas_nn::BnMode::Exact);
        det.observe(&x, &[(64, 64), (64, 64)], Some(&arch)).unwrap();
        let n = session.finish();
        let changed: Vec<String> = vs
            .variables()
            .into_iter()
            .filter(|(k, t)| {
                k.ends_with("running_var")
                    && !k.starts_with("backbone")
                    && f64::try_from(t.mean(Kind::Double)).unwrap() != 1.0
            })
            .map(|(k, _)| k)
            .collect();
        assert!(changed.iter().any(|k| k.starts_with("fpn.")), "{changed:?}");
        let head_bns = changed.iter().filter(|k| !k.starts_with("fpn.")).count();
        assert!(
            head_bns > 0
                || matches!(cfg.head, HeadConfig::FasterRcnn(ref f) if f.roi.head == detnas_detect::rcnn::BoxHeadKind::TwoFc),
            "{changed:?}"
        );
        assert!(n >= changed.len(), "{n} recalibrated vs {} changed", changed.len());
    }
}

/// Images without boxes (`data.keep_empty`): pure background. With one empty image in the
/// batch every loss stays finite; with only empty images the box-regression losses are
/// exactly 0 (nothing is positive) and the classification losses are positive.
#[test]
fn images_without_boxes_are_background() {
    let space = space();
    let arch = space.parse_arch("23102").unwrap();
    let empty = || Target {
        boxes: detnas_detect::boxes::tensor_of(&[]),
        labels: Tensor::zeros([0], (Kind::Int64, Device::Cpu)),
        seed: 7,
    };
    for head in heads() {
        let (_, _vs, det, x, sizes) = supernet_detector(&space, &head);
        let mut mixed = targets();
        mixed[1] = empty();
        let losses = det.losses(&x, &sizes, &mixed, Some(&arch)).unwrap();
        for l in &losses {
            let v = f64::try_from(l.value()).unwrap();
            assert!(v.is_finite(), "{head:?}: {} = {v} with one empty image", l.name);
        }
        let losses = det.losses(&x, &sizes, &[empty(), empty()], Some(&arch)).unwrap();
        let total = losses.iter().map(|l| l.value()).reduce(|a, b| a + b).unwrap();
        total.backward();
        for l in &losses {
            let v = f64::try_from(l.value()).unwrap();
            let is_box = l.name.contains("reg") || l.name.contains("box");
            if is_box {
                assert_eq!(v, 0.0, "{head:?}: {} must be 0 without boxes", l.name);
            } else {
                assert!(v.is_finite() && v > 0.0, "{head:?}: {} = {v} without boxes", l.name);
            }
        }
    }
}
