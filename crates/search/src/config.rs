//! The search configuration (`detnas search --config cfg.toml`).

use crate::SearchError;
use detnas_runtime::ConfigDocument;
use detnas_runtime::config::{Required, resolve_path};
use detnas_runtime::rules::{Range, Rule, Rules, rule};
use detnas_space::{Constraint, CostModel, InputSize, parse_count};
use detnas_train::config::BnModeConfig;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// A search configuration (`detnas search --config`): the supernet, the strategy, the limits, how candidates are scored, and where.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchConfig {
    /// Seed of the search's random streams (initial population, operators).
    #[serde(default)]
    pub seed: u64,
    /// The supernet checkpoint to search and how to score it.
    pub supernet: SupernetRef,
    /// `[strategy]`.
    #[serde(default)]
    pub strategy: StrategyConfig,
    /// `[constraint]`: the limits a candidate must meet.
    #[serde(default)]
    pub constraint: ConstraintConfig,
    /// `[eval]`: how a candidate is scored.
    #[serde(default)]
    pub eval: SearchEvalConfig,
    /// `[runtime]`: where and how fast.
    #[serde(default)]
    pub runtime: SearchRuntime,
    /// `[zero_cost]`: the training-free fitness's settings (`supernet.fitness = "entropy"`).
    #[serde(default)]
    pub zero_cost: ZeroCostConfig,
}

/// The trained supernet whose paths are scored (or, for a training-free fitness, the space).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SupernetRef {
    /// A run folder (its latest checkpoint) or a `step-N` checkpoint folder: a fine-tuning
    /// run for `fitness = "det"`, a pre-training run for `fitness = "cls"`. Required for
    /// both; unused by `fitness = "entropy"`.
    #[serde(skip_serializing_if = "is_empty_path")]
    pub checkpoint: PathBuf,
    /// `det` (box AP of the fine-tuned supernet, DetNAS), `cls` (top-1 of the pre-trained
    /// supernet, ClsNAS) or `entropy` (MAE-DET's training-free entropy score of the backbone,
    /// no supernet: a zero-cost search). Default `det`.
    pub fitness: FitnessKind,
    /// The space of a training-free search (`small`, `large`, `large-3.8g` or a space
    /// `.toml`); required by `fitness = "entropy"`, which has no checkpoint to read it from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub space: Option<String>,
    /// Multiplier on the widths of `space`. Default 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub width_mult: Option<f64>,
}

fn is_empty_path(p: &Path) -> bool {
    p.as_os_str().is_empty()
}

/// The training-free fitnesses' settings (`detnas_nn::zero_cost`). `entropy`: each candidate's
/// score is the mean over `repeats` of draws of N(0, 1) weights and `batch` Gaussian images of
/// `input` pixels, the draws seeded by the search's seed. `naswot`: N(0, 1) weights from the
/// search's seed on the first `images` training images.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ZeroCostConfig {
    /// Gaussian images per repeat. Default 4 (the official code uses 32; the mean of 4
    /// repeats of 4 varies by about 0.1 % between seeds).
    pub batch: i64,
    /// Repeats. Default 4 (the official default).
    pub repeats: usize,
    /// `[height, width]` of the images; default `constraint.input`.
    pub input: Option<[u64; 2]>,
    /// NASWOT's training images. Default 16.
    pub images: usize,
}

impl Default for ZeroCostConfig {
    fn default() -> ZeroCostConfig {
        ZeroCostConfig { batch: 4, repeats: 4, input: None, images: 16 }
    }
}

/// What a candidate is scored by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FitnessKind {
    /// Box AP of the detector on the search-validation split (DetNAS).
    #[default]
    Det,
    /// Top-1 of the classification supernet on its validation set (the ClsNAS baseline).
    Cls,
    /// MAE-DET's entropy score of the backbone at initialisation: training-free, no
    /// supernet (the zero-cost baseline).
    Entropy,
    /// NASWOT's score of the backbone at initialisation on the first training images of
    /// `supernet.checkpoint`'s fine-tuning run (its images only; training-free).
    Naswot,
}

impl FitnessKind {
    /// Whether candidates are scored on a trained supernet checkpoint.
    pub fn needs_checkpoint(self) -> bool {
        self != FitnessKind::Entropy
    }

