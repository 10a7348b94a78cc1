//! `detnas finetune`: path-wise fine-tuning of the supernet as a detector backbone.

use crate::Failure;
use crate::runtime::{TrainArgs, describe};
use clap::Args;
use detnas_train::FinetuneConfig;
use detnas_train::finetune::run as train;
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
    let launch = crate::dist_cmd::launch()?;
    let device = crate::dist_cmd::rank_device(TrainArgs::init(&cfg.runtime)?, launch.as_ref());
    let dist =
        crate::dist_cmd::join(launch.as_ref(), device, std::time::Duration::from_secs(cfg.runtime.dist_timeout_s))?;
    tracing::info!("fine-tuning on {} into {}", describe(device), a.out.display());
    let opts = a.train.run_options(dist)?;
    let s = train(&cfg, &a.out, device, &opts)?;
    if crate::dist_cmd::is_follower(launch.as_ref()) {
        return Ok(()); // rank 0 prints the job's results
    }
    for p in &s.paths {
        let stats: Vec<String> = p.stats.named().map(|(n, v)| format!("{n} {v:.3}")).collect();
        println!("path {}  {}  ({} test images)", p.arch, stats.join("  "), p.images);
    }
    println!(
        "finetune done: {} steps in {:.1} s ({:.1} img/s), final loss {:.3}; checkpoint {}",
        s.train.steps,
        s.train.seconds,
        s.train.images_per_second,
        s.train.final_loss,
        s.train.checkpoint.display()
    );
    Ok(())
}
