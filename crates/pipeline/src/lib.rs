//! The whole DetNAS pipeline (steps 1–5) as resumable stages, the run report and export.
//!
//! * [`stages`] — `detnas run`: data, pre-training, fine-tuning, search, ClsNAS search,
//!   retraining of the found architecture and the baselines; each stage marked complete only
//!   after its outputs are written, so re-running resumes.
//! * [`rank_check`] — `detnas rank-check RUN`: the search's ranking against architectures
//!   trained stand-alone.
//! * [`report`] / [`plots`] — report.md / report.html with SVG plots from a run folder.
//! * [`export`] — the child network under the official DetNAS parameter names.
//! * [`layout`] — the run folder's layout and stage records (shared by the above).
//!
//! The top library: it composes training, search and evaluation; only the command line
//! depends on it.

pub mod config;
pub mod error;
pub mod export;
pub mod layout;
pub mod plots;
pub mod rank_check;
pub mod report;
pub mod stages;

pub use config::PipelineConfig;
pub use error::PipelineError;
pub use stages::{PipelineOptions, PipelineOutcome, run};
