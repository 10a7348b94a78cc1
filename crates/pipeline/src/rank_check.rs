//! `detnas rank-check RUN`: how far a finished run's search ranking can be trusted.
//!
//! It draws architectures from the search's ledger, stratified over the supernet's proxy
//! score and backbone MACs, trains each stand-alone with the run's retraining protocol and
//! several seeds (the ground truth), and measures the agreement of the proxy with it:
//! Kendall τ-b, Spearman ρ and a bootstrap interval of τ (Yu et al., "Evaluating the Search
//! Phase of Neural Architecture Search", ICLR 2020), the repeatability of the ground truth
//! itself (τ between seeds), and where the found architecture lands. The same figures are
//! given for the ClsNAS proxy (the pre-trained supernet's top-1) and for a control: the
//! detector at initialisation, whose ranking should be chance. With `supernets` > 1 the
//! pre-trained supernet is fine-tuned again with other seeds and each copy ranks the same
//! architectures: how much of the search's ranking is the luck of one fine-tuning, and how
//! well the mean of several supernets' scores ranks.
//!
//! ```text
//! RUN/rank-check/plan.json          the architectures and settings (draw and protocol fixed at the first start)
//! RUN/rank-check/proxies.json       proxy scores: search ledger, ClsNAS, control
//! RUN/rank-check/supernets/K/       supernet K ≥ 1: its fine-tuning run and scores.json
//! RUN/rank-check/units/A-seedS/     one stand-alone training per architecture and seed
//! RUN/rank-check/result.json        the statistics, rewritten after every unit
//! ```
//!
//! Every unit is a stage of its own (`stage.json` once finished, checkpoints inside), so an
//! interrupted check resumes at the unit and step where it stopped.

use crate::PipelineError;
use crate::config::PipelineConfig;
use crate::layout::{self as dirs, Retrained};
use crate::stages::{PipelineOptions, finetune_supernet, retrain, stage};
use detnas_runtime::checkpoint::resolve;
use detnas_search::fitness::{ClsEvaluator, DetEvaluator, SupernetInfo};
use detnas_search::ledger::{self, LedgerEntry};
use detnas_search::rank::{
    bootstrap_tau_ci, bootstrap_tau_difference_ci, kendall_tau, percentile, precision_top_quartile, regret, spearman,
    stratified_sample, tau_chance_sd,
};
use detnas_search::run::read_best;
use detnas_search::{Evaluator, SearchConfig};
use detnas_space::LatencyTable;
use detnas_train::RunOptions;
use detnas_train::finetune::{FinetuneSummary, OpenedDetector};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// `RUN/rank-check`.
pub fn dir(run: &Path) -> PathBuf {
    run.join("rank-check")
}

/// What to check; the draw and the protocol are fixed at the first start of a run's check, the
/// numbers of seeds and supernets may change (unit `(arch, s)` and supernet `k` do not depend
/// on them).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RankCheckOptions {
    /// Architectures drawn from the search ledger (default 20; the found and the ClsNAS
    /// architectures are added when not drawn).
    pub archs: usize,
    /// Trainings per architecture (default 2): unit seed `s` in 0..S overrides the stage
    /// configs' `seed` with `s`, to which the pipeline adds the run's seed as it does for
    /// every stage.
    pub seeds: usize,
    /// Overrides of the retraining's detection config after `retrain.det_set`, e.g. a shorter
    /// schedule.
    pub set: Vec<String>,
    /// Overrides of the retraining's classification config after `retrain.cls_set` (used with
    /// `retrain.mode = "scratch"` only).
    pub cls_set: Vec<String>,
    /// Supernets whose rankings are measured (default 1: the search's own, supernet 0).
    /// Supernet `k`, 1 ≤ k < `supernets`, is fine-tuned again from the same pre-trained
    /// supernet with the pipeline's fine-tuning config and the search's fine-tuning seed plus
    /// `k`, which changes the sampled paths, the image order and the carved
    /// search-validation split; it scores the plan with the search's evaluation settings on
    /// its own search-validation split.
    pub supernets: usize,
    /// Also score the architectures on the detector at initialisation (default true).
    pub control: bool,
    /// Bootstrap resamples of the τ interval (default 10000).
    pub resamples: usize,
    /// Seed of the draw, the control's initialisation and the bootstrap.
    pub seed: u64,
}

impl Default for RankCheckOptions {
    fn default() -> Self {
        RankCheckOptions {
            archs: 20,
            seeds: 2,
            set: Vec::new(),
            cls_set: Vec::new(),
            supernets: 1,
            control: true,
            resamples: 10_000,
            seed: 0,
        }
    }
}

impl RankCheckOptions {
    /// Whether `other` draws the same architectures and trains unit `(arch, s)` the same way
    /// (draw, protocol). The numbers of seeds and supernets and the statistics' options
    /// (resamples, control) may change between invocations: more add units or supernets, fewer
    /// summarise the first ones.
    fn same_units(&self, other: &RankCheckOptions) -> bool {
        (self.archs, &self.set, &self.cls_set, self.seed) == (other.archs, &other.set, &other.cls_set, other.seed)
    }
}

/// One architecture of the plan.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Planned {
    /// The architecture.
    pub arch: String,
    /// Its backbone MACs.
    pub backbone_macs: u64,
    /// `sampled`, `found` (the search's best), `clsnas` (the ClsNAS search's best).
    pub roles: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Plan {
    options: RankCheckOptions,
    archs: Vec<Planned>,
}

