//! The fine-tuning configuration (`detnas finetune --config …`): the pre-trained supernet,
//! the detector, the detection data and its splits, the schedule. Loaded, overridden,
//! checked and hashed like [`crate::PretrainConfig`].

use crate::TrainError;
use crate::config::{
    EVAL_RANGES, EvalConfig, ModelConfig, RUNTIME_RANGES, RuntimeConfig, SCHEDULE_RANGES, SCHEDULE_REQUIRED,
    ScheduleConfig, model_rules, schedule_rules,
};
use detnas_data::InputConvention;
use detnas_data::det::SizeMismatch;
use detnas_data::det::synth::SyntheticDetConfig;
use detnas_detect::{DetectorConfig, HeadConfig};
use detnas_runtime::ConfigDocument;
use detnas_runtime::config::{Required, resolve_path};
use detnas_runtime::rules::{Range, Rule, Rules, rule};
use detnas_space::{SearchSpace, SpaceSpec};
use serde::{Deserialize, Serialize};
use std::ops::Bound;
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
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FinetuneModel {
    /// `space` and `width_mult`, as in pre-training.
    #[serde(flatten)]
    pub space: ModelConfig,
    /// A pre-training checkpoint (step-N folder) or run folder (its latest checkpoint), or
    /// none to start from scratch. Default none.
    pub pretrained: Option<PathBuf>,
    /// Train one fixed architecture (a child backbone) instead of the supernet path-wise.
    /// Default none.
    pub arch: Option<String>,
}

/// Where the detection images come from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum DetSource {
    /// The built-in synthetic set.
    Synthetic(#[serde(default)] SyntheticDetSource),
    /// COCO: instances JSON + image folder for the training and test splits.
    Coco {
        /// Training annotations (instances JSON).
        train_json: PathBuf,
        /// Training image folder.
        train_images: PathBuf,
        /// Test annotations.
        test_json: PathBuf,
        /// Test image folder.
        test_images: PathBuf,
    },
    /// Pascal VOC roots (`VOC2007/`), image sets (`ImageSets/Main/<set>.txt`) for train and
    /// test. `classes` fixes the class list and its order; without it the classes are the
    /// sorted names found in the training annotations.
    Voc {
        /// VOC roots of the training split (`VOC2007/`, `VOC2012/`, …).
        train_roots: Vec<PathBuf>,
        /// Their image set (`trainval`).
        train_set: String,
        /// VOC root of the test split.
        test_root: PathBuf,
        /// Its image set (`test`).
        test_set: String,
        /// The class list and its order (default: the names found, sorted).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        classes: Option<Vec<String>>,
    },
    /// The YOLO layout.
    Yolo(#[serde(default)] YoloSource),
}

/// The built-in synthetic set (`kind = "synthetic"`), written (once) under `folder`
/// (relative to the run folder when relative) as PNG + COCO JSON and read back through the
/// COCO reader.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyntheticDetSource {
    /// The training split's parameters. Required.
    pub train: SyntheticDetConfig,
    /// The test split's parameters. Required.
    pub test: SyntheticDetConfig,
    /// Where the set is written (relative: inside the run folder). Default `data`.
    pub folder: PathBuf,
}

/// The defaults; `train` and `test` are required (placeholders here).
impl Default for SyntheticDetSource {
    fn default() -> SyntheticDetSource {
        SyntheticDetSource {
            train: SyntheticDetConfig::default(),
            test: SyntheticDetConfig::default(),
            folder: PathBuf::from("data"),
        }
    }
}

/// The YOLO layout (`kind = "yolo"`): an Ultralytics dataset YAML (`path`, `train`, `val`,
/// `test`, `names`) with `images/…` and `labels/….txt` ([`detnas_data::det::yolo`]); the
/// training and test splits are two of its keys.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct YoloSource {
    /// The dataset YAML. Required.
    pub yaml: PathBuf,
    /// The training split's key. Default `train`.
    pub train_split: String,
    /// The test split's key. Default `val`.
    pub test_split: String,
}

