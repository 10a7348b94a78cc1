//! The evaluation layer: one path of a trained model scored the same way after training, in
//! `detnas eval`, in the search and in the rank check — its BN statistics recomputed on a
//! fixed set of training images (DetNAS arXiv:1903.10979 §3.3; the official `search.py`
//! recalibrates every candidate), then measured on a split.
//!
//! * [`cls_recalibration_set`], [`det_recalibration_set`] — the recalibration images, a
//!   function of the run's seed and their number ([`detnas_data::streams`]);
//! * [`ScoreSettings`] — how many images, which BN pooling, which batch;
//! * [`ClsScorer`] (top-1 / top-5 of a pre-trained supernet's path, or a child) and
//!   [`DetScorer`] (COCO box AP of a fine-tuned detector's path, or a child) over an opened
//!   checkpoint (`OpenedSupernet::scorer`, `OpenedDetector::scorer`) or
//!   the model a run has just trained.

use crate::PretrainConfig;
use crate::TrainError;
use crate::config::EvalConfig;
use crate::det_config::FinetuneConfig;
use crate::evaluate::{ClsEvalSettings, ClsScore, SharedDataset, evaluate_path, recalibration_subset};
use detnas_data::Subset;
use detnas_data::det::DetDataset;
use detnas_data::mix_seed;
use detnas_data::streams::{FINETUNE_EVAL, PRETRAIN_EVAL, RECALIBRATION};
use detnas_detect::Detector;
use detnas_detect::evaluate::{DetEvalSettings, DetInputs, DetScore, evaluate};
use detnas_detect::metrics::CocoDetection;
use detnas_nn::{BnMode, Supernet};
use detnas_runtime::guard;
use detnas_space::Arch;
use std::sync::Arc;
use tch::{Device, nn};

/// The classification recalibration images of a pre-training run with seed `seed`: the first
/// `n` (at most all) of a permutation of `train` from stream ([`PRETRAIN_EVAL`],
/// [`RECALIBRATION`]). The same set after training, in `detnas eval cls` and in a ClsNAS
/// search.
pub fn cls_recalibration_set(train: SharedDataset, seed: u64, n: usize) -> SharedDataset {
    Arc::new(recalibration_subset(train, n, mix_seed(seed, &[PRETRAIN_EVAL, RECALIBRATION])))
}

/// The detection recalibration images of a fine-tuning run with seed `seed`: the first `n`
/// (at most all) of a permutation of its training split from stream ([`FINETUNE_EVAL`],
/// [`RECALIBRATION`]). The same set after training, in `detnas eval det`, `detnas predict`
/// and the search.
pub fn det_recalibration_set(train: &DetDataset, seed: u64, n: usize) -> DetDataset {
    detnas_detect::evaluate::recalibration_subset(train, n, mix_seed(seed, &[FINETUNE_EVAL, RECALIBRATION]))
}

/// How a path is scored.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ScoreSettings {
    /// Training images the path's BN statistics are recomputed on first; 0 keeps the
    /// statistics the model holds.
    pub recalibrate_images: usize,
    /// How recalibration pools the statistics.
    pub bn_mode: BnMode,
    /// Images per batch of recalibration and evaluation; none: the run's `eval.batch`.
    /// Recalibration depends on it (BN normalises each batch by its own statistics on the
    /// way to the next layer).
    pub batch: Option<usize>,
    /// Only the first this many images of the split; none: all.
    pub max_images: Option<usize>,
    /// Batches the loaders prepare ahead; none: the run's `runtime.prefetch`.
    pub prefetch: Option<usize>,
    /// Detection: hold the recalibration and evaluation images in memory, decoded and
    /// transformed, when together they take at most this many bytes (worth it when many
    /// paths are scored); 0: read them on every pass.
    pub hold_inputs_bytes: u64,
}

