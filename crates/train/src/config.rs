//! The pre-training configuration: typed sections, loaded from TOML, overridable field by
//! field (`--set schedule.lr=0.1`), checked up front, and written resolved into the run
//! folder before training starts.
//!
//! The *result hash* covers what determines the trained weights — `model`, `data`,
//! `schedule`, `sampling`, `seed` — and is recorded in every checkpoint; resuming with a
//! different hash is refused. `runtime` and `eval` (device, threads, checkpoint interval, …)
//! may change between runs.

use crate::TrainError;
use crate::schedule::{LrSchedule, ScheduleKind};
use detnas_data::InputConvention;
use detnas_data::synth::SyntheticClsConfig;
use detnas_runtime::ConfigDocument;
use detnas_runtime::config::{Required, resolve_path};
use detnas_runtime::rules::{Range, Rule, Rules, rule};
use detnas_space::{SearchSpace, SpaceSpec};
use serde::{Deserialize, Serialize};
use std::ops::Bound;
use std::path::{Path, PathBuf};

/// The pre-training configuration (`detnas pretrain --config …`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PretrainConfig {
    /// Seed of every random stream (paths, data order, augmentation, dropout).
    pub seed: u64,
    /// The search space of the supernet.
    pub model: ModelConfig,
    /// Images and their presentation.
    pub data: DataConfig,
    /// Optimisation: iterations, batch, learning rate and its schedule.
    pub schedule: ScheduleConfig,
    /// How paths are drawn (default: uniform).
    #[serde(default)]
    pub sampling: SamplingConfig,
    /// Device, threads, checkpoint and logging intervals (not part of the result hash).
    #[serde(default)]
    pub runtime: RuntimeConfig,
    /// The evaluation after training (not part of the result hash).
    #[serde(default)]
    pub eval: EvalConfig,
}

/// The search space (`[model]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// `small`, `large`, `large-3.8g` or a space TOML file (relative to the config file).
    /// Required.
    pub space: String,
    /// Width multiplier (1.0 = the published widths; widths rounded to multiples of 4).
    /// Default 1.0.
    pub width_mult: f64,
}

/// The defaults; `space` is required (empty here).
impl Default for ModelConfig {
    fn default() -> ModelConfig {
        ModelConfig { space: String::new(), width_mult: 1.0 }
    }
}

/// Where the images come from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ClsSource {
    /// The built-in synthetic shapes (no download).
    Synthetic {
        /// The training split's parameters.
        train: SyntheticClsConfig,
        /// The validation split's parameters.
        val: SyntheticClsConfig,
    },
    /// ImageNet-style folders `root/<class>/<image>`.
    ImageFolder {
        /// The training root.
        train: PathBuf,
        /// The validation root.
        val: PathBuf,
    },
    /// MNIST / Fashion-MNIST IDX files (raw or .gz).
    Idx {
        /// Training images file.
        train_images: PathBuf,
        /// Training labels file.
        train_labels: PathBuf,
        /// Validation images file.
        val_images: PathBuf,
        /// Validation labels file.
        val_labels: PathBuf,
    },
}

/// A placeholder (synthetic, with its required sizes and seeds unset): `data.source` is
/// required.
impl Default for ClsSource {
    fn default() -> ClsSource {
        ClsSource::Synthetic { train: SyntheticClsConfig::default(), val: SyntheticClsConfig::default() }
    }
}

impl ClsSource {
    /// The files and folders the source reads, each with its key under `data.source`; none
    /// for the synthetic set.
    pub fn paths(&self) -> Vec<(String, PathBuf)> {
        match self {
            ClsSource::Synthetic { .. } => Vec::new(),
            ClsSource::ImageFolder { train, val } => vec![("train".into(), train.clone()), ("val".into(), val.clone())],
            ClsSource::Idx { train_images, train_labels, val_images, val_labels } => vec![
                ("train_images".into(), train_images.clone()),
                ("train_labels".into(), train_labels.clone()),
                ("val_images".into(), val_images.clone()),
                ("val_labels".into(), val_labels.clone()),
            ],
        }
    }
}

/// Classification data (`[data]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// Where the images come from (`[data.source] kind = …`). Required.
    pub source: ClsSource,
    /// Training crop side (RandomResizedCrop output), pixels. Default 224.
    pub input_size: u32,
    /// Evaluation: short side after resizing (centre crop `input_size`). Default 256.
    pub eval_resize: u32,
    /// Pixel convention. Default: the official BGR 0–255.
    pub convention: InputConvention,
    /// Smallest crop area fraction of RandomResizedCrop. Default 0.08.
    pub scale_min: f64,
    /// Random horizontal flip (p = 0.5). Default true.
    pub flip: bool,
    /// Colour-jitter strength. Default 0.4, as the official code.
    pub jitter: f32,
}

