//! `detnas bench`: the benchmark items of bench/run.sh, one process per item so that the peak
//! memory is the item's. Each item runs a fixed seed and a fixed sequence of sampled paths
//! (the uniform path stream of seed 0) and prints one JSON line: median, min, max,
//! repetitions, threads, peak RSS.
//!
//! The network items measure what users pay twice: after one untimed warm-up, each of `--reps`
//! repetitions runs a path never run before (its time is the first-use cost: new kernel
//! configurations, on a GPU new cuDNN plans) and then the same path again (steady state).
//! `first_seconds` and `warm_seconds` are the medians of the two; the throughput (`median`,
//! `min`, `max`) is the steady state's. With them: `host_reads_per_step` (host reads of tensor
//! data per warm repetition: each one a synchronisation on a GPU), `host_kernel_reads_per_step`
//! (the reads of host kernels, which run only where reads are free: the CPU), `phases` (seconds per phase per warm repetition, with
//! `DETNAS_PHASE_TIMING=1`), `syncs_per_rep` (on CUDA: host synchronisations per warm
//! repetition, c10's sync-debug count), `detections_per_image` (inference items) and, with
//! `DETNAS_PROFILE=FILE`, a Kineto trace of one warm repetition.

use crate::Failure;
use crate::runtime::{RuntimeArgs, describe};
use anyhow::anyhow;
use clap::Args;
use detnas_device::{host, phase, profile};
use detnas_nn::LossTerm;
use detnas_nn::{BnMode, PathIndex, Recalibration};
use detnas_space::rng::seeded;
use detnas_space::{Arch, PathSampler, SearchSpace};
use detnas_train::PathSgd;
use detnas_train::engine::StepLosses;
use detnas_train::pretrain::build_supernet;
use detnas_train::step::{StepSettings, step};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// The items (see bench/run.sh for what each measures).
pub const ITEMS: [&str; 21] = [
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
    "nms-1500",
    "nms-3000",
    "nms-5000",
    "roi-align-64",
    "roi-align-1000",
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
    /// `candidate`: parallel evaluators (the search's `--workers`), sharing the threads.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// `loader`: a folder of class sub-folders of JPEGs (ImageFolder layout).
    #[arg(long)]
    images: Option<PathBuf>,
    /// Detection inference items: the score a detection must exceed (default 0: every
    /// candidate goes through NMS, the full load; the demo configs use 0.05).
    #[arg(long, default_value_t = 0.0)]
    score_threshold: f64,
    /// `export`: folder for the PyTorch reference's inputs (path sequences, demo space,
    /// demo supernet weights and eval-mode logits of a few paths for the numeric check).
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    runtime: RuntimeArgs,
}

fn sync(device: Device) {
    detnas_device::synchronize(device);
}

fn paths(space: &SearchSpace, n: usize) -> Vec<Arch> {
    let s = PathSampler::uniform(space, None).expect("unconstrained");
    let mut rng = seeded(0);
    (0..n).map(|_| s.sample(&mut rng).expect("sampled")).collect()
}

/// Times `f(rep)` after one warm-up call; returns the per-repetition seconds (items without
/// paths).
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

/// First-use and steady-state times of a network item, with what the steady-state
/// repetitions did besides.
struct Timing {
    first: Vec<f64>,
    warm: Vec<f64>,
    reads_per_rep: f64,
    kernel_reads_per_rep: f64,
    /// Phase times of the first uses (with `DETNAS_PHASE_TIMING=1`).
    first_phases: BTreeMap<String, f64>,
    phases: BTreeMap<String, f64>,
    syncs_per_rep: Option<f64>,
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}

