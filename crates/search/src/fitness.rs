//! The two fitness functions of the paper, on a trained supernet:
//!
//! * [`DetEvaluator`] (DetNAS): the fine-tuned supernet detector; per candidate, every BN
//!   statistic of the path (backbone, FPN, heads) is reset and recomputed on training
//!   images in training mode without gradients, then box AP is measured on the
//!   search-validation split — the split the fine-tuning run carved out of the training set
//!   and recorded in its checkpoint (checked), never trained on.
//! * [`ClsEvaluator`] (ClsNAS baseline): the pre-trained classification supernet; BN
//!   recalibration on training images, then top-1 on its validation set.
//!
//! Both are the evaluation layer's scorers ([`detnas_train::scoring`]) with the search's
//! settings ([`SearchEvalConfig::score_settings`]).

use crate::SearchError;
use crate::config::{DetMetric, FitnessKind, SearchConfig, SearchEvalConfig};
use crate::workers::{Evaluation, Evaluator};
use detnas_runtime::checkpoint::resolve;
use detnas_runtime::fsx::sha256_file;
use detnas_space::{Arch, SearchSpace};
use detnas_train::finetune::{self, OpenedDetector};
use detnas_train::pretrain::{self, OpenedSupernet};
use detnas_train::scoring::{ClsScorer, DetScorer, DetSplit, ScoreSettings};
use std::path::{Path, PathBuf};
use tch::Device;

/// What the search needs to know about the supernet before loading it.
#[derive(Clone, Debug)]
pub struct SupernetInfo {
    /// Detection or classification fitness.
    pub kind: FitnessKind,
    /// The supernet's search space.
    pub space: SearchSpace,
    /// The resolved `step-N` checkpoint folder.
    pub checkpoint: PathBuf,
    /// The checkpoint's step.
    pub step: u64,
    /// SHA-256 of its `model.safetensors`.
    pub model_sha256: String,
}

impl SupernetInfo {
    /// Resolves and verifies the checkpoint of `cfg.supernet`; for `fitness = "entropy"`,
    /// which has none, resolves `supernet.space` (no checkpoint, step 0, no hash).
    ///
    /// # Errors
    /// [`SearchError::Train`] when the checkpoint cannot be resolved, verified or hashed;
    /// [`SearchError::Config`] when it is not of the kind the fitness needs (any error reading its
    /// metadata included), holds a fixed child network, or the space cannot be resolved.
    pub fn open(cfg: &SearchConfig) -> Result<SupernetInfo, SearchError> {
        let kind = cfg.supernet.fitness;
        if !kind.needs_checkpoint() {
            let spec = detnas_space::SpaceSpec {
                space: cfg.supernet.space.clone().unwrap_or_default(),
                width_mult: cfg.supernet.width_mult.unwrap_or(1.0),
            };
            let space = spec.resolve().map_err(|e| SearchError::Config(format!("supernet.space: {e}")))?;
            return Ok(SupernetInfo { kind, space, checkpoint: PathBuf::new(), step: 0, model_sha256: String::new() });
        }
        let (step, path) = resolve(&cfg.supernet.checkpoint)?;
        let space = if kind == FitnessKind::Cls {
            let (_, state) = pretrain::read_checkpoint_meta(&path).map_err(|_| {
                SearchError::Config(format!(
                    "{} is not a pre-training checkpoint (fitness = \"cls\" needs one)",
                    path.display()
                ))
            })?;
            state.space
        } else {
            let (fcfg, state) = finetune::read_meta(&path).map_err(|_| {
                SearchError::Config(format!(
                    "{} is not a fine-tuning checkpoint (fitness = \"{}\" needs one; use fitness = \"cls\" for a \
                     pre-training run)",
                    path.display(),
                    if kind == FitnessKind::Naswot { "naswot" } else { "det" }
                ))
            })?;
            if fcfg.model.arch.is_some() {
                return Err(SearchError::Config(format!(
                    "{} holds a fixed child network (model.arch), not a supernet",
                    path.display()
                )));
            }
            state.space
        };
        let model_sha256 = sha256_file(&path.join("model.safetensors"))?;
        Ok(SupernetInfo { kind, space, checkpoint: path, step, model_sha256 })
    }