/// The defaults (the official SPOS pre-training's); `source` is required.
impl Default for DataConfig {
    fn default() -> DataConfig {
        DataConfig {
            source: ClsSource::default(),
            input_size: 224,
            eval_resize: 256,
            convention: InputConvention::default(),
            scale_min: 0.08,
            flip: true,
            jitter: 0.4,
        }
    }
}

/// The shape of the learning-rate schedule (see [`crate::schedule`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LrKind {
    /// `lr · (1 − t/T)`, the official pre-training schedule.
    Linear,
    /// `lr · ½(1 + cos(π t/T))`.
    Cosine,
    /// `lr · γ^k` after the k-th of `milestones` (detection fine-tuning).
    Step,
}

/// Optimisation (`[schedule]`), shared by pre-training and fine-tuning.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScheduleConfig {
    /// Optimisation steps (one batch each). Required.
    pub iterations: u64,
    /// Images per step: the global batch (`IMS_PER_BATCH` of maskrcnn_benchmark). Required.
    pub batch: usize,
    /// Base learning rate (official: 0.5 at batch 1024 for pre-training, 0.02 at batch 16
    /// for FPN fine-tuning). Required.
    pub lr: f64,
    /// Schedule shape. Default `linear`.
    pub lr_schedule: LrKind,
    /// Step schedule: iterations at which the rate is multiplied by `gamma`, increasing.
    /// Default none.
    pub milestones: Vec<u64>,
    /// Step schedule factor. Default 0.1.
    pub gamma: f64,
    /// Iterations of linear warm-up. Default 0.
    pub warmup_iters: u64,
    /// Learning-rate factor at step 0 of the warm-up. Default 1/3.
    pub warmup_factor: f64,
    /// SGD momentum. Default 0.9.
    pub momentum: f64,
    /// On conv and FC weights only. Default 4e-5 (official pre-training; fine-tuning 1e-4).
    pub weight_decay: f64,
    /// Label smoothing of the classification loss, in [0, 1). Default 0.1.
    pub label_smoothing: f64,
    /// Clip the path's gradient to this global L2 norm (detection fine-tuning option).
    /// Default none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clip_grad_norm: Option<f64>,
}

/// The defaults; `iterations`, `batch` and `lr` are required (0 here).
impl Default for ScheduleConfig {
    fn default() -> ScheduleConfig {
        ScheduleConfig {
            iterations: 0,
            batch: 0,
            lr: 0.0,
            lr_schedule: LrKind::Linear,
            milestones: Vec::new(),
            gamma: 0.1,
            warmup_iters: 0,
            warmup_factor: 1.0 / 3.0,
            momentum: 0.9,
            weight_decay: 4e-5,
            label_smoothing: 0.1,
            clip_grad_norm: None,
        }
    }
}

impl ScheduleConfig {
    /// What in the schedule is probably a mistake (logged as warnings at the start): step
    /// milestones at or past the last iteration (the LR never decays there), and a warm-up
    /// as long as the run.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if matches!(self.lr_schedule, LrKind::Step) {
            let late: Vec<u64> = self.milestones.iter().copied().filter(|&m| m >= self.iterations).collect();
            if !late.is_empty() {
                w.push(format!(
                    "schedule.milestones {late:?} are at or past schedule.iterations = {}: the LR never decays there \
                     (shortened with --set schedule.iterations? set schedule.milestones too)",
                    self.iterations
                ));
            }
        }
        if self.warmup_iters >= self.iterations && self.warmup_iters > 0 {
            w.push(format!(
                "schedule.warmup_iters = {} covers the whole run of {} iterations",
                self.warmup_iters, self.iterations
            ));
        }
        w
    }

    /// The learning-rate schedule of this section.
    pub fn lr_schedule(&self) -> LrSchedule {
        LrSchedule {
            base: self.lr,
            total: self.iterations,
            kind: match self.lr_schedule {
                LrKind::Linear => ScheduleKind::Linear,
                LrKind::Cosine => ScheduleKind::Cosine,
                LrKind::Step => ScheduleKind::Step { milestones: self.milestones.clone(), gamma: self.gamma },
            },
            warmup_iters: self.warmup_iters,
            warmup_factor: self.warmup_factor,
        }
    }
}

