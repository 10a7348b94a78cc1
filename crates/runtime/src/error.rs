//! Errors of the shared plumbing, each with the exit code it maps to.

use std::path::{Path, PathBuf};

/// A configuration, checkpoint or file-system failure.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A configuration document that cannot be read, parsed or accepted (exit code 2).
    #[error("configuration: {0}")]
    Config(String),
    /// A checkpoint that cannot be written, found, verified or used (exit code 5).
    #[error("checkpoint {path}: {message}")]
    Checkpoint {
        /// The checkpoint folder (or run folder).
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A file-system operation on `path` failed (exit code 1).
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
}

impl RuntimeError {
    /// 2 configuration, 5 checkpoint, 1 input/output.
    pub fn exit_code(&self) -> u8 {
        match self {
            RuntimeError::Config(_) => 2,
            RuntimeError::Checkpoint { .. } => 5,
            RuntimeError::Io { .. } => 1,
        }
    }

    /// An input/output error on `path`.
    pub fn io(path: &Path, source: std::io::Error) -> RuntimeError {
        RuntimeError::Io { path: path.to_path_buf(), source }
    }

    /// A checkpoint error on `path`.
    pub fn checkpoint(path: &Path, message: impl Into<String>) -> RuntimeError {
        RuntimeError::Checkpoint { path: path.to_path_buf(), message: message.into() }
    }
}
