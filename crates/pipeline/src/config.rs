//! The pipeline configuration (`detnas run --config pipeline.toml`): which stage configs to
//! use (paths relative to this file) with `--set`-style overrides, the retraining protocol
//! and the baselines.

use crate::PipelineError;
use detnas_runtime::ConfigDocument;
use detnas_runtime::config::{Required, resolve_path};
use detnas_runtime::rules::{Range, Rule, rule};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// One stage: a configuration file and overrides applied to it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StageRef {
    /// The stage's configuration file (relative to the pipeline file). Required.
    pub config: PathBuf,
    /// `--set` overrides applied to it. Default none.
    pub set: Vec<String>,
    /// `[pretrain]` only: a finished pre-training run folder (`RUN/pretrain` of another
    /// pipeline run, or a `detnas pretrain --out` folder) used instead of running the stage;
    /// its `model` must equal `config`'s. Default none: the stage runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reuse: Option<PathBuf>,
}

/// How the found architecture (and each baseline) is retrained.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RetrainMode {
    /// The paper's protocol: the child network trained from scratch on classification (the
    /// pre-training config with `sampling.kind = "fixed"`), then on detection.
    #[default]
    Scratch,
    /// Detection training of the child starting from its weights inherited from the
    /// pre-trained supernet (no classification retraining).
    Inherit,
}

/// `[retrain]`: how the found architecture and the baselines are retrained.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetrainConfig {
    /// `scratch` (classification from scratch, then detection; the paper's protocol) or
    /// `inherit` (from the pre-trained supernet's weights). Default `scratch`.
    pub mode: RetrainMode,
    /// Overrides of the pre-training config for the classification retraining (scratch).
    pub cls_set: Vec<String>,
    /// Overrides of the fine-tuning config for the detection retraining.
    pub det_set: Vec<String>,
}

/// Baselines retrained with the same protocol as the found architecture.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BaselineConfig {
    /// A random architecture under the search's constraint.
    pub random: bool,
    /// The ClsNAS architecture: the same search with `fitness = "cls"` on the pre-trained
    /// supernet.
    pub clsnas: bool,
    /// Overrides of the search config for the ClsNAS search.
    pub clsnas_set: Vec<String>,
    /// The zero-cost architecture: the same search (strategy, limits, seed) with the
    /// training-free fitness `entropy` (MAE-DET's entropy score at initialisation; no
    /// supernet), its images the size of `constraint.input`. Default false.
    #[serde(skip_serializing_if = "is_false")]
    pub zero_cost: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Default for BaselineConfig {
    fn default() -> BaselineConfig {
        BaselineConfig { random: true, clsnas: true, clsnas_set: Vec::new(), zero_cost: false }
    }
}

/// A pipeline configuration (`detnas run --config`): the stage configurations and their overrides.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// A name for reports. Default `detnas`.
    pub name: String,
    /// Seed of the run: added to the seed of every stage config (pre-training, fine-tuning,
    /// searches, retraining; 0 keeps theirs; the synthetic data stays the same) and seed of
    /// the random baseline's draw. Default 0.
    pub seed: u64,
    /// `cpu`, `cuda`, `cuda:N` or `auto` for every stage. Default `auto`.
    pub device: String,
    /// libtorch threads of every stage. Default: libtorch's choice.
    pub threads: Option<i32>,
    /// In a multi-process job: how long a wait on the other processes may take (seconds).
    /// Default 1800.
    pub dist_timeout_s: u64,
    /// Supernet pre-training. Required.
    pub pretrain: StageRef,
    /// Supernet fine-tuning as a detector backbone. Required.
    pub finetune: StageRef,
    /// The search. Required.
    pub search: StageRef,
    /// Retraining of the found architecture and the baselines. Default: the paper's
    /// protocol, no overrides.
    pub retrain: RetrainConfig,
    /// The baselines. Default: random and ClsNAS.
    pub baselines: BaselineConfig,
}

/// The defaults; the three stage configs are required (empty here).
impl Default for PipelineConfig {
    fn default() -> PipelineConfig {
        PipelineConfig {
            name: "detnas".into(),
            seed: 0,
            device: "auto".into(),
            threads: None,
            dist_timeout_s: 1800,
            pretrain: StageRef::default(),
            finetune: StageRef::default(),
            search: StageRef::default(),
            retrain: RetrainConfig::default(),
            baselines: BaselineConfig::default(),
        }
    }
}

