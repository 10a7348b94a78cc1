//! Errors of the detection crate.

/// A detection error.
#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    /// A network error.
    #[error(transparent)]
    Nn(#[from] detnas_nn::NnError),
    /// A libtorch error.
    #[error(transparent)]
    Torch(#[from] tch::TchError),
    /// A data error (reading the images).
    #[error(transparent)]
    Data(#[from] detnas_data::DataError),
    /// A detector configuration that cannot be built.
    #[error("invalid detector configuration: {0}")]
    Config(String),
    /// COCO evaluation failed.
    #[error("evaluation: {0}")]
    Eval(String),
}