impl ScoreSettings {
    /// How a run with `[eval]` = `eval` scores itself after training: its
    /// `recalibrate_images` (default [`EvalConfig::recalibrate_images`] for a supernet path or,
    /// when `fixed`, a fixed architecture) and its BN mode; the run's batch and prefetch;
    /// every image; read on every pass.
    pub fn of_run(eval: &EvalConfig, fixed: bool) -> ScoreSettings {
        ScoreSettings {
            recalibrate_images: eval.recalibrate_images(fixed),
            bn_mode: eval.bn_mode.into(),
            batch: None,
            max_images: None,
            prefetch: None,
            hold_inputs_bytes: 0,
        }
    }
}

fn first_n<T: Clone>(all: T, len: usize, n: Option<usize>, take: impl FnOnce(T, usize) -> T) -> T {
    match n {
        Some(n) if n < len => take(all, n),
        _ => all,
    }
}

/// Top-1 / top-5 of paths of a classification supernet (or of its fixed child) on the run's
/// validation split.
pub struct ClsScorer {
    net: Supernet,
    _vs: nn::VarStore,
    recal: Option<(SharedDataset, BnMode)>,
    val: SharedDataset,
    settings: ClsEvalSettings,
    device: Device,
}

impl ClsScorer {
    /// Scores paths of `net` (trained with `cfg`) on `val`, recalibrating on `train`'s
    /// recalibration set.
    pub fn new(
        net: Supernet,
        vs: nn::VarStore,
        cfg: &PretrainConfig,
        (train, val): (SharedDataset, SharedDataset),
        s: &ScoreSettings,
        device: Device,
    ) -> ClsScorer {
        let recal = (s.recalibrate_images > 0)
            .then(|| (cls_recalibration_set(train, cfg.seed, s.recalibrate_images), s.bn_mode));
        let len = val.len();
        let val: SharedDataset =
            first_n(val, len, s.max_images, |v, n| Arc::new(Subset::new(v, (0..n).collect())) as SharedDataset);
        let mut settings = ClsEvalSettings::of(cfg);
        settings.batch = s.batch.unwrap_or(settings.batch);
        settings.prefetch = s.prefetch.unwrap_or(settings.prefetch);
        ClsScorer { net, _vs: vs, recal, val, settings, device }
    }

    /// Recalibrates (unless 0 images) and scores path `arch`.
    ///
    /// # Errors
    /// As [`evaluate_path`].
    pub fn score(&mut self, arch: &Arch) -> Result<ClsScore, TrainError> {
        guard::catch(|| {
            evaluate_path(&self.net, arch, self.recal.clone(), self.val.clone(), &self.settings, self.device)
        })
        .map_err(|f| {
            let during = format!("scoring path {arch} ({} images per batch on {:?})", self.settings.batch, self.device);
            TrainError::compute(during, f, "eval.batch (or --batch)")
        })?
    }

    /// The validation images.
    pub fn val(&self) -> &SharedDataset {
        &self.val
    }
}

/// Which split of a fine-tuning run a detector is scored on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DetSplit {
    /// The test split.
    Test,
    /// The search-validation split carved from the training set (never fine-tuned on),
    /// checked against the one the run recorded.
    SearchVal,
    /// The images the run trained on (what the model fits, beside what it generalises to).
    Train,
}

/// COCO box AP of paths of a detector (a supernet's paths, or its fixed child) on a split of
/// its fine-tuning run.
pub struct DetScorer {
    det: Detector,
    _vs: nn::VarStore,
    settings: DetEvalSettings,
    recal: Option<(DetInputs, BnMode)>,
    val: DetInputs,
    device: Device,
}

