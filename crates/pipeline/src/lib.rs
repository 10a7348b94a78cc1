//! The whole DetNAS pipeline (steps 1–5) as resumable stages, the run report and export.
//!
//! * [`stages`] — `detnas run`: data, pre-training, fine-tuning, search, ClsNAS search,
//!   retraining of the found architecture and the baselines; each stage marked complete only
//!   after its outputs are written, so re-running resumes.
//! * [`rank_check`] — `detnas rank-check RUN`: the search's ranking against architectures
//!   trained stand-alone.
//! * [`report`] / [`plots`] / [`pictures`] — report.md / report.html with SVG plots and
//!   example predictions from a run folder.
//! * [`export`] / [`onnx`] — the child detector for PyTorch and ONNX Runtime, and its backbone
//!   under the official DetNAS parameter names.
//! * [`layout`] — the run folder's layout and stage records (shared by the above).
//!
//! The top library: it composes training, search and evaluation; only the command line
//! depends on it.

mod clock;
pub mod config;
pub mod error;
pub mod export;
pub mod import;
pub mod layout;
pub mod onnx;
pub mod pictures;
pub mod plots;
pub mod rank_check;
pub mod report;
pub mod stages;

pub use config::PipelineConfig;
pub use error::PipelineError;
pub use stages::{PipelineOptions, PipelineOutcome};

use std::path::{Path, PathBuf};

/// Runs (or resumes) the pipeline of `cfg` into `opts.out`, then writes its report (rank 0;
/// the other ranks wait for it).
///
/// # Errors
/// As [`stages::run`] and [`report::write`].
pub fn run(cfg: &PipelineConfig, opts: &PipelineOptions) -> Result<PipelineOutcome, PipelineError> {
    let outcome = stages::run(cfg, opts)?;
    if opts.writer() {
        report::write(&opts.out)?;
    }
    opts.barrier()?;
    Ok(outcome)
}

/// Runs (or resumes) the ranking check of the finished pipeline run `run`, then rewrites its
/// report with the check's section.
///
/// # Errors
/// As [`rank_check::run`] and [`report::write`].
pub fn check_ranking(
    cfg: &PipelineConfig,
    run: &Path,
    options: &rank_check::RankCheckOptions,
    opts: &PipelineOptions,
) -> Result<rank_check::RankCheckResult, PipelineError> {
    let result = rank_check::run(cfg, run, options, opts)?;
    report::write(run)?;
    Ok(result)
}

/// Regenerates the report of pipeline run `run` from its folder alone; returns the report
/// folder.
///
/// # Errors
/// As [`report::write`].
pub fn write_report(run: &Path) -> Result<PathBuf, PipelineError> {
    report::write(run)
}
