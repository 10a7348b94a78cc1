//! Padded detection batches from the one loader ([`crate::loader`]): epoch order seeded by
//! `(seed, epoch)`, sample augmentation by `(seed, epoch, index)`, unreadable images skipped
//! and reported, resumable at a saved [`Position`].

use super::DetDataset;
use super::transform::{DetBatch, DetSample, DetTransform, collate};
use crate::loader::{Loaded, Loader, SampleSource, StreamConfig};
use crate::{DataError, InputConvention, Position};
use detnas_space::rng::seeded;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Detection loader settings: the stream, the per-image transform and the padding.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DetLoaderConfig {
    /// Batch size, shuffling and prefetch.
    #[serde(flatten)]
    pub stream: StreamConfig,
    /// Resizing and flipping.
    pub transform: DetTransform,
    /// How the network expects the pixels.
    pub convention: InputConvention,
    /// Batches are padded to a multiple of this (pixels; FPN strides need 32).
    pub divisibility: u32,
}

/// A detection batch and where the stream stands after it.
pub type DetLoaderBatch = Loaded<DetBatch>;

/// The loader of padded detection batches.
pub type DetLoader = Loader<DetBatch>;

/// Detection samples: annotated images, a transform, a pixel convention and the padding.
struct DetSamples {
    data: Arc<DetDataset>,
    transform: DetTransform,
    convention: InputConvention,
    divisibility: u32,
}

impl SampleSource for DetSamples {
    type Sample = DetSample;
    type Batch = DetBatch;

    fn len(&self) -> usize {
        self.data.len()
    }
    fn describe(&self) -> String {
        self.data.source.clone()
    }
    fn name(&self, i: usize) -> String {
        self.data.images[i].file.display().to_string()
    }
    fn load(&self, i: usize, seed: u64) -> Result<DetSample, DataError> {
        let img = self.data.load(i)?;
        Ok(self.transform.apply(&img, &self.data.images[i], &mut seeded(seed)))
    }
    fn collate(&self, samples: Vec<DetSample>, indices: Vec<usize>) -> DetBatch {
        collate(samples, indices, self.divisibility, self.convention)
    }
}

impl Loader<DetBatch> {
    /// A detection loader over `data`, started at `start`.
    ///
    /// # Errors
    /// As [`Loader::start`], and [`DataError::Invalid`] for an empty `transform.min_size`.
    pub fn new(data: Arc<DetDataset>, cfg: DetLoaderConfig, start: Position) -> Result<DetLoader, DataError> {
        if cfg.transform.min_size.is_empty() {
            return Err(DataError::Invalid("transform.min_size is empty".into()));
        }
        let source =
            DetSamples { data, transform: cfg.transform, convention: cfg.convention, divisibility: cfg.divisibility };
        Loader::start(source, cfg.stream, start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::det::synth::SyntheticDetConfig;

    #[test]
    fn resumes_exactly_and_skips_missing_images() {
        let dir = std::env::temp_dir().join(format!("detnas-detloader-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let synth = SyntheticDetConfig {
            images: 10,
            width: 40,
            height: 30,
            classes: 3,
            seed: 1,
            objects: (1, 3),
            radius: (0.1, 0.3),
            max_overlap: 0.3,
            clutter: 1,
        };
        let ds = Arc::new(synth.write(&dir).unwrap());
        std::fs::remove_file(&ds.images[4].file).unwrap();
        let cfg = DetLoaderConfig {
            stream: StreamConfig::training(3, 9, 2, None),
            transform: DetTransform { min_size: vec![30, 40], max_size: 80, flip: true },
            convention: InputConvention::OfficialBgr,
            divisibility: 32,
        };
        let mut full = DetLoader::new(ds.clone(), cfg.clone(), Position::default()).unwrap();
        let all: Vec<DetLoaderBatch> = (0..7).map(|_| full.next_batch().unwrap().unwrap()).collect();
        assert!(all.iter().all(|b| !b.batch.indices.contains(&4)));
        let skipped: usize = all.iter().flat_map(|b| &b.epoch_reports).map(|r| r.skipped.len()).sum();
        assert!(skipped >= 1);
        let mut resumed = DetLoader::new(ds, cfg, all[2].after).unwrap();
        for b in &all[3..] {
            let r = resumed.next_batch().unwrap().unwrap();
            assert_eq!(r.batch.indices, b.batch.indices);
            assert_eq!(r.batch.images, b.batch.images);
            assert_eq!(r.batch.width % 32, 0);
        }
        std::fs::remove_dir_all(&dir).ok();
    }
}
