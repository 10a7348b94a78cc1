//! The contract between a training task (pre-training, fine-tuning) and the
//! [`Trainer`](super::Trainer): batches and named losses in ([`TrainTask`], [`LoadedBatch`]),
//! the loop's outcome out ([`TrainOutcome`], [`write_summary`], [`finished_summary`]).

use super::RunOptions;
use crate::TrainError;
use crate::step::StepLosses;
use detnas_data::{Position, SkipReport};
use detnas_runtime::mem::MemoryRecord;
use detnas_space::Arch;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// One batch as the engine sees it.
#[derive(Debug)]
pub struct LoadedBatch<B> {
    /// The task's batch.
    pub batch: B,
    /// Samples in the batch.
    pub len: usize,
    /// The loader position after this batch.
    pub after: Position,
    /// Epochs that ended with this batch.
    pub epoch_reports: Vec<SkipReport>,
}

/// What a training task supplies to the [`Trainer`](super::Trainer).
pub trait TrainTask {
    /// What [`TrainTask::next_batch`] yields.
    type Batch;

    /// The next training batch.
    ///
    /// # Errors
    /// A data error that stops the run (a whole epoch unreadable, the stream ended).
    fn next_batch(&mut self) -> Result<LoadedBatch<Self::Batch>, TrainError>;

    /// Losses of `batch` on path `arch` (`None` for a child network), in training mode, at
    /// step `step` (0-based; per-sample random draws are seeded from it and the sample's
    /// dataset index, so they do not depend on how the batch is split over processes).
    ///
    /// # Errors
    /// A model error (e.g. an architecture the network cannot run).
    fn losses(&mut self, batch: &Self::Batch, arch: Option<&Arch>, step: u64) -> Result<StepLosses, TrainError>;

    /// Names of up to 8 samples of `batch`, for the non-finite-loss diagnostic.
    fn describe(&self, batch: &Self::Batch) -> Vec<String>;

    /// The batch's tensor size in words ("8 images of 800×1344"), for an out-of-memory error.
    fn input_size(&self, batch: &Self::Batch) -> String;

    /// The configuration keys that lower the memory a step takes, for an out-of-memory error.
    const MEMORY_KEYS: &'static str;

    /// Called once at the start of the first step after the path sampler's warm start
    /// (also when a run resumes exactly there); the engine then clears the momentum buffers.
    ///
    /// # Errors
    /// [`TrainError::Config`] for a task without a supernet.
    fn end_warm_start(&mut self) -> Result<(), TrainError> {
        Err(TrainError::Config("this training task has no warm start".into()))
    }
}

/// What a finished training loop reports (the common part of every `summary.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainOutcome {
    /// Completed updates (the schedule's iterations at the end).
    pub steps: u64,
    /// The step resumed from, if the run resumed.
    pub resumed_from_step: Option<u64>,
    /// Wall time of this invocation's loop, seconds.
    pub seconds: f64,
    /// Training images per second over this invocation's steps (global batch).
    pub images_per_second: f64,
    /// The loss of the last step.
    #[serde(alias = "final_train_loss")]
    pub final_loss: f64,
    /// Samples skipped so far because they could not be loaded.
    pub skipped_samples: u64,
    /// Result hash of the run's configuration.
    pub config_hash: String,
    /// The code that trained ([`detnas_runtime::code_version`]).
    pub code_version: String,
    /// The run's seed.
    pub seed: u64,
    /// Fingerprint of the training data.
    pub data_fingerprint: String,
    /// The last checkpoint written (or resumed from).
    pub checkpoint: PathBuf,
    /// Resident memory of the run (MiB; this process's).
    #[serde(default)]
    pub memory: MemoryRecord,
    /// Processes that trained together.
    #[serde(default = "crate::checkpoint::one")]
    pub world_size: usize,
    /// Seconds this rank spent in collectives during the loop (gradient all-reduce, the
    /// per-step loss sums, SyncBN's forward gathers); `None` in a single process.
    #[serde(default)]
    pub collective_seconds: Option<f64>,
    /// The machine and libtorch build that trained (rank 0's in a job).
    #[serde(default)]
    pub machine: detnas_runtime::Machine,
}

/// The summary of a run that already finished: `out/summary.json` when the latest
/// checkpoint is the last step (`resume_step == total`) and the summary records `hash`.
/// Re-running a finished run then reports it instead of redoing the evaluation and
/// overwriting the summary with an empty loop's numbers. `None` in a multi-process job (the
/// ranks must run the same code path) or when anything does not match.
pub fn finished_summary<S: DeserializeOwned>(
    out: &Path,
    resume_step: Option<u64>,
    total: u64,
    hash: &str,
    opts: &RunOptions,
) -> Option<S> {
    #[derive(serde::Deserialize)]
    struct Head {
        config_hash: String,
        steps: u64,
    }
    if opts.dist.is_some() || opts.resume_from.is_some() || resume_step != Some(total) {
        return None;
    }
    let text = std::fs::read_to_string(out.join("summary.json")).ok()?;
    let head: Head = serde_json::from_str(&text).ok()?;
    if head.config_hash != hash || head.steps != total {
        return None;
    }
    let summary = serde_json::from_str(&text).ok()?;
    tracing::info!(
        "{} already finished at step {total}: its summary is {} (delete the folder or use another --out to run again)",
        out.display(),
        out.join("summary.json").display()
    );
    Some(summary)
}

/// Writes `summary` to `out/summary.json` atomically.
///
/// # Errors
/// [`TrainError::Io`] when the file cannot be written.
pub fn write_summary<S: Serialize>(out: &Path, summary: &S) -> Result<(), TrainError> {
    Ok(detnas_runtime::fsx::write_json_atomic(&out.join("summary.json"), summary)?)
}
