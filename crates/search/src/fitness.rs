//! The two fitness functions of the paper, on a trained supernet:
//!
//! * [`DetEvaluator`] (DetNAS): the fine-tuned supernet detector; per candidate, every BN
//!   statistic of the path (backbone, FPN, heads) is reset and recomputed on training
//!   images in training mode without gradients, then box AP is measured on the
//!   search-validation split — the split the fine-tuning run carved out of the training set
//!   and recorded in its checkpoint (checked here), never trained on.
//! * [`ClsEvaluator`] (ClsNAS baseline): the pre-trained classification supernet; BN
//!   recalibration on training images, then top-1 on its validation set.

use crate::SearchError;
use crate::config::{DetMetric, FitnessKind, SearchConfig, SearchEvalConfig};
use crate::workers::{Evaluation, Evaluator};
use detnas_data::Subset;
use detnas_data::det::DetDataset;
use detnas_detect::Detector;
use detnas_detect::evaluate::{DetInputs, EvalSettings, evaluate};
use detnas_nn::{BnMode, Supernet};
use detnas_runtime::checkpoint::resolve;
use detnas_runtime::fsx::sha256_file;
use detnas_space::{Arch, SearchSpace};
use detnas_train::engine::load_weights;
use detnas_train::evaluate::{EvalData, evaluate_path};
use detnas_train::finetune::{self, OpenedDetector, recalibration_images};
use detnas_train::pretrain::{self, SharedDataset};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tch::{Device, nn};

/// What the search needs to know about the supernet before loading it.
#[derive(Clone, Debug)]
pub struct SupernetInfo {
    pub kind: FitnessKind,
    pub space: SearchSpace,
    /// The resolved `step-N` checkpoint folder.
    pub checkpoint: PathBuf,
    pub step: u64,
    /// SHA-256 of its `model.safetensors`.
    pub model_sha256: String,
}

impl SupernetInfo {
    /// Resolves and verifies the checkpoint of `cfg.supernet`.
    ///
    /// # Errors
    /// [`SearchError::Train`] when the checkpoint cannot be resolved, verified or hashed;
    /// [`SearchError::Config`] when it is not of the kind the fitness needs (any error reading its
    /// metadata included) or holds a fixed child network.
    pub fn open(cfg: &SearchConfig) -> Result<SupernetInfo, SearchError> {
        let (step, path) = resolve(&cfg.supernet.checkpoint)?;
        let space = match cfg.supernet.fitness {
            FitnessKind::Det => {
                let (fcfg, state) = finetune::read_meta(&path).map_err(|_| {
                    SearchError::Config(format!(
                        "{} is not a fine-tuning checkpoint (fitness = \"det\" needs one; use fitness = \"cls\" for a pre-training run)",
                        path.display()
                    ))
                })?;
                if fcfg.model.arch.is_some() {
                    return Err(SearchError::Config(format!(
                        "{} holds a fixed child network (model.arch), not a supernet",
                        path.display()
                    )));
                }
                state.space
            }
            FitnessKind::Cls => {
                let (_, state) = pretrain::read_checkpoint_meta(&path).map_err(|_| {
                    SearchError::Config(format!(
                        "{} is not a pre-training checkpoint (fitness = \"cls\" needs one)",
                        path.display()
                    ))
                })?;
                state.space
            }
        };
        let model_sha256 = sha256_file(&path.join("model.safetensors"))?;
        Ok(SupernetInfo { kind: cfg.supernet.fitness, space, checkpoint: path, step, model_sha256 })
    }

    /// Opens an evaluator of this supernet on `device` (the caller's thread owns it).
    ///
    /// # Errors
    /// As [`DetEvaluator::open`] or [`ClsEvaluator::open`].
    pub fn evaluator(
        &self,
        eval: &SearchEvalConfig,
        prefetch: usize,
        device: Device,
    ) -> Result<Box<dyn Evaluator>, SearchError> {
        Ok(match self.kind {
            FitnessKind::Det => Box::new(DetEvaluator::open(&self.checkpoint, eval, prefetch, device)?),
            FitnessKind::Cls => Box::new(ClsEvaluator::open(&self.checkpoint, eval, prefetch, device)?),
        })
    }
}

/// Detection fitness of supernet paths (see the module documentation).
pub struct DetEvaluator {
    det: Detector,
    _vs: nn::VarStore,
    settings: EvalSettings,
    /// The recalibration and validation images as model inputs (prepared once when together
    /// they fit in [`PREPARED_INPUTS_BUDGET`]).
    recal_inputs: DetInputs,
    val_inputs: DetInputs,
    mode: BnMode,
    metric: DetMetric,
    device: Device,
}

/// Memory one detection evaluator (one search worker; each holds its own copy) may spend on
/// prepared inputs: recalibration and validation images decoded and test-transformed once,
/// instead of once per candidate. The demo's 100 + 200 images at 128×128 take 59 MB;
/// COCO-scale splits exceed it and are read per candidate as before.
pub const PREPARED_INPUTS_BUDGET: u64 = 256 << 20;