/// Runs `f(path)` once on path 0 (warm-up), then for each repetition `r`: path `r` for the
/// first time, and again (steady state).
fn time_paths(reps: usize, device: Device, mut f: impl FnMut(usize) -> Result<(), Failure>) -> Result<Timing, Failure> {
    f(0)?;
    sync(device);
    let _ = phase::take();
    let (mut first, mut warm) = (Vec::with_capacity(reps), Vec::with_capacity(reps));
    let (mut reads, mut kernel_reads) = (0, 0);
    let mut phases: BTreeMap<String, f64> = BTreeMap::new();
    let mut first_phases: BTreeMap<String, f64> = BTreeMap::new();
    let mut syncs = 0i64;
    // (The counter lives in the CUDA-side library, which CPU runs never load.)
    let counting = device != Device::Cpu && detnas_dist::cuda_memory::start_sync_count();
    for r in 1..=reps {
        let s = Instant::now();
        f(r)?;
        sync(device);
        first.push(s.elapsed().as_secs_f64());
        for (k, v) in phase::take() {
            *first_phases.entry(k).or_default() += v / reps as f64;
        }
        let syncs_now = || if counting { detnas_dist::cuda_memory::sync_count().unwrap_or(0) } else { 0 };
        let before = syncs_now();
        let s = Instant::now();
        let (done, c) = host::measure(|| f(r));
        done?;
        sync(device);
        warm.push(s.elapsed().as_secs_f64());
        syncs += syncs_now() - before;
        reads += c.reads;
        kernel_reads += c.kernel_reads;
        for (k, v) in phase::take() {
            *phases.entry(k).or_default() += v / reps as f64;
        }
    }
    if counting {
        detnas_dist::cuda_memory::stop_sync_count();
    }
    if phases.is_empty() {
        // Phase times from one more steady-state repetition, untimed (timing the phases
        // synchronises the device at every boundary).
        phase::set_enabled(true);
        let _ = phase::take();
        f(reps)?;
        phases = phase::take().into_iter().collect();
        phase::set_enabled(false);
    }
    if let Ok(trace) = std::env::var("DETNAS_PROFILE") {
        let p = profile::Profiler::start(device != Device::Cpu).map_err(|e| anyhow!("{e}"))?;
        f(reps)?;
        sync(device);
        p.stop(Some(std::path::Path::new(&trace))).map_err(|e| anyhow!("{e}"))?;
    }
    Ok(Timing {
        first,
        warm,
        reads_per_rep: reads as f64 / reps as f64,
        kernel_reads_per_rep: kernel_reads as f64 / reps as f64,
        first_phases,
        phases,
        syncs_per_rep: counting.then(|| syncs as f64 / reps as f64),
    })
}