    /// Whether the fitness is training-free (scores an architecture at initialisation).
    pub fn training_free(self) -> bool {
        matches!(self, FitnessKind::Entropy | FitnessKind::Naswot)
    }
}

/// Evolution (the reference algorithm) or random search (the baseline: only random fill).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StrategyKind {
    /// Evolution (DetNAS §3.3: the top-k archive, mutations and crossovers).
    #[default]
    Evolution,
    /// Random search under the same limits (the baseline).
    Random,
}

impl std::fmt::Display for FitnessKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            FitnessKind::Det => "detection AP on the search-validation split",
            FitnessKind::Cls => "classification top-1 (ClsNAS)",
            FitnessKind::Entropy => "MAE-DET entropy score at initialisation (zero-cost)",
            FitnessKind::Naswot => "NASWOT score at initialisation on the training images (zero-cost)",
        })
    }
}

impl std::fmt::Display for StrategyKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            StrategyKind::Evolution => "evolution",
            StrategyKind::Random => "random search",
        })
    }
}

/// Evolution parameters; defaults are the reference's (SinglePathOneShot/DetNAS
/// `search.py`): population 50, top-10 parents, 20 mutations (p = 0.1 per block choice) + 20
/// crossovers (p = 0.5) + random fill, 20 generations.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StrategyConfig {
    /// Evolution or random search. Default `evolution`.
    pub kind: StrategyKind,
    /// Candidates per generation (the first generation is all random).
    pub population: usize,
    /// Size of the elitist archive the parents are drawn from (and of the reported top-k).
    pub top_k: usize,
    /// Generations.
    pub generations: usize,
    /// Mutants per generation.
    pub mutations: usize,
    /// Probability that a block's choice is resampled in a mutation.
    pub mutation_prob: f64,
    /// Crossover children per generation.
    pub crossovers: usize,
    /// Draws allowed per wanted mutant or crossover child (rejections by constraint or
    /// because already evaluated): the reference's 10.
    pub max_attempts: usize,
    /// Random architectures drawn at most per generation to fill the population (the
    /// reference draws until full, which never ends in a nearly exhausted space).
    pub max_random_draws: usize,
}

impl Default for StrategyConfig {
    fn default() -> StrategyConfig {
        StrategyConfig {
            kind: StrategyKind::Evolution,
            population: 50,
            top_k: 10,
            generations: 20,
            mutations: 20,
            mutation_prob: 0.1,
            crossovers: 20,
            max_attempts: 10,
            max_random_draws: 100_000,
        }
    }
}

/// A count written as a number or as `"300M"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Count(pub u64);

impl Serialize for Count {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Count, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(Count(n)),
            Raw::S(s) => parse_count(&s).map(Count).map_err(serde::de::Error::custom),
        }
    }
}

/// Limits every candidate must respect; counted analytically at `input` (classification
/// convention: the paper's 300M / 1.3G are backbone MACs at 224×224).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConstraintConfig {
    /// Largest backbone MACs (`300M`), counted at `input`.
    pub max_backbone_macs: Option<Count>,
    /// Largest backbone parameter count (`3.5M`).
    pub max_backbone_params: Option<Count>,
    /// Summed per-op latency limit (ms) from a table measured on the search device.
    pub max_latency_ms: Option<f64>,
    /// Where the latency table is cached (default: `latency-table.json` in the run folder);
    /// measured when missing.
    pub latency_table: Option<PathBuf>,
    /// `[height, width]` the counts and latencies are taken at.
    pub input: [u64; 2],
}

impl Default for ConstraintConfig {
    fn default() -> ConstraintConfig {
        ConstraintConfig {
            max_backbone_macs: None,
            max_backbone_params: None,
            max_latency_ms: None,
            latency_table: None,
            input: [224, 224],
        }
    }
}

impl ConstraintConfig {
    /// The limits as the search checks them.
    pub fn constraint(&self) -> Constraint {
        Constraint {
            max_backbone_macs: self.max_backbone_macs.map(|c| c.0),
            max_backbone_params: self.max_backbone_params.map(|c| c.0),
        }
    }

    /// The input size and classes the counts are taken at.
    pub fn cost_model(&self) -> CostModel {
        CostModel { input: InputSize { height: self.input[0], width: self.input[1] }, classes: 1000 }
    }

