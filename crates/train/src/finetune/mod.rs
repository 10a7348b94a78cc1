//! Path-wise fine-tuning of the supernet as a detector's backbone (DetNAS arXiv:1903.10979
//! §3.2, step 2): a uniform path every iteration, BN in training mode everywhere (never
//! frozen), the path's variables plus the shared FPN and heads updated ([`crate::engine`]
//! runs the loop). With `model.arch`, one child network is trained instead (retraining).
//! After training, a few random paths (or the child) are scored on the test split after BN
//! recalibration ([`detnas_detect::evaluate`]). A child's test detections are kept:
//!
//! ```text
//! OUT/test/gt.json          COCO instances of the images scored (`file_name`: the image's path)
//! OUT/test/detections.json  COCO results of the child on them
//! ```
//!
//! * [`splits`] — training, search-validation and test data;
//! * [`model`] — building the detector, initialising it from a pre-trained supernet, opening
//!   a fine-tuning checkpoint.

pub mod model;
pub mod splits;

pub use model::{EvaluationBatch, OpenedDetector, build_detector, load_pretrained, read_meta, run_dir_of};
pub use splits::{DetSplits, open_splits};

use crate::TrainError;
use crate::det_config::FinetuneConfig;
use crate::engine::{
    LoadedBatch, Paths, Resume, RunOptions, StepLosses, TrainOutcome, TrainTask, Trainer, TrainerSpec,
};
use crate::engine::{RunStart, start_run};
use crate::scoring::{DetScorer, DetSplit, ScoreSettings};
use detnas_data::det::loader::{DetLoader, DetLoaderConfig};
use detnas_data::det::transform::{DetBatch, DetTransform};
use detnas_data::det::{Category, DetDataset};
use detnas_data::{StreamConfig, mix_seed};
use detnas_detect::evaluate::{DetScore, batch_inputs};
use detnas_detect::metrics::CocoDetection;
use detnas_detect::{Detector, Targets};
use detnas_runtime::ConfigDocument;
use detnas_space::rng::seeded;
use detnas_space::{Arch, PathSampler};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;
use tch::Device;

use detnas_data::streams::{FINETUNE_DATA, FINETUNE_EVAL, FINETUNE_INIT, FINETUNE_PATHS, FINETUNE_SAMPLER};

/// The detection part of a checkpoint's state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DetState {
    /// The dataset's categories, in label order.
    pub categories: Vec<Category>,
    /// Image ids of the search-validation split carved from the training set: never
    /// fine-tuned on; the search checks it uses exactly these.
    pub search_val_ids: Vec<u64>,
}

/// A fine-tuning checkpoint's state.
pub type TrainState = crate::engine::TrainState<DetState>;

/// What a finished run reports (also written to `summary.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FinetuneSummary {
    /// The training loop's outcome.
    #[serde(flatten)]
    pub train: TrainOutcome,
    /// Random paths (or the child) scored on the test split after BN recalibration.
    pub paths: Vec<DetScore>,
}

/// Detection batches and the detector's losses.
struct DetTask<'a> {
    det: &'a Detector,
    loader: DetLoader,
    train: Arc<DetDataset>,
    device: Device,
    /// The run's seed (the samplers' per-image seeds derive from it).
    seed: u64,
}

impl TrainTask for DetTask<'_> {
    type Batch = DetBatch;

    fn next_batch(&mut self) -> Result<LoadedBatch<DetBatch>, TrainError> {
        let l = self.loader.next_batch().ok_or_else(|| TrainError::Config("the training stream ended".into()))??;
        Ok(LoadedBatch { len: l.batch.samples.len(), batch: l.batch, after: l.after, epoch_reports: l.epoch_reports })
    }

    fn losses(&mut self, batch: &DetBatch, arch: Option<&Arch>, step: u64) -> Result<StepLosses, TrainError> {
        let (x, sizes, mut targets) = batch_inputs(batch, self.device);
        for t in &mut targets {
            t.seed = mix_seed(self.seed, &[FINETUNE_SAMPLER, step, t.seed]);
        }
        let l = self.det.losses(&x, &sizes, &Targets::new(&targets, self.device), arch)?;
        Ok(StepLosses { losses: l.terms, metrics: Vec::new(), exact: Some(l.exact) })
    }

    fn describe(&self, batch: &DetBatch) -> Vec<String> {
        batch.indices.iter().take(8).map(|&i| self.train.images[i].file.display().to_string()).collect()
    }

    fn input_size(&self, batch: &DetBatch) -> String {
        format!("{} images padded to {}×{}", batch.samples.len(), batch.height, batch.width)
    }

    const MEMORY_KEYS: &'static str = "schedule.batch or data.max_size (and data.min_size)";
}

