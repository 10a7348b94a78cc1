//! Errors of the network crate.

/// Misuse of a network (wrong architecture for the space, missing weights, …).
#[derive(Debug, thiserror::Error)]
pub enum NnError {
    /// A search-space error.
    #[error(transparent)]
    Space(#[from] detnas_space::SpaceError),
    /// A child network asked to run another architecture.
    #[error("architecture {arch} does not match this child network ({own})")]
    WrongChild {
        /// The architecture asked for.
        arch: String,
        /// The child's own.
        own: String,
    },
    /// A supernet tensor that cannot be copied into a child.
    #[error("cannot inherit '{name}': {message}")]
    Inherit {
        /// The tensor's name.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// A libtorch error.
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}