/// Proxy scores by architecture.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Proxies {
    /// The search's fitness (its ledger; evaluated with its settings where missing).
    pub det: BTreeMap<String, f64>,
    /// The ClsNAS search's top-1 (its ledger, or evaluated with its settings).
    pub cls: Option<BTreeMap<String, f64>>,
    /// The search's fitness with the detector at initialisation.
    pub init: Option<BTreeMap<String, f64>>,
    /// MAE-DET's entropy score ([`detnas_nn::zero_cost::entropy`]).
    #[serde(default)]
    pub entropy: Option<BTreeMap<String, f64>>,
    /// NASWOT's score on the first training images ([`detnas_nn::zero_cost::naswot`]); an
    /// architecture whose kernel is singular has none.
    #[serde(default)]
    pub naswot: Option<BTreeMap<String, Option<f64>>>,
    /// SynFlow's score ([`detnas_nn::zero_cost::synflow`]).
    #[serde(default)]
    pub synflow: Option<BTreeMap<String, Option<f64>>>,
}

/// Agreement of one proxy with the ground truth.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Agreement {
    /// Architectures with both scores.
    pub n: usize,
    /// Kendall τ of the proxy against the ground truth.
    pub kendall_tau: Option<f64>,
    /// Spearman ρ.
    pub spearman: Option<f64>,
    /// 95 % percentile-bootstrap interval of τ over architectures.
    pub tau_ci95: Option<[f64; 2]>,
    /// The architecture this proxy's search chose, and the share of the others it beats in
    /// the ground truth (1 = best, ≥ 0.75 = top quartile).
    pub chosen: Option<String>,
    /// The share of the others `chosen` beats.
    pub chosen_percentile: Option<f64>,
}

/// One proxy's statistics against the ground truth, over the architectures both have.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProxyStats {
    /// `one-shot` (the search's proxy: the fine-tuned supernet), `clsnas`, `control`, or a
    /// free baseline: `backbone MACs`, `params`, `latency` (each read as "more is better").
    pub name: String,
    /// Architectures with both scores.
    pub n: usize,
    /// Kendall τ-b against the ground truth.
    pub kendall_tau: Option<f64>,
    /// Its 95 % percentile-bootstrap interval over architectures.
    pub tau_ci95: Option<[f64; 2]>,
    /// Spearman ρ.
    pub spearman: Option<f64>,
    /// Of the top quartile by the proxy, the share in the top quartile of the ground truth.
    pub precision_top_quartile: Option<f64>,
    /// Best ground truth minus the ground truth of the proxy's pick (test AP).
    pub regret: Option<f64>,
    /// `regret` in units of the pooled seed-to-seed standard deviation.
    pub regret_in_seed_sd: Option<f64>,
    /// Paired 95 % bootstrap interval of τ(one-shot) − τ(this proxy) (none for the one-shot
    /// proxy itself).
    pub delta_tau_vs_oneshot_ci95: Option<[f64; 2]>,
}

/// One architecture's scores.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ArchResult {
    /// The architecture.
    pub arch: String,
    /// Its backbone MACs.
    pub backbone_macs: u64,
    /// Its backbone parameters.
    #[serde(default)]
    pub backbone_params: Option<u64>,
    /// Its latency from the search's per-op table, ms.
    #[serde(default)]
    pub latency_ms: Option<f64>,
    /// Why it is in the check (`sampled`, `found`, `clsnas`).
    pub roles: Vec<String>,
    /// DetNAS proxy: the search's fitness on the fine-tuned supernet.
    pub det_proxy: Option<f64>,
    /// ClsNAS proxy: top-1 on the pre-trained supernet.
    pub cls_proxy: Option<f64>,
    /// Control: the fitness of the detector at initialisation.
    pub init_proxy: Option<f64>,
    /// MAE-DET's entropy score (training-free).
    #[serde(default)]
    pub entropy_proxy: Option<f64>,
    /// NASWOT's score (training-free).
    #[serde(default)]
    pub naswot_proxy: Option<f64>,
    /// SynFlow's score, ln (training-free).
    #[serde(default)]
    pub synflow_proxy: Option<f64>,
    /// The search's fitness on supernet `k` at index `k` (index 0: `det_proxy`), when every
    /// supernet of the check has scored it.
    #[serde(default)]
    pub supernet_proxies: Vec<f64>,
    /// Test AP of the stand-alone training, one per finished seed.
    pub ground_truth: Vec<f64>,
    /// Mean of `ground_truth`.
    pub ground_truth_mean: Option<f64>,
}

