//! `detnas export SRC --out DIR [--arch A]`: a child detector for PyTorch users and for
//! `detnas predict`. `SRC` is one of ([`Source::resolve`]):
//!
//! * a pipeline run: its retrained found architecture;
//! * a retraining folder (`RUN/retrain-NAME`) or a fine-tuning run of a fixed architecture;
//! * a supernet fine-tuning folder (`RUN/finetune` or a `detnas finetune` run): the path `A`,
//!   or the run's found architecture, with the weights it inherits from the supernet;
//! * a detection search folder (`RUN/search`): its found architecture (or `A`) on the
//!   supernet it searched, likewise.
//!
//! The last two are not retrained: their BN statistics are recomputed for the path on the
//! fine-tuning's training images (as the search scored it), and `arch.json` and the README say
//! "not retrained".
//!
//! ```text
//! DIR/arch.json                    architecture, space, classes, detector and input settings,
//!                                  MACs, params, provenance, latency
//! DIR/detector.safetensors         the whole child detector (backbone, FPN, head), detnas names
//! DIR/model.py                     self-contained PyTorch definition, pre- and post-processing
//! DIR/predict_torch.py             COCO results on image files with model.py
//! DIR/detector.onnx                the network to its raw head outputs ([`crate::onnx`])
//! DIR/box_head.onnx                Faster R-CNN's box head on pooled RoI features
//! DIR/predict_onnx.py              COCO results on image files with ONNX Runtime
//! DIR/reference.safetensors        detnas's outputs on two test images (the scripts' `check`)
//! DIR/backbone.safetensors         the child backbone under the official names (below)
//! DIR/name-mapping.tsv             detnas name → official name, one per line
//! DIR/detector/                    the child's detection checkpoint, for predict and eval det
//! DIR/README.md                    how to use each file, the classes, the latency measured
//! ```
//!
//! Official names: `ShuffleNetV2DetNAS` of megvii-model/DetNAS
//! (`maskrcnn_benchmark/modeling/backbone/detnasnet.py`, `shuffle_blocks.py`) built with a
//! fixed architecture. Block `i` is `features.i`, named by stage `s` (1-based) and repeat
//! letter `r` (`1a`, `1b`, …) with op `O` (`shufflenet_3x3`, `shufflenet_5x5`,
//! `shufflenet_7x7`, `xception_3x3`):
//!
//! | detnas | official |
//! |---|---|
//! | `stem.conv.{weight,bias}`, `stem.bn.*` | `first_conv.conv.*`, `first_conv.bn.*` |
//! | shufflenet: `branch.0` (1×1) | `conv.0.interstellar{sr}_{O}_branch2a`, BN `conv.0.bn{sr}_{O}_branch2a` |
//! | shufflenet: `branch.1` (depthwise k×k) | `conv.1.interstellar{sr}_{O}_branch2b_s`, BN `…_branch2b_s_bn` |
//! | shufflenet: `branch.2` (1×1) | `conv.1.interstellar{sr}_{O}_branch2b`, BN `conv.1.bn{sr}_{O}_branch2b` |
//! | xception: `branch.{2u, 2u+1}` (depthwise, 1×1), u = 0, 1, 2 | `conv.u.interstellar{sr}_{O}_branch2{a,b,c}_s` (+`_s_bn`), `conv.u.interstellar{sr}_{O}_branch2{a,b,c}` (BN `bn…`) |
//! | `proj.0` (depthwise), `proj.1` (1×1) of stride-2 blocks | `proj_conv.interstellar{sr}_proj_s` (+`_s_bn`), `proj_conv.interstellar{sr}_proj` (BN `proj_conv.bn{sr}_proj`) |
//!
//! BN layers carry `weight`, `bias`, `running_mean`, `running_var` and, as PyTorch's
//! `BatchNorm2d` state dicts do, `num_batches_tracked` (0).

use crate::PipelineError;
use crate::layout::{self as dirs, Retrained, finished};
use detnas_runtime::checkpoint::resolve;
use detnas_space::{Arch, Choice, SearchSpace};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

const OPS: [&str; 4] = ["shufflenet_3x3", "shufflenet_5x5", "shufflenet_7x7", "xception_3x3"];

