//! `detnas run` (the whole pipeline; no arguments: the embedded demo), `detnas report RUN`
//! and `detnas export RUN --out DIR`.

use crate::Failure;
use crate::runtime::{JobArgs, describe, parse_device};
use clap::Args;
use detnas_pipeline::{PipelineConfig, PipelineOptions};
use std::path::PathBuf;

#[derive(Args)]
pub struct RunArgs {
    /// Pipeline configuration (TOML); default: the embedded demo (configs/demo/pipeline.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Run folder; re-running the same command resumes where it stopped.
    #[arg(long, default_value = "runs/demo")]
    out: PathBuf,
    /// A stage whose configuration or inputs changed since it ran is run again, with every
    /// stage after it, in fresh folders (the old ones move to RUN/replaced/); without it such
    /// a run is refused with the changed keys.
    #[arg(long)]
    rerun_changed: bool,
    #[command(flatten)]
    job: JobArgs,
}

#[derive(Args)]
pub struct ReportArgs {
    /// The run folder.
    run: PathBuf,
}

#[derive(Args)]
pub struct ExportArgs {
    /// What to export: a pipeline run (its retrained found architecture), a retraining folder
    /// (RUN/retrain-NAME) or fine-tuning run of a fixed architecture, a supernet fine-tuning
    /// folder (RUN/finetune or a detnas finetune run) or a detection search folder
    /// (RUN/search). The last two export a path with the supernet's weights, not retrained.
    src: PathBuf,
    /// Output folder.
    #[arg(long)]
    out: PathBuf,
    /// The path of a supernet to export (default: the run's or search's found architecture).
    #[arg(long)]
    arch: Option<String>,
    /// A Python with torch and onnxruntime: also measure PyTorch eager's and ONNX Runtime's
    /// latency with the exported model.py and predict_onnx.py, beside detnas's, for the
    /// export's README.
    #[arg(long)]
    python: Option<PathBuf>,
    /// The network input of the latency measurements, HEIGHTxWIDTH pixels (the first test
    /// image resized to it; default: as evaluation prepares it).
    #[arg(long, value_parser = parse_input)]
    input: Option<[i64; 2]>,
    /// Put decoding, clipping and NMS into detector.onnx too (ONNX NonMaxSuppression and
    /// RoiAlign): it then also takes image_sizes [N, 2] and gives num_detections,
    /// detection_boxes, detection_scores and detection_classes.
    #[arg(long)]
    onnx_nms: bool,
}

fn parse_input(s: &str) -> Result<[i64; 2], String> {
    let bad = || format!("'{s}': give HEIGHTxWIDTH in pixels, e.g. 800x1344");
    let (h, w) = s.split_once(['x', 'X', '×']).ok_or_else(bad)?;
    let (h, w): (i64, i64) = (h.trim().parse().map_err(|_| bad())?, w.trim().parse().map_err(|_| bad())?);
    if h < 32 || w < 32 || h > 8192 || w > 8192 {
        return Err(format!("'{s}': each side must be within 32–8192 pixels"));
    }
    Ok([h, w])
}

pub fn run(a: RunArgs) -> Result<(), Failure> {
    let overrides = a.job.all_overrides("");
    let path = match &a.config {
        Some(p) => p.clone(),
        None => PipelineConfig::write_embedded(&a.out.join("configs"))?,
    };
    let cfg = PipelineConfig::load(&path, &overrides)?;
    if let Some(t) = cfg.threads {
        tch::set_num_threads(t.max(1));
    }
    let launch = crate::dist_cmd::launch()?;
    let device = crate::dist_cmd::rank_device(parse_device(&cfg.device).map_err(crate::usage)?, launch.as_ref());
    let dist = crate::dist_cmd::join(launch.as_ref(), device, std::time::Duration::from_secs(cfg.dist_timeout_s))?;
    tracing::info!("pipeline '{}' on {} into {}", cfg.name, describe(device), a.out.display());
    let opts = PipelineOptions {
        out: a.out.clone(),
        device,
        progress: !a.job.no_progress,
        cancel: crate::cancel_on_signals()?,
        dist,
        rerun_changed: a.rerun_changed,
    };
    let o = detnas_pipeline::run(&cfg, &opts)?;
    if crate::dist_cmd::is_follower(launch.as_ref()) {
        return Ok(()); // rank 0 prints the job's results
    }
    println!(
        "found architecture {} ({} {:.4} on the search-validation split)",
        o.found.arch, o.found.metric, o.found.fitness
    );
    if let Some(c) = &o.clsnas {
        println!("ClsNAS architecture {} (top-1 {:.4})", c.arch, c.fitness);
    }
    for r in &o.retrained {
        if let Some(p) = r.det.paths.first() {
            println!(
                "{:<7} {}  test AP {:.3}  AP50 {:.3}  AP75 {:.3}",
                r.label,
                r.arch,
                p.stats.ap(),
                p.stats.ap50(),
                p.stats.ap75()
            );
        }
    }
    let grid = detnas_pipeline::layout::finished::<detnas_pipeline::layout::GridRecord>(
        &detnas_pipeline::layout::baseline_grid(&a.out),
    );
    if let Some(stats) = grid.and_then(|(_, g)| g.test) {
        println!(
            "{:<7} {:<width$}  test AP {:.3}  AP50 {:.3}  AP75 {:.3}  (trivial baseline, no training)",
            "grid",
            "—",
            stats.ap(),
            stats.ap50(),
            stats.ap75(),
            width = o.found.arch.len()
        );
    }
    print_warnings(&a.out);
    println!("report: {}", a.out.join("report/report.html").display());
    Ok(())
}

