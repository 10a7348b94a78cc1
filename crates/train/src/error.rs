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
        "interrupted by {signal} after step {step}; the checkpoint of step {step} is saved, re-run the same command to resume"
    )]
    Interrupted { signal: &'static str, step: u64 },
    #[error(transparent)]
    Space(#[from] detnas_space::SpaceError),
    #[error(transparent)]
    Nn(#[from] detnas_nn::NnError),
    #[error(transparent)]
    Torch(#[from] tch::TchError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

impl TrainError {
    /// 2 usage/config, 3 data, 4 numerical, 5 checkpoint, 130 SIGINT, 143 SIGTERM, 1 other.
    pub fn exit_code(&self) -> u8 {
        match self {
            TrainError::Config(_) | TrainError::Space(_) => 2,
            TrainError::Data(_) => 3,
            TrainError::Numerical { .. } => 4,
            TrainError::Checkpoint { .. } => 5,
            TrainError::Interrupted { signal, .. } => {
                if *signal == "SIGINT" {
                    130
                } else {
                    143
                }
            }
            TrainError::Nn(detnas_nn::NnError::Space(_)) => 2,
            _ => 1,
        }
    }

    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> TrainError {
        TrainError::Io { path: path.to_path_buf(), source }
    }
}
