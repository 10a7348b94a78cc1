//! `detnas eval cls`: top-1/top-5 of one path of a pre-trained supernet.

use crate::Failure;
use crate::runtime::RuntimeArgs;
use clap::{Args, Subcommand, ValueEnum};
use detnas_nn::BnMode;
use detnas_train::checkpoint;
use detnas_train::evaluate::evaluate_path;
use detnas_train::pretrain::{
    build_supernet, eval_data, load_weights, open_datasets, read_checkpoint_meta, recalibration_set,
};
use serde_json::json;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum EvalCommand {
    /// Classification accuracy of one path on the validation split.
    Cls(ClsArgs),
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum BnModeArg {
    /// Exact mean/variance over the recalibration images.
    Exact,
    /// The official EMA (momentum 0.1) after a reset.
    Ema,
}

#[derive(Args)]
pub struct ClsArgs {
    /// A checkpoint (step-N folder) or a run folder (its latest checkpoint).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// The path to evaluate.
    #[arg(long)]
    pub arch: String,
    /// Recompute BN statistics on this many training images first (0: keep the supernet's).
    #[arg(long, default_value_t = 1000)]
    pub recalibrate_bn: usize,
    #[arg(long, value_enum, default_value_t = BnModeArg::Exact)]
    pub bn_mode: BnModeArg,
    /// Batch size (default: the config's eval.batch).
    #[arg(long)]
    pub batch: Option<usize>,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    #[arg(long)]
    pub json: bool,
}

pub fn run(cmd: EvalCommand) -> Result<(), Failure> {
    let EvalCommand::Cls(a) = cmd;
    let device = a.runtime.init()?;
    let (_, ckpt) = checkpoint::resolve(&a.checkpoint)?;
    let (cfg, state) = read_checkpoint_meta(&ckpt)?;
    let arch = state.space.parse_arch(&a.arch).map_err(crate::usage)?;
    let (train, val) = open_datasets(&cfg, Some(&state.classes))?;
    let (mut vs, net) = build_supernet(&state.space, state.classes.len(), device);
    load_weights(&ckpt, &mut vs, None)?;
    let mut ed = eval_data(&cfg);
    if let Some(b) = a.batch {
        ed.batch = b.max(1);
    }
    let mode = match a.bn_mode {
        BnModeArg::Exact => BnMode::Exact,
        BnModeArg::Ema => BnMode::Ema,
    };
    let recal = (a.recalibrate_bn > 0).then(|| (recalibration_set(&cfg, train, Some(a.recalibrate_bn)), mode));
    let s = evaluate_path(&net, &arch, recal, val, &ed, device)?;
    if a.json {
        println!("{}", json!({"checkpoint": ckpt, "step": state.step, "score": s}));
    } else {
        println!(
            "{}  top-1 {:.2}%  top-5 {:.2}%  on {} images (step {}; BN recalibrated on {} images, {} layers, {:.2} s; eval {:.2} s)",
            s.arch,
            100.0 * s.top1,
            100.0 * s.top5,
            s.images,
            state.step,
            a.recalibrate_bn,
            s.bn_layers_recalibrated,
            s.recalibration_seconds,
            s.evaluation_seconds
        );
    }
    Ok(())
}
