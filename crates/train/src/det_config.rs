//! The fine-tuning configuration (`detnas finetune --config …`): the pre-trained supernet,
//! the detector, the detection data and its splits, the schedule. Loaded, overridden,
//! checked and hashed like [`crate::PretrainConfig`].

use crate::TrainError;
use crate::config::{EvalConfig, ModelConfig, RuntimeConfig, ScheduleConfig};
use detnas_data::InputConvention;
use detnas_data::det::SizeMismatch;
use detnas_data::det::synth::SyntheticDetConfig;
use detnas_detect::DetectorConfig;
use detnas_runtime::ConfigDocument;
use detnas_runtime::config::resolve_path;
use detnas_space::{SearchSpace, SpaceSpec};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The fine-tuning configuration (`detnas finetune --config …`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FinetuneConfig {
    /// Seed of every random stream (paths, data order, augmentation, samplers, the
    /// search-validation carve).
    pub seed: u64,
    /// The backbone: space, pre-trained supernet, or a fixed child.
    pub model: FinetuneModel,
    /// FPN and head (`[detector]`, `[detector.head]`).
    pub detector: DetectorConfig,
    /// Detection data and its presentation.
    pub data: DetDataConfig,
    /// Optimisation (`[schedule]`; DetNAS: lr 0.02, ×0.1 at 60k and 80k of 90k).
    pub schedule: ScheduleConfig,
    /// Device, threads, checkpoint and logging intervals (not part of the result hash).
    #[serde(default)]
    pub runtime: RuntimeConfig,
    /// The evaluation after training (not part of the result hash).
    #[serde(default)]
    pub eval: EvalConfig,
}

/// The backbone (`[model]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FinetuneModel {
    /// `space` and `width_mult`, as in pre-training.
    #[serde(flatten)]
    pub space: ModelConfig,
    /// A pre-training checkpoint (step-N folder) or run folder (its latest checkpoint), or
    /// none to start from scratch.
    #[serde(default)]
    pub pretrained: Option<PathBuf>,
    /// Train one fixed architecture (a child backbone) instead of the supernet path-wise.
    /// Default none.
    #[serde(default)]
    pub arch: Option<String>,
}

/// Where the detection images come from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum DetSource {
    /// The built-in synthetic set, written (once) under `folder` (relative to the run folder
    /// when relative) as PNG + COCO JSON and read back through the COCO reader.
    Synthetic {
        train: SyntheticDetConfig,
        test: SyntheticDetConfig,
        #[serde(default = "synth_folder")]
        folder: PathBuf,
    },
    /// COCO: instances JSON + image folder for the training and test splits.
    Coco { train_json: PathBuf, train_images: PathBuf, test_json: PathBuf, test_images: PathBuf },
    /// Pascal VOC roots (`VOC2007/`), image sets (`ImageSets/Main/<set>.txt`) for train and
    /// test. `classes` fixes the class list and its order; without it the classes are the
    /// sorted names found in the training annotations.
    Voc {
        train_roots: Vec<PathBuf>,
        train_set: String,
        test_root: PathBuf,
        test_set: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        classes: Option<Vec<String>>,
    },
    /// The YOLO layout: an Ultralytics dataset YAML (`path`, `train`, `val`, `test`, `names`)
    /// with `images/…` and `labels/….txt` ([`detnas_data::det::yolo`]); the training and test
    /// splits are two of its keys (default `train` and `val`).
    Yolo {
        yaml: PathBuf,
        #[serde(default = "split_train")]
        train_split: String,
        #[serde(default = "split_val")]
        test_split: String,
    },
}

fn split_train() -> String {
    "train".into()
}
fn split_val() -> String {
    "val".into()
}

fn synth_folder() -> PathBuf {
    PathBuf::from("data")
}