/// The official name of a detnas child-backbone variable (`stem.…`, `features.i.…`), or
/// `None` for names outside the backbone.
pub fn official_name(space: &SearchSpace, arch: &Arch, name: &str) -> Option<String> {
    if let Some(rest) = name.strip_prefix("stem.") {
        return Some(format!("first_conv.{rest}"));
    }
    let rest = name.strip_prefix("features.")?;
    let (i, rest) = rest.split_once('.')?;
    let i: usize = i.parse().ok()?;
    let slot = space.slots().into_iter().nth(i)?;
    // Index of the first block of each stage.
    let starts: Vec<usize> = space
        .depths
        .iter()
        .scan(0usize, |acc, &d| {
            let s = *acc;
            *acc += d as usize;
            Some(s)
        })
        .collect();
    let stage = starts.iter().rposition(|&s| i >= s)?;
    let start = starts[stage];
    let sr = format!("{}{}", stage + 1, (b'a' + (i - start) as u8) as char);
    let choice = *arch.choices().get(i)?;
    let (part, rest) = rest.split_once('.')?;
    let (j, rest) = rest.split_once('.')?;
    let j: usize = j.parse().ok()?;
    let (kind, leaf) = rest.split_once('.')?; // conv|bn, weight|…
    let _ = slot;
    let (unit_prefix, conv, bn) = match part {
        "branch" => {
            let q = format!("{sr}_{}", OPS[choice.id() as usize]);
            let (u, branch, spatial) = match choice {
                Choice::Xception => (j / 2, ["branch2a", "branch2b", "branch2c"][j / 2], j % 2 == 0),
                _ => match j {
                    0 => (0, "branch2a", false),
                    1 => (1, "branch2b", true),
                    _ => (1, "branch2b", false),
                },
            };
            let base = format!("interstellar{q}_{branch}");
            if spatial {
                (format!("conv.{u}"), format!("{base}_s"), format!("{base}_s_bn"))
            } else {
                (format!("conv.{u}"), base, format!("bn{q}_{branch}"))
            }
        }
        "proj" => {
            let base = format!("interstellar{sr}_proj");
            if j == 0 {
                ("proj_conv".to_string(), format!("{base}_s"), format!("{base}_s_bn"))
            } else {
                ("proj_conv".to_string(), base, format!("bn{sr}_proj"))
            }
        }
        _ => return None,
    };
    let module = if kind == "conv" { conv } else { bn };
    Some(format!("features.{i}.{unit_prefix}.{module}.{leaf}"))
}

/// `(detnas name, official name)` pairs.
pub type NameMapping = Vec<(String, String)>;

/// Maps a detnas child backbone (names without prefix) to the official state dict,
/// adding `num_batches_tracked` for every BN.
///
/// # Errors
/// [`PipelineError::Config`] naming a variable without an official name (outside `stem.` and
/// `features.`, malformed, or beyond the space or `arch`).
pub fn to_official(
    space: &SearchSpace,
    arch: &Arch,
    vars: &BTreeMap<String, Tensor>,
) -> Result<(BTreeMap<String, Tensor>, NameMapping), PipelineError> {
    let mut out = BTreeMap::new();
    let mut mapping = Vec::new();
    for (k, v) in vars {
        let o = official_name(space, arch, k)
            .ok_or_else(|| PipelineError::Config(format!("no official name for backbone variable '{k}'")))?;
        if let Some(bn) = o.strip_suffix(".running_var") {
            out.insert(format!("{bn}.num_batches_tracked"), Tensor::from(0i64));
        }
        mapping.push((k.clone(), o.clone()));
        out.insert(o, v.shallow_clone());
    }
    Ok((out, mapping))
}

/// What an export reads: a child detector's checkpoint, or a supernet's and the path taken.
#[derive(Clone, Debug)]
pub struct Source {
    /// The fine-tuning checkpoint (`step-N` folder).
    pub checkpoint: PathBuf,
    /// The architecture exported.
    pub arch: Arch,
    /// Its space.
    pub space: SearchSpace,
    /// Whether `checkpoint` trained this child alone (else it is a supernet's).
    pub retrained: bool,
    /// The search that found `arch`, when it came from one.
    pub best: Option<detnas_search::BestArch>,
}

/// The kinds of folder `detnas export` reads, for error messages.
pub const SOURCE_KINDS: &str = "a pipeline run (its retrained found architecture), a retraining folder \
     (RUN/retrain-NAME) or fine-tuning run of a fixed architecture, a supernet fine-tuning folder (RUN/finetune \
     or a detnas finetune run; with --arch outside a run) or a detection search folder (RUN/search)";

impl Source {
    /// What `src` holds (module docs); `arch` picks the path of a supernet.
    ///
    /// # Errors
    /// [`PipelineError::Config`] for a folder of none of the [`SOURCE_KINDS`], a run whose found
    /// architecture is not retrained yet, a ClsNAS search, `arch` given for a fixed child, or
    /// a supernet without `arch` outside a run with a finished search; the errors of reading
    /// the records, the checkpoint's metadata or parsing `arch`.
    pub fn resolve(src: &Path, arch: Option<&str>) -> Result<Source, PipelineError> {
        let refuse = |why: String| {
            PipelineError::Config(format!("{}: {why}; detnas export reads {SOURCE_KINDS}", src.display()))
        };
        if src.join("pipeline.toml").is_file() {
            if arch.is_some() {
                return Source::resolve(&dirs::finetune(src), arch);
            }
            let (_, r) = finished::<Retrained>(&dirs::retrain(src, "found")).ok_or_else(|| {
                refuse("the found architecture is not retrained yet (export RUN/search for it with the supernet's weights)".into())
            })?;
            let best = detnas_search::run::read_best(&dirs::search(src))?;
            let (_, checkpoint) = resolve(&dirs::retrain(src, "found").join("det"))?;
            let arch = best.space.parse_arch(&r.arch)?;
            return Ok(Source { checkpoint, arch, space: best.space.clone(), retrained: true, best: Some(best) });
        }
        if src.join("config.toml").is_file() && src.join("ledger.jsonl").is_file() {
            let cfg = detnas_search::SearchConfig::load(&src.join("config.toml"), &[])?;
            if cfg.supernet.fitness != detnas_search::config::FitnessKind::Det {
                return Err(refuse("a ClsNAS search scored a classification supernet, which has no detector".into()));
            }
            let best = detnas_search::run::read_best(src).ok();
            let chosen = arch.map(str::to_string).or_else(|| best.as_ref().map(|b| b.arch.clone()));
            let chosen = chosen.ok_or_else(|| refuse("the search has not finished: give --arch".into()))?;
            let (_, checkpoint) = resolve(&cfg.supernet.checkpoint)?;
            return Source::of_checkpoint(checkpoint, Some(&chosen), best.filter(|b| b.arch == chosen));
        }
        let Ok((_, checkpoint)) = detnas_train::checkpoint::resolve_run(src, "det") else {
            return Err(refuse("not a folder of a kind it exports".into()));
        };
        // A supernet fine-tuning inside a run: its search's found architecture by default.
        let best = src.parent().and_then(|run| detnas_search::run::read_best(&dirs::search(run)).ok());
        let chosen = arch.map(str::to_string).or_else(|| best.as_ref().map(|b| b.arch.clone()));
        Source::of_checkpoint(checkpoint, chosen.as_deref(), best.filter(|b| Some(&b.arch) == chosen.as_ref()))
    }

