//! `detnas bench`: the benchmark items of bench/run.sh, one process per item so that the peak
//! memory is the item's. Each item runs a fixed seed and a fixed sequence of sampled paths
//! (the uniform path stream of seed 0), one untimed warm-up, then `--reps` timed repetitions,
//! and prints one JSON line: median, min, max, repetitions, threads, peak RSS.

use crate::Failure;
use crate::runtime::{RuntimeArgs, describe};
use anyhow::anyhow;
use clap::Args;
use detnas_nn::{BnMode, PathIndex, Recalibration};
use detnas_space::rng::seeded;
use detnas_space::{Arch, PathSampler, SearchSpace};
use detnas_train::PathSgd;
use detnas_train::pretrain::build_supernet;
use serde_json::json;
use std::path::PathBuf;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// The items (see bench/run.sh for what each measures).
pub const ITEMS: [&str; 16] = [
    "cls-train-small",
    "cls-train-demo",
    "cls-infer-small",
    "cls-infer-demo",
    "recal-small",
    "recal-demo",
    "det-train-retinanet-demo",
    "det-infer-retinanet-demo",
    "det-train-fpn-demo",
    "det-infer-fpn-demo",
    "det-train-retinanet-800",
    "det-train-fpn-800",
    "det-infer-retinanet-800",
    "det-infer-fpn-800",
    "candidate",
    "loader",
];

