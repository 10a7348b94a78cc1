//! `detnas pretrain`: path-wise supernet training on classification.

use crate::Failure;
use crate::runtime::{TrainArgs, describe};
use clap::Args;
use detnas_train::PretrainConfig;
use detnas_train::pretrain::run as train;
use std::path::PathBuf;

#[derive(Args, Clone, Debug)]
pub struct PretrainArgs {
    /// Configuration file (TOML); see configs/demo/pretrain.toml.
    #[arg(long)]
    pub config: PathBuf,
    /// Run folder: resolved config, checkpoints, metrics.jsonl, summary.json.
    #[arg(long, default_value = "runs/pretrain")]
    pub out: PathBuf,
    #[command(flatten)]
    pub train: TrainArgs,
}

pub fn run(a: PretrainArgs) -> Result<(), Failure> {
    let cfg = PretrainConfig::load(Some(&a.config), &a.train.all_overrides())?;
    let launch = crate::dist_cmd::launch()?;
    let device = crate::dist_cmd::rank_device(TrainArgs::init(&cfg.runtime)?, launch.as_ref());
    let dist =
        crate::dist_cmd::join(launch.as_ref(), device, std::time::Duration::from_secs(cfg.runtime.dist_timeout_s))?;
    tracing::info!("pretraining {} on {} into {}", cfg.model.space, describe(device), a.out.display());
    let opts = a.train.run_options(dist)?;
    let s = train(&cfg, &a.out, device, &opts)?;
    if crate::dist_cmd::is_follower(launch.as_ref()) {
        return Ok(()); // rank 0 prints the job's results
    }
    for p in &s.paths {
        println!("path {}  top-1 {:.2}%  top-5 {:.2}%  ({} images)", p.arch, 100.0 * p.top1, 100.0 * p.top5, p.images);
    }
    println!(
        "pretrain done: {} steps in {:.1} s ({:.1} img/s), final loss {:.3}, mean top-1 of {} random paths {:.2}%, {} samples skipped; checkpoint {}",
        s.train.steps,
        s.train.seconds,
        s.train.images_per_second,
        s.train.final_loss,
        s.paths.len(),
        100.0 * s.mean_top1,
        s.train.skipped_samples,
        s.train.checkpoint.display()
    );
    Ok(())
}
