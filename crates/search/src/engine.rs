//! The search loop: proposes each generation, evaluates what the ledger does not already
//! hold, updates the elitist archive and checkpoints the state after every generation.
//!
//! Exact resume: generation `g`'s proposal is a deterministic function of the seed, `g`, the
//! archive after `g − 1` and the architectures evaluated in generations `< g` — all of which
//! are recovered from `state.json` and the ledger. A restarted search therefore proposes
//! the same candidates, takes the already-ledgered ones from the ledger (fitness values
//! round-trip exactly through JSON) and evaluates only the rest, ending with the same
//! archive as an uninterrupted run.

use crate::SearchError;
use crate::config::StrategyConfig;
use crate::evolution::{Limits, Scored, propose, update_elite};
use crate::ledger::{Ledger, LedgerEntry};
use crate::workers::{Evaluation, Workers};
use detnas_data::mix_seed;
use detnas_runtime::fsx::write_json_atomic;
use detnas_runtime::{Cancel, fault};
use detnas_space::Arch;
use detnas_space::rng::seeded;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What the search needs besides the evaluators.
#[derive(Clone, Debug)]
pub struct SearchSetup {
    /// Evolution parameters (`[strategy]`).
    pub strategy: StrategyConfig,
    /// Seed of the evolution's draws.
    pub seed: u64,
    /// The FLOPs, parameter and latency limits a candidate must meet.
    pub limits: Limits,
    /// Result hash of the configuration: a folder holding another one's state is refused.
    pub config_hash: String,
    /// Folder of `ledger.jsonl` and `state.json`.
    pub dir: PathBuf,
    /// Draw a progress bar on stderr.
    pub progress: bool,
    /// Scores known from other searches of the same supernet under the same evaluation
    /// settings (`runtime.reuse`): taken instead of evaluating again (exact, since a
    /// candidate's score depends only on the architecture).
    pub prior: HashMap<Arch, Evaluation>,
    /// Raised by the binary's signal handlers: stop after the candidate being recorded.
    pub cancel: Cancel,
}

/// An archive member as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EliteEntry {
    /// The architecture (one choice digit per block).
    pub arch: String,
    /// Its fitness.
    pub fitness: f64,
}

/// One finished generation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GenerationRecord {
    /// Generation number, from 0.
    pub generation: usize,
    /// Candidates scored in the generation.
    pub candidates: usize,
    /// Candidates evaluated in this process (the others came from the ledger).
    pub evaluated_now: usize,
    /// Candidates the generation lacked (no new architecture met the limits).
    pub shortfall: usize,
    /// Best fitness of the generation.
    pub best: f64,
    /// Mean fitness of the generation.
    pub mean: f64,
    /// Best and mean of the archive after the generation.
    pub elite_best: f64,
    /// Mean fitness of the archive after the generation.
    pub elite_mean: f64,
}

/// `state.json`: the search after its last finished generation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SearchState {
    /// Version of this layout; another is refused.
    pub format: u32,
    /// Result hash of the search's configuration (a folder of another is refused).
    pub config_hash: String,
    /// Finished generations.
    pub generations_done: usize,
    /// Candidates of finished generations.
    pub evaluated: usize,
    /// The archive (top-k), best first.
    pub elite: Vec<EliteEntry>,
    /// One record per finished generation.
    pub history: Vec<GenerationRecord>,
    /// Whether the search ended (every generation, or stopped early).
    pub finished: bool,
    /// Why the search ended before its last generation, if it did.
    pub stop_reason: Option<String>,
}

/// The result of [`run`].
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The search's state at the end.
    pub state: SearchState,
    /// The top-k, best first, with their ledger entries.
    pub top: Vec<LedgerEntry>,
    /// Every ledger entry.
    pub entries: Vec<LedgerEntry>,
    /// Candidates evaluated by this process.
    pub evaluated_now: usize,
}

/// `dir/state.json`.
pub fn state_path(dir: &Path) -> PathBuf {
    dir.join("state.json")
}

/// `dir/ledger.jsonl`.
pub fn ledger_path(dir: &Path) -> PathBuf {
    dir.join("ledger.jsonl")
}

