//! What one invocation of the [`Trainer`](super::Trainer) is told besides the task: the
//! options of the command line ([`RunOptions`]), the start every run shares ([`start_run`]),
//! the run's description ([`TrainerSpec`]) and which path each step trains ([`Paths`]).

use crate::TrainError;
use crate::config::{RuntimeConfig, ScheduleConfig};
use detnas_dist::ProcessGroup;
use detnas_runtime::Cancel;
use detnas_runtime::ConfigDocument;
use detnas_runtime::checkpoint::MismatchOverride;
use detnas_space::{Arch, PathSampler, SearchSpace};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Options of one invocation (not part of the configuration).
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Resume from this checkpoint instead of the run folder's latest.
    pub resume_from: Option<PathBuf>,
    /// Accept a configuration or dataset that differs from the checkpoint's (logged).
    pub allow_mismatch: bool,
    /// Draw a progress bar on stderr.
    pub progress: bool,
    /// Raised by the binary's signal handlers: finish the step, save, stop.
    pub cancel: Cancel,
    /// The job's process group when several processes train together.
    pub dist: Option<Arc<ProcessGroup>>,
}

/// What the engine needs to know about a run besides the task.
#[derive(Debug)]
pub struct TrainerSpec<'a> {
    /// `pretrain` or `finetune` (progress bar and logs).
    pub what: &'static str,
    /// The run folder (`checkpoints/`, `metrics.jsonl`).
    pub out: &'a Path,
    /// The run's seed.
    pub seed: u64,
    /// `[schedule]`.
    pub schedule: &'a ScheduleConfig,
    /// `[runtime]`.
    pub runtime: &'a RuntimeConfig,
    /// The search space of the weights.
    pub space: &'a SearchSpace,
    /// Result hash of the configuration (recorded in every checkpoint).
    pub config_hash: String,
    /// The resolved configuration, written into every checkpoint.
    pub config_toml: String,
    /// Fingerprint of the training data (recorded in every checkpoint).
    pub data_fingerprint: String,
    /// Stream id (see [`detnas_data::mix_seed`]) of the path stream.
    pub path_stream: u64,
    /// Synchronized BatchNorm when `runtime.sync_bn` is unset and several processes train
    /// (fine-tuning: on, as DetNAS; pre-training: off).
    pub sync_bn_default: bool,
}

/// Which path each step trains.
#[derive(Debug)]
pub enum Paths {
    /// The supernet paths of each step from the path stream ([`PathSampler::sample_step`]):
    /// one path (uniform, FLOPs-binned, or always the same one), after an optional warm start
    /// on one path, or a strict-fairness group trained on the same batch.
    Sampled(Box<PathSampler>),
    /// A child network of this fixed architecture (its variables hold no choice).
    Child(Arch),
}

/// The start of a training run, before it reads data.
#[derive(Debug)]
pub struct RunStart {
    /// The configuration's result hash.
    pub hash: String,
    /// Whether this process writes the run's files (rank 0, or a single process).
    pub writer: bool,
}

/// What every training run does first: checks `cfg` (nothing is written before), applies its
/// compute settings; on the writer, claims `out` (`config.toml`; a different configuration
/// with progress is refused unless `opts.allow_mismatch`), logs the schedule's warnings and
/// runs `take_over` (what a failed start left, e.g. its synthetic data); then the ranks of a
/// job wait for one another.
///
/// # Errors
/// [`TrainError::Config`] from the checks or the claim, `take_over`'s error, and
/// [`TrainError::Dist`] when the barrier fails.
pub fn start_run<C: ConfigDocument<Error = TrainError>>(
    cfg: &C,
    (schedule, runtime): (&ScheduleConfig, &RuntimeConfig),
    out: &Path,
    opts: &RunOptions,
    take_over: impl FnOnce() -> Result<(), TrainError>,
) -> Result<RunStart, TrainError> {
    cfg.check()?;
    runtime.apply_compute_settings();
    let writer = opts.dist.as_ref().is_none_or(|pg| pg.rank() == 0);
    if writer {
        cfg.claim_run_dir(out, MismatchOverride::Flag(opts.allow_mismatch))?;
        for w in schedule.warnings() {
            tracing::warn!("{w}");
        }
        take_over()?;
    }
    if let Some(pg) = &opts.dist {
        // The other ranks start once rank 0 has claimed the folder.
        pg.barrier()?;
    }
    Ok(RunStart { hash: cfg.result_hash(), writer })
}