/// The embedded demo: `configs/demo/pipeline.toml` and the stage configs it names, compiled
/// into the binary so `detnas run` works from any folder.
pub const EMBEDDED: [(&str, &str); 5] = [
    ("pipeline.toml", include_str!("../../../configs/demo/pipeline.toml")),
    ("space.toml", include_str!("../../../configs/demo/space.toml")),
    ("pretrain.toml", include_str!("../../../configs/demo/pretrain.toml")),
    ("finetune-retinanet.toml", include_str!("../../../configs/demo/finetune-retinanet.toml")),
    ("search.toml", include_str!("../../../configs/demo/search.toml")),
];

impl ConfigDocument for PipelineConfig {
    type Error = PipelineError;

    const REQUIRED: &'static [Required] =
        &[Required::key("pretrain.config"), Required::key("finetune.config"), Required::key("search.config")];

    const PATH_KEYS: &'static [&'static str] = &["pretrain.reuse"];

    fn resolve_paths(&mut self, base: &Path) {
        for s in [&mut self.pretrain, &mut self.finetune, &mut self.search] {
            resolve_path(&mut s.config, base);
            if let Some(r) = &mut s.reuse {
                resolve_path(r, base);
            }
        }
    }

    const RANGES: &'static [&'static [Rule]] =
        &[&[rule("seed", Range::ANY), rule("threads", Range::POSITIVE), rule("dist_timeout_s", Range::POSITIVE)]];

    /// Every stage config exists; a reused pre-training is a finished run.
    fn check_references(&self) -> Result<(), PipelineError> {
        for (what, s) in [("pretrain", &self.pretrain), ("finetune", &self.finetune), ("search", &self.search)] {
            if !s.config.is_file() {
                return Err(PipelineError::Config(format!("{what}.config: {} not found", s.config.display())));
            }
            if what != "pretrain" && s.reuse.is_some() {
                return Err(PipelineError::Config(format!(
                    "{what}.reuse: only a pre-training can be reused (pretrain.reuse)"
                )));
            }
        }
        if let Some(r) = &self.pretrain.reuse
            && !r.join("summary.json").is_file()
        {
            return Err(PipelineError::Config(format!(
                "pretrain.reuse: {} is not a finished pre-training run (no summary.json)",
                r.display()
            )));
        }
        Ok(())
    }

    /// The whole pipeline configuration determines the result.
    fn result_parts(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("a pipeline configuration serialises")
    }
}

impl PipelineConfig {
    /// Reads `path`, applies overrides, resolves the stage config paths against its folder,
    /// checks that they exist ([`ConfigDocument::load`] with a file).
    ///
    /// # Errors
    /// As [`ConfigDocument::load`].
    pub fn load(path: &Path, overrides: &[String]) -> Result<PipelineConfig, PipelineError> {
        <PipelineConfig as ConfigDocument>::load(Some(path), overrides)
    }

    /// The configuration a run folder was made with (`RUN/pipeline.toml`, as `detnas run`
    /// recorded it). Its stage config paths are as resolved then: a relative one is taken from
    /// the current folder, else from `RUN/configs/` (where the embedded demo writes them).
    ///
    /// # Errors
    /// [`PipelineError::Config`] when `RUN/pipeline.toml` is missing or unreadable or a stage
    /// config is found in neither place.
    pub fn of_run(run: &Path) -> Result<PipelineConfig, PipelineError> {
        let path = run.join("pipeline.toml");
        let text = std::fs::read_to_string(&path).map_err(|e| {
            PipelineError::Config(format!("{} is not a pipeline run folder: {}: {e}", run.display(), path.display()))
        })?;
        let mut cfg: PipelineConfig =
            toml::from_str(&text).map_err(|e| PipelineError::Config(format!("{}: {e}", path.display())))?;
        for (what, s) in [("pretrain", &mut cfg.pretrain), ("finetune", &mut cfg.finetune), ("search", &mut cfg.search)]
        {
            if s.config.is_file() {
                continue;
            }
            let local = s.config.file_name().map(|f| run.join("configs").join(f));
            match local {
                Some(l) if s.config.is_relative() && l.is_file() => s.config = l,
                _ => {
                    return Err(PipelineError::Config(format!(
                        "{}: {what}.config {} not found",
                        path.display(),
                        s.config.display()
                    )));
                }
            }
        }
        Ok(cfg)
    }

