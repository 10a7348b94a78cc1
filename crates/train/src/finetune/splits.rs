//! The data of a fine-tuning run: the training set (minus the carved search-validation split
//! and, unless `data.keep_empty`, minus images without a target), the search-validation split (DetNAS
//! arXiv:1903.10979 §3.3: architectures are ranked on images carved from the training set,
//! never on the test set) and the test split.

use crate::TrainError;
use crate::det_config::{DetSource, FinetuneConfig, SyntheticDetSource, YoloSource};
use detnas_data::DataError;
use detnas_data::det::check::SplitSummary;
use detnas_data::det::{DetDataset, coco, voc, yolo};
use detnas_data::mix_seed;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The splits of a fine-tuning run.
#[derive(Debug)]
pub struct DetSplits {
    /// Training images (search-validation images removed; images without targets removed
    /// unless `data.keep_empty`).
    pub train: Arc<DetDataset>,
    /// Carved from the training set for the architecture search.
    pub search_val: Arc<DetDataset>,
    /// The test split.
    pub test: Arc<DetDataset>,
    /// What each split holds (train, search-val, test), for the log and `detnas data check`.
    pub summaries: Vec<SplitSummary>,
}

/// The class list of a VOC source and where it came from (for messages).
fn voc_classes(given: Option<&Vec<String>>, sets: &[voc::VocSet]) -> Result<(Vec<String>, &'static str), TrainError> {
    match given {
        Some(c) => {
            let mut seen = std::collections::HashSet::new();
            if c.is_empty() || !c.iter().all(|n| seen.insert(n)) {
                return Err(TrainError::Config("data.source.classes must be non-empty and without repeats".into()));
            }
            Ok((c.clone(), "data.source.classes"))
        }
        None => {
            let names: std::collections::BTreeSet<String> = sets.iter().flat_map(voc::VocSet::class_names).collect();
            Ok((names.into_iter().collect(), "the training set's classes"))
        }
    }
}

/// The training (before the carve) and test datasets of a source.
fn load_source(cfg: &FinetuneConfig, run_dir: &Path) -> Result<(DetDataset, DetDataset), TrainError> {
    Ok(match &cfg.data.source {
        DetSource::Synthetic(SyntheticDetSource { train, test, folder }) => {
            let base = if folder.is_relative() { run_dir.join(folder) } else { folder.clone() };
            (train.write(&base.join("train"))?, test.write(&base.join("test"))?)
        }
        DetSource::Coco { train_json, train_images, test_json, test_images } => {
            (coco::load(train_json, train_images)?, coco::load(test_json, test_images)?)
        }
        DetSource::Voc { train_roots, train_set, test_root, test_set, classes } => {
            if train_roots.is_empty() {
                return Err(TrainError::Config("data.source.train_roots is empty".into()));
            }
            let sets: Vec<voc::VocSet> =
                train_roots.iter().map(|r| voc::read(r, train_set)).collect::<Result<_, _>>()?;
            let (classes, origin) = voc_classes(classes.as_ref(), &sets)?;
            if classes.is_empty() {
                return Err(TrainError::Config(format!(
                    "the VOC training annotations ({}) name no object class",
                    sets[0].list.display()
                )));
            }
            let mut all: Option<DetDataset> = None;
            for set in &sets {
                let d = voc::build(set, &classes, origin)?;
                all = Some(match all {
                    None => d,
                    Some(mut a) => {
                        let offset = a.images.len() as u64;
                        a.report.merge(&d.report);
                        a.source = format!("{} + {}", a.source, d.source);
                        a.images.extend(d.images.into_iter().map(|mut i| {
                            i.id += offset;
                            i
                        }));
                        a
                    }
                });
            }
            let all = all.expect("at least one root");
            (all, voc::build(&voc::read(test_root, test_set)?, &classes, origin)?)
        }
        DetSource::Yolo(YoloSource { yaml, train_split, test_split }) => {
            let spec = yolo::read_spec(yaml)?;
            (yolo::load(&spec, train_split)?, yolo::load(&spec, test_split)?)
        }
    })
}

