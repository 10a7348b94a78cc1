//! [`LossTerm`]: a loss as a sum over the batch and the count it is normalised by, both
//! device tensors, so that a training step reads nothing back to the host until the engine's
//! one read per step.

use tch::{Device, Kind, Tensor};

/// A loss as the sum of its terms over the batch and the count it is normalised by: the loss
/// is `sum / max(count, 1)`. Data-parallel training sums both over the ranks before dividing,
/// so the loss and its gradient are the global batch's whatever the number of processes
/// (maskrcnn_benchmark divides by per-GPU counts; with one process the two agree).
#[derive(Debug)]
pub struct LossTerm {
    /// The loss's name in the logs (`cls`, `box`, …).
    pub name: &'static str,
    /// Sum over the batch, a scalar tensor (float).
    pub sum: Tensor,
    /// What the sum is divided by (positive anchors, sampled anchors or RoIs, images, …): a
    /// scalar tensor (`Kind::Double`) on the loss's device.
    pub count: Tensor,
}

impl LossTerm {
    /// A term whose count is known on the host (e.g. the batch size): the count is made on
    /// `sum`'s device by a fill, not a copy.
    pub fn with_count(name: &'static str, sum: Tensor, count: f64) -> LossTerm {
        let count = Tensor::full([], count, (Kind::Double, sum.device()));
        LossTerm { name, sum, count }
    }

    /// `sum / max(count, 1)`: the loss of a single process.
    pub fn value(&self) -> Tensor {
        &self.sum / self.count.clamp_min(1.0).to_kind(self.sum.kind())
    }

    /// The device of the sum.
    pub fn device(&self) -> Device {
        self.sum.device()
    }
}
