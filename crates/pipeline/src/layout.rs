//! The layout of a run folder and the records of its stages, shared by the stage runner
//! ([`crate::stages`]), the report and the export (a leaf module: it uses none of them).
//!
//! ```text
//! RUN/pipeline.toml     the pipeline configuration
//! RUN/configs/          the stage configs used (embedded demo: written here)
//! RUN/data/             the synthetic detection set (train/, test/), shared by all stages
//! RUN/pretrain/         supernet pre-training (classification, path-wise)
//! RUN/finetune/         supernet fine-tuning as the detector backbone (path-wise)
//! RUN/baseline-grid/    the trivial grid detector scored on the test and search-val splits
//! RUN/search/           evolutionary search, fitness = AP on the search-validation split
//! RUN/search-cls/       the ClsNAS baseline search, fitness = top-1 on the pre-trained supernet
//! RUN/retrain-NAME/     cls/ (from scratch, paper protocol) and det/ for found, random, clsnas
//! RUN/report/           report.md, report.html, plots (regenerable: detnas report RUN)
//! RUN/replaced/         folders of stages that changed and ran again (`--rerun-changed`)
//! ```
//!
//! Every stage folder holds `identity.json` (what determines its result) from its start and
//! `stage.json` ([`StageRecord`]) once the stage has finished.

use detnas_runtime::mem::MemoryRecord;
use detnas_train::finetune::FinetuneSummary;
use detnas_train::pretrain::Summary;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The marker file of a finished stage.
pub const STAGE_FILE: &str = "stage.json";

/// The retraining labels, in report order: the found architecture, then the baselines.
pub const RETRAINED: [&str; 4] = ["found", "random", "clsnas", "zero-cost"];

/// Every stage of a run, in order: its name and folder.
pub fn stages(run: &Path) -> Vec<(String, PathBuf)> {
    let mut v = vec![
        ("data".to_string(), data(run)),
        ("pretrain".into(), pretrain(run)),
        ("finetune".into(), finetune(run)),
        ("baseline-grid".into(), baseline_grid(run)),
        ("search".into(), search(run)),
        ("search-cls".into(), search_cls(run)),
        ("search-zero-cost".into(), search_zero_cost(run)),
    ];
    for l in RETRAINED {
        v.push((format!("retrain-{l}"), retrain(run, l)));
    }
    v
}

/// `RUN/data`.
pub fn data(run: &Path) -> PathBuf {
    run.join("data")
}
/// `RUN/pretrain`.
pub fn pretrain(run: &Path) -> PathBuf {
    run.join("pretrain")
}
/// `RUN/finetune`.
pub fn finetune(run: &Path) -> PathBuf {
    run.join("finetune")
}
/// `RUN/baseline-grid`.
pub fn baseline_grid(run: &Path) -> PathBuf {
    run.join("baseline-grid")
}
/// `RUN/search`.
pub fn search(run: &Path) -> PathBuf {
    run.join("search")
}
/// `RUN/search-cls`.
pub fn search_cls(run: &Path) -> PathBuf {
    run.join("search-cls")
}
/// `RUN/search-zero-cost`.
pub fn search_zero_cost(run: &Path) -> PathBuf {
    run.join("search-zero-cost")
}
/// `RUN/retrain-LABEL`.
pub fn retrain(run: &Path, label: &str) -> PathBuf {
    run.join(format!("retrain-{label}"))
}
/// `RUN/report`.
pub fn report(run: &Path) -> PathBuf {
    run.join("report")
}

/// `stage.json`: written when a stage has finished.
#[derive(Debug, Serialize, Deserialize)]
pub struct StageRecord<T> {
    /// The stage's name.
    pub stage: String,
    /// Wall time of the stage over all its sessions, seconds.
    pub seconds: f64,
    /// Sessions that worked on the stage (runs resumed after a stop or a crash, plus one).
    #[serde(default = "one_session")]
    pub sessions: usize,
    /// The stage's result.
    pub result: T,
    /// Resident memory over the stage (the process's high-water mark is reset at its start).
    #[serde(default)]
    pub memory: MemoryRecord,
    /// The machine and libtorch build of the session that finished the stage.
    #[serde(default)]
    pub machine: detnas_runtime::Machine,
}

fn one_session() -> usize {
    1
}

/// The record of a finished stage, if any.
pub fn stage_record<T: DeserializeOwned>(dir: &Path) -> Option<StageRecord<T>> {
    let text = std::fs::read_to_string(dir.join(STAGE_FILE)).ok()?;
    serde_json::from_str(&text).ok()
}

/// The marker of a finished stage, if any: its seconds and result.
pub fn finished<T: DeserializeOwned>(dir: &Path) -> Option<(f64, T)> {
    stage_record(dir).map(|r: StageRecord<T>| (r.seconds, r.result))
}

/// One retrained architecture: the result of a `retrain-LABEL` stage.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Retrained {
    /// `found`, `random` or `clsnas` (or `rank-check`).
    pub label: String,
    /// The architecture.
    pub arch: String,
    /// Classification training from scratch (the paper's protocol), if run.
    pub cls: Option<Summary>,
    /// The detection retraining's summary (test AP).
    pub det: FinetuneSummary,
}

/// Images and boxes of a split (crowd regions not counted).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitCounts {
    /// Images.
    pub images: usize,
    /// Boxes that count in the evaluation.
    pub boxes: usize,
}

/// The `baseline-grid` stage's result: the trivial grid detector
/// ([`detnas_detect::baseline::GridBaseline`]) scored on the splits the models are judged on,
/// and the size of those splits.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GridRecord {
    /// The grid's box (the training boxes' median size); none when training has no box.
    pub grid: Option<detnas_detect::baseline::GridBaseline>,
    /// Its COCO stats on the test split.
    pub test: Option<detnas_detect::metrics::CocoStats>,
    /// Its COCO stats on the search-validation split (none when nothing is carved).
    pub search_val: Option<detnas_detect::metrics::CocoStats>,
    /// The test split's size.
    pub test_counts: SplitCounts,
    /// The search-validation split's size (none when nothing is carved).
    pub search_val_counts: Option<SplitCounts>,
}
