//! Errors of the search. Messages are one line and name the file or field at fault.

use detnas_space::SpaceError;
use detnas_train::TrainError;
use std::path::PathBuf;

/// A search error; [`SearchError::exit_code`] maps it to the documented exit code.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    /// A search configuration or folder that cannot be used (exit 2).
    #[error("{0}")]
    Config(String),
    /// A file that cannot be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A malformed ledger or `best_arch.json`.
    #[error("{path}: line {line}: {message}")]
    Ledger {
        /// The file.
        path: PathBuf,
        /// The line, from 1 (0: the whole file).
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A candidate that could not be scored.
    #[error("candidate {arch}: {message}")]
    Evaluation {
        /// The candidate.
        arch: String,
        /// What failed.
        message: String,
    },
    /// A training-layer error (checkpoints, scoring).
    #[error(transparent)]
    Train(#[from] TrainError),
    /// A search-space error.
    #[error(transparent)]
    Space(#[from] SpaceError),
    /// A detection error.
    #[error(transparent)]
    Detect(#[from] detnas_detect::DetectError),
    #[error(
        "interrupted by {} after {evaluated} candidates; they are in the ledger, re-run the same command to resume",
        .signal.name()
    )]
    /// Stopped by a signal after recording the candidates scored.
    Interrupted {
        /// The signal.
        signal: detnas_runtime::Signal,
        /// Candidates in the ledger.
        evaluated: usize,
    },
}

impl From<detnas_runtime::RuntimeError> for SearchError {
    fn from(e: detnas_runtime::RuntimeError) -> SearchError {
        SearchError::Train(e.into())
    }
}

impl SearchError {
    /// A [`SearchError::Io`] on `path`.
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
