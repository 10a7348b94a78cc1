//! Data for detnas: the built-in synthetic sets, ImageFolder and MNIST IDX readers, strict
//! image decoding, augmentation, and a deterministic parallel loader with prefetch.
//!
//! Determinism contract: the order of an epoch is a Fisher–Yates shuffle seeded by
//! `(seed, epoch)`, and the augmentation of a sample is seeded by `(seed, epoch, index)`, so
//! a batch depends only on the loader's position — never on thread scheduling — and a
//! loader restarted at a saved position yields exactly the batches the original would have.
//!
//! Depends only on `detnas_space` (its seeded RNG), not on tch: a batch is plain `f32`s.

pub mod decode;
pub mod det;
pub mod error;
pub mod folder;
pub mod idx;
pub mod loader;
pub mod shapes;
pub mod streams;
pub mod subset;
pub mod synth;
pub mod transform;

pub use decode::{IMAGE_EXTENSIONS, decode_image, image_size, is_image_file};
pub use error::DataError;
pub use folder::ImageFolder;
pub use idx::IdxDataset;
/// A decoded RGB image (`image`'s), as [`decode_image`] returns it.
pub use image::RgbImage;
pub use loader::{Batch, ClsLoader, Loaded, Loader, LoaderConfig, Position, SampleSource, SkipReport, StreamConfig};
pub use subset::Subset;
pub use synth::SyntheticCls;
pub use transform::{ClsTransform, InputConvention, Pixels};

/// A classification dataset: `len()` samples, each an RGB image with a label in
/// `0..classes().len()`. Loading may fail (a corrupt file); the loader skips and reports.
pub trait ClsDataset: Send + Sync {
    /// Number of samples.
    fn len(&self) -> usize;
    /// `true` when there are no samples.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Class names; a label is an index into this list.
    fn classes(&self) -> &[String];
    /// The label of sample `i` (known without decoding).
    fn label(&self, i: usize) -> usize;
    /// Decodes sample `i`.
    ///
    /// # Errors
    /// A [`DataError`] when the sample cannot be read or decoded.
    fn load(&self, i: usize) -> Result<RgbImage, DataError>;
    /// A human name of sample `i` (its path, or `synthetic #i`).
    fn name(&self, i: usize) -> String;
    /// A fingerprint of the dataset's content description (paths and sizes, or generator
    /// parameters), recorded in checkpoints.
    fn fingerprint(&self) -> String;
}

/// Derives an independent 64-bit seed from a base seed and a tuple of counters (SplitMix64
/// finaliser over each part), so streams for (seed, epoch, index) never overlap in practice.
pub fn mix_seed(base: u64, parts: &[u64]) -> u64 {
    let mut z = base ^ 0x9E37_79B9_7F4A_7C15;
    for &p in parts {
        z = z.wrapping_add(p.wrapping_mul(0xBF58_476D_1CE4_E5B9)).wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
    }
    z
}