impl DetEvaluator {
    /// Opens the fine-tuned supernet detector of `ckpt` with its recalibration and
    /// search-validation images.
    ///
    /// # Errors
    /// [`SearchError::Train`] when the checkpoint or its data splits cannot be opened;
    /// [`SearchError::Config`] when the search-validation split is empty, differs from the one
    /// recorded or overlaps the training images; [`SearchError::Detect`] for unreadable images.
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
        let ckpt = opened.path.clone();
        let splits = opened.splits()?;
        let OpenedDetector { config: cfg, state, detector: det, vs, .. } = opened;
        if state.task.search_val_ids.is_empty() {
            return Err(SearchError::Config(format!(
                "{}: the fine-tuning run carved no search-validation split (data.search_val_images = 0); \
                 the search must not score candidates on the test split",
                ckpt.display()
            )));
        }
        let mut recorded = state.task.search_val_ids.clone();
        let mut carved: Vec<u64> = splits.search_val.images.iter().map(|i| i.id).collect();
        recorded.sort_unstable();
        carved.sort_unstable();
        if recorded != carved {
            return Err(SearchError::Config(format!(
                "{}: the search-validation split carved now ({} images) differs from the one recorded at fine-tuning ({} images): the data changed",
                ckpt.display(),
                carved.len(),
                recorded.len()
            )));
        }
        let train_ids: std::collections::HashSet<u64> = splits.train.images.iter().map(|i| i.id).collect();
        if splits.search_val.images.iter().any(|i| train_ids.contains(&i.id)) {
            return Err(SearchError::Config("the search-validation split overlaps the fine-tuning images".into()));
        }
        let val = match eval.val_images {
            Some(n) if n < splits.search_val.len() => Arc::new(splits.search_val.subset(&(0..n).collect::<Vec<_>>())),
            _ => splits.search_val.clone(),
        };
        let settings = EvalSettings { batch: eval.batch, prefetch, ..cfg.eval_settings() };
        let recal = Arc::new(recalibration_images(&cfg, &splits.train, eval.recalibrate_images));
        let mut inputs = DetInputs::prepare_all(&[recal, val], &settings, PREPARED_INPUTS_BUDGET)?;
        let val_inputs = inputs.pop().expect("two sets");
        let recal_inputs = inputs.pop().expect("two sets");
        tracing::debug!(
            recalibration_prepared = recal_inputs.is_prepared(),
            validation_prepared = val_inputs.is_prepared(),
            "detection evaluator inputs"
        );
        Ok(DetEvaluator {
            det,
            _vs: vs,
            settings,
            recal_inputs,
            val_inputs,
            mode: eval.bn_mode.into(),
            metric: eval.metric,
            device,
        })
    }

    /// The validation images.
    pub fn val(&self) -> &Arc<DetDataset> {
        self.val_inputs.data()
    }

    /// The BN recalibration images.
    pub fn recalibration_images(&self) -> &Arc<DetDataset> {
        self.recal_inputs.data()
    }

    /// How this evaluator presents images (the fine-tuning run's test transform, the
    /// search's batch and prefetch).
    pub fn settings(&self) -> &EvalSettings {
        &self.settings
    }
}

impl Evaluator for DetEvaluator {
    fn evaluate(&mut self, arch: &Arch) -> Result<Evaluation, SearchError> {
        let s = evaluate(
            &self.det,
            Some(arch),
            Some((&self.recal_inputs, self.mode)),
            &self.val_inputs,
            &self.settings,
            self.device,
        )?;
        let fitness = match self.metric {
            DetMetric::Ap => s.stats[0],
            DetMetric::Ap50 => s.stats[1],
        };
        Ok(Evaluation {
            fitness,
            metrics: s.stats.to_vec(),
            recalibration_seconds: s.recalibration_seconds,
            evaluation_seconds: s.evaluation_seconds,
            threads: cpu_threads(self.device),
        })
    }
}

/// libtorch's intra-op threads when `device` is the CPU.
fn cpu_threads(device: Device) -> Option<i32> {
    (device == Device::Cpu).then(tch::get_num_threads)
}

/// Classification fitness (top-1) of supernet paths: the ClsNAS baseline.
pub struct ClsEvaluator {
    net: Supernet,
    _vs: nn::VarStore,
    recal: SharedDataset,
    val: SharedDataset,
    data: EvalData,
    mode: BnMode,
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
        let (_, path) = resolve(ckpt)?;
        let (pcfg, state) = pretrain::read_checkpoint_meta(&path)?;
        let (train, val) = pretrain::open_datasets(&pcfg, Some(&state.task.classes))?;
        let (mut vs, net) = pretrain::build_supernet(&state.space, state.task.classes.len(), device);
        load_weights(&path, &mut vs, None)?;
        let recal = pretrain::recalibration_set(&pcfg, train, Some(eval.recalibrate_images));
        let val: SharedDataset = match eval.val_images {
            Some(n) if n < val.len() => Arc::new(Subset::new(val, (0..n).collect())),
            _ => val,
        };
        let mut data = pretrain::eval_data(&pcfg);
        data.batch = eval.batch;
        data.prefetch = prefetch;
        Ok(ClsEvaluator { net, _vs: vs, recal, val, data, mode: eval.bn_mode.into(), device })
    }
}

impl Evaluator for ClsEvaluator {
    fn evaluate(&mut self, arch: &Arch) -> Result<Evaluation, SearchError> {
        let s = evaluate_path(
            &self.net,
            arch,
            Some((self.recal.clone(), self.mode)),
            self.val.clone(),
            &self.data,
            self.device,
        )?;
        Ok(Evaluation {
            fitness: s.top1,
            metrics: vec![s.top1, s.top5],
            recalibration_seconds: s.recalibration_seconds,
            evaluation_seconds: s.evaluation_seconds,
            threads: cpu_threads(self.device),
        })
    }
}
