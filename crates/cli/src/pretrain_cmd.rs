//! `detnas pretrain`: path-wise supernet training on classification.

use crate::Failure;
use crate::runtime::{describe, parse_device};
use clap::Args;
use detnas_train::PretrainConfig;
use detnas_train::pretrain::{RunOptions, run as train};
use std::path::PathBuf;

#[derive(Args, Clone, Debug)]
pub struct PretrainArgs {
    /// Configuration file (TOML); see configs/demo/pretrain.toml.
    #[arg(long)]
    pub config: PathBuf,
    /// Run folder: resolved config, checkpoints, metrics.jsonl, summary.json.
    #[arg(long, default_value = "runs/pretrain")]
    pub out: PathBuf,
    /// Override any field: `--set schedule.lr=0.1 --set data.input_size=64`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Device (overrides runtime.device): cpu, cuda, cuda:N, auto.
    #[arg(long)]
    pub device: Option<String>,
    /// libtorch threads (overrides runtime.threads).
    #[arg(long)]
    pub threads: Option<i32>,
    /// Resume from this checkpoint (a step-N folder) instead of the run folder's latest.
    #[arg(long)]
    pub resume_from: Option<PathBuf>,
    /// Continue although the configuration or data differ from the checkpoint's (logged).
    #[arg(long)]
    pub allow_mismatch: bool,
    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

pub fn run(a: PretrainArgs) -> Result<(), Failure> {
    let mut overrides = a.overrides.clone();
    if let Some(d) = &a.device {
        overrides.push(format!("runtime.device=\"{d}\""));
    }
    if let Some(t) = a.threads {
        overrides.push(format!("runtime.threads={t}"));
    }
    let cfg = PretrainConfig::load(Some(&a.config), &overrides)?;
    if let Some(t) = cfg.runtime.threads {
        if t < 1 {
            return Err(crate::usage(anyhow::anyhow!("runtime.threads must be at least 1")));
        }
        tch::set_num_threads(t);
    }
    let device = parse_device(&cfg.runtime.device).map_err(crate::usage)?;
    tracing::info!("pretraining {} on {} into {}", cfg.model.space, describe(device), a.out.display());
    let opts = RunOptions { resume_from: a.resume_from, allow_mismatch: a.allow_mismatch, progress: !a.no_progress };
    let s = train(&cfg, &a.out, device, &opts)?;
    for p in &s.paths {
        println!("path {}  top-1 {:.2}%  top-5 {:.2}%  ({} images)", p.arch, 100.0 * p.top1, 100.0 * p.top5, p.images);
    }
    println!(
        "pretrain done: {} steps in {:.1} s ({:.1} img/s), final loss {:.3}, mean top-1 of {} random paths {:.2}%, {} samples skipped; checkpoint {}",
        s.steps,
        s.seconds,
        s.images_per_second,
        s.final_train_loss,
        s.paths.len(),
        100.0 * s.mean_top1,
        s.skipped_samples,
        s.checkpoint.display()
    );
    Ok(())
}