    /// One line for reports.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(m) = self.max_backbone_macs {
            parts.push(format!("backbone MACs <= {}", detnas_space::format_count(m.0)));
        }
        if let Some(p) = self.max_backbone_params {
            parts.push(format!("backbone params <= {}", detnas_space::format_count(p.0)));
        }
        if let Some(l) = self.max_latency_ms {
            parts.push(format!("latency <= {l} ms"));
        }
        if parts.is_empty() {
            "none".into()
        } else {
            format!("{} (at {}x{})", parts.join(", "), self.input[0], self.input[1])
        }
    }
}

/// Metric of detection fitness.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DetMetric {
    /// COCO AP@[.5:.95] (DetNAS).
    #[default]
    Ap,
    /// COCO AP at IoU 0.5.
    Ap50,
}

/// How each candidate is scored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SearchEvalConfig {
    /// Training images the BN statistics of each candidate are recomputed on.
    pub recalibrate_images: usize,
    /// Batch of recalibration and evaluation forwards.
    pub batch: usize,
    /// `exact` (average over all recalibration images) or `ema` (the official procedure).
    pub bn_mode: BnModeConfig,
    /// Use only the first N images of the validation split (default: all).
    pub val_images: Option<usize>,
    /// Which AP is the fitness. Default `ap`.
    pub metric: DetMetric,
}

impl Default for SearchEvalConfig {
    fn default() -> SearchEvalConfig {
        SearchEvalConfig {
            recalibrate_images: 200,
            batch: 32,
            bn_mode: BnModeConfig::Exact,
            val_images: None,
            metric: DetMetric::Ap,
        }
    }
}

/// Where and how fast; does not change results.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SearchRuntime {
    /// `cpu`, `cuda`, `cuda:N` or `auto`. Default `auto`.
    pub device: String,
    /// libtorch threads in total (split among CPU workers). Default: libtorch's choice.
    pub threads: Option<i32>,
    /// Parallel evaluation workers (default: one per GPU; on the CPU one single-threaded
    /// worker per libtorch thread, at most 4; in a multi-process job, one per rank).
    pub workers: Option<usize>,
    /// Batches prepared ahead by the loaders. Default 2.
    pub prefetch: usize,
    /// Finished search folders of the same supernet with the same `[eval]` settings whose
    /// scores are reused instead of evaluating those candidates again. Default none.
    pub reuse: Vec<PathBuf>,
    /// In a multi-process job: how long a wait on the other processes may take, and how long
    /// a candidate may go without a result before it is handed out again (seconds). Default
    /// 1800.
    pub dist_timeout_s: u64,
    /// Activation layout (`auto`, `nchw`, `channels-last`), as the training configs'.
    /// Default `auto`.
    #[serde(skip_serializing_if = "is_default")]
    pub memory_format: detnas_device::MemoryFormat,
    /// `fp32`, or `bf16` autocast of the candidates' forwards on CUDA; part of the search's
    /// identity when not `fp32` (the scores change). Default `fp32`.
    #[serde(skip_serializing_if = "is_default")]
    pub precision: detnas_device::Precision,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

impl SearchRuntime {
    /// Makes `memory_format` and `precision` the process's settings
    /// ([`detnas_device::settings::configure`]).
    pub fn apply_compute_settings(&self) {
        detnas_device::settings::configure(self.memory_format, self.precision);
    }
}

impl Default for SearchRuntime {
    fn default() -> SearchRuntime {
        SearchRuntime {
            device: "auto".into(),
            threads: None,
            workers: None,
            prefetch: 2,
            reuse: Vec::new(),
            dist_timeout_s: 1800,
            memory_format: detnas_device::MemoryFormat::Auto,
            precision: detnas_device::Precision::Fp32,
        }
    }
}