/// Detection data (`[data]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetDataConfig {
    /// Where the images and annotations come from (`[data.source] kind = …`).
    pub source: DetSource,
    /// Training short side(s), pixels (one drawn per image). Default `[800]`.
    #[serde(default = "d800")]
    pub min_size: Vec<u32>,
    /// Long side bound, pixels. Default 1333.
    #[serde(default = "d1333")]
    pub max_size: u32,
    /// Test short side, pixels. Default 800.
    #[serde(default = "d800_1")]
    pub test_min_size: u32,
    /// Random horizontal flip in training (p = 0.5). Default true.
    #[serde(default = "yes")]
    pub flip: bool,
    /// Pixel convention. Default: the official BGR 0–255.
    #[serde(default)]
    pub convention: InputConvention,
    /// Batches are padded to a multiple of this, pixels. Default 32.
    #[serde(default = "d32")]
    pub divisibility: u32,
    /// Images carved from the training set as the architecture-search validation split
    /// (never fine-tuned on; DetNAS arXiv:1903.10979 §3.3). Default 0: none.
    #[serde(default)]
    pub search_val_images: usize,
    /// An annotated image size that differs from the image's (after EXIF orientation):
    /// `"error"` (default) or `"use-image"` (the image's size; boxes clipped to it).
    #[serde(default, skip_serializing_if = "SizeMismatch::is_default")]
    pub size_mismatch: SizeMismatch,
    /// Train on images without boxes as pure background (RetinaNet: classification loss
    /// only; Faster R-CNN: negatives for the RPN and the box head). Default false: they are
    /// dropped from training, as in the reference (maskrcnn-benchmark), and counted.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keep_empty: bool,
}

fn d800() -> Vec<u32> {
    vec![800]
}
fn d800_1() -> u32 {
    800
}
fn d1333() -> u32 {
    1333
}
fn yes() -> bool {
    true
}
fn d32() -> u32 {
    32
}

impl ConfigDocument for FinetuneConfig {
    type Error = TrainError;

    const PATH_KEYS: &'static [&'static str] = &[
        "model.pretrained",
        "data.source.train_json",
        "data.source.train_images",
        "data.source.test_json",
        "data.source.test_images",
        "data.source.test_root",
        "data.source.yaml",
    ];

    fn resolve_paths(&mut self, base: &Path) {
        if self.model.space.space.ends_with(".toml") {
            let mut p = PathBuf::from(&self.model.space.space);
            resolve_path(&mut p, base);
            self.model.space.space = p.to_string_lossy().into_owned();
        }
        if let Some(p) = &mut self.model.pretrained {
            resolve_path(p, base);
        }
        match &mut self.data.source {
            DetSource::Synthetic { .. } => {}
            DetSource::Coco { train_json, train_images, test_json, test_images } => {
                for p in [train_json, train_images, test_json, test_images] {
                    resolve_path(p, base);
                }
            }
            DetSource::Voc { train_roots, test_root, .. } => {
                for p in train_roots.iter_mut() {
                    resolve_path(p, base);
                }
                resolve_path(test_root, base);
            }
            DetSource::Yolo { yaml, .. } => resolve_path(yaml, base),
        }
    }

    fn check(&self) -> Result<(), TrainError> {
        let bad = |m: String| Err(TrainError::Config(m));
        let space = self.space()?;
        if let Some(a) = &self.model.arch {
            space.parse_arch(a).map_err(|e| TrainError::Config(format!("model.arch: {e}")))?;
        }
        let s = &self.schedule;
        if s.iterations == 0 || s.batch == 0 || !(s.lr.is_finite() && s.lr > 0.0) {
            return bad("schedule.iterations, schedule.batch and schedule.lr must be positive".into());
        }
        if s.clip_grad_norm.is_some_and(|c| c.is_nan() || c <= 0.0) {
            return bad("schedule.clip_grad_norm must be positive".into());
        }
        let d = &self.data;
        if d.min_size.is_empty() || d.min_size.iter().any(|&m| m < 16) || d.max_size < 16 || d.test_min_size < 16 {
            return bad("data.min_size, data.max_size and data.test_min_size must be at least 16".into());
        }
        if self.detector.fpn_channels < 1 {
            return bad("detector.fpn_channels must be positive".into());
        }
        if let DetSource::Synthetic { train, test, .. } = &d.source {
            train.check()?;
            test.check()?;
            if train.classes != test.classes {
                return bad("data.source.train and .test must have the same classes".into());
            }
        }
        if self.runtime.checkpoint_every == 0 || self.runtime.log_every == 0 {
            return bad("runtime.checkpoint_every and runtime.log_every must be positive".into());
        }
        Ok(())
    }

    /// What determines the fine-tuned weights: `model`, `detector`, `data`, `schedule`,
    /// `seed`.
    fn result_parts(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "seed": self.seed, "model": self.model, "detector": self.detector, "data": self.data,
            "schedule": self.schedule,
        });
        if self.runtime.precision != detnas_device::Precision::Fp32 {
            v["precision"] = serde_json::json!(self.runtime.precision);
        }
        v
    }
}

