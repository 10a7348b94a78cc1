//! Training errors, each mapping to one documented exit code (see [`TrainError::exit_code`]).

use std::path::PathBuf;

/// A training error; [`TrainError::exit_code`] maps it to the documented exit code.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A configuration or run folder that cannot be used (exit 2).
    #[error("configuration: {0}")]
    Config(String),
    /// A data error (exit 3).
    #[error(transparent)]
    Data(#[from] detnas_data::DataError),
    /// A non-finite loss: the run stops before the update (exit 4).
    #[error("non-finite loss {loss} at step {step} (lr {lr}, path {arch}; images {images})")]
    Numerical {
        /// The step, from 1.
        step: u64,
        /// The loss.
        loss: f64,
        /// The learning rate.
        lr: f64,
        /// The path.
        arch: String,
        /// Up to 8 of the batch's images.
        images: String,
    },
    /// A checkpoint that cannot be written, found, verified or used (exit 5).
    #[error("checkpoint {path}: {message}")]
    Checkpoint {
        /// The checkpoint or run folder.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    #[error(
        "interrupted by {} after step {step}; the checkpoint of step {step} is saved, re-run the same command to resume",
        .signal.name()
    )]
    /// Stopped by a signal after saving the step's checkpoint.
    Interrupted {
        /// The signal.
        signal: detnas_runtime::Signal,
        /// The last step saved.
        step: u64,
    },
    /// A search-space error (exit 2).
    #[error(transparent)]
    Space(#[from] detnas_space::SpaceError),
    /// A network error.
    #[error(transparent)]
    Nn(#[from] detnas_nn::NnError),
    /// A libtorch error.
    #[error(transparent)]
    Torch(#[from] tch::TchError),
    /// A detection error.
    #[error(transparent)]
    Detect(#[from] detnas_detect::DetectError),
    /// A collective or store failure.
    #[error(transparent)]
    Dist(#[from] detnas_dist::DistError),
    /// A file that cannot be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// libtorch failed inside a guarded step ([`detnas_runtime::guard`]); `hint` says what to
    /// change when it ran out of memory.
    #[error("{during}: libtorch failed: {failure}{hint}")]
    Compute {
        /// What was running (stage, step, path, batch).
        during: String,
        /// libtorch's failure.
        failure: detnas_runtime::guard::ComputeFailure,
        /// What to change, for an out-of-memory failure.
        hint: String,
    },
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