    /// Opens an evaluator of this supernet on `device` (the caller's thread owns it).
    ///
    /// # Errors
    /// As [`DetEvaluator::open`] or [`ClsEvaluator::open`].
    pub fn evaluator(&self, cfg: &SearchConfig, device: Device) -> Result<Box<dyn Evaluator>, SearchError> {
        let (eval, prefetch) = (&cfg.eval, cfg.runtime.prefetch);
        Ok(match self.kind {
            FitnessKind::Det => Box::new(DetEvaluator::open(&self.checkpoint, eval, prefetch, device)?),
            FitnessKind::Cls => Box::new(ClsEvaluator::open(&self.checkpoint, eval, prefetch, device)?),
            FitnessKind::Entropy => Box::new(EntropyEvaluator::new(self.space.clone(), cfg)),
            FitnessKind::Naswot => Box::new(NaswotEvaluator::open(&self.checkpoint, self.space.clone(), cfg)?),
        })
    }
}

/// Memory one detection evaluator (one search worker; each holds its own copy) may spend on
/// prepared inputs: recalibration and validation images decoded and test-transformed once,
/// instead of once per candidate. The demo's 100 + 200 images at 128×128 take 59 MB;
/// COCO-scale splits exceed it and are read per candidate.
pub const PREPARED_INPUTS_BUDGET: u64 = 256 << 20;

impl SearchEvalConfig {
    /// How the search scores a candidate ([`detnas_train::scoring`]).
    pub fn score_settings(&self, prefetch: usize) -> ScoreSettings {
        ScoreSettings {
            recalibrate_images: self.recalibrate_images,
            bn_mode: self.bn_mode.into(),
            batch: Some(self.batch),
            max_images: self.val_images,
            prefetch: Some(prefetch),
            hold_inputs_bytes: PREPARED_INPUTS_BUDGET,
        }
    }
}

/// Detection fitness of supernet paths (see the module documentation): a
/// [`DetScorer`] on the search-validation split.
pub struct DetEvaluator {
    scorer: DetScorer,
    metric: DetMetric,
    device: Device,
}

impl DetEvaluator {
    /// Opens the fine-tuned supernet detector of `ckpt` with its recalibration and
    /// search-validation images.
    ///
    /// # Errors
    /// As [`OpenedDetector::scorer`] on [`DetSplit::SearchVal`].
    pub fn open(
        ckpt: &Path,
        eval: &SearchEvalConfig,
        prefetch: usize,
        device: Device,
    ) -> Result<DetEvaluator, SearchError> {
        DetEvaluator::with(OpenedDetector::open(ckpt, device)?, eval, prefetch, device)
    }

    /// An evaluator of an opened detector (trained, or at initialisation for a control).
    ///
    /// # Errors
    /// As [`DetEvaluator::open`].
    pub fn with(
        opened: OpenedDetector,
        eval: &SearchEvalConfig,
        prefetch: usize,
        device: Device,
    ) -> Result<DetEvaluator, SearchError> {
        let scorer = opened.scorer(DetSplit::SearchVal, &eval.score_settings(prefetch), device)?;
        Ok(DetEvaluator { scorer, metric: eval.metric, device })
    }

    /// The scorer (its images and settings).
    pub fn scorer(&self) -> &DetScorer {
        &self.scorer
    }
}

impl Evaluator for DetEvaluator {
    fn evaluate(&mut self, arch: &Arch) -> Result<Evaluation, SearchError> {
        let s = self.scorer.score(Some(arch))?;
        let fitness = match self.metric {
            DetMetric::Ap => s.stats.ap(),
            DetMetric::Ap50 => s.stats.ap50(),
        };
        Ok(Evaluation {
            fitness,
            metrics: s.stats.0.to_vec(),
            recalibration_seconds: s.recalibration_seconds,
            evaluation_seconds: s.evaluation_seconds,
            threads: cpu_threads(self.device),
        })
    }
}

/// The zero-cost fitness: MAE-DET's entropy score of the candidate's backbone at
/// initialisation ([`detnas_nn::zero_cost::entropy`]), with the search's `[zero_cost]`
/// settings and seed; no supernet, no data, on the CPU. `metrics` = `[score, sd over repeats]`.
pub struct EntropyEvaluator {
    space: SearchSpace,
    settings: detnas_nn::zero_cost::EntropySettings,
}

