//! tch modules of DetNAS: the four choice blocks, the one-shot ShuffleNetV2 supernet and the
//! fixed child network of one architecture.
//!
//! Definitions follow the official megvii-model/DetNAS code (`shuffle_blocks.py`,
//! `detnasnet.py`) and DetNAS arXiv:1903.10979 §3.1:
//! channel shuffle "method 1", no conv bias inside blocks, ReLU after every 1×1 conv except
//! the branch's last (applied after it by the block), no ReLU after depthwise convs, official
//! initialisation (BN γ = 1, β = 1e-4; conv weights N(0, 1/(in/groups)); stem N(0, 0.01)).
//!
//! Variable names: the supernet stores choice `c` of block `i` under `features.i.c.…`, a child
//! stores its only op under `features.i.…`; stem and head names are shared, so
//! [`inherit`] is a renaming copy.

//!
//! Depends on `detnas_space` and tch only; detection parts (FPN, heads) live in
//! `detnas_detect`.

pub mod block;
pub mod bn;
pub mod count;
pub mod error;
pub mod latency;
pub mod layers;
pub mod layout;
pub mod loss;
pub mod net;
pub mod path;
pub mod zero_cost;

pub use block::ChoiceOp;
pub use bn::{BnMode, Recalibration};
pub use count::{MeasuredCost, measure_child};
pub use error::NnError;
pub use loss::LossTerm;
pub use net::{ChildNet, ChildNetConfig, Supernet, SupernetConfig, inherit};
pub use path::PathIndex;
pub use tch;
