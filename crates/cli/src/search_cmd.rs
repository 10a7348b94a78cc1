//! `detnas search`: evolutionary (or random) architecture search on a trained supernet, and
//! `detnas search show RUN` to read a search folder.

use crate::Failure;
use crate::runtime::{JobArgs, describe, parse_device};
use anyhow::anyhow;
use clap::{Args, Subcommand};
use detnas_search::engine::{SearchState, ledger_path, read_state};
use detnas_search::ledger::{self, LedgerEntry};
use detnas_search::run::read_best;
use detnas_search::{SearchConfig, SearchOptions, search};
use detnas_space::format_count;
use std::path::{Path, PathBuf};
use tch::Device;

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct SearchArgs {
    #[command(subcommand)]
    show: Option<SearchSub>,
    /// Configuration file (TOML); see configs/demo/search.toml.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Search folder: config, ledger.jsonl, state.json, best_arch.json. Re-running the same
    /// command resumes where it stopped.
    #[arg(long, default_value = "runs/search")]
    out: PathBuf,
    #[command(flatten)]
    job: JobArgs,
    /// Parallel evaluation workers (overrides runtime.workers).
    #[arg(long)]
    workers: Option<usize>,
}

#[derive(Subcommand)]
enum SearchSub {
    /// Top-k table, per-generation best/mean and the constraint of a search folder.
    Show {
        /// The search folder.
        dir: PathBuf,
        /// Print one JSON object instead of tables.
        #[arg(long)]
        json: bool,
        /// Rows of the top table.
        #[arg(long, default_value_t = 10)]
        top: usize,
    },
}

pub fn run(a: SearchArgs) -> Result<(), Failure> {
    if let Some(SearchSub::Show { dir, json, top }) = a.show {
        return show(&dir, json, top);
    }
    let Some(path) = a.config else {
        return Err(crate::usage(anyhow!("detnas search needs --config FILE (or: detnas search show RUN_DIR)")));
    };
    let mut overrides = a.job.all_overrides("runtime.");
    if let Some(w) = a.workers {
        overrides.push(format!("runtime.workers={w}"));
    }
    let cfg = SearchConfig::load(&path, &overrides)?;
    let launch = crate::dist_cmd::launch()?;
    let device =
        crate::dist_cmd::rank_device(parse_device(&cfg.runtime.device).map_err(crate::usage)?, launch.as_ref());
    let gpus = if tch::Cuda::is_available() { tch::Cuda::device_count() as usize } else { 0 };
    // Several GPUs and the generic `cuda`/`auto`: one worker per GPU (in a job: one per rank).
    let devices: Vec<Device> = match (device, cfg.runtime.device.as_str()) {
        (Device::Cuda(_), "cuda" | "auto") if gpus > 1 && launch.is_none() => (0..gpus).map(Device::Cuda).collect(),
        _ => vec![device],
    };
    let dist =
        crate::dist_cmd::join(launch.as_ref(), device, std::time::Duration::from_secs(cfg.runtime.dist_timeout_s))?;
    if let Some(t) = cfg.runtime.threads {
        if t < 1 {
            return Err(crate::usage(anyhow!("runtime.threads must be at least 1")));
        }
        tch::set_num_threads(t);
    }
    let total = tch::get_num_threads().max(1);
    let (workers, threads_per_worker) = match cfg.runtime.workers {
        None => detnas_search::run::default_workers(&devices, total),
        Some(w) if w > 1 && device == Device::Cpu => (w, Some(detnas_search::run::threads_per_cpu_worker(total, w))),
        Some(w) => (w, cfg.runtime.threads),
    };
    tracing::info!("search on {} with {workers} worker(s) into {}", describe(device), a.out.display());
    let r = search(
        &cfg,
        &SearchOptions {
            out: a.out.clone(),
            devices,
            workers,
            threads_per_worker,
            progress: !a.job.no_progress,
            cancel: crate::cancel_on_signals()?,
            dist,
        },
    )?;
    if crate::dist_cmd::is_follower(launch.as_ref()) {
        return Ok(()); // rank 0 prints the job's results
    }
    let b = &r.best;
    println!(
        "best {}  {} {:.4}  backbone {} MACs, {} params{}  ({} candidates evaluated; recalibration {:.2} s + evaluation {:.2} s per candidate)",
        b.arch,
        b.metric,
        b.fitness,
        format_count(b.backbone_macs),
        format_count(b.backbone_params),
        b.latency_ms.map(|l| format!(", {l:.2} ms")).unwrap_or_default(),
        b.evaluated,
        r.mean_recalibration_seconds,
        r.mean_evaluation_seconds
    );
    if let Some(reason) = &r.outcome.state.stop_reason {
        println!("stopped early: {reason}");
    }
    println!("search done: {}", a.out.join("best_arch.json").display());
    Ok(())
}

