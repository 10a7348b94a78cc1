//! Ground truth and detections as the detectors take and give them.
//!
//! * [`Target`] — one training image's ground truth, on the host;
//! * [`Targets`] — a batch's ground truth on the device, padded to the most boxes of any image
//!   (three uploads per batch), which the heads match and sample without host round-trips;
//! * [`Detections`] — one image's final detections, on the host (inference ends with one
//!   read per batch).

use detnas_device::host;
use tch::{Device, Kind, Tensor};

/// Ground truth of one image in network-input coordinates ([`crate::boxes`] convention).
/// Crowd regions are not training targets; leave them out.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    /// `(x1, y1, x2, y2)` per box.
    pub boxes: Vec<[f32; 4]>,
    /// Contiguous class indices `0..K`, one per box.
    pub labels: Vec<i64>,
    /// Seed of this image's random choices (the RPN's and the box head's samplers): set per
    /// image and step by the trainer, so the draws do not depend on which process or batch
    /// position the image lands in.
    pub seed: u64,
}

/// A batch's ground truth on the device, padded to `G` = the most boxes of any image.
#[derive(Debug)]
pub struct Targets {
    /// `[N, G, 4]` float; padding rows are zeros.
    pub boxes: Tensor,
    /// `[N, G]` i64 class indices; padding entries are 0.
    pub labels: Tensor,
    /// `[N, G]` bool: a real box, not padding.
    pub valid: Tensor,
    /// `[N, 2]` i64: two 31-bit words per image derived from its seed (the samplers' keys).
    pub seed_words: Tensor,
    /// Boxes per image (host).
    pub counts: Vec<i64>,
}

/// Two 31-bit words from a 64-bit seed (SplitMix64 finaliser): the per-image parameters of
/// the samplers' key hash.
pub fn seed_words(seed: u64) -> [i64; 2] {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    [(z & 0x7FFF_FFFF) as i64, ((z >> 32) & 0x7FFF_FFFF) as i64]
}

impl Targets {
    /// Uploads the ground truth of a batch (three uploads, non-blocking on CUDA).
    pub fn new(targets: &[Target], device: Device) -> Targets {
        let n = targets.len();
        let g = targets.iter().map(|t| t.boxes.len()).max().unwrap_or(0);
        let mut boxes = vec![0f32; n * g * 4];
        let mut labels = vec![-1i64; n * g];
        let mut words = Vec::with_capacity(2 * n);
        for (i, t) in targets.iter().enumerate() {
            for (j, (b, &l)) in t.boxes.iter().zip(&t.labels).enumerate() {
                boxes[(i * g + j) * 4..(i * g + j + 1) * 4].copy_from_slice(b);
                labels[i * g + j] = l;
            }
            words.extend(seed_words(t.seed));
        }
        let (n, g) = (n as i64, g as i64);
        let boxes = host::upload(&boxes, &[n, g, 4], device, "detect.targets.boxes");
        let labels = host::upload(&labels, &[n, g], device, "detect.targets.labels");
        let seed_words = host::upload(&words, &[n, 2], device, "detect.targets.seeds");
        let valid = labels.ge(0);
        Targets {
            boxes,
            labels: labels.clamp_min(0),
            valid,
            seed_words,
            counts: targets.iter().map(|t| t.boxes.len() as i64).collect(),
        }
    }

    /// Images in the batch.
    pub fn len(&self) -> usize {
        self.counts.len()
    }

    /// Whether the batch has no image.
    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// The most boxes of any image (`G`).
    pub fn max_boxes(&self) -> i64 {
        self.boxes.size()[1]
    }
}

/// Detections of one image, on the host: by descending score, at most the configured number.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Detections {
    /// `(x1, y1, x2, y2)`, network-input pixels.
    pub boxes: Vec<[f32; 4]>,
    /// Confidence of each box.
    pub scores: Vec<f32>,
    /// Class indices `0..K`.
    pub labels: Vec<i64>,
}

impl Detections {
    /// Number of detections.
    pub fn len(&self) -> usize {
        self.scores.len()
    }
    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.scores.is_empty()
    }
}

/// Per-image region proposals of a batch on the device, padded to a common count.
#[derive(Debug)]
pub struct Proposals {
    /// `[N, R, 4]` float, network-input pixels; padding rows hold a valid dummy box.
    pub boxes: Tensor,
    /// `[N, R]` bool: a real proposal.
    pub valid: Tensor,
    /// Scalar bool: every NMS on the device reached the greedy result (see [`crate::nms`]).
    pub exact: Tensor,
}

impl Proposals {
    /// Proposals of each image as `[P_i, 4]` tensors (one host read; for parity checks).
    ///
    /// # Errors
    /// A libtorch error reading the mask.
    pub fn per_image(&self) -> Result<Vec<Tensor>, tch::TchError> {
        let valid: Vec<u8> = host::read(&self.valid.to_kind(Kind::Uint8), "detect.proposals.per_image")?;
        let r = self.valid.size()[1] as usize;
        Ok((0..self.valid.size()[0])
            .map(|i| {
                let keep: Vec<i64> = (0..r).filter(|&j| valid[i as usize * r + j] != 0).map(|j| j as i64).collect();
                let idx = host::upload(&keep, &[keep.len() as i64], self.boxes.device(), "detect.proposals.per_image");
                self.boxes.get(i).index_select(0, &idx)
            })
            .collect())
    }
}