/// `RUN/rank-check/result.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RankCheckResult {
    /// Architectures with every seed trained.
    pub n: usize,
    /// Seeds per architecture.
    pub seeds: usize,
    /// Every planned unit finished.
    pub complete: bool,
    /// DetNAS's proxy (the fine-tuned supernet) against the ground truth.
    pub kendall_tau: Option<f64>,
    /// Spearman ρ of the DetNAS proxy.
    pub spearman: Option<f64>,
    /// 95 % bootstrap interval of its τ.
    pub tau_ci95: Option<[f64; 2]>,
    /// Standard deviation of τ between unrelated rankings of `n` architectures.
    pub tau_chance_sd: Option<f64>,
    /// Repeatability of the ground truth: mean τ between the seeds' rankings.
    pub seed_tau: Option<f64>,
    /// Best minus worst ground-truth mean, and the pooled standard deviation of the seeds'
    /// scores (the square root of the mean over architectures of their sample variance: the
    /// noise of one training run that differences are read against).
    pub spread: Option<f64>,
    /// Pooled seed-to-seed standard deviation of test AP.
    pub seed_sd: Option<f64>,
    /// The DetNAS proxy's metric (`AP`, `AP50`); the ground truth is always test AP.
    pub metric: String,
    /// `retrain.mode` of the units: `inherit` (from the pre-trained supernet's weights) or
    /// `scratch` (classification from scratch first).
    pub retrain_mode: String,
    /// The found architecture, if it is in the check.
    pub found: Option<String>,
    /// The share of the others it beats in the ground truth.
    pub found_percentile: Option<f64>,
    /// The DetNAS proxy's agreement.
    pub detnas: Agreement,
    /// The ClsNAS proxy's agreement.
    pub clsnas: Option<Agreement>,
    /// The control's agreement (the detector at initialisation).
    pub init_control: Option<Agreement>,
    /// One agreement per finished supernet `k` (index `k`; 0 is the search's own, the same as
    /// `detnas` except that "chosen" is the best-scored planned architecture, which for the
    /// search's own supernet is the found one), when the check has more than one.
    #[serde(default)]
    pub supernets: Vec<Agreement>,
    /// Mean and sample standard deviation of the supernets' τ, once every supernet has
    /// finished.
    #[serde(default)]
    pub supernet_tau_mean: Option<f64>,
    /// Standard deviation of τ over the supernets.
    #[serde(default)]
    pub supernet_tau_sd: Option<f64>,
    /// The mean of the supernets' scores as the proxy.
    #[serde(default)]
    pub supernet_mean: Option<Agreement>,
    /// The retraining overrides of every unit (detection, then classification).
    pub protocol: Vec<String>,
    /// Every proxy's statistics: the search's, ClsNAS's, the control's and the free
    /// baselines' (backbone MACs, params, latency).
    #[serde(default)]
    pub proxies: Vec<ProxyStats>,
    /// Whether the search's proxy ranked better than the strongest free baseline, from the
    /// intervals of `proxies` ([`verdict`]).
    #[serde(default)]
    pub verdict: String,
    /// Every architecture's scores.
    pub archs: Vec<ArchResult>,
}

/// One entry per architecture (the first).
fn unique(entries: Vec<LedgerEntry>) -> Vec<LedgerEntry> {
    let mut seen = std::collections::HashSet::new();
    entries.into_iter().filter(|e| seen.insert(e.arch.clone())).collect()
}

