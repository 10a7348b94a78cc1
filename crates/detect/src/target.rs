//! Ground truth of one training image and detections of one image.

use tch::Tensor;

/// Ground truth of one image in network-input coordinates ([`crate::boxes`] convention).
/// Crowd regions are not training targets; leave them out.
#[derive(Debug)]
pub struct Target {
    /// `[G, 4]` float.
    pub boxes: Tensor,
    /// `[G]` i64, contiguous class indices `0..K`.
    pub labels: Tensor,
    /// Seed of this image's random choices (the RPN's and the box head's samplers): set per
    /// image and step by the trainer, so the draws do not depend on which process or batch
    /// position the image lands in.
    pub seed: u64,
}

/// Detections of one image: `boxes` `[D, 4]`, `scores` `[D]`, `labels` `[D]` (`0..K`),
/// by descending score, at most the configured number per image.
#[derive(Debug)]
pub struct Detections {
    pub boxes: Tensor,
    pub scores: Tensor,
    pub labels: Tensor,
}

impl Detections {
    pub fn len(&self) -> i64 {
        self.scores.size()[0]
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Keeps the first `max` detections (the highest-scoring: detections are sorted).
    pub fn top(self, max: i64) -> Detections {
        if self.len() <= max {
            return self;
        }
        Detections {
            boxes: self.boxes.narrow(0, 0, max),
            scores: self.scores.narrow(0, 0, max),
            labels: self.labels.narrow(0, 0, max),
        }
    }

    /// Selects detections `idx` (i64, in that order).
    pub fn select(&self, idx: &Tensor) -> Detections {
        Detections {
            boxes: self.boxes.index_select(0, idx),
            scores: self.scores.index_select(0, idx),
            labels: self.labels.index_select(0, idx),
        }
    }
}
