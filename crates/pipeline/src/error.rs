//! Errors of the pipeline.

use std::path::PathBuf;

/// A pipeline error; [`PipelineError::exit_code`] maps it to the documented exit code.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// A pipeline configuration or run folder that cannot be used (exit 2).
    #[error("{0}")]
    Config(String),
    /// A finished or started stage whose configuration or inputs changed since (exit 2).
    #[error("{0}")]
    StageChanged(String),
    /// A file or folder that cannot be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A training error of a stage.
    #[error(transparent)]
    Train(#[from] detnas_train::TrainError),
    /// A search error of a stage.
    #[error(transparent)]
    Search(#[from] detnas_search::SearchError),
    /// A search-space error.
    #[error(transparent)]
    Space(#[from] detnas_space::SpaceError),
    /// A data error.
    #[error(transparent)]
    Data(#[from] detnas_data::DataError),
}

impl From<detnas_runtime::RuntimeError> for PipelineError {
    fn from(e: detnas_runtime::RuntimeError) -> PipelineError {
        PipelineError::Train(e.into())
    }
}

impl PipelineError {
    /// A [`PipelineError::Io`] on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> PipelineError {
        PipelineError::Io { path: path.into(), source }
    }

    /// Exit code of the `detnas` binary.
    pub fn exit_code(&self) -> u8 {
        match self {
            PipelineError::Config(_) | PipelineError::StageChanged(_) | PipelineError::Space(_) => 2,
            PipelineError::Data(_) => 3,
            PipelineError::Train(t) => t.exit_code(),
            PipelineError::Search(s) => s.exit_code(),
            PipelineError::Io { .. } => 1,
        }
    }
}