/// The range of every numeric key of the search document.
const SEARCH_RANGES: &[Rule] = &[
    rule("seed", Range::ANY),
    rule("strategy.population", Range::within(1.0, 1e6)),
    rule("strategy.top_k", Range::POSITIVE),
    rule("strategy.generations", Range::POSITIVE),
    rule("strategy.mutations", Range::NON_NEGATIVE),
    rule("strategy.mutation_prob", Range::FRACTION),
    rule("strategy.crossovers", Range::NON_NEGATIVE),
    rule("strategy.max_attempts", Range::POSITIVE),
    rule("strategy.max_random_draws", Range::POSITIVE),
    rule("constraint.max_backbone_macs", Range::POSITIVE),
    rule("constraint.max_backbone_params", Range::POSITIVE),
    rule("constraint.max_latency_ms", Range::POSITIVE),
    rule("constraint.input", Range::within(16.0, 8192.0)),
    rule("eval.recalibrate_images", Range::NON_NEGATIVE),
    rule("eval.batch", Range::POSITIVE),
    rule("zero_cost.batch", Range::within(2.0, 1024.0)),
    rule("zero_cost.repeats", Range::within(1.0, 1000.0)),
    rule("zero_cost.images", Range::within(2.0, 4096.0)),
    rule("zero_cost.input", Range::within(16.0, 8192.0)),
    rule("supernet.width_mult", Range::within(0.05, 8.0)),
    rule("eval.val_images", Range::POSITIVE),
    rule("runtime.threads", Range::POSITIVE),
    rule("runtime.workers", Range::within(1.0, 1024.0)),
    rule("runtime.prefetch", Range::NON_NEGATIVE),
    rule("runtime.dist_timeout_s", Range::POSITIVE),
];

impl ConfigDocument for SearchConfig {
    type Error = SearchError;

    /// The checkpoint of a supernet fitness (also required, by [`SearchConfig::rules`], when
    /// `fitness` is left at its default); the space of a zero-cost one.
    const REQUIRED: &'static [Required] = &[
        Required::when("supernet.fitness", "det", "supernet.checkpoint"),
        Required::when("supernet.fitness", "cls", "supernet.checkpoint"),
        Required::when("supernet.fitness", "naswot", "supernet.checkpoint"),
        Required::when("supernet.fitness", "entropy", "supernet.space"),
    ];

    const PATH_KEYS: &'static [&'static str] = &["supernet.checkpoint", "constraint.latency_table"];

    fn resolve_paths(&mut self, base: &Path) {
        resolve_path(&mut self.supernet.checkpoint, base);
        if let Some(p) = &mut self.constraint.latency_table {
            resolve_path(p, base);
        }
        for p in &mut self.runtime.reuse {
            resolve_path(p, base);
        }
    }

    const RANGES: &'static [&'static [Rule]] = &[SEARCH_RANGES];

    fn rules(&self, r: &mut Rules) {
        let sup = &self.supernet;
        r.require(
            !sup.fitness.needs_checkpoint() || !is_empty_path(&sup.checkpoint),
            &["supernet.checkpoint"],
            format!(
                "supernet.checkpoint is required for fitness = \"{}\" (a fine-tuning run for det and naswot, a \
                 pre-training run for cls)",
                match sup.fitness {
                    FitnessKind::Cls => "cls",
                    FitnessKind::Naswot => "naswot",
                    _ => "det",
                }
            ),
        );
        r.require(
            sup.fitness.needs_checkpoint() || sup.space.is_some(),
            &["supernet.space"],
            "supernet.space is required for fitness = \"entropy\" (a zero-cost search has no checkpoint to read the \
             space from): small, large, large-3.8g or a space .toml",
        );
        let s = &self.strategy;
        r.require(
            s.kind != StrategyKind::Evolution || s.mutations + s.crossovers <= s.population,
            &["strategy.mutations", "strategy.crossovers", "strategy.population"],
            format!(
                "strategy.mutations + strategy.crossovers ({} + {}) must not exceed strategy.population ({})",
                s.mutations, s.crossovers, s.population
            ),
        );
    }

    /// What determines the search's result (not the runtime): `seed`, `supernet`, `strategy`,
    /// `constraint`, `eval`.
    fn result_parts(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "seed": self.seed, "supernet": self.supernet, "strategy": self.strategy,
            "constraint": self.constraint, "eval": self.eval,
        });
        if self.supernet.fitness.training_free() {
            v["zero_cost"] = serde_json::json!(self.zero_cost);
        }
        if self.runtime.precision != detnas_device::Precision::Fp32 {
            v["precision"] = serde_json::json!(self.runtime.precision);
        }
        v
    }
}

