//! Every random stream of a run in one table: the first part [`crate::mix_seed`] mixes into
//! the run's seed. Each consumer draws from its own stream only, so a draw added to one
//! never shifts another, and two consumers never share one (tested).

/// Data order of each training epoch (the loader's shuffle; then the epoch).
pub const LOADER_EPOCH: u64 = 0x0DE5;
/// Synthetic detection image `i` (then `i`), under the split's own seed.
pub const SYNTHETIC_DET_IMAGE: u64 = 0x0DE7;
/// Which training images are carved out as the search-validation split (inside
/// [`crate::det::DetDataset::carve`]).
pub const SEARCH_VAL_CARVE: u64 = 0xCA7E;
/// The carve's seed from a fine-tuning run's seed.
pub const FINETUNE_SPLIT: u64 = 0x5B11;

/// Pre-training: the path of each step.
pub const PRETRAIN_PATHS: u64 = 0x9A7B;
/// Pre-training: the data order.
pub const PRETRAIN_DATA: u64 = 0xDA7A;
/// Pre-training: dropout masks (then step and image index).
pub const PRETRAIN_DROPOUT: u64 = 0xD20F;
/// Pre-training: the initial weights (libtorch's generator).
pub const PRETRAIN_INIT: u64 = 0x1417;
/// Pre-training: the paths scored after training; with [`RECALIBRATION`] the BN
/// recalibration images.
pub const PRETRAIN_EVAL: u64 = 0xE7A1;

/// Fine-tuning: the path of each step.
pub const FINETUNE_PATHS: u64 = 0x9A7C;
/// Fine-tuning: the data order.
pub const FINETUNE_DATA: u64 = 0xDA7B;
/// Fine-tuning: the anchor and RoI samplers (then step and image seed).
pub const FINETUNE_SAMPLER: u64 = 0x5A3B;
/// Fine-tuning: the initial weights of what the pre-trained supernet does not cover.
pub const FINETUNE_INIT: u64 = 0x1418;
/// Fine-tuning: the paths scored after training; with [`RECALIBRATION`] the BN
/// recalibration images.
pub const FINETUNE_EVAL: u64 = 0xE7A2;

/// The second part after `*_EVAL` that draws the recalibration images.
pub const RECALIBRATION: u64 = 1;

/// The search: generation `g`'s operators (then `g`).
pub const SEARCH_GENERATION: u64 = 0x6E7E;
/// The pipeline: the random-architecture baseline.
pub const RANDOM_BASELINE: u64 = 0x4A4D;

/// Every first-part stream id, named.
pub const ALL: [(&str, u64); 15] = [
    ("LOADER_EPOCH", LOADER_EPOCH),
    ("SYNTHETIC_DET_IMAGE", SYNTHETIC_DET_IMAGE),
    ("SEARCH_VAL_CARVE", SEARCH_VAL_CARVE),
    ("FINETUNE_SPLIT", FINETUNE_SPLIT),
    ("PRETRAIN_PATHS", PRETRAIN_PATHS),
    ("PRETRAIN_DATA", PRETRAIN_DATA),
    ("PRETRAIN_DROPOUT", PRETRAIN_DROPOUT),
    ("PRETRAIN_INIT", PRETRAIN_INIT),
    ("PRETRAIN_EVAL", PRETRAIN_EVAL),
    ("FINETUNE_PATHS", FINETUNE_PATHS),
    ("FINETUNE_DATA", FINETUNE_DATA),
    ("FINETUNE_SAMPLER", FINETUNE_SAMPLER),
    ("FINETUNE_INIT", FINETUNE_INIT),
    ("FINETUNE_EVAL", FINETUNE_EVAL),
    ("SEARCH_GENERATION", SEARCH_GENERATION),
];

#[cfg(test)]
mod tests {
    #[test]
    fn stream_ids_are_distinct() {
        let mut ids: Vec<u64> = super::ALL.iter().map(|(_, id)| *id).collect();
        ids.push(super::RANDOM_BASELINE);
        let n = ids.len();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), n, "two streams share an id");
    }
}