/// How the path of each step is drawn.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SamplingKind {
    /// Every block's choice uniform (DetNAS).
    #[default]
    Uniform,
    /// SPOS: a MACs bin uniformly, then a uniform path inside it.
    FlopsBinned,
    /// Strict fairness (FairNAS, arXiv:1907.01845): every step trains as many paths as a
    /// block has choices, on the same batch, covering every choice of every block once; the
    /// gradients are summed and applied in one update. A step costs that many forward and
    /// backward passes. No MACs limit.
    Fair,
    /// Always `sampling.arch`: trains one child network from scratch (retraining a found
    /// architecture on classification; unsampled choices never move).
    Fixed,
}

/// Path sampling (`[sampling]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplingConfig {
    /// Default `uniform`.
    pub kind: SamplingKind,
    /// Number of MACs bins (flops-binned). Default 10.
    pub bins: usize,
    /// Only paths with backbone MACs at most this (`300M`; counted at 224×224). Default none.
    pub max_backbone_macs: Option<String>,
    /// The architecture of `kind = "fixed"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
    /// Warm start: the first this many steps train only the reference path (every block the
    /// smallest-kernel ShuffleNetV2 choice, 3×3 in the official spaces); then every block's
    /// other choices are aligned to it (`Supernet::align_choices`: copied, kernels
    /// zero-padded, Xception started near it), the momentum buffers are cleared, and `kind`
    /// sampling takes over. Default 0 (none). At CPU scale, path-wise training from a random
    /// initialisation stays near chance for thousands of steps (see the README's "One-shot
    /// training at CPU scale"); starting every path from a trained one avoids that plateau.
    #[serde(skip_serializing_if = "is_zero")]
    pub warm_start_steps: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Default for SamplingConfig {
    fn default() -> SamplingConfig {
        SamplingConfig {
            kind: SamplingKind::Uniform,
            bins: 10,
            max_backbone_macs: None,
            arch: None,
            warm_start_steps: 0,
        }
    }
}

/// How a run executes (`[runtime]`); not part of the result hash.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// `cpu`, `cuda`, `cuda:N` or `auto`. Default `auto`.
    pub device: String,
    /// libtorch intra-op threads. Default: libtorch's choice.
    pub threads: Option<i32>,
    /// Steps between checkpoints (the most work a crash can lose). Default 500.
    pub checkpoint_every: u64,
    /// Checkpoints kept. Default 3.
    pub keep: usize,
    /// Steps between metric lines. Default 20.
    pub log_every: u64,
    /// Batches prepared ahead by the loader. Default 4.
    pub prefetch: usize,
    /// Synchronized BatchNorm when several processes train together (statistics of the
    /// global batch). Default: on for fine-tuning (DetNAS), off for pre-training.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sync_bn: Option<bool>,
    /// How long a collective or the store may wait for the other processes before the run
    /// fails (seconds). Default 1800.
    pub dist_timeout_s: u64,
    /// Fine-tuning: decode every image of every split before the first step (in parallel),
    /// as `detnas data check` does, and log the files that fail (training skips them).
    /// Default true; at COCO scale this takes about a minute on 16 cores.
    #[serde(skip_serializing_if = "is_on")]
    pub decode_check: bool,
    /// Activation layout: `auto` (channels-last on the CPU, NCHW on CUDA), `nchw` or
    /// `channels-last`. Default `auto` (`DETNAS_MEMORY_FORMAT` sets what `auto` leaves).
    #[serde(skip_serializing_if = "is_default")]
    pub memory_format: detnas_device::MemoryFormat,
    /// `fp32`, or `bf16`: bfloat16 autocast of the networks' forwards on CUDA (losses, box
    /// decoding and NMS stay fp32). Part of the run's identity when not `fp32`. Default
    /// `fp32`.
    #[serde(skip_serializing_if = "is_default")]
    pub precision: detnas_device::Precision,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

fn is_on(b: &bool) -> bool {
    *b
}

impl Default for RuntimeConfig {
    fn default() -> RuntimeConfig {
        RuntimeConfig {
            device: "auto".into(),
            threads: None,
            checkpoint_every: 500,
            keep: 3,
            log_every: 20,
            prefetch: 4,
            sync_bn: None,
            dist_timeout_s: 1800,
            decode_check: true,
            memory_format: detnas_device::MemoryFormat::Auto,
            precision: detnas_device::Precision::Fp32,
        }
    }
}

impl RuntimeConfig {
    /// Makes `memory_format` and `precision` the process's settings
    /// ([`detnas_device::settings::configure`]).
    pub fn apply_compute_settings(&self) {
        detnas_device::settings::configure(self.memory_format, self.precision);
    }
}

