//! Data errors: every one names the file (and record) it is about.

use std::path::PathBuf;

/// A data error; each names the file (and record) it is about.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file that cannot be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A file or folder that cannot be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file or folder.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// An image that cannot be decoded.
    #[error("cannot decode image {path}: {message}")]
    Decode {
        /// The image.
        path: PathBuf,
        /// The decoder's message.
        message: String,
    },
    /// A dataset root that is not a readable folder.
    #[error("dataset root {0} is not a readable folder")]
    BadRoot(PathBuf),
    /// An ImageFolder root without class folders.
    #[error("dataset root {0} has no class folders (expected root/<class>/<image>)")]
    NoClasses(PathBuf),
    /// A class folder without images.
    #[error("class folder {0} has no images (.jpg, .jpeg, .png)")]
    EmptyClass(PathBuf),
    /// An IDX file with a wrong header or size.
    #[error("invalid IDX file {path}: {message}")]
    Idx {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Annotations or parameters that cannot be used, described.
    #[error("{0}")]
    Invalid(String),
}