/// A training step of the engine (one host read) on `losses`, without clipping.
fn train_step(
    vars: &[&(String, Tensor)],
    opt: &mut PathSgd,
    lr: f64,
    losses: impl FnMut(usize) -> Result<StepLosses, detnas_train::TrainError>,
) -> Result<(), Failure> {
    let s = StepSettings { buffers: &[], lr, clip_grad_norm: None, stop: false, nan: false, dist: None };
    step(1, losses, vars, opt, &s, |_, l| detnas_train::TrainError::Config(format!("non-finite loss {l}")))?;
    Ok(())
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
    // Item-specific fields of the JSON line.
    let mut extra = json!({});
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
            let t = time_paths(a.reps, device, |r| {
                let arch = &seq[r];
                let _amp = detnas_train::evaluate::autocast(device, train)?;
                if train {
                    let vars: Vec<&(String, Tensor)> = index.vars(arch).collect();
                    train_step(&vars, &mut opt, 0.1, |_| {
                        let loss = net.forward_t(&x, arch, true)?.to_kind(Kind::Float).cross_entropy_for_logits(&y);
                        // (The loss itself in fp32, outside autocast's reach: its inputs are.)
                        Ok(StepLosses {
                            losses: vec![LossTerm::with_count("ce", loss, 1.0)],
                            metrics: vec![],
                            exact: None,
                        })
                    })?;
                } else {
                    let _ = tch::no_grad(|| net.forward_t(&x, arch, false))?;
                }
                Ok(())
            })?;
            extra = timing_json(&t);
            (t.warm, batch as f64, "img/s")
        }
        "recal-small" | "recal-demo" => {
            let small = item.ends_with("small");
            let (space, side, batch, n, classes) =
                if small { (SearchSpace::small(), 224, 32, 256, 1000) } else { (demo_space(&a)?, 32, 200, 1000, 10) };
            let (_vs, net) = build_supernet(&space, classes, device);
            let seq = paths(&space, a.reps + 1);
            let batches: Vec<Tensor> =
                (0..n / batch).map(|_| Tensor::randn([batch as i64, 3, side, side], (Kind::Float, device))).collect();
            let t = time_paths(a.reps, device, |r| {
                let _amp = detnas_train::evaluate::autocast(device, false)?;
                let session = Recalibration::begin(BnMode::Exact);
                for x in &batches {
                    let _ = tch::no_grad(|| net.forward_t(x, &seq[r], true))?;
                }
                let _ = session.finish();
                Ok(())
            })?;
            extra = timing_json(&t);
            (t.warm, n as f64, "img/s")
        }
        i if i.starts_with("det-") => {
            let (t, per, dets) = det_item(&a, device)?;
            extra = timing_json(&t);
            if let Some(d) = dets {
                extra["detections_per_image"] = json!(d);
            }
            (t.warm, per, "img/s")
        }
        "candidate" => {
            // The search's evaluation: `--workers` evaluators in parallel (each with its share
            // of the threads), one warm-up candidate each, then `reps` candidates per worker;
            // the rate is candidates finished per second of wall time (one measurement).
            let ckpt = a.checkpoint.clone().ok_or_else(|| crate::usage(anyhow!("candidate needs --checkpoint RUN")))?;
            let space = candidate_space(&ckpt)?;
            let w = a.workers.max(1);
            let per_worker = detnas_search::run::threads_per_cpu_worker(tch::get_num_threads(), w);
            let seq = paths(&space, a.reps * w + w);
            let factory: detnas_search::EvaluatorFactory = {
                let ckpt = ckpt.clone();
                std::sync::Arc::new(move |_| {
                    if w > 1 {
                        tch::set_num_threads(per_worker);
                    }
                    let e: Box<dyn detnas_search::Evaluator> = Box::new(candidate_evaluator(&ckpt, device)?);
                    Ok(e)
                })
            };
            let mut pool = detnas_search::Workers::new(factory, w)?;
            let mut done: Vec<(usize, detnas_search::Evaluation)> = Vec::new();
            let mut record = |i: usize, _: Arch, _: usize, ev: detnas_search::Evaluation| {
                done.push((i, ev));
                Ok(())
            };
            pool.run(seq[..w].iter().cloned().enumerate().collect(), &mut record)?;
            sync(device);
            let reads = host::process_counts();
            let s = Instant::now();
            pool.run(seq[w..].iter().cloned().enumerate().map(|(i, p)| (i + w, p)).collect(), &mut record)?;
            sync(device);
            let wall = s.elapsed().as_secs_f64();
            let reads = host::process_counts() - reads;
            done.sort_by_key(|d| d.0);
            let timed: Vec<&detnas_search::Evaluation> = done.iter().filter(|d| d.0 >= w).map(|d| &d.1).collect();
            extra = json!({
                "workers": w,
                "threads_per_worker": if w > 1 { per_worker } else { tch::get_num_threads() },
                "recalibration_seconds": median(&timed.iter().map(|e| e.recalibration_seconds).collect::<Vec<_>>()),
                "evaluation_seconds": median(&timed.iter().map(|e| e.evaluation_seconds).collect::<Vec<_>>()),
                "host_reads_per_candidate": reads.reads as f64 / (w * a.reps) as f64,
                "paths": seq[w..].iter().map(|p| p.to_string()).collect::<Vec<_>>(),
                "ap": timed.iter().map(|e| e.metrics[0]).collect::<Vec<_>>(),
            });
            // One timed run of all `w · reps` candidates (the workers are not synchronised
            // per round, so there is no per-repetition time and no spread).
            (vec![wall], (w * a.reps) as f64, "candidates/s")
        }
        i if i.starts_with("nms-") || i.starts_with("roi-align-") => {
            let t = op_item(i, a.reps, device)?;
            extra = timing_json(&t);
            extra["kernels"] = json!(if detnas_device::settings::host_kernels(device) { "host" } else { "device" });
            (t.warm, 1.0, "calls/s")
        }
        "loader" => {
            let dir = a.images.clone().ok_or_else(|| crate::usage(anyhow!("loader needs --images FOLDER")))?;
            let data = std::sync::Arc::new(detnas_data::ImageFolder::open(&dir, None)?);
            let n = detnas_data::ClsDataset::len(&*data);
            let cfg = detnas_data::LoaderConfig {
                stream: detnas_data::StreamConfig {
                    batch: 64,
                    seed: 0,
                    shuffle: true,
                    drop_last: false,
                    epochs: Some(1),
                    prefetch: 4,
                    shard: None,
                },
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
                let mut l = detnas_data::ClsLoader::new(data.clone(), cfg.clone(), detnas_data::Position::default())?;
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
    let mut line = json!({
        "item": item, "impl": "detnas", "unit": unit,
        "median": per_rep / median, "min": per_rep / s[s.len() - 1], "max": per_rep / s[0],
        "median_seconds": median, "reps": secs.len(), "threads": tch::get_num_threads(),
        "device": describe(device), "peak_rss_mb": detnas_runtime::mem::peak_rss_mib().unwrap_or(f64::NAN),
        "memory_format": format!("{:?}", detnas_device::settings::layout(device)).to_lowercase(),
        "precision": format!("{:?}", detnas_device::settings::precision()).to_lowercase(),
    });
    if let Some(p) = if device == Device::Cpu { None } else { detnas_dist::cuda_memory::peak_of(device) } {
        line["gpu_peak_mib"] = json!(p);
    }
    if let (Some(l), Some(x)) = (line.as_object_mut(), extra.as_object()) {
        l.extend(x.clone());
    }
    println!("{line}");
    Ok(())
}

/// The protocol's fields of the JSON line.
fn timing_json(t: &Timing) -> serde_json::Value {
    let mut v = json!({
        "first_seconds": median(&t.first),
        "warm_seconds": median(&t.warm),
        "host_reads_per_step": t.reads_per_rep,
        "host_kernel_reads_per_step": t.kernel_reads_per_rep,
    });
    if !t.phases.is_empty() {
        v["phases"] = json!(t.phases);
    }
    if !t.first_phases.is_empty() {
        v["first_phases"] = json!(t.first_phases);
    }
    if let Some(s) = t.syncs_per_rep {
        v["syncs_per_rep"] = json!(s);
    }
    v
}

/// Detection items: a training step (forward, losses, backward, SGD on the path) or
/// inference (detections after NMS, score threshold 0: at full load) of the demo detectors at their demo input (128×128,
/// batch 8) or at 800×1344 batch 2 with the Small supernet and a 256-wide FPN (RetinaNet towers
/// 256 wide; the Faster R-CNN box head keeps the demo widths and 32 RoIs per image). Returns
/// the timing, the images per repetition and, for inference, the detections per image.
fn det_item(a: &BenchArgs, device: Device) -> Result<(Timing, f64, Option<f64>), Failure> {
    let parts: Vec<&str> = a.item.split('-').collect();
    let (train, head, scale) = match parts.as_slice() {
        ["det", mode, head, scale] => (*mode == "train", *head, *scale),
        _ => return Err(crate::usage(anyhow!("unknown item '{}'", a.item))),
    };
    let (cfg, space, (side_h, side_w, batch)) = det_setup(a, head, scale)?;
    let classes = 6;
    // Initialised on the CPU (libtorch's CPU generator), then moved: the same weights on every
    // device, which `bench export` also writes for the reference.
    tch::manual_seed(0);
    let (mut vs, det, _) = detnas_train::finetune::build_detector(&cfg, &space, classes, Device::Cpu)?;
    vs.set_device(device);
    let index = PathIndex::new(&vs);
    let mut opt = PathSgd::new(0.9, 1e-4);
    let seq = paths(&space, a.reps + 1);
    let x = Tensor::rand([batch, 3, side_h, side_w], (Kind::Float, device)) * 255.0;
    let sizes = vec![(side_h, side_w); batch as usize];
    let targets: Vec<detnas_detect::Target> = bench_targets(batch, side_h, side_w)
        .into_iter()
        .enumerate()
        .map(|(i, boxes)| detnas_detect::Target { boxes, labels: vec![0, 1, 2], seed: i as u64 })
        .collect();
    let targets = detnas_detect::Targets::new(&targets, device);
    // At 800×1344 a CPU step takes tens of seconds.
    let reps = if scale == "800" && device == Device::Cpu { a.reps.min(2) } else { a.reps };
    let mut detections = (0usize, 0usize);
    let t = time_paths(reps, device, |r| {
        let arch = &seq[r];
        if train {
            let vars: Vec<&(String, Tensor)> = index.vars(arch).collect();
            train_step(&vars, &mut opt, 0.01, |_| {
                let l = det.losses(&x, &sizes, &targets, Some(arch)).map_err(detnas_train::TrainError::from)?;
                Ok(StepLosses { losses: l.terms, metrics: vec![], exact: Some(l.exact) })
            })?;
        } else {
            let d = det.detect(&x, &sizes, Some(arch)).map_err(|e| anyhow!("{e}"))?;
            detections.0 += d.iter().map(|d| d.len()).sum::<usize>();
            detections.1 += d.len();
        }
        Ok(())
    })?;
    let per_image = (!train).then(|| detections.0 as f64 / detections.1.max(1) as f64);
    Ok((t, batch as f64, per_image))
}

/// The configuration, space and input `(height, width, batch)` of a detection item.
type DetSetup = (detnas_train::FinetuneConfig, SearchSpace, (i64, i64, i64));

fn det_setup(a: &BenchArgs, head: &str, scale: &str) -> Result<DetSetup, Failure> {
    let file = a.configs.join(if head == "fpn" { "finetune-fpn.toml" } else { "finetune-retinanet.toml" });
    let mut cfg = detnas_train::FinetuneConfig::load(&file, &[])?;
    // Inference at full load by default: every candidate passes the score threshold (untrained
    // heads score below the configs' 0.05), so NMS sees `pre_nms_top_n` boxes per level and the
    // most detections per image are kept; the reference does the same.
    cfg.detector.set_score_threshold(a.score_threshold);
    Ok(if scale == "800" {
        cfg.detector.fpn_channels = 256;
        (cfg, SearchSpace::small(), (800, 1344, 2))
    } else {
        let space = cfg.space()?;
        (cfg, space, (128, 128, 8))
    })
}

/// Boxes like proposals: clustered around 20 centres on an 800×1344 image, `n` per image,
/// with scores (seeded; `[2, n, 4]` and `[2, n]`).
fn proposal_like(n: i64, device: Device) -> (Tensor, Tensor) {
    let mut rng = seeded(2);
    let mut boxes = Vec::with_capacity(2 * n as usize * 4);
    let mut scores = Vec::with_capacity(2 * n as usize);
    let u = |r: &mut _| detnas_space::rng::unit(r) as f32;
    for _ in 0..2 {
        let centres: Vec<(f32, f32, f32)> =
            (0..20).map(|_| (u(&mut rng) * 1344.0, u(&mut rng) * 800.0, 20.0 + u(&mut rng) * 200.0)).collect();
        for k in 0..n {
            let (cx, cy, s) = centres[k as usize % 20];
            let (dx, dy) = ((u(&mut rng) - 0.5) * s * 0.4, (u(&mut rng) - 0.5) * s * 0.4);
            let (w, h) = (s * (0.7 + 0.6 * u(&mut rng)), s * (0.7 + 0.6 * u(&mut rng)));
            boxes.extend([cx + dx - w / 2.0, cy + dy - h / 2.0, cx + dx + w / 2.0, cy + dy + h / 2.0]);
            scores.push(u(&mut rng));
        }
    }
    (host::upload(&boxes, &[2, n, 4], device, "bench.boxes"), host::upload(&scores, &[2, n], device, "bench.scores"))
}

/// Micro-benchmarks of the data-dependent detection operators in the process's kernel setting:
/// `nms-N` (per-image NMS at IoU 0.7 of `N` proposal-like boxes, 2 images) and `roi-align-K`
/// (RoIAlign 7×7 of `K` RoIs per image, 2 images, from P2–P5 of a 256-channel pyramid at
/// 800×1344, in the process's layout as at inference).
fn op_item(item: &str, reps: usize, device: Device) -> Result<Timing, Failure> {
    if let Some(n) = item.strip_prefix("nms-") {
        let n: i64 = n.parse().map_err(|_| crate::usage(anyhow!("unknown item '{item}'")))?;
        let (boxes, scores) = proposal_like(n, device);
        let valid = Tensor::ones([2, n], (Kind::Bool, device));
        let group = [detnas_detect::nms::Group { boxes, scores, valid }];
        return time_paths(reps, device, |_| {
            let (keep, exact) = detnas_detect::nms::keep_levels(&group, 0.7)?;
            let _ = (keep, exact);
            Ok(())
        });
    }
    let k: i64 = item
        .strip_prefix("roi-align-")
        .and_then(|k| k.parse().ok())
        .ok_or_else(|| crate::usage(anyhow!("unknown item '{item}'")))?;
    let feats: Vec<Tensor> = [4i64, 8, 16, 32]
        .iter()
        .map(|s| detnas_nn::layout::for_network(&Tensor::randn([2, 256, 800 / s, 1344 / s], (Kind::Float, device))))
        .collect();
    let (boxes, _) = proposal_like(k, device);
    let image = Tensor::arange(2, (Kind::Float, device)).view([2, 1, 1]).expand([2, k, 1], false);
    let rois = Tensor::cat(&[image, boxes], 2).reshape([-1, 5]);
    let pooler =
        detnas_detect::roi_align::MultiScaleRoiAlign { output: (7, 7), sampling_ratio: 2, strides: vec![4, 8, 16, 32] };
    time_paths(reps, device, |_| {
        let _ = tch::no_grad(|| pooler.pool(&feats, &rois))?;
        Ok(())
    })
}

/// The ground truth of the detection training items: 3 boxes (labels 0, 1, 2) per image.
fn bench_targets(batch: i64, side_h: i64, side_w: i64) -> Vec<Vec<[f32; 4]>> {
    let mut rng = seeded(1);
    (0..batch)
        .map(|_| {
            (0..3)
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
                .collect()
        })
        .collect()
}

/// Random BN affine parameters and statistics (γ, σ² in [0.5, 1.5), β, μ ~ N(0, 0.1²)), so
/// that a numeric check exercises them.
fn randomize_bn(vs: &tch::nn::VarStore) {
    tch::no_grad(|| {
        for (name, mut v) in vs.variables() {
            let parent = name.rsplit('.').nth(1).unwrap_or("");
            if !parent.starts_with("bn") {
                continue;
            }
            if name.ends_with("running_var") || name.ends_with(".weight") {
                v.copy_(&(Tensor::rand_like(&v) + 0.5));
            } else if name.ends_with("running_mean") || name.ends_with(".bias") {
                v.copy_(&(Tensor::randn_like(&v) * 0.1));
            }
        }
    });
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
    randomize_bn(&vs);
    vs.save(out.join("supernet.safetensors"))?;
    let x = Tensor::randn([4, 3, 32, 32], (Kind::Float, Device::Cpu));
    let check: Vec<Arch> = paths(&demo, 4);
    let mut named = vec![("x".to_string(), x.shallow_clone())];
    for p in &check {
        named.push((format!("logits.{p}"), tch::no_grad(|| net.forward_t(&x, p, false))?.contiguous()));
    }
    let refs: Vec<(&str, &Tensor)> = named.iter().map(|(k, v)| (k.as_str(), v)).collect();
    Tensor::write_safetensors(&refs, out.join("io.safetensors"))?;
    let names: Vec<String> = check.iter().map(|p| p.to_string()).collect();
    std::fs::write(out.join("check-paths.json"), serde_json::to_string(&names)?)?;
    export_detectors(a, &out, &demo)?;
    if let Some(ckpt) = &a.checkpoint {
        export_candidate(a, ckpt, &out.join("candidate"))?;
    }
    println!("{}", json!({"item": "export", "out": out}));
    Ok(())
}

/// The demo detectors (random weights and BN statistics) with their eval-mode traces
/// (pyramid, raw head outputs, proposals) for 2 paths, the ground truth of the detection
/// training items, and the detector configurations.
fn export_detectors(a: &BenchArgs, out: &std::path::Path, demo: &SearchSpace) -> Result<(), Failure> {
    for head in ["retinanet", "fpn"] {
        let file = a.configs.join(if head == "fpn" { "finetune-fpn.toml" } else { "finetune-retinanet.toml" });
        let cfg = detnas_train::FinetuneConfig::load(&file, &[])?;
        std::fs::write(out.join(format!("det-{head}.json")), serde_json::to_string(&cfg.detector)?)?;
        tch::manual_seed(5);
        let (vs, det, _) = detnas_train::finetune::build_detector(&cfg, demo, 6, Device::Cpu)?;
        randomize_bn(&vs);
        vs.save(out.join(format!("det-{head}.safetensors")))?;
        let x = Tensor::rand([2, 3, 128, 128], (Kind::Float, Device::Cpu)) * 4.0 - 2.0;
        let sizes = vec![(128, 128), (120, 100)];
        let mut named = vec![("x".to_string(), x.shallow_clone())];
        let check = paths(demo, 2);
        for p in &check {
            for (k, v) in det.trace(&x, &sizes, Some(p)).map_err(|e| anyhow!("{e}"))? {
                named.push((format!("{p}.{k}"), v.contiguous()));
            }
        }
        let refs: Vec<(&str, &Tensor)> = named.iter().map(|(k, v)| (k.as_str(), v)).collect();
        Tensor::write_safetensors(&refs, out.join(format!("det-{head}-io.safetensors")))?;
        let names: Vec<String> = check.iter().map(|p| p.to_string()).collect();
        std::fs::write(out.join(format!("det-{head}-paths.json")), serde_json::to_string(&names)?)?;
    }
    for (scale, h, w, n) in [("demo", 128, 128, 8), ("800", 800, 1344, 2)] {
        std::fs::write(out.join(format!("det-targets-{scale}.json")), serde_json::to_string(&bench_targets(n, h, w))?)?;
        // The speed items' initial weights (as `det_item` builds them), so the reference runs
        // the same detectors and post-processes the same detections.
        for head in ["retinanet", "fpn"] {
            let (cfg, space, _) = det_setup(a, head, scale)?;
            tch::manual_seed(0);
            let (vs, _, _) = detnas_train::finetune::build_detector(&cfg, &space, 6, Device::Cpu)?;
            vs.save(out.join(format!("det-{head}-{scale}-init.safetensors")))?;
        }
    }
    Ok(())
}

/// The candidate item's inputs for the reference: the preprocessed recalibration and
/// validation batches, the validation ground truth (COCO JSON), the candidate paths and the
/// checkpoint folder (its config.toml and model.safetensors define the detector).
fn export_candidate(a: &BenchArgs, ckpt: &std::path::Path, out: &std::path::Path) -> Result<(), Failure> {
    std::fs::create_dir_all(out)?;
    let e = candidate_evaluator(ckpt, Device::Cpu)?;
    let scorer = e.scorer();
    let settings = scorer.settings();
    let recal = scorer.recalibration_images().ok_or_else(|| anyhow::anyhow!("the candidate evaluator recalibrates"))?;
    let mut named: Vec<(String, Tensor)> = Vec::new();
    let mut meta = serde_json::Map::new();
    for (name, data) in [("recal", recal.clone()), ("val", scorer.val().clone())] {
        let mut loader = settings.loader(data.clone())?;
        let mut b_i = 0;
        let mut batches = Vec::new();
        while let Some(b) = loader.next_batch() {
            let b = b?;
            let (x, sizes, _) = detnas_detect::evaluate::batch_inputs(&b.batch, Device::Cpu);
            named.push((format!("{name}.{b_i}.x"), x.contiguous()));
            let ids: Vec<u64> = b.batch.indices.iter().map(|&i| data.images[i].id).collect();
            let scales: Vec<[f32; 2]> = b.batch.samples.iter().map(|s| [s.scale.0, s.scale.1]).collect();
            batches.push(json!({"sizes": sizes, "ids": ids, "scales": scales}));
            b_i += 1;
        }
        meta.insert(name.to_string(), json!(batches));
    }
    let refs: Vec<(&str, &Tensor)> = named.iter().map(|(k, v)| (k.as_str(), v)).collect();
    Tensor::write_safetensors(&refs, out.join("inputs.safetensors"))?;
    std::fs::write(out.join("gt.json"), serde_json::to_string(&scorer.val().to_coco_json())?)?;
    let (_, resolved) = detnas_train::checkpoint::resolve(ckpt)?;
    let space = candidate_space(ckpt)?;
    // reps + 1 paths per evaluator, for up to one evaluator per thread (the candidate items).
    let n = (a.reps + 1) * tch::get_num_threads().max(1) as usize;
    let seq: Vec<String> = paths(&space, n).iter().map(|p| p.to_string()).collect();
    meta.insert("checkpoint".into(), json!(std::fs::canonicalize(&resolved)?));
    meta.insert("paths".into(), json!(seq));
    meta.insert("space".into(), serde_json::to_value(&space)?);
    meta.insert("categories".into(), json!(scorer.val().categories.iter().map(|c| c.id).collect::<Vec<_>>()));
    std::fs::write(out.join("meta.json"), serde_json::to_string(&meta)?)?;
    Ok(())
}

/// The search space of a fine-tuning checkpoint.
fn candidate_space(ckpt: &std::path::Path) -> Result<SearchSpace, Failure> {
    let (_, resolved) = detnas_train::checkpoint::resolve(ckpt)?;
    Ok(detnas_train::finetune::read_meta(&resolved)?.1.space)
}

/// The search's evaluator of the candidate item: BN recalibration on 100 training images,
/// AP on the fine-tuning run's search-validation split, batches of 50.
fn candidate_evaluator(
    ckpt: &std::path::Path,
    device: Device,
) -> Result<detnas_search::fitness::DetEvaluator, detnas_search::SearchError> {
    let eval = detnas_search::config::SearchEvalConfig { recalibrate_images: 100, batch: 50, ..Default::default() };
    detnas_search::fitness::DetEvaluator::open(ckpt, &eval, 2, device)
}