    fn of_checkpoint(
        checkpoint: PathBuf,
        arch: Option<&str>,
        best: Option<detnas_search::BestArch>,
    ) -> Result<Source, PipelineError> {
        let (cfg, state) = detnas_train::finetune::read_meta(&checkpoint)?;
        let space = state.space;
        match (&cfg.model.arch, arch) {
            (Some(fixed), Some(a)) if fixed != a => Err(PipelineError::Config(format!(
                "{}: a fine-tuning of the fixed architecture {fixed}, not of a supernet: --arch {a} does not apply",
                checkpoint.display()
            ))),
            (Some(fixed), _) => Ok(Source { checkpoint, arch: space.parse_arch(fixed)?, space, retrained: true, best }),
            (None, Some(a)) => Ok(Source { checkpoint, arch: space.parse_arch(a)?, space, retrained: false, best }),
            (None, None) => Err(PipelineError::Config(format!(
                "{}: a supernet fine-tuning: give the path to export with --arch",
                checkpoint.display()
            ))),
        }
    }
}

/// Exports what `src` holds (module docs) into `out`, with the latency measured as `measure`
/// says.
///
/// # Errors
/// As [`Source::resolve`], [`scored_checkpoint`] and [`export_checkpoint`].
pub fn export(src: &Path, arch: Option<&str>, measure: &Measure, out: &Path) -> Result<PathBuf, PipelineError> {
    let source = Source::resolve(src, arch)?;
    let staging = out.join(".child");
    let _ = std::fs::remove_dir_all(&staging);
    let result = scored_checkpoint(&source, &staging).and_then(|(ckpt, images)| {
        let weights = Weights {
            retrained: source.retrained,
            supernet: (!source.retrained).then(|| source.checkpoint.clone()),
            bn_recalibration_images: images,
        };
        export_checkpoint(&ckpt, &source.space, &source.arch, source.best.as_ref(), Some(&weights), measure, out)
    });
    let _ = std::fs::remove_dir_all(&staging);
    result
}

/// Where an exported child's weights come from.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Weights {
    /// Whether the child was trained alone; else its weights are a supernet's path.
    pub retrained: bool,
    /// The supernet fine-tuning checkpoint, when not retrained.
    pub supernet: Option<PathBuf>,
    /// Training images its BN statistics were recomputed on before export (0: kept).
    pub bn_recalibration_images: usize,
}

/// The child checkpoint that holds the weights the source's evaluation scores: a retrained
/// child's own checkpoint when its evaluation keeps its BN statistics
/// (`eval.recalibrate_images` 0, the default for a fixed architecture); otherwise a new one
/// written into `dir/checkpoints/step-N` with the BN statistics recomputed as the evaluation
/// (and the search) recomputes them, on the fine-tuning's recalibration set; for a supernet,
/// the path's variables copied out ([`detnas_nn::net::supernet_name`]) and the
/// configuration's `model.arch` set. Returns the checkpoint and the number of images.
///
/// # Errors
/// As [`detnas_train::finetune::OpenedDetector::open`] and its recalibration (the training
/// data must be readable); [`PipelineError::Config`] when a child variable has no supernet
/// counterpart of its shape.
pub fn scored_checkpoint(source: &Source, dir: &Path) -> Result<(PathBuf, usize), PipelineError> {
    use detnas_train::finetune::{OpenedDetector, build_detector};
    let (ckpt, arch) = (&source.checkpoint, &source.arch);
    let device = tch::Device::Cpu;
    let opened = OpenedDetector::open(ckpt, device)?;
    let n = opened.config.eval.recalibrate_images(source.retrained);
    if source.retrained && n == 0 {
        return Ok((ckpt.clone(), 0));
    }
    let splits = opened.splits()?;
    let settings = opened.config.eval_settings();
    let path = (!source.retrained).then_some(arch);
    opened.recalibrate(&splits, path, n, &settings, opened.config.eval.bn_mode.into(), device)?;
    let mut cfg = opened.config.clone();
    cfg.model.arch = Some(arch.to_string());
    let child = if source.retrained {
        opened.vs
    } else {
        let (child, _, _) = build_detector(&cfg, &opened.state.space, opened.state.task.categories.len(), device)?;
        let supernet = opened.vs.variables();
        for (name, mut var) in child.variables() {
            let from = detnas_nn::net::supernet_name(&name, arch)
                .ok()
                .and_then(|s| supernet.get(&s))
                .filter(|t| t.size() == var.size())
                .ok_or_else(|| {
                    PipelineError::Config(format!("{}: no supernet variable for child variable {name}", ckpt.display()))
                })?;
            tch::no_grad(|| var.copy_(from));
        }
        child
    };
    let toml = detnas_runtime::ConfigDocument::to_toml(&cfg);
    let state = opened.state.clone();
    let step = state.step;
    let written = detnas_runtime::checkpoint::save(
        &dir.join("checkpoints"),
        step,
        1,
        |tmp| {
            let fail = |e: String| detnas_runtime::RuntimeError::checkpoint(tmp, e);
            child.save(tmp.join("model.safetensors")).map_err(|e| fail(e.to_string()))?;
            let json = serde_json::to_string_pretty(&state).map_err(|e| fail(e.to_string()))?;
            std::fs::write(tmp.join("state.json"), json).map_err(|e| detnas_runtime::RuntimeError::io(tmp, e))?;
            std::fs::write(tmp.join("config.toml"), &toml).map_err(|e| detnas_runtime::RuntimeError::io(tmp, e))
        },
        || (),
    )?;
    Ok((written, n))
}

