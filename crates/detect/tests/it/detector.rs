//! Both detectors on the supernet and on a child backbone: shapes, finite losses, gradients
//! only on the sampled path, and child(inherit(supernet)) == supernet path, detection for
//! detection.

use detnas_detect::rcnn::{FasterRcnnConfig, RoiHeadsConfig, RpnConfig};
use detnas_detect::retinanet::RetinaNetConfig;
use detnas_detect::{DetectorConfig, HeadConfig, Target, Targets};
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
        boxes: rows.to_vec(),
        labels: labels.to_vec(),
        seed: rows.len() as u64,
    };
    vec![t(&[[4.0, 6.0, 30.0, 40.0], [40.0, 10.0, 60.0, 26.0]], &[0, 2]), t(&[[10.0, 10.0, 50.0, 50.0]], &[1])]
}

fn up(t: &[Target]) -> Targets {
    Targets::new(t, Device::Cpu)
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
        let losses = det.losses_exact(&x, &sizes, &up(&targets()), Some(&arch)).unwrap();
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
        let _ = det.forward_for_bn_stats(&x, &sizes, Some(&arch)).unwrap();
        assert!(!fpn_mean().equal(&before), "{head:?}: a training-mode forward moves the running statistics");
        let d_super = det.detect(&x, &sizes, Some(&arch)).unwrap();
        let mut cvs = nn::VarStore::new(Device::Cpu);
        let child = cfg.build(&cvs.root(), &space, Some(&arch), 3).unwrap();
        detnas_nn::inherit(&vs, &mut cvs, &arch).unwrap();
        let d_child = child.detect(&x, &sizes, None).unwrap();
        for (a, b) in d_super.iter().zip(&d_child) {
            assert!(a.len() <= 100);
            assert_eq!(a.len(), b.len(), "{head:?}");
            for (p, q) in a.boxes.iter().flatten().zip(b.boxes.iter().flatten()) {
                assert!((p - q).abs() <= 1e-4 + 1e-5 * q.abs(), "{head:?}");
            }
            for (p, q) in a.scores.iter().zip(&b.scores) {
                assert!((p - q).abs() <= 1e-6 + 1e-5 * q.abs(), "{head:?}");
            }
            assert_eq!(a.labels, b.labels);
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
        let _ = det.forward_for_bn_stats(&x, &[(64, 64), (64, 64)], Some(&arch)).unwrap();
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
    let empty = || Target { boxes: vec![], labels: vec![], seed: 7 };
    for head in heads() {
        let (_, _vs, det, x, sizes) = supernet_detector(&space, &head);
        let mut mixed = targets();
        mixed[1] = empty();
        let losses = det.losses_exact(&x, &sizes, &up(&mixed), Some(&arch)).unwrap();
        for l in &losses {
            let v = f64::try_from(l.value()).unwrap();
            assert!(v.is_finite(), "{head:?}: {} = {v} with one empty image", l.name);
        }
        let losses = det.losses_exact(&x, &sizes, &up(&[empty(), empty()]), Some(&arch)).unwrap();
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

/// A batch of `n` random 64×64 images with 1–3 boxes each (seeded).
fn batch(n: usize, seed: i64) -> (Tensor, Vec<(i64, i64)>, Vec<Target>) {
    tch::manual_seed(seed);
    let x = Tensor::rand([n as i64, 3, 64, 64], (Kind::Float, Device::Cpu)) * 255.0;
    let sizes = (0..n).map(|i| (64 - 4 * (i as i64 % 3), 64)).collect();
    let targets = (0..n)
        .map(|i| {
            let k = 1 + i % 3;
            let boxes = (0..k)
                .map(|j| {
                    let o = (7 * i + 11 * j) as f32 % 30.0;
                    [o, o / 2.0, o + 14.0 + j as f32 * 6.0, o / 2.0 + 20.0]
                })
                .collect();
            Target { boxes, labels: (0..k).map(|j| (j % 3) as i64).collect(), seed: 100 + i as u64 }
        })
        .collect();
    (x, sizes, targets)
}

fn values(terms: &[detnas_nn::LossTerm]) -> Vec<f64> {
    terms.iter().map(|t| t.value().double_value(&[])).collect()
}

/// Host kernels (Rust NMS, compacted RoIs; the CPU's default) and device kernels (tensor ops
/// only) give the same losses, detections and recalibrated statistics, in both memory
/// layouts; with device kernels, `losses` and the BN forward read nothing back to the host and
/// `detect` reads once per batch.
#[test]
fn device_kernels_equal_host_kernels_without_host_reads() {
    use detnas_device::host::measure;
    use detnas_device::settings::{with_kernels, with_memory_format};
    use detnas_device::{Kernels, MemoryFormat};
    let space = space();
    let arch = space.parse_arch("23102").unwrap();
    for format in [MemoryFormat::ChannelsLast, MemoryFormat::Nchw] {
        with_memory_format(format, || {
            for head in heads() {
                let (_, _vs, det, _, _) = supernet_detector(&space, &head);
                let (x, sizes, t) = batch(3, 5);
                let host = with_kernels(Kernels::Host, || det.losses(&x, &sizes, &up(&t), Some(&arch)).unwrap());
                let targets = up(&t);
                let (dev, counts) = measure(|| {
                    with_kernels(Kernels::Device, || det.losses(&x, &sizes, &targets, Some(&arch)).unwrap())
                });
                assert_eq!(
                    counts.reads + counts.kernel_reads,
                    0,
                    "{format:?} {head:?}: losses read the host: {:?}",
                    detnas_device::host::sites()
                );
                assert!(bool::try_from(&dev.exact).unwrap(), "{head:?}: the device step is exact here");
                for (h, d) in values(&host.terms).iter().zip(values(&dev.terms)) {
                    assert!((h - d).abs() <= 1e-5 * h.abs().max(1e-3), "{format:?} {head:?}: host {h} vs device {d}");
                }
                let host_dets = with_kernels(Kernels::Host, || det.detect(&x, &sizes, Some(&arch)).unwrap());
                let (dev_dets, counts) =
                    measure(|| with_kernels(Kernels::Device, || det.detect(&x, &sizes, Some(&arch)).unwrap()));
                assert_eq!(
                    (counts.reads, counts.kernel_reads),
                    (1, 0),
                    "{head:?}: detect reads once per batch: {:?}",
                    detnas_device::host::sites()
                );
                // The same detections; the box head's matrix products run on another number of
                // RoIs (padding included), so values agree to float rounding.
                for (h, d) in host_dets.iter().zip(&dev_dets) {
                    assert_eq!(h.labels, d.labels, "{format:?} {head:?}");
                    for (p, q) in
                        h.boxes.iter().flatten().zip(d.boxes.iter().flatten()).chain(h.scores.iter().zip(&d.scores))
                    {
                        assert!((p - q).abs() <= 1e-4 * q.abs().max(1.0), "{format:?} {head:?}: {p} vs {q}");
                    }
                }
                let (exact, counts) = measure(|| {
                    with_kernels(Kernels::Device, || det.forward_for_bn_stats(&x, &sizes, Some(&arch)).unwrap())
                });
                assert_eq!(counts.reads + counts.kernel_reads, 0, "{head:?}");
                assert!(bool::try_from(exact).unwrap());
            }
        })
    }
}

/// The training step's operators do not grow with the batch (no per-image loop), and none of
/// them synchronises a GPU with the host (device kernels, Kineto's operator counts).
#[test]
fn losses_ops_do_not_grow_with_the_batch() {
    use detnas_device::settings::with_kernels;
    use detnas_device::{Kernels, profile};
    let space = space();
    let arch = space.parse_arch("31130").unwrap();
    for head in heads() {
        let (_, vs, det, _, _) = supernet_detector(&space, &head);
        let ops = |n: usize| {
            let (x, sizes, t) = batch(n, 9);
            let targets = up(&t);
            with_kernels(Kernels::Device, || {
                let l = det.losses(&x, &sizes, &targets, Some(&arch)).unwrap();
                l.terms.iter().map(|t| t.value()).reduce(|a, b| a + b).unwrap().backward();
                for (_, v) in vs.variables() {
                    let mut g = v.grad();
                    if g.defined() {
                        let _ = g.zero_();
                    }
                }
                profile::ops_of(false, None, || {
                    let l = det.losses(&x, &sizes, &targets, Some(&arch)).unwrap();
                    l.terms.iter().map(|t| t.value()).reduce(|a, b| a + b).unwrap().backward();
                })
                .unwrap()
                .1
            })
        };
        let (two, eight) = (ops(2), ops(8));
        assert_eq!(two.syncing(), vec![], "{head:?}: {two:?}");
        assert_eq!(eight.syncing(), vec![], "{head:?}");
        let differ: Vec<(&String, u64, u64)> = two
            .top()
            .iter()
            .map(|(k, &v)| (k, v, eight.top().get(k).copied().unwrap_or(0)))
            .filter(|(_, a, b)| a != b)
            .collect();
        assert_eq!(two.top_total(), eight.top_total(), "{head:?}: operators per step at batch 2 and 8: {differ:?}");
    }
}

/// bf16 autocast on the CPU: training forwards stay fp32 (the same losses as fp32, bit for bit:
/// measured slower in bf16 there), inference runs in bf16 (other scores than fp32, finite).
#[test]
fn bf16_on_the_cpu_applies_to_inference_only() {
    use detnas_device::Precision;
    use detnas_device::settings::with_precision;
    let space = space();
    let arch = space.parse_arch("23102").unwrap();
    for head in heads() {
        let mut cfg = DetectorConfig { fpn_channels: 16, fpn_bn: true, head: head.clone() };
        cfg.set_score_threshold(0.0);
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let det = cfg.build(&vs.root(), &space, None, 3).unwrap();
        let (x, sizes, t) = batch(2, 3);
        let targets = up(&t);
        let fp32 = det.losses_exact(&x, &sizes, &targets, Some(&arch)).unwrap();
        let bf16 = with_precision(Precision::Bf16, || det.losses_exact(&x, &sizes, &targets, Some(&arch))).unwrap();
        assert_eq!(values(&fp32), values(&bf16), "{head:?}");
        let d32 = det.detect(&x, &sizes, Some(&arch)).unwrap();
        let d16 = with_precision(Precision::Bf16, || det.detect(&x, &sizes, Some(&arch))).unwrap();
        assert!(d16.iter().all(|d| d.scores.iter().all(|s| s.is_finite()) && !d.is_empty()), "{head:?}");
        assert_ne!(d32, d16, "{head:?}: bf16 inference computes in bf16");
    }
}