/// The defaults; `yaml` is required (empty here).
impl Default for YoloSource {
    fn default() -> YoloSource {
        YoloSource { yaml: PathBuf::new(), train_split: "train".into(), test_split: "val".into() }
    }
}

/// A placeholder: `data.source` is required.
impl Default for DetSource {
    fn default() -> DetSource {
        DetSource::Synthetic(SyntheticDetSource::default())
    }
}

impl DetSource {
    /// The files and folders the source reads, each with its key under `data.source`
    /// (`train_json`, `train_roots[0]`, …; VOC image-set lists included); none for the
    /// synthetic set, which is written.
    pub fn paths(&self) -> Vec<(String, PathBuf)> {
        match self {
            DetSource::Synthetic(_) => Vec::new(),
            DetSource::Coco { train_json, train_images, test_json, test_images } => vec![
                ("train_json".into(), train_json.clone()),
                ("train_images".into(), train_images.clone()),
                ("test_json".into(), test_json.clone()),
                ("test_images".into(), test_images.clone()),
            ],
            DetSource::Voc { train_roots, train_set, test_root, test_set, .. } => {
                let list = |root: &Path, set: &str| root.join("ImageSets/Main").join(format!("{set}.txt"));
                let mut v: Vec<(String, PathBuf)> = train_roots
                    .iter()
                    .enumerate()
                    .map(|(i, r)| (format!("train_roots[{i}] with train_set"), list(r, train_set)))
                    .collect();
                v.push(("test_root with test_set".into(), list(test_root, test_set)));
                v
            }
            DetSource::Yolo(YoloSource { yaml, .. }) => vec![("yaml".into(), yaml.clone())],
        }
    }
}

/// Detection data (`[data]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetDataConfig {
    /// Where the images and annotations come from (`[data.source] kind = …`). Required.
    pub source: DetSource,
    /// Training short side(s), pixels (one drawn per image). Default `[800]`.
    pub min_size: Vec<u32>,
    /// Long side bound, pixels. Default 1333.
    pub max_size: u32,
    /// Test short side, pixels. Default 800.
    pub test_min_size: u32,
    /// Random horizontal flip in training (p = 0.5). Default true.
    pub flip: bool,
    /// Pixel convention. Default: the official BGR 0–255.
    pub convention: InputConvention,
    /// Batches are padded to a multiple of this, pixels. Default 32.
    pub divisibility: u32,
    /// Images carved from the training set as the architecture-search validation split
    /// (never fine-tuned on; DetNAS arXiv:1903.10979 §3.3). Default 0: none.
    pub search_val_images: usize,
    /// An annotated image size that differs from the image's (after EXIF orientation):
    /// `"error"` (default) or `"use-image"` (the image's size; boxes clipped to it).
    #[serde(skip_serializing_if = "SizeMismatch::is_default")]
    pub size_mismatch: SizeMismatch,
    /// Train on images without boxes as pure background (RetinaNet: classification loss
    /// only; Faster R-CNN: negatives for the RPN and the box head). Default false: they are
    /// dropped from training, as in the reference (maskrcnn-benchmark), and counted.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub keep_empty: bool,
}

/// The defaults (maskrcnn-benchmark's); `source` is required.
impl Default for DetDataConfig {
    fn default() -> DetDataConfig {
        DetDataConfig {
            source: DetSource::default(),
            min_size: vec![800],
            max_size: 1333,
            test_min_size: 800,
            flip: true,
            convention: InputConvention::default(),
            divisibility: 32,
            search_val_images: 0,
            size_mismatch: SizeMismatch::default(),
            keep_empty: false,
        }
    }
}

/// The ranges of the fine-tuning document's own keys.
const FINETUNE_RANGES: &[Rule] = &[
    rule("seed", Range::ANY),
    rule("model.width_mult", Range { lo: Bound::Excluded(0.0), hi: Bound::Included(8.0) }),
    rule("data.min_size", Range::within(16.0, 8192.0)),
    rule("data.max_size", Range::within(16.0, 8192.0)),
    rule("data.test_min_size", Range::within(16.0, 8192.0)),
    rule("data.divisibility", Range::within(1.0, 512.0)),
    rule("data.search_val_images", Range::NON_NEGATIVE),
];