/// Python files written beside the weights: the detector, and COCO results on image files.
const PYTHON: [(&str, &str); 3] = [
    ("model.py", include_str!("../export/model.py")),
    ("predict_torch.py", include_str!("../export/predict_torch.py")),
    ("predict_onnx.py", include_str!("../export/predict_onnx.py")),
];

/// The whole detector of fixed-architecture fine-tuning checkpoint `ckpt` (`all`: its
/// variables): `detector.safetensors` (every variable, and `num_batches_tracked` = 0 for each
/// BN, as PyTorch's state dicts hold), `model.py`, `predict_torch.py` and
/// `reference.safetensors`, detnas's own
/// outputs on the first two test images (`model.py check` compares against them). Returns
/// the number of reference images (0 when the test split cannot be read: then there is no
/// reference, and a warning says so).
///
/// # Errors
/// [`PipelineError::Config`] when a file cannot be written; as
/// [`detnas_train::finetune::OpenedDetector::open`] and the detector's forward.
fn write_detector(
    ckpt: &Path,
    (space, arch): (&SearchSpace, &Arch),
    all: &[(String, Tensor)],
    (cfg, classes): (&detnas_train::FinetuneConfig, i64),
    input: Option<[i64; 2]>,
    out: &Path,
) -> Result<DetectorFiles, PipelineError> {
    let mut state: Vec<(String, Tensor)> = Vec::with_capacity(all.len());
    for (k, v) in all {
        if let Some(bn) = k.strip_suffix(".running_var") {
            state.push((format!("{bn}.num_batches_tracked"), Tensor::from(0i64)));
        }
        state.push((k.clone(), v.shallow_clone()));
    }
    write_safetensors(&state, &out.join("detector.safetensors"))?;
    let vars: BTreeMap<String, Tensor> = all.iter().map(|(k, v)| (k.clone(), v.shallow_clone())).collect();
    let (detector, box_head) = crate::onnx::detector_graphs(space, arch, &cfg.detector, classes, &vars)?;
    for (name, bytes) in [("detector.onnx", Some(detector)), ("box_head.onnx", box_head)] {
        let p = out.join(name);
        match bytes {
            Some(b) => std::fs::write(&p, b).map_err(|e| PipelineError::io(&p, e))?,
            None => {
                let _ = std::fs::remove_file(&p);
            }
        }
    }
    for (name, text) in PYTHON {
        let p = out.join(name);
        std::fs::write(&p, text).map_err(|e| PipelineError::io(&p, e))?;
    }
    let opened = detnas_train::finetune::OpenedDetector::open(ckpt, tch::Device::Cpu)?;
    let test = match opened.splits() {
        Ok(s) => s.test,
        Err(e) => {
            tracing::warn!("no reference outputs for model.py check: the test split cannot be read ({e})");
            let _ = std::fs::remove_file(out.join("reference.safetensors"));
            return Ok(DetectorFiles { reference_images: 0, latency: Vec::new() });
        }
    };
    let t = detnas_data::det::transform::DetTransform {
        min_size: vec![cfg.data.test_min_size],
        max_size: cfg.data.max_size,
        flip: false,
    };
    let mut named: Vec<(String, Tensor)> = Vec::new();
    let mut samples = Vec::new();
    for (i, image) in test.images.iter().take(2).enumerate() {
        let img = detnas_data::decode_image(&image.file)?;
        let (w, h) = (img.width() as i64, img.height() as i64);
        named.push((format!("image.{i}"), Tensor::from_slice(img.as_raw()).view([h, w, 3])));
        samples.push(t.apply(&img, image, &mut detnas_space::rng::seeded(0)));
    }
    let n = samples.len();
    let first = samples.first().cloned();
    let batch =
        detnas_data::det::transform::collate(samples, (0..n).collect(), cfg.data.divisibility, cfg.data.convention);
    let (x, sizes, _) = detnas_detect::evaluate::batch_inputs(&batch, tch::Device::Cpu);
    let det = &opened.detector;
    named.extend(det.trace(&x, &sizes, None).map_err(detnas_train::TrainError::from)?);
    for (i, d) in det.detect(&x, &sizes, None).map_err(detnas_train::TrainError::from)?.into_iter().enumerate() {
        let boxes: Vec<f32> = d.boxes.iter().flatten().copied().collect();
        named.push((format!("boxes.{i}"), Tensor::from_slice(&boxes).view([-1, 4])));
        named.push((format!("scores.{i}"), Tensor::from_slice(&d.scores)));
        named.push((format!("labels.{i}"), Tensor::from_slice(&d.labels)));
    }
    let flat: Vec<i64> = sizes.iter().flat_map(|&(h, w)| [h, w]).collect();
    named.push(("sizes".into(), Tensor::from_slice(&flat).view([-1, 2])));
    named.push(("input".into(), x));
    write_safetensors(&named, &out.join("reference.safetensors"))?;
    let mut latency = Vec::new();
    if let Some(sample) = first {
        let one =
            detnas_data::det::transform::collate(vec![sample], vec![0], cfg.data.divisibility, cfg.data.convention);
        let (mut x, mut sizes, _) = detnas_detect::evaluate::batch_inputs(&one, tch::Device::Cpu);
        if let Some([h, w]) = input {
            let d = i64::from(cfg.data.divisibility.max(1));
            let resized =
                x.narrow(2, 0, sizes[0].0).narrow(3, 0, sizes[0].1).upsample_bilinear2d([h, w], false, None, None);
            x = Tensor::zeros([1, 3, (h + d - 1) / d * d, (w + d - 1) / d * d], (Kind::Float, tch::Device::Cpu));
            x.narrow(2, 0, h).narrow(3, 0, w).copy_(&resized);
            sizes = vec![(h, w)];
        }
        let mut times = Vec::with_capacity(LATENCY_REPS + 1);
        for _ in 0..=LATENCY_REPS {
            let t = std::time::Instant::now();
            det.detect(&x, &sizes, None).map_err(detnas_train::TrainError::from)?;
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        times.remove(0);
        times.sort_by(f64::total_cmp);
        let size = x.size();
        latency.push(Latency {
            runtime: format!("detnas (libtorch {})", detnas_device::machine().libtorch),
            device: "cpu".into(),
            threads: tch::get_num_threads() as usize,
            precision: "fp32".into(),
            batch: 1,
            input: [size[2], size[3]],
            nms: true,
            median_ms: times[times.len() / 2],
            reps: LATENCY_REPS,
        });
    }
    Ok(DetectorFiles { reference_images: n, latency })
}

/// How the export measures latency.
#[derive(Clone, Debug, Default)]
pub struct Measure {
    /// A Python with torch and onnxruntime: PyTorch eager's and ONNX Runtime's latency are
    /// measured too, with the exported scripts (`model.py bench`, `predict_onnx.py bench`).
    pub python: Option<PathBuf>,
    /// The network input `[height, width]`, pixels, of the measurement (the first test image
    /// resized to it, then padded to the divisibility); default: that image as evaluation
    /// prepares it.
    pub input: Option<[i64; 2]>,
}

/// Repetitions of a latency measurement, after one warm-up.
const LATENCY_REPS: usize = 10;

/// What [`write_detector`] wrote: reference images, and the latencies measured.
struct DetectorFiles {
    reference_images: usize,
    latency: Vec<Latency>,
}

/// One latency measurement of the exported detector: the whole detection of one image
/// (backbone to NMS), the median of `reps` runs after a warm-up. `model.py bench` prints the
/// same fields.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Latency {
    /// What ran it, with its version.
    pub runtime: String,
    /// `cpu` or `cuda`.
    pub device: String,
    /// Intra-op threads.
    pub threads: usize,
    /// `fp32`.
    pub precision: String,
    /// Images per run.
    pub batch: usize,
    /// The network input `[height, width]`, pixels (after resizing and padding).
    pub input: [i64; 2],
    /// Whether decoding and NMS are included.
    pub nms: bool,
    /// Median, milliseconds.
    pub median_ms: f64,
    /// Runs measured.
    pub reps: usize,
}

