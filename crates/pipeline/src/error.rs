//! Errors of the pipeline.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("{0}")]
    Config(String),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Train(#[from] detnas_train::TrainError),
    #[error(transparent)]
    Search(#[from] detnas_search::SearchError),
    #[error(transparent)]
    Space(#[from] detnas_space::SpaceError),
    #[error(transparent)]
    Data(#[from] detnas_data::DataError),
}

impl From<detnas_runtime::RuntimeError> for PipelineError {
    fn from(e: detnas_runtime::RuntimeError) -> PipelineError {
        PipelineError::Train(e.into())
    }
}

impl PipelineError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> PipelineError {
        PipelineError::Io { path: path.into(), source }
    }

    /// Exit code of the `detnas` binary.
    pub fn exit_code(&self) -> u8 {
        match self {
            PipelineError::Config(_) | PipelineError::Space(_) => 2,
            PipelineError::Data(_) => 3,
            PipelineError::Train(t) => t.exit_code(),
            PipelineError::Search(s) => s.exit_code(),
            PipelineError::Io { .. } => 1,
        }
    }
}
