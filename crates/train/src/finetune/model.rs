//! The detector of a fine-tuning run: built from the configuration, initialised from a
//! pre-trained supernet, or opened from a fine-tuning checkpoint.

use super::splits::{DetSplits, open_splits};
use super::{DetState, TrainState};
use crate::det_config::FinetuneConfig;
use crate::scoring::{DetScorer, DetSplit, ScoreSettings};
use crate::{TrainError, checkpoint};
use detnas_detect::Detector;
use detnas_space::{Arch, SearchSpace};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{Device, Tensor, nn};

/// Builds the detector of a config with `classes` foreground classes: a supernet backbone,
/// or a child backbone when `model.arch` fixes one (returned too).
///
/// # Errors
/// [`TrainError::Config`] for an invalid architecture or detector configuration.
pub fn build_detector(
    cfg: &FinetuneConfig,
    space: &SearchSpace,
    classes: usize,
    device: Device,
) -> Result<(nn::VarStore, Detector, Option<Arch>), TrainError> {
    let vs = nn::VarStore::new(device);
    let fixed = cfg.model.arch.as_deref().map(|a| space.parse_arch(a)).transpose()?;
    let det = cfg.detector.build(&vs.root(), space, fixed.as_ref(), classes as i64)?;
    Ok((vs, det, fixed))
}

/// Copies a pre-trained classification supernet's backbone (stem, blocks, their BN
/// statistics) into `backbone.*` of `vs`; the classification head is not used. With a child
/// backbone, only the child's path is copied. Returns the number of tensors copied.
///
/// # Errors
/// [`TrainError::Checkpoint`] for a checkpoint of another space, or one lacking a variable or
/// holding it with another shape.
pub fn load_pretrained(
    vs: &nn::VarStore,
    ckpt: &Path,
    space: &SearchSpace,
    arch: Option<&Arch>,
) -> Result<usize, TrainError> {
    let (_, path) = checkpoint::resolve(ckpt)?;
    let (_, state) = crate::pretrain::read_checkpoint_meta(&path)?;
    if &state.space != space {
        return Err(TrainError::Checkpoint {
            path: path.clone(),
            message: "the pre-trained supernet's search space differs from model.space".into(),
        });
    }
    let saved: BTreeMap<String, Tensor> = Tensor::read_safetensors(path.join("model.safetensors"))
        .map_err(|e| TrainError::Checkpoint { path: path.clone(), message: format!("model.safetensors: {e}") })?
        .into_iter()
        .collect();
    let vars = vs.variables();
    let mut copied = 0;
    tch::no_grad(|| -> Result<(), TrainError> {
        for (name, var) in &vars {
            let Some(rest) = name.strip_prefix("backbone.") else { continue };
            let src_name = match arch {
                Some(a) => detnas_nn::net::supernet_name(rest, a)?,
                None => rest.to_string(),
            };
            let src = saved.get(&src_name).ok_or_else(|| TrainError::Checkpoint {
                path: path.clone(),
                message: format!("has no '{src_name}' for backbone variable '{name}'"),
            })?;
            if src.size() != var.size() {
                return Err(TrainError::Checkpoint {
                    path: path.clone(),
                    message: format!("'{src_name}' has shape {:?}, '{name}' needs {:?}", src.size(), var.size()),
                });
            }
            var.shallow_clone().copy_(src);
            copied += 1;
        }
        Ok(())
    })?;
    Ok(copied)
}

/// Reads the configuration and state of a fine-tuning checkpoint folder.
///
/// # Errors
/// [`TrainError::Checkpoint`] when it is not a readable fine-tuning checkpoint (a
/// pre-training checkpoint included).
pub fn read_meta(path: &Path) -> Result<(FinetuneConfig, TrainState), TrainError> {
    crate::engine::read_meta(path)
}

/// The run folder of a checkpoint folder (`RUN/checkpoints/step-N`).
pub fn run_dir_of(ckpt: &Path) -> PathBuf {
    ckpt.parent().and_then(Path::parent).map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."))
}

/// A fine-tuning checkpoint opened for inference: its configuration, state and detector
/// with the weights loaded.
#[derive(Debug)]
pub struct OpenedDetector {
    /// The resolved fine-tuning configuration.
    pub config: FinetuneConfig,
    /// The checkpoint's state (categories, carved ids).
    pub state: TrainState,
    /// The detector, weights loaded.
    pub detector: Detector,
    /// Its variables.
    pub vs: nn::VarStore,
    /// The resolved `step-N` folder.
    pub path: PathBuf,
}