/// The latency a script of the export prints (`PYTHON DIR/SCRIPT bench …`: `model.py`,
/// PyTorch eager; `predict_onnx.py`, ONNX Runtime), each runtime with its own thread count.
fn python_latency(python: &Path, dir: &Path, args: &[&str]) -> Result<Latency, PipelineError> {
    let o = std::process::Command::new(python)
        .arg(dir.join(args[0]))
        .args(&args[1..])
        .output()
        .map_err(|e| PipelineError::Config(format!("--python {}: {e}", python.display())))?;
    if !o.status.success() {
        return Err(PipelineError::Config(format!(
            "--python {}: {} bench failed: {}",
            python.display(),
            args[0],
            String::from_utf8_lossy(&o.stderr).lines().last().unwrap_or_default()
        )));
    }
    serde_json::from_slice(&o.stdout).map_err(|e| {
        PipelineError::Config(format!("--python {}: {} bench printed no result ({e})", python.display(), args[0]))
    })
}

fn write_safetensors(named: &[(String, Tensor)], p: &Path) -> Result<(), PipelineError> {
    let contiguous: Vec<(&str, Tensor)> = named.iter().map(|(k, v)| (k.as_str(), v.contiguous())).collect();
    let refs: Vec<(&str, &Tensor)> = contiguous.iter().map(|(k, v)| (*k, v)).collect();
    Tensor::write_safetensors(&refs, p).map_err(|e| PipelineError::Config(format!("{}: {e}", p.display())))
}