/// `[1, 100000]`: a count per image.
const COUNT: Range = Range::within(1.0, 100_000.0);
/// `[1, 4096]`: channels.
const CHANNELS: Range = Range::within(1.0, 4096.0);
/// `> 0`: an anchor size or ratio, a box weight.
const SCALE: Range = Range::POSITIVE;

/// The ranges of `[detector]` and its head (RetinaNet, Faster R-CNN's RPN and box head).
pub const DETECTOR_RANGES: &[Rule] = &[
    rule("detector.fpn_channels", CHANNELS),
    // RetinaNet (`[detector.head]`, kind = "retinanet").
    rule("detector.head.num_convs", Range::within(0.0, 16.0)),
    rule("detector.head.prior", Range { lo: Bound::Excluded(0.0), hi: Bound::Excluded(1.0) }),
    rule("detector.head.anchor_sizes", SCALE),
    rule("detector.head.scales_per_octave", Range::within(1.0, 16.0)),
    rule("detector.head.aspect_ratios", SCALE),
    rule("detector.head.fg_iou", Range::FRACTION),
    rule("detector.head.bg_iou", Range::FRACTION),
    rule("detector.head.focal_alpha", Range::FRACTION),
    rule("detector.head.focal_gamma", Range::NON_NEGATIVE),
    rule("detector.head.smooth_l1_beta", Range::NON_NEGATIVE),
    rule("detector.head.score_threshold", Range::FRACTION),
    rule("detector.head.pre_nms_top_n", COUNT),
    rule("detector.head.nms_threshold", Range::FRACTION),
    rule("detector.head.detections_per_image", COUNT),
    // Faster R-CNN's RPN (`[detector.head.rpn]`).
    rule("detector.head.rpn.anchor_sizes", SCALE),
    rule("detector.head.rpn.aspect_ratios", SCALE),
    rule("detector.head.rpn.fg_iou", Range::FRACTION),
    rule("detector.head.rpn.bg_iou", Range::FRACTION),
    rule("detector.head.rpn.batch_per_image", COUNT),
    rule("detector.head.rpn.positive_fraction", Range::FRACTION),
    rule("detector.head.rpn.pre_nms_top_n_train", COUNT),
    rule("detector.head.rpn.pre_nms_top_n_test", COUNT),
    rule("detector.head.rpn.post_nms_top_n_train", COUNT),
    rule("detector.head.rpn.post_nms_top_n_test", COUNT),
    rule("detector.head.rpn.nms_threshold", Range::FRACTION),
    rule("detector.head.rpn.min_size", Range::NON_NEGATIVE),
    rule("detector.head.rpn.smooth_l1_beta", Range::NON_NEGATIVE),
    // Faster R-CNN's box head (`[detector.head.roi]`).
    rule("detector.head.roi.conv_dim", CHANNELS),
    rule("detector.head.roi.fc_dim", Range::within(1.0, 65536.0)),
    rule("detector.head.roi.pooler_resolution", Range::within(1.0, 64.0)),
    rule("detector.head.roi.sampling_ratio", Range::within(1.0, 16.0)),
    rule("detector.head.roi.fg_iou", Range::FRACTION),
    rule("detector.head.roi.bg_iou", Range::FRACTION),
    rule("detector.head.roi.batch_per_image", COUNT),
    rule("detector.head.roi.positive_fraction", Range::FRACTION),
    rule("detector.head.roi.bbox_weights", SCALE),
    rule("detector.head.roi.smooth_l1_beta", Range::NON_NEGATIVE),
    rule("detector.head.roi.score_threshold", Range::FRACTION),
    rule("detector.head.roi.nms_threshold", Range::FRACTION),
    rule("detector.head.roi.detections_per_image", COUNT),
];