/// Images as evaluation prepares them ([`OpenedDetector::evaluation_batch`]).
pub struct EvaluationBatch {
    /// The decoded images.
    pub images: Vec<detnas_data::RgbImage>,
    /// The batch `[N, 3, H, W]`, on the CPU.
    pub input: Tensor,
    /// Each image's resized `(height, width)`.
    pub sizes: Vec<(i64, i64)>,
}

impl OpenedDetector {
    /// Opens a fine-tuning checkpoint (a `step-N` folder, a run folder's latest, or the `det`
    /// run of a pipeline retraining stage folder).
    ///
    /// # Errors
    /// [`TrainError::Checkpoint`] for a missing, corrupt or foreign checkpoint.
    pub fn open(ckpt: &Path, device: Device) -> Result<OpenedDetector, TrainError> {
        let (_, path) = checkpoint::resolve_run(ckpt, "det")?;
        let (config, state) = read_meta(&path)?;
        let (mut vs, detector, _) = build_detector(&config, &state.space, state.task.categories.len(), device)?;
        vs.load(path.join("model.safetensors"))
            .map_err(|e| TrainError::Checkpoint { path: path.clone(), message: format!("model.safetensors: {e}") })?;
        Ok(OpenedDetector { config, state, detector, vs, path })
    }

    /// The detector of a fine-tuning checkpoint at its initialisation instead of its trained
    /// weights (libtorch's RNG seeded with `seed` first), with a score threshold of 0 so that it
    /// still gives its top detections (at initialisation every score is about the prior, under
    /// the usual 0.05): the control of a ranking check, whose scores should not rank
    /// architectures.
    ///
    /// # Errors
    /// As [`OpenedDetector::open`].
    pub fn open_initial(ckpt: &Path, seed: i64, device: Device) -> Result<OpenedDetector, TrainError> {
        let (_, path) = checkpoint::resolve(ckpt)?;
        let (mut config, state) = read_meta(&path)?;
        config.detector.set_score_threshold(0.0);
        tch::manual_seed(seed);
        let (vs, detector, _) = build_detector(&config, &state.space, state.task.categories.len(), device)?;
        Ok(OpenedDetector { config, state, detector, vs, path })
    }

    /// The first `n` images of `dataset` as evaluation prepares them (resized to
    /// `data.test_min_size` / `data.max_size`, padded to the divisibility, the input
    /// convention applied).
    ///
    /// # Errors
    /// [`TrainError::Data`] naming an image that cannot be decoded.
    pub fn evaluation_batch(
        &self,
        dataset: &detnas_data::det::DetDataset,
        n: usize,
    ) -> Result<EvaluationBatch, TrainError> {
        let data = &self.config.data;
        let t = detnas_data::det::transform::DetTransform {
            min_size: vec![data.test_min_size],
            max_size: data.max_size,
            flip: false,
        };
        let (mut images, mut samples) = (Vec::new(), Vec::new());
        for image in dataset.images.iter().take(n) {
            let img = detnas_data::decode_image(&image.file)?;
            samples.push(t.apply(&img, image, &mut detnas_space::rng::seeded(0)));
            images.push(img);
        }
        let k = samples.len();
        let batch = detnas_data::det::transform::collate(samples, (0..k).collect(), data.divisibility, data.convention);
        let (input, sizes, _) = detnas_detect::evaluate::batch_inputs(&batch, Device::Cpu);
        Ok(EvaluationBatch { images, input, sizes })
    }

    /// The splits the checkpoint was trained with, checked against it: the same categories
    /// (ids and names, in order) as the checkpoint's detector.
    ///
    /// # Errors
    /// As [`open_splits`], and [`TrainError::Config`] when the data's categories are not the
    /// checkpoint's.
    pub fn splits(&self) -> Result<DetSplits, TrainError> {
        let splits = open_splits(&self.config, &run_dir_of(&self.path))?;
        check_categories(&self.state.task, &splits)?;
        Ok(splits)
    }

    /// A scorer of its paths on `split` of its run ([`DetScorer`]); the search-validation
    /// split is checked against the one the run carved and recorded first.
    ///
    /// # Errors
    /// [`TrainError::Data`] or [`TrainError::Config`] when its splits cannot be opened or
    /// differ from the checkpoint's; for [`DetSplit::SearchVal`], [`TrainError::Config`] when
    /// the run carved none, the split carved now differs from the one recorded, or it overlaps
    /// the training images; as [`DetScorer::new`].
    pub fn scorer(self, split: DetSplit, s: &ScoreSettings, device: Device) -> Result<DetScorer, TrainError> {
        let splits = self.splits()?;
        if split == DetSplit::SearchVal {
            check_search_val(&self, &splits)?;
        }
        let data = match split {
            DetSplit::Test => splits.test.clone(),
            DetSplit::SearchVal => splits.search_val.clone(),
            DetSplit::Train => splits.train.clone(),
        };
        DetScorer::new(self.detector, self.vs, &self.config, (&splits.train, data), split, s, device)
    }

