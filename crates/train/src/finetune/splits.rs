//! The data of a fine-tuning run: the training set (minus the carved search-validation split
//! and minus images without a target), the search-validation split (DetNAS
//! arXiv:1903.10979 §3.3: architectures are ranked on images carved from the training set,
//! never on the test set) and the test split.

use crate::TrainError;
use crate::det_config::{DetSource, FinetuneConfig};
use detnas_data::det::{DetDataset, coco, voc};
use detnas_data::mix_seed;
use std::path::Path;
use std::sync::Arc;

const SPLIT_STREAM: u64 = 0x5B11;

/// The splits of a fine-tuning run.
#[derive(Debug)]
pub struct DetSplits {
    /// Training images (search-validation images and images without targets removed).
    pub train: Arc<DetDataset>,
    /// Carved from the training set for the architecture search.
    pub search_val: Arc<DetDataset>,
    /// The test split.
    pub test: Arc<DetDataset>,
}

/// Opens the data of `cfg`; `run_dir` anchors a synthetic set's relative folder.
///
/// # Errors
/// [`TrainError::Data`] for unreadable or malformed annotations, [`TrainError::Config`] for
/// training and test sets with different categories, an empty VOC root list, a carve larger
/// than the set, or no image with a target.
pub fn open_splits(cfg: &FinetuneConfig, run_dir: &Path) -> Result<DetSplits, TrainError> {
    let (full, test) = match &cfg.data.source {
        DetSource::Synthetic { train, test, folder } => {
            let base = if folder.is_relative() { run_dir.join(folder) } else { folder.clone() };
            (train.write(&base.join("train"))?, test.write(&base.join("test"))?)
        }
        DetSource::Coco { train_json, train_images, test_json, test_images } => {
            (coco::load(train_json, train_images)?, coco::load(test_json, test_images)?)
        }
        DetSource::Voc { train_roots, train_set, test_root, test_set } => {
            let mut all: Option<DetDataset> = None;
            for r in train_roots {
                let d = voc::load(r, train_set, &voc::VOC_CLASSES)?;
                all = Some(match all {
                    None => d,
                    Some(mut a) => {
                        let offset = a.images.len() as u64;
                        a.images.extend(d.images.into_iter().map(|mut i| {
                            i.id += offset;
                            i
                        }));
                        a
                    }
                });
            }
            let all = all.ok_or_else(|| TrainError::Config("data.source.train_roots is empty".into()))?;
            (all, voc::load(test_root, test_set, &voc::VOC_CLASSES)?)
        }
    };
    if full.categories != test.categories {
        return Err(TrainError::Config("the training and test sets have different categories".into()));
    }
    for (what, d) in [("training", &full), ("test", &test)] {
        if !d.report.is_clean() {
            tracing::warn!("{what} annotations ({}): {}", d.source, d.report);
        }
    }
    let (rest, carved) = if cfg.data.search_val_images > 0 {
        full.carve(cfg.data.search_val_images, mix_seed(cfg.seed, &[SPLIT_STREAM]))?
    } else {
        ((0..full.len()).collect(), Vec::new())
    };
    let with_targets: Vec<usize> =
        rest.into_iter().filter(|&i| full.images[i].objects.iter().any(|o| !o.crowd)).collect();
    if with_targets.is_empty() {
        return Err(TrainError::Config(format!("{} has no image with a non-crowd object to train on", full.source)));
    }
    Ok(DetSplits {
        train: Arc::new(full.subset(&with_targets)),
        search_val: Arc::new(full.subset(&carved)),
        test: Arc::new(test),
    })
}
