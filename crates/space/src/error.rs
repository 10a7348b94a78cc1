//! Errors of the space crate. Messages are one line and name the offending value.

use std::path::PathBuf;

/// Everything that can go wrong while defining spaces, parsing architectures or sampling.
#[derive(Debug, thiserror::Error)]
pub enum SpaceError {
    #[error("unknown search space '{0}' (expected small, large, large-3.8g or a path to a .toml file)")]
    UnknownSpace(String),
    #[error("cannot read search space file {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("invalid search space file {path}: {message}")]
    Toml { path: PathBuf, message: String },
    #[error("invalid search space '{space}': {message}")]
    InvalidSpace { space: String, message: String },
    #[error("invalid architecture '{text}': {message}")]
    ParseArch { text: String, message: String },
    #[error("architecture has {got} genes but space '{space}' has {expected} blocks")]
    WrongLength { space: String, expected: usize, got: usize },
    #[error("block {block}: choice {choice} is not in space '{space}' (allowed: {allowed})")]
    ChoiceNotAllowed { space: String, block: usize, choice: u8, allowed: String },
    #[error("invalid count '{text}': {message}")]
    ParseCount { text: String, message: String },
    #[error("{0}")]
    Unsatisfiable(String),
    #[error("invalid parameter: {0}")]
    InvalidParameter(String),
}
