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
use detnas_space::{SearchSpace, SpaceSpec};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PretrainConfig {
    /// Seed of every random stream (paths, data order, augmentation, dropout).
    pub seed: u64,
    pub model: ModelConfig,
    pub data: DataConfig,
    pub schedule: ScheduleConfig,
    #[serde(default)]
    pub sampling: SamplingConfig,
    #[serde(default)]
    pub runtime: RuntimeConfig,
    #[serde(default)]
    pub eval: EvalConfig,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// `small`, `large`, `large-3.8g` or a space TOML file.
    pub space: String,
    /// Width multiplier (1.0 = the published widths).
    #[serde(default = "one")]
    pub width_mult: f64,
}

fn one() -> f64 {
    1.0
}

/// Where the images come from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ClsSource {
    /// The built-in synthetic shapes (no download).
    Synthetic { train: SyntheticClsConfig, val: SyntheticClsConfig },
    /// ImageNet-style folders `root/<class>/<image>`.
    ImageFolder { train: PathBuf, val: PathBuf },
    /// MNIST / Fashion-MNIST IDX files (raw or .gz).
    Idx { train_images: PathBuf, train_labels: PathBuf, val_images: PathBuf, val_labels: PathBuf },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    pub source: ClsSource,
    /// Training crop side (RandomResizedCrop output), pixels. Default 224.
    #[serde(default = "d224")]
    pub input_size: u32,
    /// Evaluation: short side after resizing (centre crop `input_size`). Default 256.
    #[serde(default = "d256")]
    pub eval_resize: u32,
    /// Pixel convention (default: the official BGR 0–255).
    #[serde(default)]
    pub convention: InputConvention,
    /// Smallest crop area fraction of RandomResizedCrop (default 0.08).
    #[serde(default = "d008")]
    pub scale_min: f64,
    #[serde(default = "yes")]
    pub flip: bool,
    /// Colour-jitter strength (default 0.4, as the official code).
    #[serde(default = "d04")]
    pub jitter: f32,
}