/// Reads `state.json` of a search folder, if present.
///
/// # Errors
/// [`SearchError::Io`] when `state.json` exists but cannot be read; [`SearchError::Ledger`]
/// when it is malformed.
pub fn read_state(dir: &Path) -> Result<Option<SearchState>, SearchError> {
    let p = state_path(dir);
    match std::fs::read_to_string(&p) {
        Ok(t) => serde_json::from_str(&t).map(Some).map_err(|e| SearchError::Ledger {
            path: p,
            line: 0,
            message: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(SearchError::io(p, e)),
    }
}

fn mean(v: impl Iterator<Item = f64>) -> f64 {
    let (s, n) = v.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    if n == 0 { f64::NAN } else { s / n as f64 }
}

/// Runs (or resumes) the search in `setup.dir`.
///
/// # Errors
/// [`SearchError::Space`] when the limits cannot be met; [`SearchError::Config`] when the
/// folder belongs to another configuration; [`SearchError::Ledger`] for a malformed ledger or
/// one at odds with `state.json`; [`SearchError::Interrupted`]; I/O and evaluation errors.
pub fn run(setup: &SearchSetup, workers: &mut Workers) -> Result<Outcome, SearchError> {
    let cfg = &setup.strategy;
    let space = &setup.limits.space;
    setup.limits.check_satisfiable()?;
    std::fs::create_dir_all(&setup.dir).map_err(|e| SearchError::io(&setup.dir, e))?;
    let lpath = ledger_path(&setup.dir);
    let (mut ledger, entries) = Ledger::open(&lpath)?;
    let mut state = match read_state(&setup.dir)? {
        Some(s) if s.config_hash != setup.config_hash => {
            return Err(SearchError::Config(format!(
                "{} belongs to a search with another configuration; use another output folder",
                state_path(&setup.dir).display()
            )));
        }
        Some(s) => s,
        None => SearchState {
            format: 1,
            config_hash: setup.config_hash.clone(),
            generations_done: 0,
            evaluated: 0,
            elite: Vec::new(),
            history: Vec::new(),
            finished: false,
            stop_reason: None,
        },
    };
    let mut cache: HashMap<Arch, LedgerEntry> = HashMap::new();
    let mut visited: HashSet<Arch> = HashSet::new();
    for (i, e) in entries.iter().enumerate() {
        let arch = space.parse_arch(&e.arch).map_err(|err| SearchError::Ledger {
            path: lpath.clone(),
            line: i + 1,
            message: err.to_string(),
        })?;
        if e.generation < state.generations_done {
            visited.insert(arch.clone());
        }
        cache.insert(arch, e.clone());
    }
    if visited.len() != state.evaluated {
        return Err(SearchError::Ledger {
            path: lpath,
            line: 0,
            message: format!(
                "holds {} candidates of the {} finished generations but state.json counts {}",
                visited.len(),
                state.generations_done,
                state.evaluated
            ),
        });
    }
    let mut elite: Vec<Scored> = state
        .elite
        .iter()
        .map(|e| Ok(Scored { arch: space.parse_arch(&e.arch)?, fitness: e.fitness }))
        .collect::<Result<_, SearchError>>()?;
    let mut evaluated_now = 0usize;
    let mut all_entries = entries;
    if state.generations_done > 0 || !all_entries.is_empty() {
        tracing::info!(
            "resuming the search: {} generation(s) done ({} candidates in the ledger)",
            state.generations_done,
            all_entries.len()
        );
    }
    let pb = detnas_runtime::progress::bar(
        (cfg.population * cfg.generations) as u64,
        all_entries.len() as u64,
        "search",
        setup.progress && !state.finished,
    );
    let started = Instant::now();
    let mut best_so_far = all_entries.iter().map(|e| e.fitness).fold(f64::NEG_INFINITY, f64::max);
    while !state.finished && state.generations_done < cfg.generations {
        let g = state.generations_done;
        let mut rng = seeded(mix_seed(setup.seed, &[detnas_data::streams::SEARCH_GENERATION, g as u64]));
        let proposal = propose(cfg, &setup.limits, &elite, &visited, g, &mut rng);
        if proposal.shortfall > 0 {
            tracing::warn!(
                "generation {g}: found only {} new architectures within the limits ({} of {} slots empty): the constrained space is nearly exhausted; continuing with what there is",
                proposal.candidates.len(),
                proposal.shortfall,
                cfg.population
            );
        }
        if proposal.candidates.is_empty() {
            state.stop_reason = Some(format!(
                "generation {g}: no architecture within the limits is left unevaluated ({} evaluated)",
                visited.len()
            ));
            tracing::warn!("{}; stopping", state.stop_reason.as_deref().unwrap_or(""));
            break;
        }
        let todo: Vec<(usize, Arch)> = proposal
            .candidates
            .iter()
            .enumerate()
            .filter(|(_, (a, _))| !cache.contains_key(a))
            .map(|(i, (a, _))| (i, a.clone()))
            .collect();
        let mut gen_sum = 0.0;
        let mut gen_n = 0usize;
        for (a, _) in &proposal.candidates {
            if let Some(e) = cache.get(a) {
                gen_sum += e.fitness;
                gen_n += 1;
            }
        }
        let now_in_gen = todo.len();
        {
            let mut on_done = |i: usize, arch: Arch, worker: usize, ev: Evaluation| -> Result<(), SearchError> {
                let m = setup.limits.measure(&arch);
                let entry = LedgerEntry {
                    generation: g,
                    index: i,
                    origin: proposal.candidates[i].1,
                    arch: arch.to_string(),
                    backbone_macs: m.backbone_macs,
                    backbone_params: m.backbone_params,
                    latency_ms: m.latency_ms,
                    fitness: ev.fitness,
                    metrics: ev.metrics,
                    recalibration_seconds: ev.recalibration_seconds,
                    evaluation_seconds: ev.evaluation_seconds,
                    worker,
                    rss_mib: detnas_runtime::mem::rss_mib(),
                    threads: ev.threads,
                };
                ledger.append(&entry)?;
                all_entries.push(entry.clone());
                fault::after_candidate(all_entries.len() as u64);
                best_so_far = best_so_far.max(entry.fitness);
                gen_sum += entry.fitness;
                gen_n += 1;
                cache.insert(arch, entry);
                evaluated_now += 1;
                if let Some(signal) = setup.cancel.requested() {
                    // The entry is in the ledger: a re-run takes it from there.
                    return Err(SearchError::Interrupted { signal, evaluated: all_entries.len() });
                }
                pb.inc(1);
                pb.set_message(format!(
                    "gen {}/{} best {best_so_far:.4} gen-mean {:.4}",
                    g + 1,
                    cfg.generations,
                    gen_sum / gen_n as f64
                ));
                Ok(())
            };
            type Jobs = Vec<(usize, Arch)>;
            let (known, todo): (Jobs, Jobs) = todo.into_iter().partition(|(_, a)| setup.prior.contains_key(a));
            for (i, a) in known {
                let ev = setup.prior[&a].clone();
                on_done(i, a, 0, ev)?;
            }
            workers.run(todo, &mut on_done)?;
        }
        let scored: Vec<Scored> =
            proposal.candidates.iter().map(|(a, _)| Scored { arch: a.clone(), fitness: cache[a].fitness }).collect();
        visited.extend(proposal.candidates.iter().map(|(a, _)| a.clone()));
        elite = update_elite(&elite, &scored, cfg.top_k);
        let rec = GenerationRecord {
            generation: g,
            candidates: scored.len(),
            evaluated_now: now_in_gen,
            shortfall: proposal.shortfall,
            best: scored.iter().map(|s| s.fitness).fold(f64::NEG_INFINITY, f64::max),
            mean: mean(scored.iter().map(|s| s.fitness)),
            elite_best: elite[0].fitness,
            elite_mean: mean(elite.iter().map(|s| s.fitness)),
        };
        tracing::info!(
            "generation {} done ({} of {}): {} candidates, best {:.4}, mean {:.4}; top-{} best {:.4}, mean {:.4}",
            g,
            g + 1,
            cfg.generations,
            rec.candidates,
            rec.best,
            rec.mean,
            cfg.top_k,
            rec.elite_best,
            rec.elite_mean
        );
        state.history.push(rec);
        state.generations_done = g + 1;
        state.evaluated = visited.len();
        state.elite = elite.iter().map(|s| EliteEntry { arch: s.arch.to_string(), fitness: s.fitness }).collect();
        write_state(&setup.dir, &state)?;
    }
    if !state.finished {
        state.finished = true;
        write_state(&setup.dir, &state)?;
    }
    pb.finish_and_clear();
    if evaluated_now > 0 {
        tracing::info!("{} candidates evaluated in {:.1} s", evaluated_now, started.elapsed().as_secs_f64());
    }
    Ok(Outcome { top: top_entries(&state, &all_entries), state, entries: all_entries, evaluated_now })
}

fn write_state(dir: &Path, state: &SearchState) -> Result<(), SearchError> {
    Ok(write_json_atomic(&state_path(dir), state)?)
}

/// The archive's ledger entries, best first.
pub fn top_entries(state: &SearchState, entries: &[LedgerEntry]) -> Vec<LedgerEntry> {
    let by_arch: HashMap<&str, &LedgerEntry> = entries.iter().map(|e| (e.arch.as_str(), e)).collect();
    state.elite.iter().filter_map(|e| by_arch.get(e.arch.as_str()).map(|x| (*x).clone())).collect()
}
