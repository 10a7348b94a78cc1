//! Data errors: every one names the file (and record) it is about.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cannot decode image {path}: {message}")]
    Decode { path: PathBuf, message: String },
    #[error("dataset root {0} is not a readable folder")]
    BadRoot(PathBuf),
    #[error("dataset root {0} has no class folders (expected root/<class>/<image>)")]
    NoClasses(PathBuf),
    #[error("class folder {0} has no images (.jpg, .jpeg, .png)")]
    EmptyClass(PathBuf),
    #[error("invalid IDX file {path}: {message}")]
    Idx { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
}