/// The README's latency rows, measured at export on this machine.
fn latency_table(rows: &[Latency]) -> String {
    if rows.is_empty() {
        return "Latency: not measured (no test image could be read).".into();
    }
    let m = detnas_device::machine();
    let mut t = format!(
        "Latency measured at export on {} ({} cores), the whole detection of one test image \
         (median of {LATENCY_REPS} runs after a warm-up):\n\n\
         | runtime | device | threads | precision | batch | input (h×w) | decoding + NMS | median (ms) |\n\
         |---|---|---|---|---|---|---|---|\n",
        m.cpu, m.cores
    );
    for r in rows {
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} | {}×{} | {} | {:.2} |",
            r.runtime,
            r.device,
            r.threads,
            r.precision,
            r.batch,
            r.input[0],
            r.input[1],
            if r.nms { "included" } else { "not included" },
            r.median_ms
        );
    }
    if rows.len() == 1 {
        t.push_str(
            "\nPyTorch eager: `python model.py bench .`; ONNX Runtime: `python predict_onnx.py bench` (or \
             `detnas export … --python PYTHON`, a Python with torch and onnxruntime).\n",
        );
    }
    t
}

/// Exports a fixed-architecture detection checkpoint `ckpt`; `weights` says where they come
/// from (none: retrained, BN statistics as trained).
///
/// # Errors
/// [`PipelineError::Config`] for a bare backbone checkpoint of a space whose channel shuffle is
/// not DetNAS's (`small-spos`: the official definition would compute another function, so
/// there are no official names, and a detector's export leaves them out), when
/// `model.safetensors` cannot be read or has no backbone, or `backbone.safetensors` cannot be
/// written, and as [`to_official`]; [`PipelineError::Io`]
/// when `out` or another file cannot be written or the checkpoint cannot be copied.
pub fn export_checkpoint(
    ckpt: &Path,
    space: &SearchSpace,
    arch: &Arch,
    best: Option<&detnas_search::BestArch>,
    weights: Option<&Weights>,
    measure: &Measure,
    out: &Path,
) -> Result<PathBuf, PipelineError> {
    // A fine-tuning checkpoint (not a bare set of backbone weights): the whole detector too.
    let meta = detnas_train::finetune::read_meta(ckpt).ok();
    let official_names = space.shuffle.is_detnas();
    if !official_names && meta.is_none() {
        return Err(PipelineError::Config(format!(
            "space {}: its channel shuffle ({:?}) is not DetNAS's, so its weights would not compute the same \
             function in the official DetNAS definition",
            space.name, space.shuffle
        )));
    }
    std::fs::create_dir_all(out).map_err(|e| PipelineError::io(out, e))?;
    let model = ckpt.join("model.safetensors");
    let all =
        Tensor::read_safetensors(&model).map_err(|e| PipelineError::Config(format!("{}: {e}", model.display())))?;
    let mut files = match &meta {
        Some((cfg, st)) => {
            let classes = st.task.categories.len() as i64;
            Some(write_detector(ckpt, (space, arch), &all, (cfg, classes), measure.input, out)?)
        }
        None => None,
    };
    let backbone: BTreeMap<String, Tensor> =
        all.into_iter().filter_map(|(k, v)| k.strip_prefix("backbone.").map(|r| (r.to_string(), v))).collect();
    if backbone.is_empty() {
        return Err(PipelineError::Config(format!("{} has no backbone variables", model.display())));
    }
    for name in ["backbone.safetensors", "name-mapping.tsv"] {
        let _ = std::fs::remove_file(out.join(name));
    }
    if official_names {
        let (official, mapping) = to_official(space, arch, &backbone)?;
        let refs: Vec<(&str, &Tensor)> = official.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let p = out.join("backbone.safetensors");
        Tensor::write_safetensors(&refs, &p).map_err(|e| PipelineError::Config(format!("{}: {e}", p.display())))?;
        let tsv: String = mapping.iter().map(|(a, b)| format!("{a}\t{b}\n")).collect();
        std::fs::write(out.join("name-mapping.tsv"), tsv).map_err(|e| PipelineError::io(out, e))?;
    }
    // The detection checkpoint, copied file by file (its manifest stays valid).
    let det = out.join("detector");
    let _ = std::fs::remove_dir_all(&det);
    let step_dir = det.join(ckpt.file_name().unwrap_or_default());
    std::fs::create_dir_all(&step_dir).map_err(|e| PipelineError::io(&step_dir, e))?;
    for e in std::fs::read_dir(ckpt).map_err(|e| PipelineError::io(ckpt, e))?.flatten() {
        std::fs::copy(e.path(), step_dir.join(e.file_name())).map_err(|err| PipelineError::io(e.path(), err))?;
    }
    let cost = detnas_space::cost(space, arch, &detnas_space::CostModel::default());
    // The detector's classes (label order), from the checkpoint's state.
    let classes: Vec<serde_json::Value> = meta
        .as_ref()
        .map(|(_, st)| st.task.categories.iter().map(|c| serde_json::json!({"id": c.id, "name": c.name})).collect())
        .unwrap_or_default();
    let input = meta.as_ref().map(|(cfg, _)| {
        serde_json::json!({
            "min_size": cfg.data.test_min_size, "max_size": cfg.data.max_size,
            "divisibility": cfg.data.divisibility, "convention": cfg.data.convention,
        })
    });
    let mut info = serde_json::json!({
        "arch": arch.to_string(), "choices": arch.ids(), "space": space, "classes": classes,
        "backbone_macs_224": cost.backbone_macs, "backbone_params": cost.backbone_params,
        "stage_out_channels": std::iter::once(space.stem).chain(space.widths.iter().copied()).collect::<Vec<u64>>(),
        "stage_repeats": space.depths, "search": best,
        "retrained": weights.is_none_or(|w| w.retrained), "weights": weights,
        "detector": meta.as_ref().map(|(cfg, _)| &cfg.detector), "input": input,
        "latency": files.as_ref().map(|f| &f.latency),
    });
    detnas_runtime::fsx::write_json_atomic(&out.join("arch.json"), &info)?;
    // PyTorch eager's and ONNX Runtime's latency, with the files just written (they read
    // arch.json).
    if let (Some(py), Some(f)) = (&measure.python, files.as_mut().filter(|f| f.reference_images > 0)) {
        let (dir, reps) = (out.to_string_lossy().into_owned(), LATENCY_REPS.to_string());
        let size: Vec<String> = measure.input.iter().flatten().map(i64::to_string).collect();
        let size: Vec<&str> = size.iter().map(String::as_str).collect();
        f.latency.push(python_latency(py, out, &[&["model.py", "bench", &dir, &reps][..], &size].concat())?);
        f.latency.push(python_latency(py, out, &[&["predict_onnx.py", "bench", &reps][..], &size].concat())?);
        info["latency"] = serde_json::json!(f.latency);
        detnas_runtime::fsx::write_json_atomic(&out.join("arch.json"), &info)?;
    }
    let provenance = match weights {
        Some(Weights { supernet: Some(s), bn_recalibration_images: n, .. }) => format!(
            "**Not retrained**: the weights are path `{arch}` of the supernet fine-tuning checkpoint `{}`, \
             with BN statistics recomputed for the path on {n} training images, as the search scored it. \
             Retrain it (`detnas run` does) before judging or deploying its accuracy.",
            s.display()
        ),
        Some(Weights { bn_recalibration_images: n, .. }) if *n > 0 => format!(
            "Retrained: this child was trained alone; its BN statistics were recomputed on {n} training images, \
             as its evaluation does."
        ),
        _ => "Retrained: this child was trained alone.".to_string(),
    };
    let opset = crate::onnx::OPSET;
    let outputs = match meta.as_ref().map(|(cfg, _)| &cfg.detector.head) {
        Some(detnas_detect::HeadConfig::FasterRcnn(_)) => {
            "`rpn_obj.{l}` `[N, H·W·A]` (objectness logits) and `rpn_reg.{l}` `[N, H·W·A, 4]` (box deltas) for \
             P2–P6, and the levels `p2`–`p5`; `box_head.onnx` maps RoIAlign-pooled features `[R, C, P, P]` to \
             `roi_cls` `[R, K+1]` (logits) and `roi_reg` `[R, 4(K+1)]` (deltas)"
        }
        _ => "`cls.{l}` `[N, H·W·A, K]` (class logits) and `reg.{l}` `[N, H·W·A, 4]` (box deltas) for P3–P7",
    };
    let detector = match &files {
        None => String::new(),
        Some(DetectorFiles { reference_images: n, latency }) => format!(
            r#"
## PyTorch: the whole detector

`model.py` (imports only torch) builds this detector, backbone, FPN and head, from
`arch.json` and loads `detector.safetensors` with `strict=True`; it resizes, pads and
normalises images and decodes, clips and suppresses boxes as detnas does:

```python
import model
det = model.load(".")                    # this folder
out = det.predict([image])               # uint8 [H, W, 3] RGB tensors or PIL images
boxes, scores, labels = out[0]           # boxes x1 y1 x2 y2 in the image's pixels
names = [c["name"] for c in det.classes] # label l is names[l]
```

Classes (label: dataset id, name): {}.

`python predict_torch.py IMAGE… --out detections.json [--gt GT.json]` writes COCO results
(torch and Pillow); with `--gt`, image ids are those of the same file names in `GT.json`, so
`detnas eval coco --gt GT.json --dt detections.json` or pycocotools scores them.

## ONNX

`detector.onnx` (opset {opset}, written by detnas; BN folded into the convs; dynamic batch,
height and width) takes the prepared images `[N, 3, H, W]` and gives the raw head outputs
per pyramid level: {outputs}. `python predict_onnx.py IMAGE… --out detections.json
[--gt GT.json]` (onnxruntime, numpy and Pillow) prepares the images and decodes, clips and
suppresses boxes as detnas does; `python predict_onnx.py check` compares the graphs' outputs
and its detections with detnas's own.

{}

{}
"#,
            classes
                .iter()
                .enumerate()
                .map(|(l, c)| format!("{l}: {} {}", c["id"], c["name"].as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(", "),
            if *n > 0 {
                format!(
                    "`python model.py check .` compares every output of `model.py` (prepared input, pyramid, \
                     head outputs, detections) with detnas's own on {n} test images (`reference.safetensors`) \
                     and prints the largest relative difference."
                )
            } else {
                "No reference outputs were written (the test split could not be read at export).".to_string()
            },
            latency_table(latency)
        ),
    };
    let ids = arch.ids();
    let official = if official_names {
        format!(
            r#"## PyTorch: the backbone under the official names

`backbone.safetensors` holds the state dict of the official `ShuffleNetV2DetNAS` backbone
(megvii-model/DetNAS, `maskrcnn_benchmark/modeling/backbone/detnasnet.py`) built with
`architecture = {ids:?}`, `stage_repeats = {depths:?}` and
`stage_out_channels = [-1, {stem}, {widths_list}]` (channel shuffle method 1):

```python
import torch
from safetensors.torch import load_file          # pip install safetensors
model = ShuffleNetV2DetNAS(cfg)                   # the official definition, fixed architecture
model.load_state_dict(load_file("backbone.safetensors"))
model.eval()
c2, c3, c4, c5 = model(images)                     # images: [N, 3, H, W], BGR 0-255 as in training
```

`name-mapping.tsv` lists every detnas name with its official name."#,
            depths = space.depths,
            stem = space.stem,
            widths_list = space.widths.iter().map(|w| w.to_string()).collect::<Vec<_>>().join(", "),
        )
    } else {
        format!(
            "## No backbone under the official names\n\nSpace `{}` uses SPOS's channel shuffle ({:?}), so the \
             official DetNAS definition would compute another function with these weights; `model.py` builds \
             this one.",
            space.name, space.shuffle
        )
    };
    let readme = format!(
        r#"# Exported DetNAS detector `{arch}`

{provenance}
{detector}
Space `{space}`: stem {stem}, stage widths {widths:?}, depths {depths:?}; choices per block
(0 = shufflenet_3x3, 1 = shufflenet_5x5, 2 = shufflenet_7x7, 3 = xception_3x3):
`{ids:?}`. Backbone: {macs} MACs at 224×224, {params} parameters. `detector.safetensors`
holds the whole detector (backbone, FPN, head) under detnas's names.

{official}

## detnas

```sh
detnas predict --checkpoint detector IMAGE.png [--out predictions]
```
"#,
        space = space.name,
        stem = space.stem,
        widths = space.widths,
        depths = space.depths,
        macs = detnas_space::format_count(cost.backbone_macs),
        params = detnas_space::format_count(cost.backbone_params),
    );
    std::fs::write(out.join("README.md"), readme).map_err(|e| PipelineError::io(out, e))?;
    Ok(out.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn official_names_follow_the_reference_definition() {
        let s = SearchSpace::small();
        let a: Arch = "21202112331300313132".parse().unwrap();
        let n = |x: &str| official_name(&s, &a, x).unwrap();
        assert_eq!(n("stem.conv.weight"), "first_conv.conv.weight");
        assert_eq!(n("stem.bn.running_var"), "first_conv.bn.running_var");
        // Block 0: stage 1 repeat a, choice 2 (7x7), stride 2.
        assert_eq!(
            n("features.0.branch.0.conv.weight"),
            "features.0.conv.0.interstellar1a_shufflenet_7x7_branch2a.weight"
        );
        assert_eq!(n("features.0.branch.0.bn.weight"), "features.0.conv.0.bn1a_shufflenet_7x7_branch2a.weight");
        assert_eq!(
            n("features.0.branch.1.conv.weight"),
            "features.0.conv.1.interstellar1a_shufflenet_7x7_branch2b_s.weight"
        );
        assert_eq!(
            n("features.0.branch.1.bn.bias"),
            "features.0.conv.1.interstellar1a_shufflenet_7x7_branch2b_s_bn.bias"
        );
        assert_eq!(
            n("features.0.branch.2.conv.weight"),
            "features.0.conv.1.interstellar1a_shufflenet_7x7_branch2b.weight"
        );
        assert_eq!(
            n("features.0.branch.2.bn.running_mean"),
            "features.0.conv.1.bn1a_shufflenet_7x7_branch2b.running_mean"
        );
        assert_eq!(n("features.0.proj.0.conv.weight"), "features.0.proj_conv.interstellar1a_proj_s.weight");
        assert_eq!(n("features.0.proj.0.bn.weight"), "features.0.proj_conv.interstellar1a_proj_s_bn.weight");
        assert_eq!(n("features.0.proj.1.conv.weight"), "features.0.proj_conv.interstellar1a_proj.weight");
        assert_eq!(n("features.0.proj.1.bn.weight"), "features.0.proj_conv.bn1a_proj.weight");
        // Block 9: stage 3 (blocks 8..16) repeat b, choice 3 (Xception).
        assert_eq!(
            n("features.9.branch.0.conv.weight"),
            "features.9.conv.0.interstellar3b_xception_3x3_branch2a_s.weight"
        );
        assert_eq!(n("features.9.branch.1.bn.weight"), "features.9.conv.0.bn3b_xception_3x3_branch2a.weight");
        assert_eq!(
            n("features.9.branch.4.bn.weight"),
            "features.9.conv.2.interstellar3b_xception_3x3_branch2c_s_bn.weight"
        );
        assert_eq!(
            n("features.9.branch.5.conv.weight"),
            "features.9.conv.2.interstellar3b_xception_3x3_branch2c.weight"
        );
        assert_eq!(
            n("features.19.branch.0.conv.weight"),
            "features.19.conv.0.interstellar4d_shufflenet_7x7_branch2a.weight"
        );
        assert!(official_name(&s, &a, "fpn.inner.0.weight").is_none());
    }
}
