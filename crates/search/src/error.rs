//! Errors of the search. Messages are one line and name the file or field at fault.

use detnas_space::SpaceError;
use detnas_train::TrainError;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error("{0}")]
    Config(String),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: line {line}: {message}")]
    Ledger { path: PathBuf, line: usize, message: String },
    #[error("candidate {arch}: {message}")]
    Evaluation { arch: String, message: String },
    #[error(transparent)]
    Train(#[from] TrainError),
    #[error(transparent)]
    Space(#[from] SpaceError),
    #[error(transparent)]
    Detect(#[from] detnas_detect::DetectError),
    #[error(
        "interrupted by {} after {evaluated} candidates; they are in the ledger, re-run the same command to resume",
        .signal.name()
    )]
    Interrupted { signal: detnas_runtime::Signal, evaluated: usize },
}

impl From<detnas_runtime::RuntimeError> for SearchError {
    fn from(e: detnas_runtime::RuntimeError) -> SearchError {
        SearchError::Train(e.into())
    }
}

impl SearchError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> SearchError {
        SearchError::Io { path: path.into(), source }
    }

    /// Exit code of the `detnas` binary: 2 configuration, 3 data, 5 checkpoint/ledger, 1 other.
    pub fn exit_code(&self) -> u8 {
        match self {
            SearchError::Config(_) | SearchError::Space(_) => 2,
            SearchError::Ledger { .. } => 5,
            SearchError::Train(t) => t.exit_code(),
            SearchError::Detect(detnas_detect::DetectError::Data(_)) => 3,
            SearchError::Detect(detnas_detect::DetectError::Config(_)) => 2,
            SearchError::Detect(_) => 1,
            SearchError::Interrupted { signal, .. } => signal.exit_code(),
            SearchError::Io { .. } | SearchError::Evaluation { .. } => 1,
        }
    }
}