fn table_row(rank: usize, e: &LedgerEntry) -> String {
    format!(
        "{rank:>4}  {}  {:>9.4}  {:>8}  {:>8}  {:>9}  {:>4}  {:>9}",
        e.arch,
        e.fitness,
        format_count(e.backbone_macs),
        format_count(e.backbone_params),
        e.latency_ms.map(|l| format!("{l:.2}")).unwrap_or_else(|| "-".into()),
        e.generation,
        e.origin
    )
}

fn show(dir: &Path, json: bool, top: usize) -> Result<(), Failure> {
    let cfg_text = std::fs::read_to_string(dir.join("config.toml"))
        .map_err(|e| crate::usage(anyhow!("{}: not a search folder ({e})", dir.display())))?;
    let cfg: SearchConfig =
        toml::from_str(&cfg_text).map_err(|e| crate::usage(anyhow!("{}/config.toml: {e}", dir.display())))?;
    let entries = match ledger::read(&ledger_path(dir)) {
        Ok(e) => e,
        Err(detnas_search::SearchError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Vec::new()
        }
        Err(e) => return Err(e.into()),
    };
    let state: Option<SearchState> = read_state(dir)?;
    let mut ranked = entries.clone();
    ranked.sort_by(|a, b| b.fitness.total_cmp(&a.fitness).then_with(|| a.arch.cmp(&b.arch)));
    ranked.truncate(top);
    let n = entries.len().max(1) as f64;
    let recal = entries.iter().map(|e| e.recalibration_seconds).sum::<f64>() / n;
    let eval = entries.iter().map(|e| e.evaluation_seconds).sum::<f64>() / n;
    let best = read_best(dir).ok();
    if json {
        println!(
            "{}",
            serde_json::json!({
                "fitness": cfg.supernet.fitness, "strategy": cfg.strategy.kind,
                "constraint": cfg.constraint.describe(), "evaluated": entries.len(),
                "generations_done": state.as_ref().map(|s| s.generations_done),
                "finished": state.as_ref().map(|s| s.finished),
                "history": state.as_ref().map(|s| &s.history),
                "top": ranked, "best": best,
                "mean_recalibration_seconds": recal, "mean_evaluation_seconds": eval,
            })
        );
        return Ok(());
    }
    let s = &cfg.strategy;
    println!("search     {}", dir.display());
    println!("supernet   {} (fitness: {})", cfg.supernet.checkpoint.display(), cfg.supernet.fitness);
    println!(
        "strategy   {}: population {}, top-{}, {} generations, {} mutations (p {}), {} crossovers, seed {}",
        s.kind, s.population, s.top_k, s.generations, s.mutations, s.mutation_prob, s.crossovers, cfg.seed
    );
    println!("constraint {}", cfg.constraint.describe());
    match &state {
        Some(st) if st.finished => {
            println!("status     finished: {} generations, {} candidates", st.generations_done, entries.len())
        }
        Some(st) => println!(
            "status     in progress: {} of {} generations done, {} candidates in the ledger",
            st.generations_done,
            s.generations,
            entries.len()
        ),
        None => println!("status     started: {} candidates in the ledger", entries.len()),
    }
    if let Some(reason) = state.as_ref().and_then(|s| s.stop_reason.as_ref()) {
        println!("stopped    {reason}");
    }
    println!("timing     {recal:.2} s recalibration + {eval:.2} s evaluation per candidate (mean)");
    if let Some(st) = &state {
        println!("\n  gen  candidates       best       mean   top-k best  top-k mean");
        for h in &st.history {
            println!(
                "{:>5}  {:>10}  {:>9.4}  {:>9.4}  {:>11.4}  {:>10.4}",
                h.generation, h.candidates, h.best, h.mean, h.elite_best, h.elite_mean
            );
        }
    }
    println!(
        "\nrank  arch{}    fitness      MACs    params  lat. (ms)   gen     origin",
        " ".repeat(ranked.first().map_or(0, |e| e.arch.len().saturating_sub(4)))
    );
    for (i, e) in ranked.iter().enumerate() {
        println!("{}", table_row(i + 1, e));
    }
    if let Some(b) = best {
        println!("\nbest_arch.json: {} ({} {:.4})", b.arch, b.metric, b.fitness);
    }
    Ok(())
}