    /// Writes the embedded demo configs into `dir` (once; identical files are kept; each file
    /// replaced atomically, as every rank of a job writes them) and returns the path of its
    /// pipeline.toml.
    ///
    /// # Errors
    /// [`PipelineError::Io`] when `dir` cannot be created or a file cannot be written.
    pub fn write_embedded(dir: &Path) -> Result<PathBuf, PipelineError> {
        std::fs::create_dir_all(dir).map_err(|e| PipelineError::io(dir, e))?;
        for (name, text) in EMBEDDED {
            let p = dir.join(name);
            if std::fs::read_to_string(&p).ok().as_deref() != Some(text) {
                detnas_runtime::fsx::write_atomic(&p, text.as_bytes())?;
            }
        }
        Ok(dir.join("pipeline.toml"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The section's defaults are stated once, in its `Default`.
    #[test]
    fn an_empty_section_is_its_default() {
        assert_eq!(toml::from_str::<BaselineConfig>("").unwrap(), BaselineConfig::default());
        let text = toml::to_string(&BaselineConfig::default()).unwrap();
        assert_eq!(toml::from_str::<BaselineConfig>(&text).unwrap(), BaselineConfig::default(), "{text}");
    }

    /// Given only the stage configs, every other value comes from `Default`; each one missing
    /// is named.
    #[test]
    fn required_keys_and_the_rest_from_default() {
        let text = "[pretrain]\nconfig = \"p.toml\"\n[finetune]\nconfig = \"f.toml\"\n[search]\nconfig = \"s.toml\"\n";
        let cfg: PipelineConfig = toml::from_str(text).unwrap();
        let stage = |p: &str| StageRef { config: p.into(), ..StageRef::default() };
        let expected = PipelineConfig {
            pretrain: stage("p.toml"),
            finetune: stage("f.toml"),
            search: stage("s.toml"),
            ..PipelineConfig::default()
        };
        assert_eq!(cfg, expected);
        assert_eq!((cfg.name.as_str(), cfg.device.as_str(), cfg.dist_timeout_s), ("detnas", "auto", 1800));
        assert_eq!(cfg.retrain.mode, RetrainMode::Scratch);
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../configs");
        let files = [root.join("demo/pipeline.toml"), root.join("coco/pipeline-fpn-300m.toml")];
        let n = detnas_runtime::rules::check_required_files(&files, PipelineConfig::load, PipelineError::exit_code)
            .unwrap();
        assert_eq!(n, 6);
    }

    #[test]
    fn every_numeric_key_has_a_range_and_each_bad_value_names_its_key_and_set() {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../configs");
        let files: Vec<PathBuf> = ["demo/pipeline.toml", "coco/pipeline-fpn-300m.toml", "voc/pipeline-fpn-300m.toml"]
            .map(|p| root.join(p))
            .into();
        let n = detnas_runtime::rules::check_every_file(
            &files,
            PipelineConfig::load,
            PipelineError::exit_code,
            &["threads=2"],
        )
        .unwrap();
        assert!(n >= 6, "{n}");
    }

    #[test]
    fn of_run_finds_stage_configs_recorded_relative_to_another_folder() {
        let run = std::env::temp_dir().join(format!("detnas-of-run-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&run);
        std::fs::create_dir_all(run.join("configs")).unwrap();
        for f in ["pretrain.toml", "finetune.toml", "search.toml"] {
            std::fs::write(run.join("configs").join(f), "").unwrap();
        }
        // As `detnas run --out elsewhere/run` records them: relative to the folder it ran in.
        let recorded = "[pretrain]\nconfig = \"elsewhere/run/configs/pretrain.toml\"\n\
                        [finetune]\nconfig = \"elsewhere/run/configs/finetune.toml\"\n\
                        [search]\nconfig = \"elsewhere/run/configs/search.toml\"\n[retrain]\n";
        std::fs::write(run.join("pipeline.toml"), recorded).unwrap();
        let cfg = PipelineConfig::of_run(&run).unwrap();
        assert_eq!(cfg.finetune.config, run.join("configs/finetune.toml"));
        std::fs::remove_file(run.join("configs/search.toml")).unwrap();
        let e = PipelineConfig::of_run(&run).unwrap_err().to_string();
        assert!(e.contains("search.config") && e.contains("not found"), "{e}");
        std::fs::remove_dir_all(&run).unwrap();
        assert!(PipelineConfig::of_run(&run).unwrap_err().to_string().contains("not a pipeline run folder"));
    }
}