/// The cross-field rules of `[detector]`: `fg_iou ≥ bg_iou`, one anchor size per pyramid
/// level (5), at least one aspect ratio.
pub fn detector_rules(d: &DetectorConfig, r: &mut Rules) {
    let mut levels = |prefix: &str, fg: f64, bg: f64, sizes: usize, ratios: usize| {
        let key = |k: &str| format!("{prefix}.{k}");
        r.require(
            fg >= bg,
            &[&key("fg_iou"), &key("bg_iou")],
            format!("{} ({fg}) must be at least {} ({bg})", key("fg_iou"), key("bg_iou")),
        );
        r.require(
            sizes == 5,
            &[&key("anchor_sizes")],
            format!("{} needs one size per pyramid level (5), got {sizes}", key("anchor_sizes")),
        );
        r.require(ratios > 0, &[&key("aspect_ratios")], format!("{} must not be empty", key("aspect_ratios")));
    };
    match &d.head {
        HeadConfig::Retinanet(c) => {
            levels("detector.head", c.fg_iou, c.bg_iou, c.anchor_sizes.len(), c.aspect_ratios.len());
        }
        HeadConfig::FasterRcnn(c) => {
            levels(
                "detector.head.rpn",
                c.rpn.fg_iou,
                c.rpn.bg_iou,
                c.rpn.anchor_sizes.len(),
                c.rpn.aspect_ratios.len(),
            );
            r.require(
                c.roi.fg_iou >= c.roi.bg_iou,
                &["detector.head.roi.fg_iou", "detector.head.roi.bg_iou"],
                format!(
                    "detector.head.roi.fg_iou ({}) must be at least detector.head.roi.bg_iou ({})",
                    c.roi.fg_iou, c.roi.bg_iou
                ),
            );
        }
    }
}

/// The ranges of a synthetic detection split (`data.source.train`, `.test`).
const SYNTHETIC_DET_RANGES: &[Rule] = &[
    rule("data.source.*.images", Range::POSITIVE),
    rule("data.source.*.width", Range::within(16.0, 8192.0)),
    rule("data.source.*.height", Range::within(16.0, 8192.0)),
    rule("data.source.*.classes", Range::within(1.0, 10.0)),
    rule("data.source.*.seed", Range::ANY),
    rule("data.source.*.objects", Range::within(0.0, 1000.0)),
    rule("data.source.*.radius", Range { lo: Bound::Excluded(0.0), hi: Bound::Included(0.5) }),
    rule("data.source.*.max_overlap", Range::FRACTION),
    rule("data.source.*.clutter", Range::within(0.0, 10_000.0)),
];

impl ConfigDocument for FinetuneConfig {
    type Error = TrainError;