/// The run's honest warnings ([`detnas_pipeline::report::warnings`]) on stderr.
fn print_warnings(run: &std::path::Path) {
    for w in detnas_pipeline::report::warnings(run) {
        eprintln!("warning: {w}");
    }
}

pub fn report(a: ReportArgs) -> Result<(), Failure> {
    if !a.run.join("pipeline.toml").is_file() {
        return Err(crate::usage(anyhow::anyhow!(
            "{} is not a pipeline run folder (no pipeline.toml): `detnas report` reads what `detnas run --out DIR` wrote",
            a.run.display()
        )));
    }
    let dir = detnas_pipeline::write_report(&a.run)?;
    print_warnings(&a.run);
    println!("report: {}", dir.join("report.html").display());
    Ok(())
}

pub fn export(a: ExportArgs) -> Result<(), Failure> {
    let dir = detnas_pipeline::export::export(
        &a.src,
        a.arch.as_deref(),
        &detnas_pipeline::export::Options { python: a.python, input: a.input, onnx_nms: a.onnx_nms },
        &a.out,
    )?;
    println!("exported to {}", dir.display());
    Ok(())
}

#[derive(Args)]
pub struct RankCheckArgs {
    /// A pipeline run folder whose search has finished.
    run: PathBuf,
    /// Architectures drawn from the search ledger, stratified over AP and MACs (the found
    /// and the ClsNAS architectures are added).
    #[arg(long, default_value_t = 20)]
    archs: usize,
    /// Trainings per architecture: seeds 0..S (plus the run's seed, as for every stage).
    /// May change between invocations: more seeds train only the new units.
    #[arg(long, default_value_t = 2)]
    seeds: usize,
    /// Override a key of the retraining's detection config, after the pipeline's
    /// retrain.det_set (repeatable): `--set schedule.iterations=200`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Override a key of the retraining's classification config, after retrain.cls_set
    /// (retrain.mode = "scratch" only; repeatable).
    #[arg(long = "cls-set", value_name = "KEY=VALUE")]
    cls_set: Vec<String>,
    /// Supernets that rank the architectures: the search's own (0) and K − 1 more, fine-tuned
    /// again from the same pre-trained supernet with the search's fine-tuning seed plus
    /// 1..K−1 (each scored with the search's settings on its own search-validation split).
    /// Shows how much of the ranking is the luck of one fine-tuning. May change between
    /// invocations.
    #[arg(long, default_value_t = 1)]
    supernets: usize,
    /// Skip the control (the architectures scored on the detector at initialisation).
    #[arg(long)]
    no_control: bool,
    /// Bootstrap resamples of the τ interval.
    #[arg(long, default_value_t = 10_000)]
    resamples: usize,
    /// Seed of the draw, the control's initialisation and the bootstrap.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Device: cpu, cuda, cuda:N, auto (default: the pipeline's).
    #[arg(long)]
    device: Option<String>,
    /// libtorch threads.
    #[arg(long)]
    threads: Option<i32>,
    /// No progress bars.
    #[arg(long)]
    no_progress: bool,
    /// Print result.json instead of the summary.
    #[arg(long)]
    json: bool,
}