fn d224() -> u32 {
    224
}
fn d256() -> u32 {
    256
}
fn d008() -> f64 {
    0.08
}
fn yes() -> bool {
    true
}
fn d04() -> f32 {
    0.4
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LrKind {
    Linear,
    Cosine,
    Step,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    pub iterations: u64,
    pub batch: usize,
    /// Base learning rate (official: 0.5 at batch 1024).
    pub lr: f64,
    #[serde(default = "linear")]
    pub lr_schedule: LrKind,
    /// Step schedule: iterations at which the rate is multiplied by `gamma`.
    #[serde(default)]
    pub milestones: Vec<u64>,
    #[serde(default = "d01")]
    pub gamma: f64,
    #[serde(default)]
    pub warmup_iters: u64,
    #[serde(default = "third")]
    pub warmup_factor: f64,
    #[serde(default = "d09")]
    pub momentum: f64,
    /// On conv and FC weights only (official: 4e-5).
    #[serde(default = "d4e5")]
    pub weight_decay: f64,
    #[serde(default = "d01")]
    pub label_smoothing: f64,
    /// Clip the path's gradient to this global L2 norm (detection fine-tuning option).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip_grad_norm: Option<f64>,
}

fn linear() -> LrKind {
    LrKind::Linear
}
fn d01() -> f64 {
    0.1
}
fn third() -> f64 {
    1.0 / 3.0
}
fn d09() -> f64 {
    0.9
}
fn d4e5() -> f64 {
    4e-5
}

impl ScheduleConfig {
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

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SamplingKind {
    /// Every block's choice uniform (DetNAS).
    #[default]
    Uniform,
    /// SPOS: a MACs bin uniformly, then a uniform path inside it.
    FlopsBinned,
    /// Always `sampling.arch`: trains one child network from scratch (retraining a found
    /// architecture on classification; unsampled choices never move).
    Fixed,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplingConfig {
    #[serde(default)]
    pub kind: SamplingKind,
    /// Number of MACs bins (flops-binned).
    #[serde(default = "d10")]
    pub bins: usize,
    /// Only paths with backbone MACs at most this (`300M`; counted at 224×224).
    #[serde(default)]
    pub max_backbone_macs: Option<String>,
    /// The architecture of `kind = "fixed"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
}

fn d10() -> usize {
    10
}

impl Default for SamplingConfig {
    fn default() -> SamplingConfig {
        SamplingConfig { kind: SamplingKind::Uniform, bins: 10, max_backbone_macs: None, arch: None }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// `cpu`, `cuda`, `cuda:N` or `auto`.
    #[serde(default = "auto")]
    pub device: String,
    /// libtorch intra-op threads (default: libtorch's choice).
    #[serde(default)]
    pub threads: Option<i32>,
    /// Steps between checkpoints (the most work a crash can lose).
    #[serde(default = "d500")]
    pub checkpoint_every: u64,
    /// Checkpoints kept.
    #[serde(default = "d3")]
    pub keep: usize,
    /// Steps between metric lines.
    #[serde(default = "d20")]
    pub log_every: u64,
    /// Batches prepared ahead by the loader.
    #[serde(default = "d4")]
    pub prefetch: usize,
}

fn auto() -> String {
    "auto".into()
}
fn d500() -> u64 {
    500
}
fn d3() -> usize {
    3
}
fn d20() -> u64 {
    20
}
fn d4() -> usize {
    4
}

impl Default for RuntimeConfig {
    fn default() -> RuntimeConfig {
        RuntimeConfig { device: auto(), threads: None, checkpoint_every: 500, keep: 3, log_every: 20, prefetch: 4 }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BnModeConfig {
    #[default]
    Exact,
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

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    /// Training images used to recompute BN statistics before evaluating a path.
    #[serde(default = "d1000")]
    pub recalibrate_images: usize,
    #[serde(default = "d100")]
    pub batch: usize,
    #[serde(default)]
    pub bn_mode: BnModeConfig,
    /// Random paths evaluated at the end of training.
    #[serde(default = "d3")]
    pub final_paths: usize,
}

fn d1000() -> usize {
    1000
}
fn d100() -> usize {
    100
}

impl Default for EvalConfig {
    fn default() -> EvalConfig {
        EvalConfig { recalibrate_images: 1000, batch: 100, bn_mode: BnModeConfig::Exact, final_paths: 3 }
    }
}

/// Applies `key.path=value` overrides to a TOML document. Values are parsed as TOML
/// (`0.1`, `true`, `[1, 2]`, `"x"`), bare words as strings.
pub fn apply_overrides(doc: &mut toml::Table, overrides: &[String]) -> Result<(), TrainError> {
    for o in overrides {
        let (key, raw) =
            o.split_once('=').ok_or_else(|| TrainError::Config(format!("--set '{o}': expected key=value")))?;
        let value: toml::Value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(raw.to_string()));
        let parts: Vec<&str> = key.trim().split('.').collect();
        let mut table = &mut *doc;
        for p in &parts[..parts.len() - 1] {
            table = table
                .entry(p.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                .as_table_mut()
                .ok_or_else(|| TrainError::Config(format!("--set '{o}': '{p}' is not a section")))?;
        }
        table.insert(parts[parts.len() - 1].to_string(), value);
    }
    Ok(())
}

/// Makes the values of path-valued `--set` overrides (`keys`) absolute against the current
/// folder: paths written in a configuration file are relative to the file, paths given on
/// the command line to where the command runs.
pub fn absolutize_path_overrides(overrides: &[String], keys: &[&str]) -> Vec<String> {
    let cwd = std::env::current_dir().unwrap_or_default();
    overrides
        .iter()
        .map(|o| {
            let Some((k, v)) = o.split_once('=') else { return o.clone() };
            if !keys.contains(&k.trim()) {
                return o.clone();
            }
            let raw = v.trim().trim_matches('"');
            let p = Path::new(raw);
            if p.is_relative() && !raw.is_empty() {
                let abs = cwd.join(p).to_string_lossy().replace('\\', "\\\\").replace('"', "\\\"");
                format!("{}=\"{abs}\"", k.trim())
            } else {
                o.clone()
            }
        })
        .collect()
}

/// Reads a TOML configuration document from `path` (none: empty), applies `--set`
/// overrides, and deserialises it; errors name the file and the field.
pub fn read_document<T: serde::de::DeserializeOwned>(
    path: Option<&Path>,
    overrides: &[String],
) -> Result<T, TrainError> {
    let mut doc: toml::Table = match path {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| TrainError::Config(format!("cannot read {}: {e}", p.display())))?;
            toml::from_str(&text).map_err(|e| TrainError::Config(format!("{}: {}", p.display(), e.message())))?
        }
        None => toml::Table::new(),
    };
    apply_overrides(&mut doc, overrides)?;
    toml::Value::Table(doc).try_into().map_err(|e: toml::de::Error| match path {
        Some(p) => TrainError::Config(format!("{}: {}", p.display(), e.message())),
        None => TrainError::Config(e.message().to_string()),
    })
}

impl PretrainConfig {
    /// Reads `path` (if any), applies overrides, checks everything.
    pub fn load(path: Option<&Path>, overrides: &[String]) -> Result<PretrainConfig, TrainError> {
        let mut cfg: PretrainConfig = read_document(path, overrides)?;
        if let Some(base) = path.and_then(Path::parent) {
            cfg.resolve_paths(base);
        }
        cfg.check()?;
        Ok(cfg)
    }

    /// Makes relative file paths (a space TOML, dataset folders and files) relative to
    /// `base`, the folder of the config file, so a config works from any working directory.
    /// The resolved config written into the run folder then holds the full paths.
    pub fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() && !p.as_os_str().is_empty() {
                *p = base.join(&*p);
            }
        };
        if self.model.space.ends_with(".toml") {
            let mut p = PathBuf::from(&self.model.space);
            fix(&mut p);
            self.model.space = p.to_string_lossy().into_owned();
        }
        match &mut self.data.source {
            ClsSource::Synthetic { .. } => {}
            ClsSource::ImageFolder { train, val } => {
                fix(train);
                fix(val);
            }
            ClsSource::Idx { train_images, train_labels, val_images, val_labels } => {
                for p in [train_images, train_labels, val_images, val_labels] {
                    fix(p);
                }
            }
        }
    }

    /// Cross-field rules, checked before any work.
    pub fn check(&self) -> Result<(), TrainError> {
        let bad = |m: String| Err(TrainError::Config(m));
        self.space()?;
        let s = &self.schedule;
        if s.iterations == 0 || s.batch == 0 {
            return bad("schedule.iterations and schedule.batch must be positive".into());
        }
        if !(s.lr.is_finite() && s.lr > 0.0) {
            return bad(format!("schedule.lr must be positive, got {}", s.lr));
        }
        if !(0.0..1.0).contains(&s.label_smoothing) {
            return bad(format!("schedule.label_smoothing must be in [0, 1), got {}", s.label_smoothing));
        }
        if s.lr_schedule == LrKind::Step && s.milestones.windows(2).any(|w| w[0] >= w[1]) {
            return bad("schedule.milestones must increase".into());
        }
        if self.data.input_size < 8 || self.data.eval_resize < self.data.input_size {
            return bad("data.input_size must be at least 8 and data.eval_resize at least data.input_size".into());
        }
        if !(self.data.scale_min > 0.0 && self.data.scale_min <= 1.0) {
            return bad(format!("data.scale_min must be in (0, 1], got {}", self.data.scale_min));
        }
        if self.runtime.checkpoint_every == 0 || self.runtime.log_every == 0 {
            return bad("runtime.checkpoint_every and runtime.log_every must be positive".into());
        }
        if self.sampling.kind == SamplingKind::FlopsBinned && self.sampling.bins == 0 {
            return bad("sampling.bins must be positive".into());
        }
        match (&self.sampling.arch, self.sampling.kind) {
            (Some(a), SamplingKind::Fixed) => {
                self.space()?.parse_arch(a).map_err(|e| TrainError::Config(format!("sampling.arch: {e}")))?;
            }
            (None, SamplingKind::Fixed) => return bad("sampling.kind = \"fixed\" needs sampling.arch".into()),
            (Some(_), _) => return bad("sampling.arch is only used with sampling.kind = \"fixed\"".into()),
            (None, _) => {}
        }
        self.max_backbone_macs()?;
        Ok(())
    }

    /// The resolved search space.
    pub fn space(&self) -> Result<SearchSpace, TrainError> {
        Ok(SpaceSpec { space: self.model.space.clone(), width_mult: self.model.width_mult }.resolve()?)
    }

    /// The MACs limit, parsed.
    pub fn max_backbone_macs(&self) -> Result<Option<u64>, TrainError> {
        self.sampling.max_backbone_macs.as_deref().map(detnas_space::parse_count).transpose().map_err(Into::into)
    }

    /// TOML text of the resolved configuration.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a config always serialises")
    }

    /// SHA-256 over the fields that determine the trained weights.
    pub fn result_hash(&self) -> String {
        let v = serde_json::json!({
            "seed": self.seed, "model": self.model, "data": self.data,
            "schedule": self.schedule, "sampling": self.sampling,
        });
        format!("{:x}", Sha256::digest(v.to_string().as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_overrides_are_made_absolute_against_the_working_folder() {
        let cwd = std::env::current_dir().unwrap();
        let o = absolutize_path_overrides(
            &["model.pretrained=runs/x".into(), "model.pretrained=\"/abs/y\"".into(), "seed=3".into()],
            &["model.pretrained"],
        );
        assert_eq!(o[0], format!("model.pretrained=\"{}\"", cwd.join("runs/x").display()));
        assert_eq!(o[1], "model.pretrained=\"/abs/y\"");
        assert_eq!(o[2], "seed=3");
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
        apply_overrides(&mut doc, &overrides.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
        let cfg: PretrainConfig =
            toml::Value::Table(doc).try_into().map_err(|e: toml::de::Error| TrainError::Config(e.to_string()))?;
        cfg.check()?;
        Ok(cfg)
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
