//! `detnas search`: a search run folder from a configuration.
//!
//! ```text
//! RUN/config.toml         the resolved configuration
//! RUN/latency-table.json  per-op latencies (when a latency limit is used and no path given)
//! RUN/ledger.jsonl        every evaluated candidate (fsynced)
//! RUN/state.json          the archive and history after the last finished generation
//! RUN/best_arch.json      the result, with provenance
//! RUN/summary.json        the last invocation: candidates, time, resident memory
//! ```

use crate::SearchError;
use crate::config::{FitnessKind, SearchConfig, StrategyKind};
use crate::engine::{self, Outcome, SearchSetup};
use crate::evolution::Limits;
use crate::fitness::SupernetInfo;
use crate::ledger::LedgerEntry;
use crate::workers::{EvaluatorFactory, Workers};
use detnas_dist::ProcessGroup;
use detnas_nn::latency::{device_name, measure_table};
use detnas_runtime::fsx::write_json_atomic;
use detnas_runtime::mem::{MemoryRecord, PeakMeter};
use detnas_runtime::{Cancel, ConfigDocument};
use detnas_space::{InputSize, LatencyTable, SearchSpace};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tch::Device;

/// libtorch threads of each of `workers` CPU workers sharing `threads` (at least 1).
pub fn threads_per_cpu_worker(threads: i32, workers: usize) -> i32 {
    (threads / workers.max(1) as i32).max(1)
}

/// The default number of evaluation workers and libtorch threads per worker when the
/// configuration leaves `runtime.workers` unset: one worker per device on GPUs; on the CPU one
/// single-threaded worker per thread, at most 4 (measured on the demo candidate, 2 cores:
/// 2 workers × 1 thread take 1.79 s per candidate, 1 worker × 2 threads 2.13 s, whose small
/// kernels leave the threads waiting on each other; every worker holds its own model, so
/// memory grows with the count).
pub fn default_workers(devices: &[Device], threads: i32) -> (usize, Option<i32>) {
    match devices.first() {
        Some(Device::Cpu) | None => {
            let w = threads.clamp(1, 4) as usize;
            (w, Some(threads_per_cpu_worker(threads, w)))
        }
        Some(_) => (devices.len(), None),
    }
}

/// Options of one invocation (not part of the configuration).
#[derive(Clone, Debug)]
pub struct SearchOptions {
    /// The search folder (`ledger.jsonl`, `state.json`, `best_arch.json`, `summary.json`).
    pub out: PathBuf,
    /// Devices of the workers (worker `i` uses `devices[i % len]`).
    pub devices: Vec<Device>,
    /// Evaluation workers.
    pub workers: usize,
    /// libtorch threads of each worker.
    pub threads_per_worker: Option<i32>,
    /// Draw a progress bar on stderr.
    pub progress: bool,
    /// Raised by the binary's signal handlers: stop after the candidate being recorded.
    pub cancel: Cancel,
    /// The job's process group when several processes search together: rank 0 runs the
    /// evolution and writes the run folder, every rank evaluates candidates on its device
    /// ([`crate::remote`]).
    pub dist: Option<Arc<ProcessGroup>>,
}

/// Where a result comes from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// The fine-tuned (or pre-trained, ClsNAS) supernet checkpoint scored.
    pub supernet_checkpoint: PathBuf,
    /// Its step.
    pub supernet_step: u64,
    /// SHA-256 of its `model.safetensors` (a re-score checks it).
    pub supernet_sha256: String,
    /// Result hash of the search configuration.
    pub config_hash: String,
    /// The resolved search configuration (TOML).
    pub config: String,
    /// The search's seed.
    pub seed: u64,
    /// The code that searched ([`detnas_runtime::code_version`]).
    pub code_version: String,
}

/// `best_arch.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BestArch {
    /// The best architecture (one choice digit per block).
    pub arch: String,
    /// The search space it belongs to.
    pub space: SearchSpace,
    /// Backbone multiply-accumulates at `input`.
    pub backbone_macs: u64,
    /// Backbone parameters.
    pub backbone_params: u64,
    /// Input size the counts are taken at.
    pub input: InputSize,
    /// Latency from the per-op table, ms (when the search has one).
    pub latency_ms: Option<f64>,
    /// Its fitness.
    pub fitness: f64,
    /// `det` (box AP on the search-validation split) or `cls` (top-1).
    pub fitness_kind: FitnessKind,
    /// The fitness's name (`AP`, `AP50`, `top-1`).
    pub metric: String,
    /// Every number its evaluation produced (COCO's 12 stats, or top-1/top-5).
    pub metrics: Vec<f64>,
    /// The search strategy (evolution or random).
    pub strategy: StrategyKind,
    /// The limits, in words.
    pub constraint: String,
    /// Candidates scored.
    pub evaluated: usize,
    /// Where the result comes from.
    pub provenance: Provenance,
    /// The final top-k, best first.
    pub top_k: Vec<LedgerEntry>,
}