impl FinetuneConfig {
    /// Reads `path`, applies overrides, resolves relative paths against the file's folder,
    /// checks ([`ConfigDocument::load`] with a file).
    ///
    /// # Errors
    /// As [`ConfigDocument::load`].
    pub fn load(path: &Path, overrides: &[String]) -> Result<FinetuneConfig, TrainError> {
        <FinetuneConfig as ConfigDocument>::load(Some(path), overrides)
    }

    /// The resolved search space.
    ///
    /// # Errors
    /// A space error for an unknown space name or an invalid space file.
    pub fn space(&self) -> Result<SearchSpace, TrainError> {
        Ok(SpaceSpec { space: self.model.space.space.clone(), width_mult: self.model.space.width_mult }.resolve()?)
    }

    /// How evaluation images are presented (test transform, `eval.batch`).
    pub fn eval_settings(&self) -> detnas_detect::evaluate::EvalSettings {
        detnas_detect::evaluate::EvalSettings {
            min_size: self.data.test_min_size,
            max_size: self.data.max_size,
            convention: self.data.convention,
            divisibility: self.data.divisibility,
            batch: self.eval.batch,
            prefetch: self.runtime.prefetch,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn configs() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs")
    }

    #[test]
    fn every_finetune_preset_loads_and_checks() {
        let mut n = 0;
        for sub in ["demo", "coco", "voc"] {
            for e in std::fs::read_dir(configs().join(sub)).unwrap() {
                let p = e.unwrap().path();
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                if name.starts_with("finetune") && name.ends_with(".toml") {
                    let cfg = FinetuneConfig::load(&p, &[]).unwrap_or_else(|e| panic!("{name}: {e}"));
                    assert!(
                        cfg.model.space.space == "small" || cfg.model.space.space == "large" || sub == "demo",
                        "{name}"
                    );
                    n += 1;
                }
            }
        }
        assert!(n >= 6, "presets found: {n}");
    }

    #[test]
    fn reference_defaults_and_overrides() {
        let p = configs().join("coco/finetune-fpn-300m.toml");
        let cfg = FinetuneConfig::load(&p, &[]).unwrap();
        let detnas_detect::HeadConfig::FasterRcnn(f) = &cfg.detector.head else { panic!("not faster-rcnn") };
        assert_eq!((f.roi.batch_per_image, f.roi.pooler_resolution, f.roi.sampling_ratio), (512, 7, 2));
        assert_eq!((f.rpn.fg_iou, f.rpn.bg_iou, f.rpn.batch_per_image), (0.7, 0.3, 256));
        assert_eq!(f.roi.bbox_weights, [10.0, 10.0, 5.0, 5.0]);
        assert!(cfg.model.pretrained.as_ref().unwrap().is_absolute(), "relative to the config file");
        let changed = FinetuneConfig::load(&p, &["schedule.lr=0.01".into()]).unwrap();
        assert_ne!(changed.result_hash(), cfg.result_hash());
        let e = FinetuneConfig::load(&p, &["detector.fpn_channels=0".into()]).unwrap_err().to_string();
        assert!(e.contains("fpn_channels"), "{e}");
        let e = FinetuneConfig::load(&p, &["model.arch=\"123\"".into()]).unwrap_err().to_string();
        assert!(e.contains("model.arch"), "{e}");
    }
}
