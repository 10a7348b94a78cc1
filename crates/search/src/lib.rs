//! Step 3 of DetNAS: evolutionary search on a trained supernet.
//!
//! * [`evolution`] — generation-level operators (mutation, crossover, random fill under
//!   [`Limits`]: MACs, params, measured latency), the elitist archive; pure functions of a
//!   seeded RNG.
//! * [`workers`] — [`Evaluator`]s on one or several threads/devices; [`remote`] — on the
//!   ranks of a multi-process job, handed out through its store.
//! * [`fitness`] — DetNAS fitness (box AP after BN recalibration on the search-validation
//!   split) and the ClsNAS baseline (top-1).
//! * [`ledger`] / [`engine`] — the fsynced JSONL ledger, per-generation state and exact
//!   resume.
//! * [`run`] — the run folder, latency table cache and `best_arch.json`.
//!
//! Built on `detnas_train` (checkpoints and configurations of the supernets it scores),
//! `detnas_detect::evaluate` (detection fitness) and `detnas_runtime`; it may not depend on
//! the pipeline or the command line.

pub mod config;
pub mod engine;
pub mod error;
pub mod evaluator;
pub mod evolution;
pub mod fitness;
pub mod ledger;
pub mod rank;
pub mod remote;
pub mod run;
pub mod workers;

pub use config::{FitnessKind, SearchConfig, StrategyConfig, StrategyKind};
pub use error::SearchError;
pub use evaluator::{Evaluation, Evaluator};
pub use evolution::{Limits, Origin, Scored};
pub use run::{BestArch, SearchOptions, SearchReport, search};
pub use workers::{EvaluatorFactory, Workers};