impl DetScorer {
    /// Scores paths of `det` (trained with `cfg`) on `data`, the run's `split`, recalibrating
    /// on the recalibration set of its training split `train`.
    ///
    /// # Errors
    /// [`TrainError::Config`] when the split is empty; [`TrainError::Detect`] for unreadable
    /// images.
    ///
    /// # Panics
    /// Never: the prepared inputs are the sets given.
    pub fn new(
        det: Detector,
        vs: nn::VarStore,
        cfg: &FinetuneConfig,
        (train, data): (&DetDataset, Arc<DetDataset>),
        split: DetSplit,
        s: &ScoreSettings,
        device: Device,
    ) -> Result<DetScorer, TrainError> {
        if data.is_empty() {
            return Err(TrainError::Config(match split {
                DetSplit::Test => "the test split is empty".into(),
                DetSplit::SearchVal => "the search-validation split is empty (data.search_val_images = 0)".into(),
                DetSplit::Train => "the training split is empty".into(),
            }));
        }
        let len = data.len();
        let val = first_n(data, len, s.max_images, |d, n| Arc::new(d.subset(&(0..n).collect::<Vec<_>>())));
        let mut settings = cfg.eval_settings();
        settings.batch = s.batch.unwrap_or(settings.batch);
        settings.prefetch = s.prefetch.unwrap_or(settings.prefetch);
        let mut sets = vec![val];
        if s.recalibrate_images > 0 {
            sets.push(Arc::new(det_recalibration_set(train, cfg.seed, s.recalibrate_images)));
        }
        let mut inputs = DetInputs::prepare_all(&sets, &settings, s.hold_inputs_bytes)?;
        let recal = (s.recalibrate_images > 0).then(|| (inputs.pop().expect("two sets"), s.bn_mode));
        let val = inputs.pop().expect("the split");
        tracing::debug!(
            recalibration_prepared = recal.as_ref().is_some_and(|r| r.0.is_prepared()),
            evaluation_prepared = val.is_prepared(),
            "detection scorer inputs"
        );
        Ok(DetScorer { det, _vs: vs, settings, recal, val, device })
    }

    /// Recalibrates (unless 0 images) and scores path `arch` (none: a fixed child).
    ///
    /// # Errors
    /// As [`detnas_detect::evaluate::evaluate`]; [`TrainError::Compute`] when libtorch fails.
    pub fn score(&mut self, arch: Option<&Arch>) -> Result<DetScore, TrainError> {
        Ok(self.score_with_detections(arch)?.0)
    }

    /// [`DetScorer::score`] and the detections (COCO results form).
    ///
    /// # Errors
    /// As [`DetScorer::score`].
    pub fn score_with_detections(&mut self, arch: Option<&Arch>) -> Result<(DetScore, Vec<CocoDetection>), TrainError> {
        let recal = self.recal.as_ref().map(|(i, m)| (i, *m));
        let (det, val, settings, device) = (&self.det, &self.val, &self.settings, self.device);
        guard::catch(|| evaluate(det, arch, recal, val, settings, device))
            .map_err(|f| {
                let path = arch.map_or_else(|| "the fixed architecture".to_string(), |a| format!("path {a}"));
                let during = format!("scoring {path} ({} images per batch on {device:?})", settings.batch);
                TrainError::compute(during, f, "eval.batch (or --batch) or data.test_min_size")
            })?
            .map_err(TrainError::from)
    }

    /// The images scored.
    pub fn val(&self) -> &Arc<DetDataset> {
        self.val.data()
    }

    /// The BN recalibration images, if any.
    pub fn recalibration_images(&self) -> Option<&Arc<DetDataset>> {
        self.recal.as_ref().map(|(i, _)| i.data())
    }

    /// How images are presented (the run's test transform, the batch and prefetch).
    pub fn settings(&self) -> &DetEvalSettings {
        &self.settings
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Kind, Tensor};

    #[test]
    fn libtorch_failures_become_errors_naming_what_ran() {
        let cpu = (Kind::Float, Device::Cpu);
        let f = guard::catch(|| Tensor::zeros([2, 3], cpu).matmul(&Tensor::zeros([4, 5], cpu))).unwrap_err();
        assert!(f.message.contains("cannot be multiplied") && !f.out_of_memory, "{f:?}");
        let e = TrainError::compute("scoring path 0123".into(), f, "eval.batch");
        assert!(e.to_string().starts_with("scoring path 0123: libtorch failed: ") && !e.to_string().contains("lower"));
        // A real allocator refusal: 16 PiB.
        let f = guard::catch(|| Tensor::empty([1i64 << 52], cpu)).unwrap_err();
        assert!(f.out_of_memory, "{f:?}");
        let e = TrainError::compute("scoring path 0123".into(), f, "eval.batch");
        assert!(e.to_string().contains("out of memory: lower eval.batch"), "{e}");
        assert_eq!(e.exit_code(), 1);
    }
}