/// Checks every annotated image size against the image header (VOC and COCO; the YOLO and
/// synthetic readers take their sizes from the images).
fn reconcile(cfg: &FinetuneConfig, d: &mut DetDataset) -> Result<(), TrainError> {
    if !matches!(cfg.data.source, DetSource::Voc { .. } | DetSource::Coco { .. }) {
        return Ok(());
    }
    let sizes = d.header_sizes();
    d.reconcile_sizes(&sizes, cfg.data.size_mismatch).map_err(|problems| {
        let n = problems.len();
        let shown: Vec<&str> = problems.iter().take(20).map(String::as_str).collect();
        let more =
            if n > 20 { format!("\n  … and {} more (detnas data check lists all)", n - 20) } else { String::new() };
        TrainError::Data(DataError::Invalid(format!(
            "{n} image{} of {} cannot be used:\n  {}{more}",
            if n == 1 { "" } else { "s" },
            d.source,
            shown.join("\n  ")
        )))
    })
}

/// Removes the synthetic sets a failed start of this run wrote with other parameters: only a
/// set inside the run folder (a relative `folder`), and only while the run holds no
/// checkpoint (the start that wrote it made none, so the set is the run's own and unused).
/// Returns the folders removed.
///
/// # Errors
/// [`TrainError::Data`] when a set cannot be removed.
pub fn take_over_synthetic(cfg: &FinetuneConfig, run_dir: &Path) -> Result<Vec<PathBuf>, TrainError> {
    let DetSource::Synthetic(SyntheticDetSource { train, test, folder }) = &cfg.data.source else {
        return Ok(Vec::new());
    };
    if folder.is_absolute() || detnas_runtime::checkpoint::has_progress(run_dir) {
        return Ok(Vec::new());
    }
    let mut removed = Vec::new();
    for (set, name) in [(train, "train"), (test, "test")] {
        let dir = run_dir.join(folder).join(name);
        if set.remove_other(&dir)? {
            tracing::info!(
                "{} held a synthetic set with other parameters from a start that made no checkpoint; writing it anew",
                dir.display()
            );
            removed.push(dir);
        }
    }
    Ok(removed)
}

/// Opens the data of `cfg`; `run_dir` anchors a synthetic set's relative folder.
///
/// # Errors
/// [`TrainError::Data`] for unreadable or malformed annotations, unreadable images, sizes
/// that differ from the annotations (under `data.size_mismatch = "error"`) or a test object
/// of a class the training set lacks; [`TrainError::Config`] for training and test sets with
/// different categories, an empty VOC root list, a carve larger than the set, or no image
/// with a target.
pub fn open_splits(cfg: &FinetuneConfig, run_dir: &Path) -> Result<DetSplits, TrainError> {
    let (mut full, mut test) = load_source(cfg, run_dir)?;
    if full.categories != test.categories {
        return Err(TrainError::Config("the training and test sets have different categories".into()));
    }
    reconcile(cfg, &mut full)?;
    reconcile(cfg, &mut test)?;
    for (what, d) in [("training", &full), ("test", &test)] {
        if !d.report.is_clean() {
            tracing::warn!("{what} annotations ({}): {}", d.source, d.report);
        }
    }
    let (rest, carved) = if cfg.data.search_val_images > 0 {
        full.carve(cfg.data.search_val_images, mix_seed(cfg.seed, &[detnas_data::streams::FINETUNE_SPLIT]))
            .map_err(|e| TrainError::Config(format!("data.search_val_images = {}: {e}", cfg.data.search_val_images)))?
    } else {
        ((0..full.len()).collect(), Vec::new())
    };
    let has_target = |i: &usize| full.images[*i].objects.iter().any(|o| !o.crowd);
    let mut train_summary = SplitSummary::of("train", &full.subset(&rest));
    train_summary.source = full.source.clone();
    let train_idx: Vec<usize> = if cfg.data.keep_empty {
        rest
    } else {
        train_summary.empty_dropped = train_summary.without_boxes;
        rest.into_iter().filter(has_target).collect()
    };
    if !train_idx.iter().any(has_target) {
        return Err(TrainError::Config(format!("{} has no image with a non-crowd object to train on", full.source)));
    }
    let train = full.subset(&train_idx);
    for c in train.categories_without_boxes() {
        tracing::warn!(
            "category '{}' (id {}) has no box in the training split ({}): the detector cannot learn it",
            c.name,
            c.id,
            full.source
        );
    }
    let mut search_val = full.subset(&carved);
    // The reading report belongs to the whole training set (shown with `train`).
    search_val.report = Default::default();
    search_val.source = format!("carved from the training set by the seed, {} images", carved.len());
    let summaries = vec![train_summary, SplitSummary::of("search-val", &search_val), SplitSummary::of("test", &test)];
    Ok(DetSplits { train: Arc::new(train), search_val: Arc::new(search_val), test: Arc::new(test), summaries })
}
