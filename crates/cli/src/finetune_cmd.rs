//! `detnas finetune`: path-wise fine-tuning of the supernet as a detector backbone.

use crate::Failure;
use crate::runtime::{describe, parse_device};
use clap::Args;
use detnas_detect::eval::COCO_STAT_NAMES;
use detnas_train::FinetuneConfig;
use detnas_train::finetune::{FinetuneOptions, run as train};
use std::path::PathBuf;

#[derive(Args, Clone, Debug)]
pub struct FinetuneArgs {
    /// Configuration file (TOML); see configs/demo/finetune-retinanet.toml.
    #[arg(long)]
    pub config: PathBuf,
    /// Run folder: resolved config, data (synthetic), checkpoints, metrics.jsonl, summary.json.
    #[arg(long, default_value = "runs/finetune")]
    pub out: PathBuf,
    /// Override any field: `--set schedule.lr=0.02`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Device (overrides runtime.device): cpu, cuda, cuda:N, auto.
    #[arg(long)]
    pub device: Option<String>,
    /// libtorch threads (overrides runtime.threads).
    #[arg(long)]
    pub threads: Option<i32>,
    /// Resume from this checkpoint instead of the run folder's latest.
    #[arg(long)]
    pub resume_from: Option<PathBuf>,
    /// Continue although the configuration or data differ from the checkpoint's.
    #[arg(long)]
    pub allow_mismatch: bool,
    #[arg(long)]
    pub no_progress: bool,
}

pub fn run(a: FinetuneArgs) -> Result<(), Failure> {
    let mut overrides = a.overrides.clone();
    if let Some(d) = &a.device {
        overrides.push(format!("runtime.device=\"{d}\""));
    }
    if let Some(t) = a.threads {
        overrides.push(format!("runtime.threads={t}"));
    }
    let cfg = FinetuneConfig::load(&a.config, &overrides)?;
    if let Some(t) = cfg.runtime.threads {
        if t < 1 {
            return Err(crate::usage(anyhow::anyhow!("runtime.threads must be at least 1")));
        }
        tch::set_num_threads(t);
    }
    let device = parse_device(&cfg.runtime.device).map_err(crate::usage)?;
    tracing::info!("fine-tuning on {} into {}", describe(device), a.out.display());
    let opts =
        FinetuneOptions { resume_from: a.resume_from, allow_mismatch: a.allow_mismatch, progress: !a.no_progress };
    let s = train(&cfg, &a.out, device, &opts)?;
    for p in &s.paths {
        let stats: Vec<String> = COCO_STAT_NAMES.iter().zip(p.stats).map(|(n, v)| format!("{n} {v:.3}")).collect();
        println!("path {}  {}  ({} test images)", p.arch, stats.join("  "), p.images);
    }
    println!(
        "finetune done: {} steps in {:.1} s ({:.1} img/s), final loss {:.3}; checkpoint {}",
        s.steps,
        s.seconds,
        s.images_per_second,
        s.final_loss,
        s.checkpoint.display()
    );
    Ok(())
}
