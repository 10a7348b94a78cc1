//! Errors of the detection crate.

#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    #[error(transparent)]
    Nn(#[from] detnas_nn::NnError),
    #[error(transparent)]
    Torch(#[from] tch::TchError),
    #[error(transparent)]
    Data(#[from] detnas_data::DataError),
    #[error("invalid detector configuration: {0}")]
    Config(String),
    #[error("evaluation: {0}")]
    Eval(String),
}
