//! The detection losses against golden values computed with PyTorch and torchvision's box ops
//! the way maskrcnn_benchmark computes them (`tests/fixtures/losses/generate.py`, which also
//! says how to regenerate `losses.json`): RetinaNet's focal and box losses, the RPN's
//! objectness and box losses, the box head's classification and box losses, on fixed inputs
//! small enough that every sampler takes all of its candidates.
//!
//! Tolerance: 1e-5 relative. The reference runs in float64, detnas in float32; the sums are
//! over a few hundred terms.

use detnas_detect::rcnn::{RoiHeads, RoiHeadsConfig, Rpn, RpnConfig, RpnOutputs};
use detnas_detect::retinanet::{RetinaHead, RetinaNetConfig, RetinaOutputs};
use detnas_detect::roi_heads::IGNORE;
use detnas_detect::{Proposals, Target, Targets};
use detnas_device::Kernels;
use detnas_device::settings::with_kernels;
use serde_json::Value;
use tch::{Device, Kind, Tensor, nn};

fn fixture() -> Value {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/losses/losses.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// A float32 tensor from nested JSON arrays.
fn tensor(v: &Value) -> Tensor {
    fn shape(v: &Value, out: &mut Vec<i64>) {
        if let Some(a) = v.as_array() {
            out.push(a.len() as i64);
            if let Some(first) = a.first() {
                shape(first, out);
            }
        }
    }
    fn flat(v: &Value, out: &mut Vec<f64>) {
        match v.as_array() {
            Some(a) => a.iter().for_each(|x| flat(x, out)),
            None => out.push(v.as_f64().unwrap()),
        }
    }
    let (mut s, mut f) = (Vec::new(), Vec::new());
    shape(v, &mut s);
    flat(v, &mut f);
    Tensor::from_slice(&f).reshape(s).to_kind(Kind::Float)
}

fn levels(v: &Value) -> Vec<Tensor> {
    v.as_array().unwrap().iter().map(tensor).collect()
}

fn targets(f: &Value) -> Targets {
    let t: Vec<Target> = f["targets"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let b = tensor(&t["boxes"]);
            let rows =
                Vec::<f32>::try_from(b.reshape([-1])).unwrap().chunks(4).map(|c| [c[0], c[1], c[2], c[3]]).collect();
            Target {
                boxes: rows,
                labels: t["labels"].as_array().unwrap().iter().map(|l| l.as_i64().unwrap()).collect(),
                seed: i as u64,
            }
        })
        .collect();
    Targets::new(&t, Device::Cpu)
}

/// Per-image proposals `[P_i, 4]` padded into [`Proposals`].
fn proposals(per_image: &[Tensor]) -> Proposals {
    let r = per_image.iter().map(|p| p.size()[0]).max().unwrap();
    let boxes: Vec<Tensor> = per_image
        .iter()
        .map(|p| Tensor::cat(&[p.shallow_clone(), Tensor::zeros([r - p.size()[0], 4], (Kind::Float, Device::Cpu))], 0))
        .collect();
    let valid: Vec<Tensor> =
        per_image.iter().map(|p| Tensor::arange(r, (Kind::Int64, Device::Cpu)).lt(p.size()[0])).collect();
    Proposals {
        boxes: Tensor::stack(&boxes, 0),
        valid: Tensor::stack(&valid, 0),
        exact: Tensor::ones([], (Kind::Bool, Device::Cpu)),
    }
}

fn close(got: &detnas_nn::LossTerm, want: &Value, what: &str) {
    let got = got.value().double_value(&[]);
    let want = want.as_f64().unwrap();
    assert!((got - want).abs() <= 1e-5 * want.abs().max(1e-3), "{what}: detnas {got}, reference {want}");
}

#[test]
fn retinanet_losses_match_maskrcnn_benchmark() {
    let f = fixture();
    let k = f["classes"].as_i64().unwrap();
    let r = &f["retinanet"];
    let vs = nn::VarStore::new(Device::Cpu);
    // Only the loss settings matter here (defaults: 0.5/0.4, focal 0.25/2, smooth-L1 0.11).
    let cfg = RetinaNetConfig { anchor_sizes: vec![32.0, 64.0], ..Default::default() };
    let head = RetinaHead::new(&vs.root(), &cfg, 8, k, &[8, 16]);
    let out = RetinaOutputs { cls: levels(&r["cls"]), reg: levels(&r["reg"]) };
    let (cls, reg) = head.loss(&out, &levels(&r["anchors"]), &targets(&f));
    assert!(cls.count.double_value(&[]) > 2.0, "positives were matched");
    close(&cls, &r["expected"]["cls"], "RetinaNet classification (focal, / (num_pos + N))");
    close(&reg, &r["expected"]["box"], "RetinaNet box (smooth-L1, / num_pos)");
}

#[test]
fn rpn_losses_match_maskrcnn_benchmark() {
    let f = fixture();
    let r = &f["rpn"];
    let vs = nn::VarStore::new(Device::Cpu);
    let cfg = RpnConfig { anchor_sizes: vec![16.0, 32.0, 64.0], ..Default::default() };
    let rpn = Rpn::new(&vs.root(), &cfg, 8, &[4, 8, 16]);
    let out = RpnOutputs {
        objectness: levels(&r["objectness"]),
        deltas: levels(&r["deltas"]),
        anchors: levels(&r["anchors"]),
    };
    let (obj, reg) = rpn.losses(&out, &targets(&f));
    close(&obj, &r["expected"]["objectness"], "RPN objectness");
    close(&reg, &r["expected"]["box"], "RPN box");
}

/// With host kernels the sample holds exactly the sampled RoIs; with device kernels it keeps
/// `batch_per_image` slots per image, the unfilled ones ignored (and flagged), and the losses
/// are the same.
#[test]
fn box_head_losses_match_maskrcnn_benchmark() {
    let f = fixture();
    let k = f["classes"].as_i64().unwrap();
    let r = &f["roi"];
    let vs = nn::VarStore::new(Device::Cpu);
    let heads = RoiHeads::new(&vs.root(), &RoiHeadsConfig::default(), 8, k, &[4, 8, 16, 32]);
    for kernels in [Kernels::Host, Kernels::Device] {
        let sample =
            with_kernels(kernels, || heads.sample(&proposals(&levels(&r["proposals"])), &targets(&f))).unwrap();
        let sampled = i64::try_from(sample.labels.ne(IGNORE).sum(Kind::Int64)).unwrap();
        assert_eq!(sampled, r["expected"]["sampled"].as_i64().unwrap(), "{kernels:?}: every RoI is sampled");
        if kernels == Kernels::Host {
            assert_eq!(sample.labels.size()[0], sampled, "host kernels drop the padding");
        } else {
            assert!(!bool::try_from(&sample.exact).unwrap(), "unfilled slots are flagged");
        }
        let fg = i64::try_from(sample.labels.gt(0).sum(Kind::Int64)).unwrap();
        assert_eq!(fg, r["expected"]["foreground"].as_i64().unwrap());
        // The head's outputs as the reference defines them: an affine function of each RoI's box.
        let boxes = sample.rois.narrow(1, 1, 4);
        let logits = boxes.matmul(&tensor(&r["wc"])) + tensor(&r["bc"]);
        let deltas = boxes.matmul(&tensor(&r["wd"])) + tensor(&r["bd"]);
        let (cls, reg) = heads.losses(&logits, &deltas, &sample);
        close(&cls, &r["expected"]["cls"], "box head classification");
        close(&reg, &r["expected"]["box"], "box head regression");
    }
}