/// How BN statistics are recomputed before a path is evaluated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BnModeConfig {
    /// The exact mean and variance over the recalibration images.
    #[default]
    Exact,
    /// The official exponential moving average (momentum 0.1) after a reset.
    Ema,
}

impl From<BnModeConfig> for detnas_nn::BnMode {
    fn from(m: BnModeConfig) -> detnas_nn::BnMode {
        match m {
            BnModeConfig::Exact => detnas_nn::BnMode::Exact,
            BnModeConfig::Ema => detnas_nn::BnMode::Ema,
        }
    }
}

/// The evaluation after training (`[eval]`); not part of the result hash.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    /// Training images the BN statistics of a path are recomputed on before it is scored;
    /// 0 keeps the statistics training left. Default ([`EvalConfig::recalibrate_images`]):
    /// 1000 for a supernet's paths (their shared running averages mix every path), 0 for a
    /// fixed architecture (a child trained alone holds its own).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recalibrate_images: Option<usize>,
    /// Images per evaluation batch. Default 100.
    pub batch: usize,
    /// Default `exact`.
    pub bn_mode: BnModeConfig,
    /// Random paths evaluated at the end of training (a child network: itself). Default 3.
    pub final_paths: usize,
}

impl Default for EvalConfig {
    fn default() -> EvalConfig {
        EvalConfig { recalibrate_images: None, batch: 100, bn_mode: BnModeConfig::Exact, final_paths: 3 }
    }
}

impl EvalConfig {
    /// The recalibration images of a supernet path (`fixed = false`) or of a fixed
    /// architecture: `recalibrate_images`, else 1000 and 0.
    pub fn recalibrate_images(&self, fixed: bool) -> usize {
        self.recalibrate_images.unwrap_or(if fixed { 0 } else { 1000 })
    }
}

/// `(lo, hi]`.
const fn above_up_to(lo: f64, hi: f64) -> Range {
    Range { lo: Bound::Excluded(lo), hi: Bound::Included(hi) }
}

/// `[lo, hi)`.
const fn from_below(lo: f64, hi: f64) -> Range {
    Range { lo: Bound::Included(lo), hi: Bound::Excluded(hi) }
}

/// The ranges of `[schedule]` (pre-training and fine-tuning).
pub const SCHEDULE_RANGES: &[Rule] = &[
    rule("schedule.iterations", Range::POSITIVE),
    rule("schedule.batch", Range::POSITIVE),
    rule("schedule.lr", Range::POSITIVE),
    rule("schedule.milestones", Range::NON_NEGATIVE),
    rule("schedule.gamma", Range::POSITIVE),
    rule("schedule.warmup_iters", Range::NON_NEGATIVE),
    rule("schedule.warmup_factor", above_up_to(0.0, 1.0)),
    rule("schedule.momentum", from_below(0.0, 1.0)),
    rule("schedule.weight_decay", Range::NON_NEGATIVE),
    rule("schedule.label_smoothing", from_below(0.0, 1.0)),
    rule("schedule.clip_grad_norm", Range::POSITIVE),
];

/// The cross-field rules of `[schedule]`: increasing milestones.
pub fn schedule_rules(s: &ScheduleConfig, r: &mut Rules) {
    r.require(
        s.milestones.windows(2).all(|w| w[0] < w[1]),
        &["schedule.milestones"],
        format!("schedule.milestones {:?} must increase", s.milestones),
    );
}

/// The rules of `[model]`: the space resolves (a name, or a file with a valid structure at
/// `width_mult`), and `arch` (its key and text), when given, fits it.
pub fn model_rules(model: &ModelConfig, arch: Option<(&str, &str)>, r: &mut Rules) {
    let keys = ["model.space", "model.width_mult"];
    match (SpaceSpec { space: model.space.clone(), width_mult: model.width_mult }).resolve() {
        Err(e) => r.require(
            false,
            &keys,
            format!("model.space = {:?} at model.width_mult = {}: {e}", model.space, model.width_mult),
        ),
        Ok(space) => {
            if let Some((key, text)) = arch
                && let Err(e) = space.parse_arch(text)
            {
                r.require(false, &[key], format!("{key} = {text:?}: {e}"));
            }
        }
    }
}

/// The ranges of `[runtime]` (pre-training and fine-tuning).
pub const RUNTIME_RANGES: &[Rule] = &[
    rule("runtime.threads", Range::POSITIVE),
    rule("runtime.checkpoint_every", Range::POSITIVE),
    rule("runtime.keep", Range::POSITIVE),
    rule("runtime.log_every", Range::POSITIVE),
    rule("runtime.prefetch", Range::NON_NEGATIVE),
    rule("runtime.dist_timeout_s", Range::POSITIVE),
];