/// Decodes every image of the splits (in parallel) and logs those that fail, as `detnas data
/// check` does; training skips them when it meets them.
pub fn decode_check(splits: &DetSplits) {
    let t = std::time::Instant::now();
    let mut n = 0;
    let mut bad = 0;
    for (name, d) in [("train", &splits.train), ("search-val", &splits.search_val), ("test", &splits.test)] {
        n += d.len();
        let errors = detnas_data::det::check::decode_all(d);
        bad += errors.len();
        for e in errors.iter().take(20) {
            tracing::warn!("{name}: {e}");
        }
        if errors.len() > 20 {
            tracing::warn!(
                "{name}: … and {} more images that cannot be decoded (detnas data check lists all)",
                errors.len() - 20
            );
        }
    }
    tracing::info!(
        "data: decoded all {n} images in {:.1} s: {}",
        t.elapsed().as_secs_f64(),
        if bad == 0 { "no errors".to_string() } else { format!("{bad} cannot be decoded and will be skipped") }
    );
}

/// Runs (or resumes) fine-tuning into `out`.
///
/// # Errors
/// [`TrainError::Config`] for a configuration that fails its checks or a run folder holding
/// another one, [`TrainError::Checkpoint`] for a checkpoint that cannot be resumed or a
/// pre-trained supernet that does not fit, data errors, and the numerical and interruption
/// errors of the loop ([`Trainer::run`]).
pub fn run(cfg: &FinetuneConfig, out: &Path, device: Device, opts: &RunOptions) -> Result<FinetuneSummary, TrainError> {
    // A failed start's synthetic set is removed before any rank reads the data.
    let take_over = || splits::take_over_synthetic(cfg, out).map(drop);
    let RunStart { hash, writer } = start_run(cfg, (&cfg.schedule, &cfg.runtime), out, opts, take_over)?;
    let space = cfg.space()?;

    let splits = open_splits(cfg, out)?;
    let state = DetState {
        categories: splits.train.categories.clone(),
        search_val_ids: splits.search_val.images.iter().map(|i| i.id).collect(),
    };
    let k = state.categories.len();
    tracing::info!(
        "fine-tuning on {} images ({} carved for the search, {} test images); {k} {}: {}",
        splits.train.len(),
        splits.search_val.len(),
        splits.test.len(),
        if k == 1 { "class" } else { "classes" },
        state.categories.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", ")
    );
    for s in &splits.summaries {
        tracing::info!("data: {s}");
    }
    let resume: Option<Resume<DetState>> = Resume::find(out, opts.resume_from.as_deref())?;
    if let Some(done) =
        crate::engine::finished_summary(out, resume.as_ref().map(|r| r.step), cfg.schedule.iterations, &hash, opts)
    {
        return Ok(done);
    }
    if resume.is_none() && writer && cfg.runtime.decode_check {
        decode_check(&splits);
    }

    tch::manual_seed(mix_seed(cfg.seed, &[FINETUNE_INIT]) as i64);
    let (mut vs, det, fixed) = build_detector(cfg, &space, state.categories.len(), device)?;
    if resume.is_none() {
        match &cfg.model.pretrained {
            Some(p) => {
                let n = load_pretrained(&vs, p, &space, fixed.as_ref())?;
                tracing::info!("backbone initialised from {} ({n} tensors)", p.display());
            }
            None => tracing::info!("backbone initialised from scratch"),
        }
    }
    let sampler = PathSampler::uniform(&space, None)?;
    let paths = match &fixed {
        Some(a) => Paths::Child(a.clone()),
        None => Paths::Sampled(Box::new(sampler.clone())),
    };
    let spec = TrainerSpec {
        what: "finetune",
        out,
        seed: cfg.seed,
        schedule: &cfg.schedule,
        runtime: &cfg.runtime,
        space: &space,
        config_hash: hash,
        config_toml: cfg.to_toml(),
        data_fingerprint: format!("{}+{}", splits.train.fingerprint(), splits.search_val.fingerprint()),
        path_stream: FINETUNE_PATHS,
        sync_bn_default: true,
    };
    let mut trainer = Trainer::new(spec, paths, &mut vs, resume.as_ref(), opts)?;
    let loader_cfg = DetLoaderConfig {
        stream: StreamConfig::training(
            cfg.schedule.batch / trainer.shard().map_or(1, |s| s.1),
            mix_seed(cfg.seed, &[FINETUNE_DATA]),
            cfg.runtime.prefetch,
            trainer.shard(),
        ),
        transform: DetTransform {
            min_size: cfg.data.min_size.clone(),
            max_size: cfg.data.max_size,
            flip: cfg.data.flip,
        },
        convention: cfg.data.convention,
        divisibility: cfg.data.divisibility,
    };
    let loader = DetLoader::new(splits.train.clone(), loader_cfg, trainer.position())?;
    let mut task = DetTask { det: &det, loader, train: splits.train.clone(), device, seed: cfg.seed };
    let outcome = trainer.run(&mut task, &vs, &state, opts)?;
    drop(task);
    if !writer {
        // Rank 0 evaluates and writes the summary.
        crate::engine::finish_rank(opts)?;
        return Ok(FinetuneSummary { train: outcome, paths: Vec::new() });
    }

    // A few random paths (or the child) after BN recalibration, on the test split.
    drop(trainer);
    let settings = ScoreSettings::of_run(&cfg.eval, fixed.is_some());
    let mut scorer =
        DetScorer::new(det, vs, cfg, (&splits.train, splits.test.clone()), DetSplit::Test, &settings, device)?;
    let mut eval_rng = seeded(mix_seed(cfg.seed, &[FINETUNE_EVAL]));
    let mut scores = Vec::new();
    let n_paths = if fixed.is_some() { 1 } else { cfg.eval.final_paths };
    for _ in 0..n_paths {
        let (arch, on_path) = match &fixed {
            Some(a) => (a.clone(), None),
            None => {
                let a = sampler.sample(&mut eval_rng)?;
                (a.clone(), Some(a))
            }
        };
        let (mut s, dets) = scorer.score_with_detections(on_path.as_ref())?;
        if fixed.is_some() {
            write_test_detections(out, scorer.val(), &dets)?;
        }
        s.arch = arch.to_string();
        scores.push(s);
    }
    let summary = FinetuneSummary { train: outcome, paths: scores };
    crate::engine::write_summary(out, &summary)?;
    crate::engine::finish_rank(opts)?;
    Ok(summary)
}

/// A child's test detections and the ground truth they answer (`OUT/test/`, module docs):
/// `detnas eval coco --gt OUT/test/gt.json --dt OUT/test/detections.json` gives the summary's
/// stats.
fn write_test_detections(out: &Path, data: &DetDataset, dets: &[CocoDetection]) -> Result<(), TrainError> {
    let mut gt = data.to_coco_json();
    if let Some(images) = gt["images"].as_array_mut() {
        for (record, image) in images.iter_mut().zip(&data.images) {
            record["file_name"] = serde_json::json!(image.file);
        }
    }
    let dir = out.join("test");
    std::fs::create_dir_all(&dir).map_err(|e| TrainError::Io { path: dir.clone(), source: e })?;
    detnas_runtime::fsx::write_json_atomic(&dir.join("gt.json"), &gt)?;
    detnas_runtime::fsx::write_json_atomic(&dir.join("detections.json"), &dets)?;
    Ok(())
}