/// What a finished search reports.
#[derive(Clone, Debug)]
pub struct SearchReport {
    /// The best architecture (`best_arch.json`).
    pub best: BestArch,
    /// The search's state and ledger.
    pub outcome: Outcome,
    /// Mean BN recalibration time per candidate, seconds.
    pub mean_recalibration_seconds: f64,
    /// Mean evaluation time per candidate, seconds.
    pub mean_evaluation_seconds: f64,
}

/// The fitness metric's short name: `top1`, `AP` or `AP50`.
pub fn metric_name(cfg: &SearchConfig) -> String {
    match cfg.supernet.fitness {
        FitnessKind::Cls => "top1".into(),
        FitnessKind::Entropy => "entropy".into(),
        FitnessKind::Naswot => "naswot".into(),
        FitnessKind::Det => match cfg.eval.metric {
            crate::config::DetMetric::Ap => "AP".into(),
            crate::config::DetMetric::Ap50 => "AP50".into(),
        },
    }
}

/// The latency table of a search: read from its cache when it matches, else measured on
/// `device` and cached.
///
/// # Errors
/// [`SearchError::Space`] when the cached table cannot be read or the measured one written;
/// [`SearchError::Config`] when the cache is for another space, input size or device.
pub fn latency_table(
    cfg: &SearchConfig,
    space: &SearchSpace,
    out: &Path,
    device: Device,
) -> Result<LatencyTable, SearchError> {
    let input = cfg.constraint.cost_model().input;
    let path = cfg.constraint.latency_table.clone().unwrap_or_else(|| out.join("latency-table.json"));
    if path.is_file() {
        let t = LatencyTable::read(&path)?;
        t.check_matches(space, input, &device_name(device))
            .map_err(|e| SearchError::Config(format!("{}: {e}", path.display())))?;
        return Ok(t);
    }
    tracing::info!(
        "measuring the latency table of '{}' at {}x{} on {}",
        space.name,
        input.height,
        input.width,
        device_name(device)
    );
    let t = measure_table(space, input, 1, device, 20);
    t.write(&path)?;
    Ok(t)
}

/// Scores of `cfg.runtime.reuse` folders: each must be a search of the same supernet
/// checkpoint (same weights hash) with the same fitness and `[eval]` settings.
fn reused_scores(
    cfg: &SearchConfig,
    info: &SupernetInfo,
) -> Result<std::collections::HashMap<detnas_space::Arch, crate::Evaluation>, SearchError> {
    let mut prior = std::collections::HashMap::new();
    for dir in &cfg.runtime.reuse {
        let refuse = |why: &str| Err(SearchError::Config(format!("runtime.reuse: {}: {why}", dir.display())));
        let text = std::fs::read_to_string(dir.join("config.toml"))
            .map_err(|e| SearchError::io(dir.join("config.toml"), e))?;
        let other: SearchConfig =
            toml::from_str(&text).map_err(|e| SearchError::Config(format!("{}/config.toml: {e}", dir.display())))?;
        let best = read_best(dir)?;
        if best.provenance.supernet_sha256 != info.model_sha256 {
            return refuse("scored another supernet checkpoint");
        }
        if other.eval != cfg.eval || other.supernet.fitness != cfg.supernet.fitness {
            return refuse("used other [eval] settings or another fitness");
        }
        for e in crate::ledger::read(&crate::engine::ledger_path(dir))? {
            let arch = info.space.parse_arch(&e.arch)?;
            prior.insert(
                arch,
                crate::Evaluation {
                    fitness: e.fitness,
                    metrics: e.metrics,
                    recalibration_seconds: e.recalibration_seconds,
                    evaluation_seconds: e.evaluation_seconds,
                    threads: e.threads,
                },
            );
        }
    }
    if !prior.is_empty() {
        tracing::info!("reusing {} scores from {} earlier search(es)", prior.len(), cfg.runtime.reuse.len());
    }
    Ok(prior)
}

/// `summary.json` of a search folder: what this invocation did and what it cost.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SearchSummary {
    /// Candidates in the ledger.
    pub evaluated: usize,
    /// Candidates evaluated by this invocation (the rest came from an earlier, interrupted one).
    pub evaluated_now: usize,
    /// Wall time of this invocation, seconds.
    pub seconds: f64,
    /// Mean BN recalibration time per candidate, seconds.
    pub mean_recalibration_seconds: f64,
    /// Mean evaluation time per candidate, seconds.
    pub mean_evaluation_seconds: f64,
    /// Resident memory of this invocation (every worker included; MiB).
    pub memory: MemoryRecord,
}

