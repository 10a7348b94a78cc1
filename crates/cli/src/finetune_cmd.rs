//! `detnas finetune`: path-wise fine-tuning of the supernet as a detector backbone.

use crate::Failure;
use crate::runtime::{TrainArgs, describe};
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
    #[command(flatten)]
    pub train: TrainArgs,
}

pub fn run(a: FinetuneArgs) -> Result<(), Failure> {
    let cfg = FinetuneConfig::load(&a.config, &a.train.all_overrides())?;
    let device = TrainArgs::init(&cfg.runtime)?;
    tracing::info!("fine-tuning on {} into {}", describe(device), a.out.display());
    let opts = FinetuneOptions {
        resume_from: a.train.resume_from,
        allow_mismatch: a.train.allow_mismatch,
        progress: !a.train.job.no_progress,
    };
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