impl SearchConfig {
    /// Reads `path`, applies `--set` overrides, resolves relative paths against the file's
    /// folder, checks ([`ConfigDocument::load`] with a file).
    ///
    /// # Errors
    /// As [`ConfigDocument::load`].
    pub fn load(path: &Path, overrides: &[String]) -> Result<SearchConfig, SearchError> {
        <SearchConfig as ConfigDocument>::load(Some(path), overrides)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The section's defaults are stated once, in its `Default`.
    #[test]
    fn an_empty_section_is_its_default() {
        assert_eq!(toml::from_str::<SearchRuntime>("").unwrap(), SearchRuntime::default());
        let text = toml::to_string(&SearchRuntime::default()).unwrap();
        assert_eq!(toml::from_str::<SearchRuntime>(&text).unwrap(), SearchRuntime::default(), "{text}");
    }

    #[test]
    fn defaults_are_the_reference_and_counts_parse() {
        let cfg: SearchConfig = toml::from_str(
            "[supernet]\ncheckpoint = \"x\"\n[constraint]\nmax_backbone_macs = \"300M\"\nmax_backbone_params = 3000000\n",
        )
        .unwrap();
        cfg.check().unwrap();
        let s = &cfg.strategy;
        assert_eq!((s.population, s.top_k, s.generations, s.mutations, s.crossovers), (50, 10, 20, 20, 20));
        assert_eq!(s.mutation_prob, 0.1);
        assert_eq!(cfg.constraint.constraint().max_backbone_macs, Some(300_000_000));
        assert_eq!(cfg.constraint.constraint().max_backbone_params, Some(3_000_000));
        assert_eq!(cfg.supernet.fitness, FitnessKind::Det);
        let back: SearchConfig = toml::from_str(&cfg.to_toml()).unwrap();
        assert_eq!(back, cfg);
        assert_eq!(back.result_hash(), cfg.result_hash());
        let mut other = cfg.clone();
        other.runtime.workers = Some(4);
        assert_eq!(other.result_hash(), cfg.result_hash(), "runtime does not change results");
        other.seed = 1;
        assert_ne!(other.result_hash(), cfg.result_hash());
    }

    fn presets() -> Vec<PathBuf> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
        let mut v: Vec<PathBuf> = ["demo", "own-data", "coco", "voc"]
            .iter()
            .flat_map(|d| std::fs::read_dir(root.join(d)).unwrap())
            .map(|e| e.unwrap().path())
            .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("search")))
            .collect();
        v.sort();
        v
    }

    /// Sets the optional numeric keys, so that the walk sees them.
    const EVERY_KEY: [&str; 6] = [
        "runtime.threads=2",
        "runtime.workers=2",
        "eval.val_images=10",
        "constraint.max_latency_ms=5.0",
        "constraint.max_backbone_macs=\"300M\"",
        "constraint.max_backbone_params=1000000",
    ];

    fn load_file(p: &Path, set: &[String]) -> Result<SearchConfig, SearchError> {
        SearchConfig::load(p, set)
    }

    detnas_runtime::range_tests!(files: presets(), load: load_file, code: SearchError::exit_code, base: EVERY_KEY, min: 100, cases: 128);

    #[test]
    fn bad_values_are_refused() {
        let base = "[supernet]\ncheckpoint = \"x\"\n";
        for (extra, needle) in [
            ("[strategy]\npopulation = 0\n", "population"),
            ("[strategy]\nmutation_prob = 1.5\n", "mutation_prob"),
            ("[strategy]\npopulation = 10\nmutations = 8\ncrossovers = 8\n", "must not exceed"),
            ("[constraint]\nmax_latency_ms = -1.0\n", "max_latency_ms"),
        ] {
            let cfg: SearchConfig = toml::from_str(&format!("{base}{extra}")).unwrap();
            assert!(cfg.check().unwrap_err().to_string().contains(needle), "{extra}");
        }
        assert!(toml::from_str::<SearchConfig>(&format!("{base}[constraint]\nmax_backbone_macs = \"3Q\"\n")).is_err());
        assert!(toml::from_str::<SearchConfig>(&format!("{base}[strategy]\npopulaton = 3\n")).is_err());
    }
}
