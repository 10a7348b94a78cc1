//! Training of DetNAS supernets: path-wise SGD, learning-rate schedules, label-smoothed
//! loss, durable checkpoints with exact resume, and classification evaluation with BN
//! recalibration.

pub mod checkpoint;
pub mod config;
pub mod det_config;
pub mod error;
pub mod evaluate;
pub mod fault;
pub mod finetune;
pub mod loss;
pub mod optim;
pub mod pretrain;
pub mod progress;
pub mod schedule;

pub use config::PretrainConfig;
pub use det_config::FinetuneConfig;
pub use error::TrainError;
pub use optim::PathSgd;
pub use schedule::{LrSchedule, ScheduleKind};
