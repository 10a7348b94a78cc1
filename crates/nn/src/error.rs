//! Errors of the network crate.

/// Misuse of a network (wrong architecture for the space, missing weights, …).
#[derive(Debug, thiserror::Error)]
pub enum NnError {
    #[error(transparent)]
    Space(#[from] detnas_space::SpaceError),
    #[error("architecture {arch} does not match this child network ({own})")]
    WrongChild { arch: String, own: String },
    #[error("cannot inherit '{name}': {message}")]
    Inherit { name: String, message: String },
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}