fn read_json<T: serde::de::DeserializeOwned>(p: &Path) -> Result<Option<T>, PipelineError> {
    match std::fs::read_to_string(p) {
        Ok(t) => serde_json::from_str(&t).map(Some).map_err(|e| PipelineError::Config(format!("{}: {e}", p.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(PipelineError::io(p, e)),
    }
}

fn write_json<T: Serialize>(p: &Path, v: &T) -> Result<(), PipelineError> {
    Ok(detnas_runtime::fsx::write_json_atomic(p, v).map_err(detnas_train::TrainError::from)?)
}

fn search_config(dir: &Path) -> Result<SearchConfig, PipelineError> {
    Ok(SearchConfig::load(&dir.join("config.toml"), &[])?)
}

/// The plan of `run`: the one recorded (with `o`'s seeds and statistics' options), or a new
/// draw. A recorded plan made with another draw or protocol is refused.
fn plan(run: &Path, o: &RankCheckOptions) -> Result<Plan, PipelineError> {
    let path = dir(run).join("plan.json");
    if let Some(mut p) = read_json::<Plan>(&path)? {
        if !p.options.same_units(o) {
            return Err(PipelineError::Config(format!(
                "{} was made with other options ({}); its draw and protocol (--archs, --set, --cls-set, seed) must stay: use them again, or delete {} to start over",
                path.display(),
                serde_json::to_string(&p.options).expect("serialisable"),
                dir(run).display()
            )));
        }
        if p.options != *o {
            p.options = o.clone();
            write_json(&path, &p)?;
        }
        return Ok(p);
    }
    let entries = unique(ledger::read(&detnas_search::engine::ledger_path(&dirs::search(run)))?);
    if entries.len() < 3 {
        return Err(PipelineError::Config(format!(
            "the search of {} scored {} architecture(s); a ranking needs at least 3",
            run.display(),
            entries.len()
        )));
    }
    let mut archs: Vec<Planned> = stratified_sample(&entries, o.archs, o.seed)
        .into_iter()
        .map(|i| Planned {
            arch: entries[i].arch.clone(),
            backbone_macs: entries[i].backbone_macs,
            roles: vec!["sampled".into()],
        })
        .collect();
    let found = read_best(&dirs::search(run))?;
    let mut add = |arch: &str, macs: u64, role: &str| match archs.iter_mut().find(|p| p.arch == arch) {
        Some(p) => p.roles.push(role.into()),
        None => archs.push(Planned { arch: arch.into(), backbone_macs: macs, roles: vec![role.into()] }),
    };
    add(&found.arch, found.backbone_macs, "found");
    if let Ok(c) = read_best(&dirs::search_cls(run)) {
        add(&c.arch, c.backbone_macs, "clsnas");
    }
    let p = Plan { options: o.clone(), archs };
    std::fs::create_dir_all(dir(run)).map_err(|e| PipelineError::io(dir(run), e))?;
    write_json(&path, &p)?;
    Ok(p)
}

/// Scores of `archs` from a search folder's ledger, the rest evaluated with its settings on
/// `evaluator`.
fn scores(
    search_dir: &Path,
    archs: &[Planned],
    space: &detnas_space::SearchSpace,
    mut evaluator: impl FnMut() -> Result<Box<dyn Evaluator>, PipelineError>,
) -> Result<BTreeMap<String, f64>, PipelineError> {
    let known: BTreeMap<String, f64> = unique(ledger::read(&detnas_search::engine::ledger_path(search_dir))?)
        .into_iter()
        .map(|e| (e.arch, e.fitness))
        .collect();
    let mut out = BTreeMap::new();
    let mut ev: Option<Box<dyn Evaluator>> = None;
    for p in archs {
        let f = match known.get(&p.arch) {
            Some(&f) => f,
            None => {
                let e = match &mut ev {
                    Some(e) => e,
                    None => ev.insert(evaluator()?),
                };
                tracing::info!("rank-check: scoring {} with the settings of {}", p.arch, search_dir.display());
                e.evaluate(&space.parse_arch(&p.arch)?)?.fitness
            }
        };
        out.insert(p.arch.clone(), f);
    }
    Ok(out)
}

/// Images of NASWOT's batch: the first training images of the search's fine-tuning, as
/// evaluation prepares them (the official score takes one batch of training data).
pub const NASWOT_IMAGES: usize = 16;
/// Repeats of the entropy score, each with new weights and input (the official default).
pub const ENTROPY_REPEATS: usize = 4;
/// Gaussian images per repeat of the entropy score, of the size of NASWOT's batch.
pub const ENTROPY_BATCH: i64 = 4;

/// The proxy scores of the plan: the search's ([`search_proxies`]) and the training-free ones
/// (recorded likewise; computed when the record lacks a planned architecture).
fn proxies(run: &Path, plan: &Plan, opts: &PipelineOptions) -> Result<Proxies, PipelineError> {
    let mut p = search_proxies(run, plan, opts)?;
    if covers(plan, p.entropy.as_ref()) && covers(plan, p.naswot.as_ref()) && covers(plan, p.synflow.as_ref()) {
        return Ok(p);
    }
    let scfg = search_config(&dirs::search(run))?;
    let info = SupernetInfo::open(&scfg)?;
    let archs: Vec<&str> = plan.archs.iter().map(|a| a.arch.as_str()).collect();
    tracing::info!("rank-check: training-free proxies (entropy, NASWOT, SynFlow) of {} architectures", archs.len());
    let free = training_free(&info.checkpoint, &info.space, &archs, plan.options.seed)?;
    p.entropy = Some(free.entropy);
    p.naswot = Some(free.naswot);
    p.synflow = Some(free.synflow);
    write_json(&dir(run).join("proxies.json"), &p)?;
    Ok(p)
}

/// Whether the recorded scores `m` hold every planned architecture.
fn covers<V>(plan: &Plan, m: Option<&BTreeMap<String, V>>) -> bool {
    m.is_some_and(|m| plan.archs.iter().all(|a| m.contains_key(&a.arch)))
}

/// The training-free proxies of `archs` (module `detnas_nn::zero_cost`): MAE-DET's entropy on
/// Gaussian input and SynFlow on an all-ones input, both of the size of the user's images as
/// evaluated, and NASWOT on the first [`NASWOT_IMAGES`] training images of the fine-tuning
/// checkpoint `checkpoint`; weights and inputs drawn from `seed`.
///
/// # Errors
/// As [`OpenedDetector::open`], its splits and images; [`PipelineError::Config`] for a space
/// the entropy score cannot weigh.
pub fn training_free(
    checkpoint: &Path,
    space: &detnas_space::SearchSpace,
    archs: &[&str],
    seed: u64,
) -> Result<TrainingFree, PipelineError> {
    let opened = OpenedDetector::open(checkpoint, tch::Device::Cpu)?;
    let train = opened.splits()?.train;
    let images = opened.evaluation_batch(&train, NASWOT_IMAGES)?.input;
    let size = images.size();
    let settings = detnas_nn::zero_cost::EntropySettings {
        batch: ENTROPY_BATCH,
        input: [size[2], size[3]],
        repeats: ENTROPY_REPEATS,
        seed,
    };
    let (mut entropy, mut naswot, mut synflow) = (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
    for &a in archs {
        let arch = space.parse_arch(a)?;
        let (e, _) = detnas_nn::zero_cost::entropy(space, &arch, &settings).map_err(PipelineError::Config)?;
        entropy.insert(a.to_string(), e);
        naswot.insert(a.to_string(), detnas_nn::zero_cost::naswot(space, &arch, &images, seed));
        synflow.insert(a.to_string(), detnas_nn::zero_cost::synflow(space, &arch, settings.input, seed));
    }
    Ok(TrainingFree { entropy, naswot, synflow })
}

/// The training-free proxies' scores by architecture ([`training_free`]).
pub struct TrainingFree {
    /// MAE-DET's entropy score.
    pub entropy: BTreeMap<String, f64>,
    /// NASWOT's score (none where the kernel is singular).
    pub naswot: BTreeMap<String, Option<f64>>,
    /// SynFlow's score (ln; none where it is zero or overflows).
    pub synflow: BTreeMap<String, Option<f64>>,
}

/// The search's proxy scores of the plan: its ledger's, ClsNAS's and the control's (recorded
/// after the first computation; recomputed when the record lacks a planned architecture,
/// completed when the control is asked for later).
fn search_proxies(run: &Path, plan: &Plan, opts: &PipelineOptions) -> Result<Proxies, PipelineError> {
    let path = dir(run).join("proxies.json");
    let device = opts.device;
    let sdir = dirs::search(run);
    let scfg = search_config(&sdir)?;
    let recorded = read_json::<Proxies>(&path)?.filter(|p| covers(plan, Some(&p.det)));
    if let Some(p) = &recorded
        && (p.init.is_some() || !plan.options.control)
    {
        return Ok(p.clone());
    }
    let info = SupernetInfo::open(&scfg)?;
    detnas_search::run::check_scored(&sdir, &info)?;
    let init = if plan.options.control {
        tracing::info!("rank-check: scoring {} architectures on the detector at initialisation", plan.archs.len());
        let opened = OpenedDetector::open_initial(&info.checkpoint, plan.options.seed as i64, device)?;
        let mut ev = DetEvaluator::with(opened, &scfg.eval, scfg.runtime.prefetch, device)?;
        let mut m = BTreeMap::new();
        for p in &plan.archs {
            m.insert(p.arch.clone(), ev.evaluate(&info.space.parse_arch(&p.arch)?)?.fitness);
        }
        Some(m)
    } else {
        None
    };
    if let Some(mut p) = recorded {
        p.init = init;
        write_json(&path, &p)?;
        return Ok(p);
    }
    let det = scores(&sdir, &plan.archs, &info.space, || {
        Ok(Box::new(DetEvaluator::open(&info.checkpoint, &scfg.eval, scfg.runtime.prefetch, device)?))
    })?;
    let cdir = dirs::search_cls(run);
    let cls = if cdir.join("config.toml").is_file() {
        let ccfg = search_config(&cdir)?;
        let cinfo = SupernetInfo::open(&ccfg)?;
        detnas_search::run::check_scored(&cdir, &cinfo)?;
        Some(scores(&cdir, &plan.archs, &cinfo.space, || {
            Ok(Box::new(ClsEvaluator::open(&cinfo.checkpoint, &ccfg.eval, ccfg.runtime.prefetch, device)?))
        })?)
    } else {
        None
    };
    let p = Proxies { det, cls, init, ..Default::default() };
    write_json(&path, &p)?;
    Ok(p)
}

/// The folder of supernet `k` ≥ 1: its fine-tuning run, `stage.json` and `scores.json`.
pub fn supernet_dir(run: &Path, k: usize) -> PathBuf {
    dir(run).join("supernets").join(k.to_string())
}

/// Fine-tunes (or resumes) supernet `k` ≥ 1 and scores the plan on it with the search's
/// evaluation settings; the scores are recorded in its `scores.json`.
fn supernet_scores(
    cfg: &PipelineConfig,
    run: &Path,
    plan: &Plan,
    k: usize,
    opts: &PipelineOptions,
    train_opts: &RunOptions,
) -> Result<BTreeMap<String, f64>, PipelineError> {
    let sdir = supernet_dir(run, k);
    let path = sdir.join("scores.json");
    if let Some(m) = read_json::<BTreeMap<String, f64>>(&path)?
        && covers(plan, Some(&m))
    {
        return Ok(m);
    }
    let name = format!("rank-check supernet {k} (of {}, seed offset {k})", plan.options.supernets - 1);
    let _: FinetuneSummary = stage(opts, &sdir, &name, &serde_json::Value::Null, || {
        finetune_supernet(cfg, run, &sdir, k as u64, opts, train_opts)
    })?;
    let scfg = search_config(&dirs::search(run))?;
    let (_, ckpt) = resolve(&sdir).map_err(detnas_train::TrainError::from)?;
    let space = detnas_train::finetune::read_meta(&ckpt)?.1.space;
    tracing::info!("rank-check: scoring {} architectures on supernet {k}", plan.archs.len());
    let mut ev = DetEvaluator::open(&ckpt, &scfg.eval, scfg.runtime.prefetch, opts.device)?;
    let mut m = BTreeMap::new();
    for p in &plan.archs {
        m.insert(p.arch.clone(), ev.evaluate(&space.parse_arch(&p.arch)?)?.fitness);
    }
    write_json(&path, &m)?;
    Ok(m)
}

/// The planned architecture with the highest score (the first of equals), if all are scored.
fn best_scored(plan: &Plan, score: impl Fn(&str) -> Option<f64>) -> Option<&str> {
    let mut best: Option<(&str, f64)> = None;
    for p in &plan.archs {
        let v = score(&p.arch)?;
        if best.is_none_or(|(_, b)| v > b) {
            best = Some((p.arch.as_str(), v));
        }
    }
    best.map(|(a, _)| a)
}

/// The folder of the unit of `arch` and `seed`.
pub fn unit_dir(run: &Path, arch: &str, seed: usize) -> PathBuf {
    dir(run).join("units").join(format!("{arch}-seed{seed}"))
}

/// The classification and detection overrides of a unit: the check's, then the seed.
fn unit_sets(o: &RankCheckOptions, seed: usize) -> (Vec<String>, Vec<String>) {
    let with_seed = |v: &[String]| v.iter().cloned().chain([format!("seed={seed}")]).collect();
    (with_seed(&o.cls_set), with_seed(&o.set))
}

fn agreement(
    archs: &[ArchResult],
    proxy: impl Fn(&ArchResult) -> Option<f64>,
    chosen: Option<&str>,
    o: &RankCheckOptions,
) -> Agreement {
    let pairs: Vec<(f64, f64)> = archs.iter().filter_map(|a| Some((proxy(a)?, a.ground_truth_mean?))).collect();
    let (x, y): (Vec<f64>, Vec<f64>) = pairs.iter().copied().unzip();
    let chosen_percentile = chosen.and_then(|c| {
        let me = archs.iter().find(|a| a.arch == c)?.ground_truth_mean?;
        let others: Vec<f64> = archs.iter().filter(|a| a.arch != c).filter_map(|a| a.ground_truth_mean).collect();
        percentile(me, &others)
    });
    Agreement {
        n: pairs.len(),
        kendall_tau: kendall_tau(&x, &y),
        spearman: spearman(&x, &y),
        tau_ci95: bootstrap_tau_ci(&x, &y, o.resamples, 0.95, o.seed).map(|(a, b)| [a, b]),
        chosen: chosen.map(str::to_string),
        chosen_percentile,
    }
}

/// What costs nothing: the free baselines (what a user knows of an architecture before any
/// training) and the training-free proxies (seconds at initialisation).
pub const FREE: [&str; 6] = ["backbone MACs", "params", "latency", "entropy", "naswot", "synflow"];

/// Every proxy's statistics ([`ProxyStats`]) over `archs`.
fn proxy_stats(archs: &[ArchResult], seed_sd: Option<f64>, o: &RankCheckOptions) -> Vec<ProxyStats> {
    type Score = fn(&ArchResult) -> Option<f64>;
    let all: [(&str, Score); 9] = [
        ("one-shot", |a| a.det_proxy),
        ("clsnas", |a| a.cls_proxy),
        ("control", |a| a.init_proxy),
        (FREE[0], |a| Some(a.backbone_macs as f64)),
        (FREE[1], |a| a.backbone_params.map(|p| p as f64)),
        (FREE[2], |a| a.latency_ms),
        (FREE[3], |a| a.entropy_proxy),
        (FREE[4], |a| a.naswot_proxy),
        (FREE[5], |a| a.synflow_proxy),
    ];
    let oneshot = all[0].1;
    all.iter()
        .filter_map(|&(name, score)| {
            let rows: Vec<(f64, f64, Option<f64>)> =
                archs.iter().filter_map(|a| Some((score(a)?, a.ground_truth_mean?, oneshot(a)))).collect();
            if rows.is_empty() {
                return None;
            }
            let x: Vec<f64> = rows.iter().map(|r| r.0).collect();
            let y: Vec<f64> = rows.iter().map(|r| r.1).collect();
            let paired: Vec<(f64, f64, f64)> = rows.iter().filter_map(|r| Some((r.2?, r.0, r.1))).collect();
            let delta = (name != "one-shot").then(|| {
                let a: Vec<f64> = paired.iter().map(|p| p.0).collect();
                let b: Vec<f64> = paired.iter().map(|p| p.1).collect();
                let t: Vec<f64> = paired.iter().map(|p| p.2).collect();
                bootstrap_tau_difference_ci(&a, &b, &t, o.resamples, 0.95, o.seed).map(|(l, h)| [l, h])
            });
            let r = regret(&x, &y);
            Some(ProxyStats {
                name: name.into(),
                n: rows.len(),
                kendall_tau: kendall_tau(&x, &y),
                tau_ci95: bootstrap_tau_ci(&x, &y, o.resamples, 0.95, o.seed).map(|(a, b)| [a, b]),
                spearman: spearman(&x, &y),
                precision_top_quartile: precision_top_quartile(&x, &y),
                regret: r,
                regret_in_seed_sd: r.zip(seed_sd.filter(|&s| s > 0.0)).map(|(r, s)| r / s),
                delta_tau_vs_oneshot_ci95: delta.flatten(),
            })
        })
        .collect()
}

/// Whether the search's proxy ranks better than the strongest of what costs nothing ([`FREE`]:
/// the free baselines and the training-free proxies; the one of highest τ), read from the
/// paired interval of their τ difference: better or worse when the interval excludes 0, else
/// not distinguishable on this run.
pub fn verdict(proxies: &[ProxyStats]) -> String {
    let Some(oneshot) = proxies.iter().find(|p| p.name == "one-shot").and_then(|p| p.kendall_tau) else {
        return "no verdict: the search's proxy has no τ yet (too few trained architectures)".into();
    };
    let strongest = proxies
        .iter()
        .filter(|p| FREE.contains(&p.name.as_str()))
        .filter_map(|p| Some((p, p.kendall_tau?, p.delta_tau_vs_oneshot_ci95?)))
        .max_by(|a, b| a.1.total_cmp(&b.1));
    let Some((p, tau, [lo, hi])) = strongest else {
        return "no verdict: no free baseline has a τ interval yet".into();
    };
    let d = format!("Δτ {:.2} [{lo:.2}, {hi:.2}]", oneshot - tau);
    if lo > 0.0 {
        format!("the search's proxy ranks better than {}: {d}", p.name)
    } else if hi < 0.0 {
        format!("{} ranks better than the search's proxy: {d}; choose by {} instead", p.name, p.name)
    } else {
        format!(
            "not distinguishable from {} on this run ({d}): choose by {}, which costs nothing, or check more \
             architectures (--archs) or supernets (--supernets 3)",
            p.name, p.name
        )
    }
}

/// The statistics of whatever units have finished; `more` holds the scores of supernets 1, 2, …
/// that have finished.
fn summarise(
    run: &Path,
    cfg: &PipelineConfig,
    plan: &Plan,
    proxies: &Proxies,
    more: &[BTreeMap<String, f64>],
    metric: &str,
) -> RankCheckResult {
    let o = &plan.options;
    let sup: Vec<&BTreeMap<String, f64>> = std::iter::once(&proxies.det).chain(more).collect();
    let all_supernets = o.supernets > 1 && sup.len() == o.supernets;
    // Backbone parameters and latency as the search counted them (its space, input and table).
    let best = read_best(&dirs::search(run)).ok();
    let latency = LatencyTable::read(&dirs::search(run).join("latency-table.json")).ok();
    let cost = |arch: &str| -> (Option<u64>, Option<f64>) {
        let Some(b) = &best else { return (None, None) };
        let Ok(a) = b.space.parse_arch(arch) else { return (None, None) };
        let c = detnas_space::cost(&b.space, &a, &detnas_space::CostModel { input: b.input, classes: 1000 });
        (Some(c.backbone_params), latency.as_ref().and_then(|t| t.latency_ms(&a).ok()))
    };
    let archs: Vec<ArchResult> = plan
        .archs
        .iter()
        .map(|p| {
            let ground_truth: Vec<f64> = (0..o.seeds)
                .filter_map(|s| {
                    let r: Retrained = crate::layout::finished(&unit_dir(run, &p.arch, s))?.1;
                    r.det.paths.first().map(|q| q.stats.ap())
                })
                .collect();
            let complete = ground_truth.len() == o.seeds;
            let (backbone_params, latency_ms) = cost(&p.arch);
            ArchResult {
                arch: p.arch.clone(),
                backbone_macs: p.backbone_macs,
                backbone_params,
                latency_ms,
                roles: p.roles.clone(),
                det_proxy: proxies.det.get(&p.arch).copied(),
                cls_proxy: proxies.cls.as_ref().and_then(|m| m.get(&p.arch).copied()),
                init_proxy: proxies.init.as_ref().and_then(|m| m.get(&p.arch).copied()),
                entropy_proxy: proxies.entropy.as_ref().and_then(|m| m.get(&p.arch).copied()),
                naswot_proxy: proxies.naswot.as_ref().and_then(|m| m.get(&p.arch).copied().flatten()),
                synflow_proxy: proxies.synflow.as_ref().and_then(|m| m.get(&p.arch).copied().flatten()),
                supernet_proxies: if all_supernets {
                    sup.iter().map(|m| m.get(&p.arch).copied()).collect::<Option<Vec<f64>>>().unwrap_or_default()
                } else {
                    Vec::new()
                },
                ground_truth_mean: complete.then(|| ground_truth.iter().sum::<f64>() / o.seeds as f64),
                ground_truth,
            }
        })
        .collect();
    let role = |r: &str| plan.archs.iter().find(|p| p.roles.iter().any(|x| x == r)).map(|p| p.arch.as_str());
    let detnas = agreement(&archs, |a| a.det_proxy, role("found"), o);
    let clsnas = proxies.cls.as_ref().map(|_| agreement(&archs, |a| a.cls_proxy, role("clsnas"), o));
    let init_control = proxies.init.as_ref().map(|_| agreement(&archs, |a| a.init_proxy, None, o));
    let supernets: Vec<Agreement> = if o.supernets > 1 {
        sup.iter()
            .map(|m| {
                let chosen = best_scored(plan, |a| m.get(a).copied());
                agreement(&archs, |a| m.get(&a.arch).copied(), chosen, o)
            })
            .collect()
    } else {
        Vec::new()
    };
    let sup_taus: Vec<f64> = supernets.iter().filter_map(|a| a.kendall_tau).collect();
    let supernet_mean = all_supernets.then(|| {
        let mean = |arch: &str| {
            let v: Option<Vec<f64>> = sup.iter().map(|m| m.get(arch).copied()).collect();
            v.map(|v| v.iter().sum::<f64>() / v.len() as f64)
        };
        agreement(&archs, |a| mean(&a.arch), best_scored(plan, mean), o)
    });
    let full: Vec<&ArchResult> = archs.iter().filter(|a| a.ground_truth_mean.is_some()).collect();
    let mut seed_taus = Vec::new();
    for s in 0..o.seeds {
        for t in s + 1..o.seeds {
            let x: Vec<f64> = full.iter().map(|a| a.ground_truth[s]).collect();
            let y: Vec<f64> = full.iter().map(|a| a.ground_truth[t]).collect();
            seed_taus.extend(kendall_tau(&x, &y));
        }
    }
    let means: Vec<f64> = full.iter().filter_map(|a| a.ground_truth_mean).collect();
    let variance = |v: &[f64]| {
        let m = v.iter().sum::<f64>() / v.len() as f64;
        v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64
    };
    let n = full.len();
    let seed_sd = (o.seeds >= 2 && n > 0)
        .then(|| (full.iter().map(|a| variance(&a.ground_truth)).sum::<f64>() / n as f64).sqrt());
    let proxy_table = proxy_stats(&archs, seed_sd, o);
    RankCheckResult {
        n,
        seeds: o.seeds,
        complete: n == plan.archs.len() && sup.len() == o.supernets,
        kendall_tau: detnas.kendall_tau,
        spearman: detnas.spearman,
        tau_ci95: detnas.tau_ci95,
        tau_chance_sd: (n >= 2).then(|| tau_chance_sd(n)),
        seed_tau: (!seed_taus.is_empty()).then(|| seed_taus.iter().sum::<f64>() / seed_taus.len() as f64),
        spread: (!means.is_empty()).then(|| {
            means.iter().copied().fold(f64::NEG_INFINITY, f64::max)
                - means.iter().copied().fold(f64::INFINITY, f64::min)
        }),
        seed_sd,
        metric: metric.to_string(),
        retrain_mode: match cfg.retrain.mode {
            crate::config::RetrainMode::Inherit => "inherit".into(),
            crate::config::RetrainMode::Scratch => "scratch".into(),
        },
        found: detnas.chosen.clone(),
        found_percentile: detnas.chosen_percentile,
        detnas,
        clsnas,
        init_control,
        supernet_tau_mean: (all_supernets && !sup_taus.is_empty())
            .then(|| sup_taus.iter().sum::<f64>() / sup_taus.len() as f64),
        supernet_tau_sd: (all_supernets && sup_taus.len() >= 2).then(|| variance(&sup_taus).sqrt()),
        supernets,
        supernet_mean,
        protocol: plan.options.set.iter().chain(&plan.options.cls_set).cloned().collect(),
        verdict: verdict(&proxy_table),
        proxies: proxy_table,
        archs,
    }
}

/// Runs (or resumes) the ranking check of the finished pipeline run `run` with the pipeline
/// configuration `cfg` it was made with; writes `RUN/rank-check/result.json` after every unit
/// (the report is regenerated by [`crate::check_ranking`]).
///
/// # Errors
/// [`PipelineError::Config`] when the run's search has not finished, scored fewer than 3
/// architectures, or the recorded plan has other options; otherwise the first error of a
/// proxy evaluation or a training unit.
pub fn run(
    cfg: &PipelineConfig,
    run: &Path,
    o: &RankCheckOptions,
    opts: &PipelineOptions,
) -> Result<RankCheckResult, PipelineError> {
    if o.archs < 3 || o.seeds < 1 || o.supernets < 1 {
        return Err(PipelineError::Config(format!(
            "rank-check needs at least 3 architectures, 1 seed and 1 supernet (got {}, {} and {})",
            o.archs, o.seeds, o.supernets
        )));
    }
    let run = &std::fs::canonicalize(run).map_err(|e| PipelineError::io(run, e))?;
    if crate::layout::finished::<serde_json::Value>(&dirs::search(run)).is_none() {
        return Err(PipelineError::Config(format!(
            "{} has no finished search (stage search); run the pipeline first",
            run.display()
        )));
    }
    let started = Instant::now();
    let plan = plan(run, o)?;
    tracing::info!(
        "rank-check: {} architectures × {} seed(s) ({} drawn from the search ledger, stratified over AP and MACs)",
        plan.archs.len(),
        o.seeds,
        plan.archs.iter().filter(|p| p.roles.iter().any(|r| r == "sampled")).count()
    );
    let proxies = proxies(run, &plan, opts)?;
    let metric = detnas_search::run::metric_name(&search_config(&dirs::search(run))?);
    let train_opts = RunOptions {
        progress: opts.progress,
        cancel: opts.cancel.clone(),
        dist: opts.dist.clone(),
        ..RunOptions::default()
    };
    let units = plan.archs.len() * o.seeds;
    let mut k = 0;
    let mut more = Vec::new();
    for s in 1..o.supernets {
        more.push(supernet_scores(cfg, run, &plan, s, opts, &train_opts)?);
        write_json(&dir(run).join("result.json"), &summarise(run, cfg, &plan, &proxies, &more, &metric))?;
    }
    let mut result = summarise(run, cfg, &plan, &proxies, &more, &metric);
    for seed in 0..o.seeds {
        for p in &plan.archs {
            k += 1;
            let udir = unit_dir(run, &p.arch, seed);
            let name = format!("rank-check {} seed {seed} (unit {k} of {units})", p.arch);
            let (cls_set, det_set) = unit_sets(o, seed);
            let _: Retrained = stage(opts, &udir, &name, &serde_json::Value::Null, || {
                retrain(cfg, run, &udir, "rank-check", &p.arch, (&cls_set, &det_set), opts, &train_opts)
            })?;
            result = summarise(run, cfg, &plan, &proxies, &more, &metric);
            write_json(&dir(run).join("result.json"), &result)?;
        }
    }
    tracing::info!("rank-check: done in {:.0} s", started.elapsed().as_secs_f64());
    Ok(result)
}

/// The result of a run's check, if one was made.
pub fn read_result(run: &Path) -> Option<RankCheckResult> {
    read_json(&dir(run).join("result.json")).ok().flatten()
}