/// The ranges of `[eval]` (pre-training and fine-tuning).
pub const EVAL_RANGES: &[Rule] = &[
    rule("eval.recalibrate_images", Range::NON_NEGATIVE),
    rule("eval.batch", Range::POSITIVE),
    rule("eval.final_paths", Range::POSITIVE),
];

/// The ranges of the pre-training document's own keys.
const PRETRAIN_RANGES: &[Rule] = &[
    rule("seed", Range::ANY),
    rule("model.width_mult", above_up_to(0.0, 8.0)),
    rule("data.input_size", Range::at_least(8.0)),
    rule("data.eval_resize", Range::at_least(8.0)),
    rule("data.scale_min", above_up_to(0.0, 1.0)),
    rule("data.jitter", Range::FRACTION),
    rule("sampling.bins", Range::POSITIVE),
    rule("sampling.warm_start_steps", Range::NON_NEGATIVE),
];

/// The ranges of a synthetic classification split (`data.source.train`, `.val`).
const SYNTHETIC_CLS_RANGES: &[Rule] = &[
    rule("data.source.*.images", Range::POSITIVE),
    rule("data.source.*.size", Range::at_least(8.0)),
    rule("data.source.*.classes", Range::within(1.0, 10.0)),
    rule("data.source.*.seed", Range::ANY),
    rule("data.source.*.clutter", Range::NON_NEGATIVE),
    rule("data.source.*.max_rotation_deg", Range::within(0.0, 180.0)),
];

/// The keys of `[schedule]` every training config gives.
pub const SCHEDULE_REQUIRED: [Required; 3] =
    [Required::key("schedule.iterations"), Required::key("schedule.batch"), Required::key("schedule.lr")];

impl ConfigDocument for PretrainConfig {
    type Error = TrainError;

    const REQUIRED: &'static [Required] = &[
        Required::key("model.space"),
        Required::key("data.source.kind"),
        Required::when("data.source.kind", "synthetic", "data.source.train.images"),
        Required::when("data.source.kind", "synthetic", "data.source.train.seed"),
        Required::when("data.source.kind", "synthetic", "data.source.val.images"),
        Required::when("data.source.kind", "synthetic", "data.source.val.seed"),
        SCHEDULE_REQUIRED[0],
        SCHEDULE_REQUIRED[1],
        SCHEDULE_REQUIRED[2],
    ];

    /// Makes relative file paths (a space TOML, dataset folders and files) relative to
    /// `base`, the folder of the config file, so a config works from any working directory.
    /// The resolved config written into the run folder then holds the full paths.
    fn resolve_paths(&mut self, base: &Path) {
        if self.model.space.ends_with(".toml") {
            let mut p = PathBuf::from(&self.model.space);
            resolve_path(&mut p, base);
            self.model.space = p.to_string_lossy().into_owned();
        }
        match &mut self.data.source {
            ClsSource::Synthetic { .. } => {}
            ClsSource::ImageFolder { train, val } => {
                resolve_path(train, base);
                resolve_path(val, base);
            }
            ClsSource::Idx { train_images, train_labels, val_images, val_labels } => {
                for p in [train_images, train_labels, val_images, val_labels] {
                    resolve_path(p, base);
                }
            }
        }
    }

    const RANGES: &'static [&'static [Rule]] =
        &[PRETRAIN_RANGES, SYNTHETIC_CLS_RANGES, SCHEDULE_RANGES, RUNTIME_RANGES, EVAL_RANGES];

    fn rules(&self, r: &mut Rules) {
        model_rules(&self.model, self.sampling.arch.as_deref().map(|a| ("sampling.arch", a)), r);
        schedule_rules(&self.schedule, r);
        let d = &self.data;
        r.require(
            d.eval_resize >= d.input_size,
            &["data.eval_resize", "data.input_size"],
            format!("data.eval_resize ({}) must be at least data.input_size ({})", d.eval_resize, d.input_size),
        );
        if let ClsSource::Synthetic { train, val } = &d.source {
            r.require(
                train.classes == val.classes,
                &["data.source.train.classes", "data.source.val.classes"],
                format!(
                    "data.source.train.classes ({}) and data.source.val.classes ({}) must be equal",
                    train.classes, val.classes
                ),
            );
        }
        let sm = &self.sampling;
        if let Err(e) = self.max_backbone_macs() {
            r.require(false, &["sampling.max_backbone_macs"], format!("sampling.max_backbone_macs: {e}"));
        }
        r.require(
            !(sm.kind == SamplingKind::Fair && sm.max_backbone_macs.is_some()),
            &["sampling.kind", "sampling.max_backbone_macs"],
            "sampling.kind = \"fair\" trains every choice each step and cannot honour sampling.max_backbone_macs",
        );
        r.require(
            !(sm.warm_start_steps > 0 && sm.kind == SamplingKind::Fixed),
            &["sampling.warm_start_steps", "sampling.kind"],
            "sampling.warm_start_steps is for supernets; sampling.kind = \"fixed\" trains one path",
        );
        r.require(
            sm.warm_start_steps == 0 || sm.warm_start_steps < self.schedule.iterations,
            &["sampling.warm_start_steps", "schedule.iterations"],
            format!(
                "sampling.warm_start_steps ({}) must be below schedule.iterations ({})",
                sm.warm_start_steps, self.schedule.iterations
            ),
        );
        r.require(
            sm.kind == SamplingKind::Fixed || sm.arch.is_none(),
            &["sampling.arch", "sampling.kind"],
            "sampling.arch is only used with sampling.kind = \"fixed\"",
        );
        r.require(
            sm.kind != SamplingKind::Fixed || sm.arch.is_some(),
            &["sampling.kind", "sampling.arch"],
            "sampling.kind = \"fixed\" needs sampling.arch",
        );
    }

    /// `sampling.max_backbone_macs` and the warm-start path under it.
    fn check_references(&self) -> Result<(), TrainError> {
        let space = self.space()?;
        let limit = self.max_backbone_macs()?;
        if self.sampling.warm_start_steps > 0 {
            let Some(reference) = detnas_nn::Supernet::reference_choice(&space) else {
                return Err(TrainError::Config(
                    "sampling.warm_start_steps needs a ShuffleNetV2 choice (0, 1 or 2) in the space".into(),
                ));
            };
            let warm = detnas_space::Arch::uniform(reference, space.num_blocks());
            let macs = detnas_space::cost(&space, &warm, &detnas_space::CostModel::default()).backbone_macs;
            if let Some(limit) = limit
                && macs > limit
            {
                return Err(TrainError::Config(format!(
                    "the warm-start path {warm} has {macs} backbone MACs, over sampling.max_backbone_macs ({limit})"
                )));
            }
        }
        Ok(())
    }

    /// What determines the trained weights: `model`, `data`, `schedule`, `sampling`, `seed`.
    fn result_parts(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "seed": self.seed, "model": self.model, "data": self.data,
            "schedule": self.schedule, "sampling": self.sampling,
        });
        if self.runtime.precision != detnas_device::Precision::Fp32 {
            v["precision"] = serde_json::json!(self.runtime.precision);
        }
        v
    }
}

