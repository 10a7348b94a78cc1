//! Training of DetNAS supernets and child networks (arXiv:1903.10979 §3.2): one training
//! engine ([`engine`], one host read per optimisation step: [`step`]) for path-wise pre-training on classification ([`pretrain`]) and
//! fine-tuning as a detector's backbone ([`finetune`]), with their configurations,
//! learning-rate schedules, path-wise SGD, losses, checkpoints, classification evaluation
//! with BN recalibration ([`evaluate`]), and the evaluation layer that scores one path of a
//! trained model the same way everywhere ([`scoring`]).
//!
//! Detection evaluation lives in `detnas_detect::evaluate`, the shared plumbing (config
//! documents, durable files, cancellation) in `detnas_runtime`; this crate may not depend on
//! the search or the pipeline.

pub mod checkpoint;
pub mod config;
pub mod det_config;
pub mod engine;
pub mod error;
pub mod evaluate;
pub mod finetune;
pub mod loss;
pub mod optim;
pub mod pretrain;
pub mod schedule;
pub mod scoring;
pub mod step;

pub use config::PretrainConfig;
pub use det_config::FinetuneConfig;
pub use engine::{RunOptions, TrainOutcome, Trainer};
pub use error::TrainError;
pub use optim::PathSgd;
pub use schedule::{LrSchedule, ScheduleKind};
