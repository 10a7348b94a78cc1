//! Training errors, each mapping to one documented exit code (see [`TrainError::exit_code`]).

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Data(#[from] detnas_data::DataError),
    #[error("non-finite loss {loss} at step {step} (lr {lr}, path {arch}; images {images})")]
    Numerical { step: u64, loss: f64, lr: f64, arch: String, images: String },
    #[error("checkpoint {path}: {message}")]
    Checkpoint { path: PathBuf, message: String },
    #[error(
        "interrupted by {} after step {step}; the checkpoint of step {step} is saved, re-run the same command to resume",
        .signal.name()
    )]
    Interrupted { signal: detnas_runtime::Signal, step: u64 },
    #[error(transparent)]
    Space(#[from] detnas_space::SpaceError),
    #[error(transparent)]
    Nn(#[from] detnas_nn::NnError),
    #[error(transparent)]
    Torch(#[from] tch::TchError),
    #[error(transparent)]
    Detect(#[from] detnas_detect::DetectError),
    #[error(transparent)]
    Dist(#[from] detnas_dist::DistError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// libtorch failed inside a guarded step ([`detnas_runtime::guard`]); `hint` says what to
    /// change when it ran out of memory.
    #[error("{during}: libtorch failed: {failure}{hint}")]
    Compute { during: String, failure: detnas_runtime::guard::ComputeFailure, hint: String },
}

impl TrainError {
    /// 2 usage/config, 3 data, 4 numerical, 5 checkpoint, 130 SIGINT, 143 SIGTERM, 1 other.
    pub fn exit_code(&self) -> u8 {
        match self {
            TrainError::Config(_) | TrainError::Space(_) => 2,
            TrainError::Data(_) => 3,
            TrainError::Numerical { .. } => 4,
            TrainError::Checkpoint { .. } => 5,
            TrainError::Interrupted { signal, .. } => signal.exit_code(),
            TrainError::Nn(detnas_nn::NnError::Space(_)) => 2,
            TrainError::Detect(detnas_detect::DetectError::Data(_)) => 3,
            TrainError::Detect(detnas_detect::DetectError::Config(_)) => 2,
            TrainError::Dist(d) => d.exit_code(),
            _ => 1,
        }
    }
}

impl TrainError {
    /// A [`TrainError::Compute`] for `failure` while `during` ran; `lower` names what to
    /// lower when it ran out of memory (e.g. "schedule.batch or data.max_size").
    pub fn compute(during: String, failure: detnas_runtime::guard::ComputeFailure, lower: &str) -> TrainError {
        let hint = if failure.out_of_memory {
            format!(" — out of memory: lower {lower}, or run on a device with more memory")
        } else {
            String::new()
        };
        TrainError::Compute { during, failure, hint }
    }
}

impl From<detnas_runtime::RuntimeError> for TrainError {
    fn from(e: detnas_runtime::RuntimeError) -> TrainError {
        use detnas_runtime::RuntimeError as R;
        match e {
            R::Config(m) => TrainError::Config(m),
            R::Checkpoint { path, message } => TrainError::Checkpoint { path, message },
            R::Io { path, source } => TrainError::Io { path, source },
        }
    }
}