impl PretrainConfig {
    /// Reads `path` (if any), applies overrides, resolves paths, checks
    /// ([`ConfigDocument::load`]).
    ///
    /// # Errors
    /// As [`ConfigDocument::load`].
    pub fn load(path: Option<&Path>, overrides: &[String]) -> Result<PretrainConfig, TrainError> {
        <PretrainConfig as ConfigDocument>::load(path, overrides)
    }

    /// The resolved search space.
    ///
    /// # Errors
    /// A space error for an unknown space name or an invalid space file.
    pub fn space(&self) -> Result<SearchSpace, TrainError> {
        Ok(SpaceSpec { space: self.model.space.clone(), width_mult: self.model.width_mult }.resolve()?)
    }

    /// The MACs limit, parsed.
    ///
    /// # Errors
    /// A space error for a count that does not parse (`300M`, `1.3G`).
    pub fn max_backbone_macs(&self) -> Result<Option<u64>, TrainError> {
        self.sampling.max_backbone_macs.as_deref().map(detnas_space::parse_count).transpose().map_err(Into::into)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use detnas_runtime::rules;

    #[test]
    fn milestones_past_the_end_are_warned_about() {
        let mut s: ScheduleConfig = toml::from_str(
            "iterations = 2400\nbatch = 8\nlr = 0.02\nlr_schedule = \"step\"\nmilestones = [1900, 2200]\nwarmup_iters = 100",
        )
        .unwrap();
        assert!(s.warnings().is_empty());
        s.iterations = 300;
        let w = s.warnings();
        assert!(w.len() == 1 && w[0].contains("[1900, 2200]") && w[0].contains("never decays"), "{w:?}");
    }

    const MINIMAL: &str = r#"
seed = 1
[model]
space = "small"
width_mult = 0.25
[data]
input_size = 32
eval_resize = 32
[data.source]
kind = "synthetic"
train = { images = 100, seed = 1 }
val = { images = 20, seed = 2 }
[schedule]
iterations = 10
batch = 4
lr = 0.1
"#;

    fn load(overrides: &[&str]) -> Result<PretrainConfig, TrainError> {
        let mut doc: toml::Table = toml::from_str(MINIMAL).unwrap();
        detnas_runtime::config::apply_overrides(
            &mut doc,
            &overrides.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )?;
        let cfg: PretrainConfig =
            toml::Value::Table(doc).try_into().map_err(|e: toml::de::Error| TrainError::Config(e.to_string()))?;
        cfg.check()?;
        Ok(cfg)
    }

    /// Each all-default section states its defaults once, in its `Default`: an empty table
    /// reads as it, and it reads back as itself.
    #[test]
    fn an_empty_section_is_its_default() {
        fn check<T: Default + PartialEq + std::fmt::Debug + Serialize + serde::de::DeserializeOwned>() {
            assert_eq!(toml::from_str::<T>("").unwrap(), T::default());
            let text = toml::to_string(&T::default()).unwrap();
            assert_eq!(toml::from_str::<T>(&text).unwrap(), T::default(), "{text}");
        }
        check::<SamplingConfig>();
        check::<RuntimeConfig>();
        check::<EvalConfig>();
        assert_eq!(RuntimeConfig::default().checkpoint_every, 500);
        assert_eq!(EvalConfig::default().recalibrate_images(false), 1000);
        assert_eq!(EvalConfig::default().recalibrate_images(true), 0);
    }

    /// A section given only its required keys takes every other value from its `Default`.
    #[test]
    fn a_section_given_its_required_keys_takes_the_rest_from_its_default() {
        let schedule: ScheduleConfig = toml::from_str("iterations = 5\nbatch = 2\nlr = 0.1\n").unwrap();
        assert_eq!(schedule, ScheduleConfig { iterations: 5, batch: 2, lr: 0.1, ..ScheduleConfig::default() });
        assert_eq!((schedule.momentum, schedule.weight_decay, schedule.warmup_factor), (0.9, 4e-5, 1.0 / 3.0));
        let model: ModelConfig = toml::from_str("space = \"small\"\n").unwrap();
        assert_eq!(model, ModelConfig { space: "small".into(), ..ModelConfig::default() });
        assert_eq!(model.width_mult, 1.0);
        let set: SyntheticClsConfig = toml::from_str("images = 7\nseed = 3\n").unwrap();
        assert_eq!(set, SyntheticClsConfig { images: 7, seed: 3, ..SyntheticClsConfig::default() });
        let data: DataConfig =
            toml::from_str("[source]\nkind = \"image-folder\"\ntrain = \"a\"\nval = \"b\"\n").unwrap();
        let source = ClsSource::ImageFolder { train: "a".into(), val: "b".into() };
        assert_eq!(data, DataConfig { source, ..DataConfig::default() });
        assert_eq!((data.input_size, data.eval_resize, data.scale_min, data.jitter), (224, 256, 0.08, 0.4));
        // Every default reads back as itself.
        let text = toml::to_string(&DataConfig::default()).unwrap();
        assert_eq!(toml::from_str::<DataConfig>(&text).unwrap(), DataConfig::default(), "{text}");
    }

    #[test]
    fn a_missing_required_key_is_named_with_every_other() {
        let text = MINIMAL.replace("lr = ", "# lr = ").replace("iterations = ", "# iterations = ");
        let dir = std::env::temp_dir().join(format!("detnas-cfg-required-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cfg.toml"), text).unwrap();
        let e = PretrainConfig::load(Some(&dir.join("cfg.toml")), &[]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("required keys not given: schedule.iterations, schedule.lr"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn defaults_overrides_and_round_trip() {
        let c = load(&[]).unwrap();
        assert_eq!((c.schedule.momentum, c.schedule.weight_decay, c.schedule.label_smoothing), (0.9, 4e-5, 0.1));
        assert_eq!(c.data.convention, InputConvention::OfficialBgr);
        let d = load(&["schedule.lr=0.5", "runtime.device=cpu", "sampling.max_backbone_macs=\"300M\""]).unwrap();
        assert_eq!((d.schedule.lr, d.runtime.device.as_str()), (0.5, "cpu"));
        assert_eq!(d.max_backbone_macs().unwrap(), Some(300_000_000));
        let back: PretrainConfig = toml::from_str(&d.to_toml()).unwrap();
        assert_eq!(back, d);
    }

    #[test]
    fn relative_paths_follow_the_config_file() {
        let mut c = load(&["model.space=\"space.toml\""]).unwrap_err().to_string();
        assert!(c.contains("space.toml"), "{c}");
        let dir = std::env::temp_dir().join(format!("detnas-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("space.toml"), "stem = 8\nwidths = [16, 32]\ndepths = [1, 1]\nlast_conv = 32\n")
            .unwrap();
        let text = MINIMAL.replace("space = \"small\"", "space = \"space.toml\"").replace("width_mult = 0.25", "");
        std::fs::write(dir.join("cfg.toml"), text).unwrap();
        let cfg = PretrainConfig::load(Some(&dir.join("cfg.toml")), &[]).unwrap();
        assert_eq!(cfg.model.space, dir.join("space.toml").to_string_lossy());
        assert_eq!(cfg.space().unwrap().num_blocks(), 2);
        c = cfg.to_toml();
        assert!(c.contains(&*dir.to_string_lossy()));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn hash_ignores_runtime_only() {
        let a = load(&[]).unwrap();
        assert_eq!(a.result_hash(), load(&["runtime.threads=1", "runtime.checkpoint_every=3"]).unwrap().result_hash());
        assert_ne!(a.result_hash(), load(&["schedule.lr=0.2"]).unwrap().result_hash());
        assert_ne!(a.result_hash(), load(&["seed=2"]).unwrap().result_hash());
    }

    fn presets() -> Vec<PathBuf> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
        ["demo/pretrain.toml", "own-data/pretrain.toml", "imagenet/pretrain-small.toml", "imagenet/pretrain-large.toml"]
            .iter()
            .map(|p| root.join(p))
            .collect()
    }

    /// Sets the optional numeric keys, so that the walk sees them.
    const EVERY_KEY: [&str; 3] = ["runtime.threads=2", "schedule.clip_grad_norm=5.0", "schedule.milestones=[1, 2]"];

    fn load_file(p: &Path, set: &[String]) -> Result<PretrainConfig, TrainError> {
        PretrainConfig::load(Some(p), set)
    }

    detnas_runtime::range_tests!(files: presets(), load: load_file, code: TrainError::exit_code, base: EVERY_KEY, min: 100, cases: 128);

    /// A value an f32 field rounds into its range (`-7e-50` → `-0.0`) is held in range.
    #[test]
    fn a_value_rounded_into_range_is_held_in_range() {
        let p = &presets()[0];
        let key = rules::NumericKey { key: "data.jitter".into(), array_len: None, integer: false };
        let base: Vec<String> = EVERY_KEY.iter().map(|s| s.to_string()).collect();
        rules::check_random_set(
            |set: &[String]| load_file(p, set),
            TrainError::exit_code,
            &base,
            &key,
            -7.23699849942659e-50,
        )
        .unwrap();
        let cfg = load_file(p, &["data.jitter=-7.23699849942659e-50".to_string()]).unwrap();
        assert_eq!(cfg.data.jitter, 0.0);
    }

    #[test]
    fn cross_field_rules_name_their_keys() {
        let p = &presets()[0];
        for (set, needle) in [
            ("data.eval_resize=16", "data.eval_resize (16) must be at least data.input_size"),
            ("schedule.milestones=[5, 5]", "schedule.milestones [5, 5] must increase"),
            ("sampling.kind=\"fixed\"", "sampling.kind = \"fixed\" needs sampling.arch"),
            ("sampling.arch=\"0\"", "sampling.arch is only used with"),
            ("sampling.warm_start_steps=100000", "must be below schedule.iterations"),
            ("data.source.val.classes=3", "data.source.val.classes (3) must be equal"),
            ("model.width_mult=0.001", "model.space = "),
            ("sampling.max_backbone_macs=\"lots\"", "sampling.max_backbone_macs"),
        ] {
            let e = PretrainConfig::load(Some(p), &[set.to_string()]).unwrap_err();
            let m = e.to_string();
            assert!(m.contains(needle) && m.contains(&format!("(from --set {set})")), "{set}: {m}");
            assert_eq!(e.exit_code(), 2);
        }
    }

    #[test]
    fn bad_configs_name_the_field() {
        for (o, needle) in [
            ("schedule.lr=-1", "schedule.lr"),
            ("schedule.batch=0", "schedule.batch"),
            ("model.space=\"medium\"", "medium"),
            ("data.input_size=64", "eval_resize"),
            ("schedule.bogus=1", "bogus"),
            ("sampling.max_backbone_macs=\"lots\"", "lots"),
            ("schedule.label_smoothing=1.5", "label_smoothing"),
        ] {
            let e = load(&[o]).unwrap_err().to_string();
            assert!(e.contains(needle), "{o}: {e}");
        }
    }
}
