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
    /// The run folder.
    run: PathBuf,
    /// Output folder.
    #[arg(long)]
    out: PathBuf,
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
                r.label, r.arch, p.stats[0], p.stats[1], p.stats[2]
            );
        }
    }
    println!("report: {}", a.out.join("report/report.html").display());
    Ok(())
}

pub fn report(a: ReportArgs) -> Result<(), Failure> {
    if !a.run.join("pipeline.toml").is_file() {
        return Err(crate::usage(anyhow::anyhow!(
            "{} is not a pipeline run folder (no pipeline.toml): `detnas report` reads what `detnas run --out DIR` wrote",
            a.run.display()
        )));
    }
    let dir = detnas_pipeline::report::write(&a.run)?;
    println!("report: {}", dir.join("report.html").display());
    Ok(())
}

pub fn export(a: ExportArgs) -> Result<(), Failure> {
    let dir = detnas_pipeline::export::export(&a.run, &a.out)?;
    println!("exported to {}", dir.display());
    Ok(())
}