    /// Whether the checkpoint holds one fixed child (`model.arch` set).
    pub fn is_fixed(&self) -> bool {
        self.config.model.arch.is_some()
    }

    /// The path to run: `arch` of a supernet checkpoint; none for a fixed architecture (whose
    /// child has only its own path; a different `arch` is warned about and ignored).
    ///
    /// # Errors
    /// [`TrainError::Config`] for a supernet checkpoint without `arch`; [`TrainError::Space`]
    /// for an architecture that does not fit the space.
    pub fn path_of(&self, arch: Option<&str>) -> Result<Option<Arch>, TrainError> {
        match (arch, &self.config.model.arch) {
            (Some(given), Some(fixed)) => {
                if given != fixed {
                    tracing::warn!("--arch {given} ignored: the checkpoint is the fixed architecture {fixed}");
                }
                Ok(None)
            }
            (None, Some(_)) => Ok(None),
            (Some(s), None) => Ok(Some(self.state.space.parse_arch(s)?)),
            (None, None) => Err(TrainError::Config("--arch is required for a supernet checkpoint".into())),
        }
    }

    /// Recomputes the BN statistics of path `arch` on the run's `n` recalibration images of
    /// the training split ([`crate::scoring::det_recalibration_set`], the set used after training and
    /// by the search) with `settings` (the checkpoint's own: `self.config.eval_settings()`; the
    /// batch split matters, since BN normalises each batch by its own statistics on the way);
    /// returns the BN layers recalibrated.
    ///
    /// # Errors
    /// As [`detnas_detect::evaluate::recalibrate`].
    pub fn recalibrate(
        &self,
        splits: &DetSplits,
        arch: Option<&Arch>,
        n: usize,
        settings: &detnas_detect::evaluate::DetEvalSettings,
        mode: detnas_nn::BnMode,
        device: Device,
    ) -> Result<usize, TrainError> {
        use detnas_detect::evaluate::{DetInputs, recalibrate};
        let set = crate::scoring::det_recalibration_set(&splits.train, self.config.seed, n);
        let imgs = DetInputs::Read(std::sync::Arc::new(set));
        Ok(recalibrate(&self.detector, arch, &imgs, settings, mode, device)?)
    }
}

/// Refuses data whose categories differ from the ones a detector was trained with: their
/// labels would be read as other classes.
///
/// # Errors
/// [`TrainError::Config`] naming the first difference.
pub fn check_categories(state: &DetState, splits: &DetSplits) -> Result<(), TrainError> {
    for (what, d) in [("training", &splits.train), ("test", &splits.test)] {
        if d.categories != state.categories {
            let show = |c: &[detnas_data::det::Category]| {
                c.iter().map(|c| format!("{}:{}", c.id, c.name)).collect::<Vec<_>>().join(", ")
            };
            return Err(TrainError::Config(format!(
                "the {what} data ({}) has categories [{}], the checkpoint was trained on [{}]",
                d.source,
                show(&d.categories),
                show(&state.categories)
            )));
        }
    }
    Ok(())
}

/// The search-validation split of an opened checkpoint is the one its run carved and
/// recorded, and disjoint from the training images.
fn check_search_val(opened: &OpenedDetector, splits: &DetSplits) -> Result<(), TrainError> {
    let ckpt = &opened.path;
    let state = &opened.state;
    if state.task.search_val_ids.is_empty() {
        return Err(TrainError::Config(format!(
            "{}: the fine-tuning run carved no search-validation split (data.search_val_images = 0); \
             candidates must not be scored on the test split",
            ckpt.display()
        )));
    }
    let mut recorded = state.task.search_val_ids.clone();
    let mut carved: Vec<u64> = splits.search_val.images.iter().map(|i| i.id).collect();
    recorded.sort_unstable();
    carved.sort_unstable();
    if recorded != carved {
        return Err(TrainError::Config(format!(
            "{}: the search-validation split carved now ({} images) differs from the one recorded at fine-tuning ({} images): the data changed",
            ckpt.display(),
            carved.len(),
            recorded.len()
        )));
    }
    let train_ids: std::collections::HashSet<u64> = splits.train.images.iter().map(|i| i.id).collect();
    if splits.search_val.images.iter().any(|i| train_ids.contains(&i.id)) {
        return Err(TrainError::Config("the search-validation split overlaps the fine-tuning images".into()));
    }
    Ok(())
}