/// Runs (or resumes) the search of `cfg` into `opts.out`.
///
/// # Errors
/// [`SearchError::Config`] for an invalid configuration, a mismatched `runtime.reuse` folder or
/// no candidate; [`SearchError::Train`] when `opts.out` holds another configuration or the
/// supernet cannot be opened; and as [`latency_table`] and [`engine::run`].
///
/// # Panics
/// Never: the search state exists once the loop ran.
pub fn search(cfg: &SearchConfig, opts: &SearchOptions) -> Result<SearchReport, SearchError> {
    cfg.check()?;
    cfg.runtime.apply_compute_settings();
    let started = std::time::Instant::now();
    let meter = PeakMeter::observe();
    let hash = cfg.result_hash();
    let config_toml = cfg.to_toml();
    if let Some(pg) = opts.dist.as_ref().filter(|pg| pg.rank() != 0) {
        return serve_search(cfg, opts, pg, &hash);
    }
    // The supernet (or space) first: a configuration that cannot be searched leaves no folder.
    let info = SupernetInfo::open(cfg)?;
    cfg.claim_run_dir(&opts.out, detnas_runtime::checkpoint::MismatchOverride::None)?;
    let devices = if opts.devices.is_empty() { vec![Device::Cpu] } else { opts.devices.clone() };
    let latency = if cfg.constraint.max_latency_ms.is_some() || cfg.constraint.latency_table.is_some() {
        Some(latency_table(cfg, &info.space, &opts.out, devices[0])?)
    } else {
        None
    };
    let limits = Limits {
        space: info.space.clone(),
        constraint: cfg.constraint.constraint(),
        model: cfg.constraint.cost_model(),
        max_latency_ms: cfg.constraint.max_latency_ms,
        latency,
    };
    let prior = reused_scores(cfg, &info)?;
    let setup = SearchSetup {
        strategy: cfg.strategy.clone(),
        seed: cfg.seed,
        limits: limits.clone(),
        config_hash: hash.clone(),
        dir: opts.out.clone(),
        progress: opts.progress,
        prior,
        cancel: opts.cancel.clone(),
    };
    let finished = engine::read_state(&opts.out)?.is_some_and(|s| s.finished);
    let outcome = if finished {
        // Nothing to evaluate: do not load the supernet.
        let entries = crate::ledger::read(&engine::ledger_path(&opts.out))?;
        let state = engine::read_state(&opts.out)?.expect("present");
        Outcome { top: engine::top_entries(&state, &entries), state, entries, evaluated_now: 0 }
    } else {
        let (info2, cfg2, threads) = (info.clone(), cfg.clone(), opts.threads_per_worker);
        let devs = devices.clone();
        let factory: EvaluatorFactory = Arc::new(move |w| {
            if let Some(t) = threads {
                tch::set_num_threads(t);
            }
            info2.evaluator(&cfg2, devs[w % devs.len()])
        });
        let mut workers = match &opts.dist {
            Some(pg) => Workers::remote(crate::remote::Remote::new(
                pg.clone(),
                info.evaluator(cfg, devices[0])?,
                &queue_prefix(&hash),
                pg.timeout(),
            )),
            None => Workers::new(factory, opts.workers.max(1))?,
        };
        tracing::info!(
            "searching {} ({}, {} fitness) with {} worker(s); constraint: {}",
            info.space.name,
            cfg.strategy.kind,
            metric_name(cfg),
            workers.count(),
            cfg.constraint.describe()
        );
        let outcome = engine::run(&setup, &mut workers);
        if outcome.is_err() {
            let _ = workers.stop_remote();
        }
        outcome?
    };
    let top = outcome.top.first().ok_or_else(|| SearchError::Config("the search evaluated no candidate".into()))?;
    let best = BestArch {
        arch: top.arch.clone(),
        space: info.space.clone(),
        backbone_macs: top.backbone_macs,
        backbone_params: top.backbone_params,
        input: limits.model.input,
        latency_ms: top.latency_ms,
        fitness: top.fitness,
        fitness_kind: cfg.supernet.fitness,
        metric: metric_name(cfg),
        metrics: top.metrics.clone(),
        strategy: cfg.strategy.kind,
        constraint: cfg.constraint.describe(),
        evaluated: outcome.entries.len(),
        provenance: Provenance {
            supernet_checkpoint: info.checkpoint.clone(),
            supernet_step: info.step,
            supernet_sha256: info.model_sha256.clone(),
            config_hash: hash.clone(),
            config: config_toml,
            seed: cfg.seed,
            code_version: detnas_runtime::code_version(),
        },
        top_k: outcome.top.clone(),
    };
    write_json_atomic(&opts.out.join("best_arch.json"), &best)?;
    // The worker ranks read best_arch.json once told to stop.
    if let Some(pg) = &opts.dist {
        crate::remote::stop_all(pg, &queue_prefix(&hash))?;
    }
    let n = outcome.entries.len().max(1) as f64;
    let summary = SearchSummary {
        evaluated: outcome.entries.len(),
        evaluated_now: outcome.evaluated_now,
        seconds: started.elapsed().as_secs_f64(),
        mean_recalibration_seconds: outcome.entries.iter().map(|e| e.recalibration_seconds).sum::<f64>() / n,
        mean_evaluation_seconds: outcome.entries.iter().map(|e| e.evaluation_seconds).sum::<f64>() / n,
        memory: MemoryRecord {
            gpu_peak_mib: devices.iter().filter_map(|&d| detnas_dist::cuda_memory::peak_of(d)).reduce(f64::max),
            ..meter.finish()
        },
    };
    write_json_atomic(&opts.out.join("summary.json"), &summary)?;
    if let Some(pg) = &opts.dist {
        crate::remote::await_stopped(pg, &queue_prefix(&hash), std::time::Duration::from_secs(15));
    }
    Ok(SearchReport {
        mean_recalibration_seconds: summary.mean_recalibration_seconds,
        mean_evaluation_seconds: summary.mean_evaluation_seconds,
        best,
        outcome,
    })
}