#[derive(Args)]
pub struct BenchArgs {
    /// The item to measure (one of: cls-train-small, cls-train-demo, cls-infer-small,
    /// cls-infer-demo, recal-small, recal-demo, det-{train,infer}-{retinanet,fpn}-{demo,800},
    /// candidate, loader).
    item: String,
    /// Timed repetitions (after one warm-up).
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// The demo configs (space, detectors).
    #[arg(long, default_value = "configs/demo")]
    configs: PathBuf,
    /// `candidate`: a fine-tuning run (its search-validation split is evaluated).
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// `loader`: a folder of class sub-folders of JPEGs (ImageFolder layout).
    #[arg(long)]
    images: Option<PathBuf>,
    /// `export`: folder for the PyTorch reference's inputs (path sequences, demo space,
    /// demo supernet weights and eval-mode logits of a few paths for the numeric check).
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    runtime: RuntimeArgs,
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn paths(space: &SearchSpace, n: usize) -> Vec<Arch> {
    let s = PathSampler::uniform(space, None).expect("unconstrained");
    let mut rng = seeded(0);
    (0..n).map(|_| s.sample(&mut rng).expect("sampled")).collect()
}

/// Times `f(rep)` after one warm-up call; returns the per-repetition seconds.
fn time(reps: usize, device: Device, mut f: impl FnMut(usize) -> Result<(), Failure>) -> Result<Vec<f64>, Failure> {
    f(0)?;
    sync(device);
    let mut t = Vec::with_capacity(reps);
    for r in 1..=reps {
        let s = Instant::now();
        f(r)?;
        sync(device);
        t.push(s.elapsed().as_secs_f64());
    }
    Ok(t)
}

fn demo_space(a: &BenchArgs) -> Result<SearchSpace, Failure> {
    SearchSpace::from_toml_file(&a.configs.join("space.toml")).map_err(crate::usage)
}

pub fn run(a: BenchArgs) -> Result<(), Failure> {
    let device = a.runtime.init()?;
    if a.reps == 0 {
        return Err(crate::usage(anyhow!("--reps must be at least 1")));
    }
    tch::manual_seed(0);
    let item = a.item.as_str();
    if item == "export" {
        return export(&a);
    }
    // (seconds per repetition, work per repetition, unit of work)
    let (secs, per_rep, unit): (Vec<f64>, f64, &str) = match item {
        "cls-train-small" | "cls-train-demo" | "cls-infer-small" | "cls-infer-demo" => {
            let small = item.ends_with("small");
            let (space, side, batch, classes) =
                if small { (SearchSpace::small(), 224, 32, 1000) } else { (demo_space(&a)?, 32, 64, 10) };
            let (vs, net) = build_supernet(&space, classes, device);
            let index = PathIndex::new(&vs);
            let mut opt = PathSgd::new(0.9, 4e-5);
            let seq = paths(&space, a.reps + 1);
            let x = Tensor::randn([batch, 3, side, side], (Kind::Float, device));
            let y = Tensor::randint(classes as i64, [batch], (Kind::Int64, device));
            let train = item.contains("train");
            let t = time(a.reps, device, |r| {
                let arch = &seq[r];
                if train {
                    let loss = net.forward_t(&x, arch, true)?.cross_entropy_for_logits(&y);
                    loss.backward();
                    opt.step(index.vars(arch), 0.1);
                } else {
                    let _ = tch::no_grad(|| net.forward_t(&x, arch, false))?;
                }
                Ok(())
            })?;
            (t, batch as f64, "img/s")
        }
        "recal-small" | "recal-demo" => {
            let small = item.ends_with("small");
            let (space, side, batch, n, classes) =
                if small { (SearchSpace::small(), 224, 32, 256, 1000) } else { (demo_space(&a)?, 32, 200, 1000, 10) };
            let (_vs, net) = build_supernet(&space, classes, device);
            let seq = paths(&space, a.reps + 1);
            let batches: Vec<Tensor> =
                (0..n / batch).map(|_| Tensor::randn([batch as i64, 3, side, side], (Kind::Float, device))).collect();
            let t = time(a.reps, device, |r| {
                let session = Recalibration::begin(BnMode::Exact);
                for x in &batches {
                    let _ = tch::no_grad(|| net.forward_t(x, &seq[r], true))?;
                }
                let _ = session.finish();
                Ok(())
            })?;
            (t, n as f64, "img/s")
        }
        i if i.starts_with("det-") => det_item(&a, device)?,
        "candidate" => {
            let ckpt = a.checkpoint.clone().ok_or_else(|| crate::usage(anyhow!("candidate needs --checkpoint RUN")))?;
            let eval =
                detnas_search::config::SearchEvalConfig { recalibrate_images: 100, batch: 50, ..Default::default() };
            let mut e = detnas_search::fitness::DetEvaluator::open(&ckpt, &eval, 2, device)?;
            let n = e.val().len();
            let space = demo_space(&a)?;
            let seq = paths(&space, a.reps + 1);
            use detnas_search::Evaluator;
            let t = time(a.reps, device, |r| {
                let _ = e.evaluate(&seq[r])?;
                Ok(())
            })?;
            let _ = n;
            (t, 1.0, "candidates/s")
        }
        "loader" => {
            let dir = a.images.clone().ok_or_else(|| crate::usage(anyhow!("loader needs --images FOLDER")))?;
            let data = std::sync::Arc::new(detnas_data::ImageFolder::open(&dir, None)?);
            let n = detnas_data::ClsDataset::len(&*data);
            let cfg = detnas_data::LoaderConfig {
                batch: 64,
                seed: 0,
                shuffle: true,
                drop_last: false,
                epochs: Some(1),
                prefetch: 4,
                transform: detnas_data::ClsTransform::Train {
                    size: 224,
                    scale: (0.08, 1.0),
                    ratio: (0.75, 4.0 / 3.0),
                    flip: true,
                    jitter: 0.4,
                },
                convention: detnas_data::InputConvention::default(),
            };
            let t = time(a.reps, device, |_| {
                let mut l = detnas_data::Loader::new(data.clone(), cfg.clone(), detnas_data::Position::default())?;
                while let Some(b) = l.next_batch() {
                    let _ = b?;
                }
                Ok(())
            })?;
            (t, n as f64, "img/s")
        }
        other => return Err(crate::usage(anyhow!("unknown item '{other}' (one of: {})", ITEMS.join(", ")))),
    };
    let mut s = secs.clone();
    s.sort_by(f64::total_cmp);
    let median = s[s.len() / 2];
    println!(
        "{}",
        json!({
            "item": item, "impl": "detnas", "unit": unit,
            "median": per_rep / median, "min": per_rep / s[s.len() - 1], "max": per_rep / s[0],
            "median_seconds": median, "reps": secs.len(), "threads": tch::get_num_threads(),
            "device": describe(device), "peak_rss_mb": peak_rss_mb(),
        })
    );
    Ok(())
}

/// Detection items: a training step (forward, losses, backward, SGD on the path) or
/// inference (detections after NMS) of the demo detectors at their demo input (128×128,
/// batch 8) or at 800×1333 batch 2 with the Small supernet and the reference widths.
fn det_item(a: &BenchArgs, device: Device) -> Result<(Vec<f64>, f64, &'static str), Failure> {
    let parts: Vec<&str> = a.item.split('-').collect();
    let (train, head, scale) = match parts.as_slice() {
        ["det", mode, head, scale] => (*mode == "train", *head, *scale),
        _ => return Err(crate::usage(anyhow!("unknown item '{}'", a.item))),
    };
    let file = a.configs.join(if head == "fpn" { "finetune-fpn.toml" } else { "finetune-retinanet.toml" });
    let mut cfg = detnas_train::FinetuneConfig::load(&file, &[])?;
    let (space, side_h, side_w, batch) = if scale == "800" {
        cfg.detector.fpn_channels = 256;
        (SearchSpace::small(), 800, 1344, 2)
    } else {
        (cfg.space()?, 128, 128, 8)
    };
    let classes = 6;
    let (vs, det, _) = detnas_train::finetune::build_detector(&cfg, &space, classes, device)?;
    let index = PathIndex::new(&vs);
    let mut opt = PathSgd::new(0.9, 1e-4);
    let seq = paths(&space, a.reps + 1);
    let x = Tensor::rand([batch, 3, side_h, side_w], (Kind::Float, device)) * 255.0;
    let sizes = vec![(side_h, side_w); batch as usize];
    let mut rng = seeded(1);
    let targets: Vec<detnas_detect::Target> = (0..batch)
        .map(|_| {
            let k = 3;
            let boxes: Vec<[f32; 4]> = (0..k)
                .map(|_| {
                    let u = |r: &mut _| detnas_space::rng::unit(r) as f32;
                    let (cx, cy) = (u(&mut rng) * side_w as f32, u(&mut rng) * side_h as f32);
                    let (w, h) = (16.0 + u(&mut rng) * side_w as f32 * 0.4, 16.0 + u(&mut rng) * side_h as f32 * 0.4);
                    [
                        (cx - w / 2.0).max(0.0),
                        (cy - h / 2.0).max(0.0),
                        (cx + w / 2.0).min(side_w as f32),
                        (cy + h / 2.0).min(side_h as f32),
                    ]
                })
                .collect();
            detnas_detect::Target {
                boxes: detnas_detect::boxes::tensor_of(&boxes).to_device(device),
                labels: Tensor::from_slice(&[0i64, 1, 2]).to_device(device),
            }
        })
        .collect();
    let reps = if scale == "800" { a.reps.min(2) } else { a.reps };
    let t = time(reps, device, |r| {
        let arch = &seq[r];
        if train {
            let losses = det.losses(&x, &sizes, &targets, Some(arch)).map_err(|e| anyhow!("{e}"))?;
            let loss = losses.iter().map(|(_, l)| l.shallow_clone()).reduce(|p, q| p + q).expect("losses");
            loss.backward();
            opt.step(index.vars(arch), 0.01);
        } else {
            let _ = det.detect(&x, &sizes, Some(arch)).map_err(|e| anyhow!("{e}"))?;
        }
        Ok(())
    })?;
    Ok((t, batch as f64, "img/s"))
}

/// Writes what the PyTorch reference needs: the path sequences of both spaces, the demo space,
/// and for the numeric check a demo supernet with random weights and BN statistics with the
/// eval-mode logits of a few paths.
fn export(a: &BenchArgs) -> Result<(), Failure> {
    let out = a.out.clone().ok_or_else(|| crate::usage(anyhow!("export needs --out DIR")))?;
    std::fs::create_dir_all(&out)?;
    let demo = demo_space(a)?;
    for (name, space) in [("small", SearchSpace::small()), ("demo", demo.clone())] {
        let p: Vec<String> = paths(&space, a.reps + 1).iter().map(|x| x.to_string()).collect();
        std::fs::write(out.join(format!("paths-{name}.json")), serde_json::to_string(&p)?)?;
    }
    std::fs::write(out.join("space.json"), serde_json::to_string(&demo)?)?;
    tch::manual_seed(3);
    let (vs, net) = build_supernet(&demo, 10, Device::Cpu);
    tch::no_grad(|| {
        for (name, mut v) in vs.variables() {
            if name.ends_with("running_var") || name.ends_with("bn.weight") {
                v.copy_(&(Tensor::rand_like(&v) + 0.5));
            } else if name.ends_with("running_mean") || name.ends_with("bn.bias") {
                v.copy_(&(Tensor::randn_like(&v) * 0.1));
            }
        }
    });
    vs.save(out.join("supernet.safetensors"))?;
    let x = Tensor::randn([4, 3, 32, 32], (Kind::Float, Device::Cpu));
    let check: Vec<Arch> = paths(&demo, 4);
    let mut named = vec![("x".to_string(), x.shallow_clone())];
    for p in &check {
        named.push((format!("logits.{p}"), tch::no_grad(|| net.forward_t(&x, p, false))?));
    }
    let refs: Vec<(&str, &Tensor)> = named.iter().map(|(k, v)| (k.as_str(), v)).collect();
    Tensor::write_safetensors(&refs, out.join("io.safetensors"))?;
    let names: Vec<String> = check.iter().map(|p| p.to_string()).collect();
    std::fs::write(out.join("check-paths.json"), serde_json::to_string(&names)?)?;
    println!("{}", json!({"item": "export", "out": out}));
    Ok(())
}
