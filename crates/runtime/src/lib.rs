//! What every detnas stage shares, at the bottom of the workspace:
//!
//! * [`config`] — configuration documents: TOML file + `--set` overrides → checked, typed,
//!   hashed configuration;
//! * [`rules`] — the range of every numeric configuration key and the cross-field rules;
//! * [`fsx`] — atomic, durable file writes and checksums;
//! * [`checkpoint`] — durable checkpoint folders with manifests, exact discovery and
//!   verification, run-folder claiming;
//! * [`provenance`] — the code version recorded with every artifact;
//! * [`cancel`] — the stop request the binary's signal handlers raise and the loops honour;
//! * [`fault`] — fault injection for the crash tests (armed only by `DETNAS_FAULT`);
//! * [`guard`] — a libtorch failure (a panic in tch) as an error, at one boundary per step;
//! * [`mem`] — resident-memory accounting (current, peak, per stage);
//! * [`progress`] — progress bars and the `metrics.jsonl` log.
//!
//! It depends on no other detnas crate and not on tch: training, search and the pipeline are
//! peers above it.

pub mod cancel;
pub mod checkpoint;
pub mod config;
pub mod error;
pub mod fault;
pub mod fsx;
pub mod guard;
pub mod mem;
pub mod progress;
pub mod provenance;
pub mod rules;

pub use cancel::{Cancel, Signal};
pub use config::ConfigDocument;
pub use error::RuntimeError;
pub use provenance::{Machine, code_version};