/// The store prefix of a search's job queue (distinct for every configuration, so the DetNAS
/// and ClsNAS searches of one pipeline job never share it).
fn queue_prefix(hash: &str) -> String {
    format!("search/{}", &hash[..16.min(hash.len())])
}

/// A worker rank's search: evaluate what rank 0 hands out, then read the result rank 0
/// wrote.
fn serve_search(
    cfg: &SearchConfig,
    opts: &SearchOptions,
    pg: &ProcessGroup,
    hash: &str,
) -> Result<SearchReport, SearchError> {
    let info = SupernetInfo::open(cfg)?;
    let finished = engine::read_state(&opts.out)?.is_some_and(|s| s.finished);
    if !finished {
        let device = opts.devices.first().copied().unwrap_or(Device::Cpu);
        let mut eval = info.evaluator(cfg, device)?;
        let n = crate::remote::serve(pg, &info.space, eval.as_mut(), &queue_prefix(hash), pg.timeout())?;
        tracing::debug!("rank {} evaluated {n} candidates", pg.rank());
    }
    report_of(&opts.out)
}

/// The report of a finished search folder, from its files.
fn report_of(dir: &Path) -> Result<SearchReport, SearchError> {
    let best = read_best(dir)?;
    let entries = crate::ledger::read(&engine::ledger_path(dir))?;
    let state = engine::read_state(dir)?
        .ok_or_else(|| SearchError::Config(format!("{}: no state.json after the search", dir.display())))?;
    let n = entries.len().max(1) as f64;
    Ok(SearchReport {
        mean_recalibration_seconds: entries.iter().map(|e| e.recalibration_seconds).sum::<f64>() / n,
        mean_evaluation_seconds: entries.iter().map(|e| e.evaluation_seconds).sum::<f64>() / n,
        outcome: Outcome { top: engine::top_entries(&state, &entries), state, entries, evaluated_now: 0 },
        best,
    })
}

/// Reads `best_arch.json` of a search folder.
///
/// # Errors
/// [`SearchError::Io`] when `best_arch.json` cannot be read; [`SearchError::Ledger`] when it is
/// Refuses a search folder whose supernet checkpoint (`info`, resolved now) is no longer the
/// one its ledger scored, e.g. training went on after the search: old and new scores would
/// not compare.
///
/// # Errors
/// [`SearchError::Train`] with a checkpoint error (exit 5) naming both hashes, or the error
/// reading `best_arch.json`.
pub fn check_scored(dir: &Path, info: &crate::fitness::SupernetInfo) -> Result<(), SearchError> {
    let scored = read_best(dir)?.provenance.supernet_sha256;
    if scored != info.model_sha256 {
        return Err(SearchError::Train(detnas_train::TrainError::Checkpoint {
            path: info.checkpoint.clone(),
            message: format!(
                "not the supernet {} scored (SHA-256 {}…, now {}…): did training go on after the search?",
                dir.display(),
                &scored[..scored.len().min(12)],
                &info.model_sha256[..info.model_sha256.len().min(12)]
            ),
        }));
    }
    Ok(())
}

/// Reads a finished search's `best_arch.json`.
///
/// # Errors
/// [`SearchError::Io`] when the file cannot be read; [`SearchError::Ledger`] when it is
/// malformed.
pub fn read_best(dir: &Path) -> Result<BestArch, SearchError> {
    let p = dir.join("best_arch.json");
    let text = std::fs::read_to_string(&p).map_err(|e| SearchError::io(&p, e))?;
    serde_json::from_str(&text).map_err(|e| SearchError::Ledger { path: p, line: 0, message: e.to_string() })
}