    const REQUIRED: &'static [Required] = &[
        Required::key("model.space"),
        Required::key("detector.head.kind"),
        Required::key("data.source.kind"),
        Required::when("data.source.kind", "synthetic", "data.source.train.images"),
        Required::when("data.source.kind", "synthetic", "data.source.train.seed"),
        Required::when("data.source.kind", "synthetic", "data.source.test.images"),
        Required::when("data.source.kind", "synthetic", "data.source.test.seed"),
        Required::when("data.source.kind", "yolo", "data.source.yaml"),
        SCHEDULE_REQUIRED[0],
        SCHEDULE_REQUIRED[1],
        SCHEDULE_REQUIRED[2],
    ];

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
            DetSource::Synthetic(_) => {}
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
            DetSource::Yolo(YoloSource { yaml, .. }) => resolve_path(yaml, base),
        }
    }

    const RANGES: &'static [&'static [Rule]] =
        &[FINETUNE_RANGES, DETECTOR_RANGES, SYNTHETIC_DET_RANGES, SCHEDULE_RANGES, RUNTIME_RANGES, EVAL_RANGES];

    fn rules(&self, r: &mut Rules) {
        model_rules(&self.model.space, self.model.arch.as_deref().map(|a| ("model.arch", a)), r);
        schedule_rules(&self.schedule, r);
        detector_rules(&self.detector, r);
        if let DetSource::Synthetic(SyntheticDetSource { train, test, .. }) = &self.data.source {
            for (name, s) in [("train", train), ("test", test)] {
                let key = |k: &str| format!("data.source.{name}.{k}");
                r.require(
                    s.objects.0 <= s.objects.1 && s.objects.1 >= 1,
                    &[&key("objects")],
                    format!("{} {:?} must be an inclusive range lo ≤ hi with hi ≥ 1", key("objects"), s.objects),
                );
                r.require(
                    s.radius.0 <= s.radius.1,
                    &[&key("radius")],
                    format!("{} {:?} must be a range lo ≤ hi", key("radius"), s.radius),
                );
            }
            r.require(
                self.data.search_val_images < train.images,
                &["data.search_val_images", "data.source.train.images"],
                format!(
                    "data.search_val_images ({}) must be below data.source.train.images ({}): the carve leaves no image to train on",
                    self.data.search_val_images, train.images
                ),
            );
            r.require(
                train.classes == test.classes,
                &["data.source.train.classes", "data.source.test.classes"],
                format!(
                    "data.source.train.classes ({}) and data.source.test.classes ({}) must be equal",
                    train.classes, test.classes
                ),
            );
        }
    }

    /// The synthetic splits' own checks.
    fn check_references(&self) -> Result<(), TrainError> {
        if let DetSource::Synthetic(SyntheticDetSource { train, test, .. }) = &self.data.source {
            train.check()?;
            test.check()?;
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
    pub fn eval_settings(&self) -> detnas_detect::evaluate::DetEvalSettings {
        detnas_detect::evaluate::DetEvalSettings {
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
        for sub in ["demo", "own-data", "coco", "voc"] {
            for e in std::fs::read_dir(configs().join(sub)).unwrap() {
                let p = e.unwrap().path();
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                if name.starts_with("finetune") && name.ends_with(".toml") {
                    let cfg = FinetuneConfig::load(&p, &[]).unwrap_or_else(|e| panic!("{name}: {e}"));
                    assert!(
                        cfg.model.space.space == "small"
                            || cfg.model.space.space == "large"
                            || sub == "demo"
                            || sub == "own-data",
                        "{name}"
                    );
                    n += 1;
                }
            }
        }
        assert!(n >= 6, "presets found: {n}");
    }

    fn presets() -> Vec<PathBuf> {
        let mut v = Vec::new();
        for sub in ["demo", "own-data", "coco", "voc"] {
            for e in std::fs::read_dir(configs().join(sub)).unwrap() {
                let p = e.unwrap().path();
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                if name.starts_with("finetune") && name.ends_with(".toml") {
                    v.push(p);
                }
            }
        }
        v.sort();
        v
    }

    /// Sets the optional numeric keys, so that the walk sees them.
    const EVERY_KEY: [&str; 3] = ["runtime.threads=2", "schedule.clip_grad_norm=5.0", "eval.recalibrate_images=0"];

    fn load_file(p: &Path, set: &[String]) -> Result<FinetuneConfig, TrainError> {
        FinetuneConfig::load(p, set)
    }

    #[test]
    fn cross_field_rules_name_their_keys() {
        let retina = configs().join("demo/finetune-retinanet.toml");
        let fpn = configs().join("demo/finetune-fpn.toml");
        for (p, set, needle) in [
            (
                &retina,
                "detector.head.bg_iou=0.6",
                "detector.head.fg_iou (0.5) must be at least detector.head.bg_iou (0.6)",
            ),
            (&retina, "detector.head.anchor_sizes=[32.0, 64.0]", "needs one size per pyramid level (5), got 2"),
            (&retina, "detector.head.aspect_ratios=[]", "detector.head.aspect_ratios must not be empty"),
            (&fpn, "detector.head.rpn.fg_iou=0.2", "detector.head.rpn.fg_iou (0.2) must be at least"),
            (&fpn, "detector.head.roi.bg_iou=0.9", "detector.head.roi.fg_iou (0.5) must be at least"),
            (&fpn, "detector.head.rpn.anchor_sizes=[32.0]", "detector.head.rpn.anchor_sizes needs one size"),
            (&retina, "data.source.test.classes=3", "data.source.test.classes (3) must be equal"),
            (
                &retina,
                "data.search_val_images=100000",
                "data.search_val_images (100000) must be below data.source.train.images",
            ),
            (
                &retina,
                "data.source.train.objects=[5, 2]",
                "data.source.train.objects (5, 2) must be an inclusive range",
            ),
            (&retina, "schedule.milestones=[300, 200]", "schedule.milestones [300, 200] must increase"),
        ] {
            let e = FinetuneConfig::load(p, &[set.to_string()]).unwrap_err();
            let m = e.to_string();
            assert!(m.contains(needle) && m.contains(&format!("(from --set {set})")), "{set}: {m}");
            assert_eq!(e.exit_code(), 2);
        }
    }

    detnas_runtime::range_tests!(files: presets(), load: load_file, code: TrainError::exit_code, base: EVERY_KEY, min: 500, cases: 256);

    /// A section given only its required keys takes every other value from its `Default`.
    #[test]
    fn a_section_given_its_required_keys_takes_the_rest_from_its_default() {
        let yolo: DetDataConfig = toml::from_str("[source]\nkind = \"yolo\"\nyaml = \"d.yaml\"\n").unwrap();
        let source = DetSource::Yolo(YoloSource { yaml: "d.yaml".into(), ..YoloSource::default() });
        assert_eq!(yolo, DetDataConfig { source, ..DetDataConfig::default() });
        assert_eq!(
            (yolo.min_size.as_slice(), yolo.max_size, yolo.test_min_size, yolo.divisibility),
            (&[800][..], 1333, 800, 32)
        );
        let DetSource::Yolo(y) = &yolo.source else { unreachable!() };
        assert_eq!((y.train_split.as_str(), y.test_split.as_str()), ("train", "val"));
        let text =
            "[source]\nkind = \"synthetic\"\ntrain = { images = 9, seed = 1 }\ntest = { images = 4, seed = 2 }\n";
        let synthetic: DetDataConfig = toml::from_str(text).unwrap();
        let set = |images, seed| SyntheticDetConfig { images, seed, ..SyntheticDetConfig::default() };
        let source = DetSource::Synthetic(SyntheticDetSource {
            train: set(9, 1),
            test: set(4, 2),
            ..SyntheticDetSource::default()
        });
        assert_eq!(synthetic, DetDataConfig { source, ..DetDataConfig::default() });
        let DetSource::Synthetic(s) = &synthetic.source else { unreachable!() };
        assert_eq!((s.folder.as_path(), s.train.width, s.train.classes), (Path::new("data"), 128, 6));
        let detector: DetectorConfig = toml::from_str("[head]\nkind = \"retinanet\"\n").unwrap();
        let head = HeadConfig::Retinanet(detnas_detect::retinanet::RetinaNetConfig::default());
        assert_eq!(detector, DetectorConfig { head, ..DetectorConfig::default() });
        assert_eq!((detector.fpn_channels, detector.fpn_bn), (256, true));
        let model: FinetuneModel = toml::from_str("space = \"small\"\n").unwrap();
        assert_eq!(model.space.space, "small");
        assert_eq!((model.space.width_mult, &model.pretrained, &model.arch), (1.0, &None, &None));
        let text = toml::to_string(&DetectorConfig::default()).unwrap();
        assert_eq!(toml::from_str::<DetectorConfig>(&text).unwrap(), DetectorConfig::default(), "{text}");
        let text = toml::to_string(&DetDataConfig::default()).unwrap();
        assert_eq!(toml::from_str::<DetDataConfig>(&text).unwrap(), DetDataConfig::default(), "{text}");
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