impl EntropyEvaluator {
    /// The evaluator of `space` with `cfg`'s `[zero_cost]` settings (input default
    /// `constraint.input`) and seed.
    pub fn new(space: SearchSpace, cfg: &SearchConfig) -> EntropyEvaluator {
        let [h, w] = cfg.zero_cost.input.unwrap_or(cfg.constraint.input);
        let settings = detnas_nn::zero_cost::EntropySettings {
            batch: cfg.zero_cost.batch,
            input: [h as i64, w as i64],
            repeats: cfg.zero_cost.repeats,
            seed: cfg.seed,
        };
        EntropyEvaluator { space, settings }
    }
}

impl Evaluator for EntropyEvaluator {
    fn evaluate(&mut self, arch: &Arch) -> Result<Evaluation, SearchError> {
        let started = std::time::Instant::now();
        let (score, sd) = detnas_nn::zero_cost::entropy(&self.space, arch, &self.settings)
            .map_err(|message| SearchError::Evaluation { arch: arch.to_string(), message })?;
        Ok(training_free(score, vec![score, sd], started))
    }
}

/// The zero-cost fitness NASWOT ([`detnas_nn::zero_cost::naswot`]) on the first
/// `zero_cost.images` training images of a fine-tuning run, as evaluation prepares them (the
/// run's weights are not used), with weights drawn from the search's seed; on the CPU.
/// `metrics` = `[score]`.
pub struct NaswotEvaluator {
    space: SearchSpace,
    images: tch::Tensor,
    seed: u64,
}

impl NaswotEvaluator {
    /// The evaluator of `space` on the images of fine-tuning checkpoint `ckpt`.
    ///
    /// # Errors
    /// As [`OpenedDetector::open`], its splits and images.
    pub fn open(ckpt: &Path, space: SearchSpace, cfg: &SearchConfig) -> Result<NaswotEvaluator, SearchError> {
        let opened = OpenedDetector::open(ckpt, Device::Cpu)?;
        let train = opened.splits()?.train;
        let images = opened.evaluation_batch(&train, cfg.zero_cost.images)?.input;
        Ok(NaswotEvaluator { space, images, seed: cfg.seed })
    }
}

impl Evaluator for NaswotEvaluator {
    fn evaluate(&mut self, arch: &Arch) -> Result<Evaluation, SearchError> {
        let started = std::time::Instant::now();
        let score = detnas_nn::zero_cost::naswot(&self.space, arch, &self.images, self.seed).ok_or_else(|| {
            SearchError::Evaluation {
                arch: arch.to_string(),
                message: "NASWOT's kernel is singular: some of the training images give the network identical \
                          codes (duplicates?)"
                    .into(),
            }
        })?;
        Ok(training_free(score, vec![score], started))
    }
}

/// A training-free score's evaluation (no recalibration; on the CPU), `started` when its
/// computation began.
fn training_free(fitness: f64, metrics: Vec<f64>, started: std::time::Instant) -> Evaluation {
    Evaluation {
        fitness,
        metrics,
        recalibration_seconds: 0.0,
        evaluation_seconds: started.elapsed().as_secs_f64(),
        threads: cpu_threads(Device::Cpu),
    }
}

/// libtorch's intra-op threads when `device` is the CPU.
fn cpu_threads(device: Device) -> Option<i32> {
    (device == Device::Cpu).then(tch::get_num_threads)
}

/// Classification fitness (top-1) of supernet paths: the ClsNAS baseline, a [`ClsScorer`]
/// on the validation split.
pub struct ClsEvaluator {
    scorer: ClsScorer,
    device: Device,
}

impl ClsEvaluator {
    /// Opens the pre-trained supernet of `ckpt` with its recalibration and validation images.
    ///
    /// # Errors
    /// [`SearchError::Train`] when the checkpoint cannot be resolved or is not a pre-training
    /// checkpoint, or its datasets or weights cannot be loaded.
    pub fn open(
        ckpt: &Path,
        eval: &SearchEvalConfig,
        prefetch: usize,
        device: Device,
    ) -> Result<ClsEvaluator, SearchError> {
        let opened = OpenedSupernet::open(ckpt, device)?;
        Ok(ClsEvaluator { scorer: opened.scorer(&eval.score_settings(prefetch), device)?, device })
    }
}

impl Evaluator for ClsEvaluator {
    fn evaluate(&mut self, arch: &Arch) -> Result<Evaluation, SearchError> {
        let s = self.scorer.score(arch)?;
        Ok(Evaluation {
            fitness: s.top1,
            metrics: vec![s.top1, s.top5],
            recalibration_seconds: s.recalibration_seconds,
            evaluation_seconds: s.evaluation_seconds,
            threads: cpu_threads(self.device),
        })
    }
}
