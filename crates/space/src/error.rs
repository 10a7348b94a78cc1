//! Errors of the space crate. Messages are one line and name the offending value.

use std::path::PathBuf;

/// Everything that can go wrong while defining spaces, parsing architectures or sampling.
#[derive(Debug, thiserror::Error)]
pub enum SpaceError {
    /// A space name that is neither built in nor a `.toml` file.
    #[error("unknown search space '{0}' (expected small, small-spos, large, large-3.8g or a path to a .toml file)")]
    UnknownSpace(String),
    /// A space file that cannot be read.
    #[error("cannot read search space file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A space file that does not parse.
    #[error("invalid search space file {path}: {message}")]
    Toml {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A space whose widths, depths or choices are inconsistent.
    #[error("invalid search space '{space}': {message}")]
    InvalidSpace {
        /// Its name.
        space: String,
        /// What is wrong.
        message: String,
    },
    /// An architecture string that does not parse.
    #[error("invalid architecture '{text}': {message}")]
    ParseArch {
        /// The string.
        text: String,
        /// What is wrong.
        message: String,
    },
    /// An architecture with another number of blocks than the space.
    #[error("architecture has {got} genes but space '{space}' has {expected} blocks")]
    WrongLength {
        /// The space's name.
        space: String,
        /// The space's blocks.
        expected: usize,
        /// The architecture's genes.
        got: usize,
    },
    /// A choice the space does not allow at that block.
    #[error("block {block}: choice {choice} is not in space '{space}' (allowed: {allowed})")]
    ChoiceNotAllowed {
        /// The space's name.
        space: String,
        /// The block, from 0.
        block: usize,
        /// The choice id.
        choice: u8,
        /// The allowed ids.
        allowed: String,
    },
    /// A count (`300M`, `1.3G`) that does not parse.
    #[error("invalid count '{text}': {message}")]
    ParseCount {
        /// The string.
        text: String,
        /// What is wrong.
        message: String,
    },
    /// Limits no architecture of the space meets.
    #[error("{0}")]
    Unsatisfiable(String),
    /// A parameter outside its domain.
    #[error("invalid parameter: {0}")]
    InvalidParameter(String),
}