pub fn rank_check(a: RankCheckArgs) -> Result<(), Failure> {
    use detnas_pipeline::rank_check::{self, RankCheckOptions};
    let cfg = PipelineConfig::of_run(&a.run).map_err(crate::usage)?;
    if let Some(t) = a.threads.or(cfg.threads) {
        if t < 1 {
            return Err(crate::usage(anyhow::anyhow!("--threads must be at least 1, got {t}")));
        }
        tch::set_num_threads(t);
    }
    let device = parse_device(a.device.as_deref().unwrap_or(&cfg.device)).map_err(crate::usage)?;
    let o = RankCheckOptions {
        archs: a.archs,
        seeds: a.seeds,
        set: a.set,
        cls_set: a.cls_set,
        supernets: a.supernets,
        control: !a.no_control,
        resamples: a.resamples,
        seed: a.seed,
    };
    let opts = PipelineOptions {
        out: a.run.clone(),
        device,
        progress: !a.no_progress,
        cancel: crate::cancel_on_signals()?,
        dist: None,
        rerun_changed: false,
    };
    let r = detnas_pipeline::check_ranking(&cfg, &a.run, &o, &opts)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r).expect("serialisable"));
        return Ok(());
    }
    let f = |v: Option<f64>| v.map_or("–".into(), |v| format!("{v:.3}"));
    let ci = |v: Option<[f64; 2]>| v.map_or("–".into(), |[a, b]| format!("[{a:.3}, {b:.3}]"));
    println!(
        "{} architectures × {} seed(s); ground truth: test AP after retraining each on its own (retrain.mode = {})",
        r.n, r.seeds, r.retrain_mode
    );
    println!(
        "  ground truth: spread (best − worst) {}, seed noise (sd) {}, τ between seeds {}",
        f(r.spread),
        f(r.seed_sd),
        f(r.seed_tau)
    );
    println!("  chance: τ sd {} at n = {}", f(r.tau_chance_sd), r.n);
    let detnas = format!("DetNAS (fine-tuned supernet {})", r.metric);
    let rows = std::iter::once((detnas.as_str(), Some(&r.detnas))).chain([
        ("ClsNAS (pre-trained supernet top-1)", r.clsnas.as_ref()),
        ("control (detector at initialisation)", r.init_control.as_ref()),
    ]);
    for (name, ag) in rows {
        let Some(ag) = ag else { continue };
        let chosen = match (&ag.chosen, ag.chosen_percentile) {
            (Some(c), Some(p)) => format!("; its choice {c} beats {:.0} % of the others", 100.0 * p),
            _ => String::new(),
        };
        println!(
            "  {name}: τ {} (95 % CI {}), Spearman {}{chosen}",
            f(ag.kendall_tau),
            ci(ag.tau_ci95),
            f(ag.spearman)
        );
    }
    let best = |ag: &rank_check::Agreement| match (&ag.chosen, ag.chosen_percentile) {
        (Some(c), Some(p)) => format!("; its best {c} beats {:.0} %", 100.0 * p),
        _ => String::new(),
    };
    for (k, ag) in r.supernets.iter().enumerate() {
        let which = if k == 0 { " (the search's)".to_string() } else { format!(" (seed + {k})") };
        println!("  supernet {k}{which}: τ {} (95 % CI {}){}", f(ag.kendall_tau), ci(ag.tau_ci95), best(ag));
    }
    if r.supernet_tau_mean.is_some() {
        println!("  supernets' τ: mean {}, sd {}", f(r.supernet_tau_mean), f(r.supernet_tau_sd));
    }
    if let Some(ag) = &r.supernet_mean {
        println!(
            "  mean of the {} supernets' scores: τ {} (95 % CI {}), Spearman {}{}",
            r.supernets.len(),
            f(ag.kendall_tau),
            ci(ag.tau_ci95),
            f(ag.spearman),
            best(ag)
        );
    }
    println!("  every proxy against the ground truth (Δτ = τ(one-shot) − τ(proxy), paired 95 % CI):");
    println!(
        "  {:<14} {:>3} {:>7} {:>17} {:>8} {:>9} {:>8} {:>9} {:>17}",
        "proxy", "n", "τ", "95 % CI", "Spearman", "prec@top¼", "regret", "in seed sd", "Δτ 95 % CI"
    );
    for p in &r.proxies {
        let pct = |v: Option<f64>| v.map_or("–".into(), |v| format!("{:.0} %", 100.0 * v));
        println!(
            "  {:<14} {:>3} {:>7} {:>17} {:>8} {:>9} {:>8} {:>9} {:>17}",
            p.name,
            p.n,
            f(p.kendall_tau),
            ci(p.tau_ci95),
            f(p.spearman),
            pct(p.precision_top_quartile),
            f(p.regret),
            p.regret_in_seed_sd.map_or("–".into(), |v| format!("{v:.1}")),
            ci(p.delta_tau_vs_oneshot_ci95)
        );
    }
    println!("verdict: {}", r.verdict);
    println!("result: {}", rank_check::dir(&a.run).join("result.json").display());
    Ok(())
}
