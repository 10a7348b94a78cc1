//! DetNAS search spaces and everything that can be computed about an architecture without
//! a tensor library: validation, analytic MACs and parameter counts, sampling under
//! constraints, and the evolution operators (mutation, crossover).
//!
//! Conventions follow DetNAS (arXiv:1903.10979 §3.1) and, where the paper is silent, the
//! official megvii-model/DetNAS code (`detnasnet.py`, `shuffle_blocks.py`):
//! * choice ids `0 = 3×3`, `1 = 5×5`, `2 = 7×7`, `3 = Xception` ([`Choice`]);
//! * an architecture is one choice id per block, stage by stage ([`Arch`]);
//! * FLOPs are multiply-accumulates of conv and linear layers only ([`cost()`]).
//!
//! The bottom of the model side of the workspace: it depends on no other detnas crate and
//! not on tch, so its tests need no libtorch.

pub mod arch;
pub mod choice;
pub mod cost;
pub mod error;
pub mod latency;
pub mod ops;
pub mod rng;
pub mod sampler;
pub mod space;
pub mod units;

pub use arch::Arch;
pub use choice::Choice;
pub use cost::{Cost, CostModel, InputSize, cost};
pub use error::SpaceError;
pub use latency::LatencyTable;
pub use ops::{Constraint, crossover, mutate, sample_constrained, sample_uniform};
pub use sampler::PathSampler;
pub use space::{ChannelShuffle, SearchSpace, SpaceSpec};
pub use units::{format_count, parse_count};
