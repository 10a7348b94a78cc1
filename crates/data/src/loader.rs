//! A deterministic, parallel, prefetching batch loader for classification.
//!
//! A background thread assembles batches (decoding and augmenting the images of a batch in
//! parallel with rayon) and keeps up to `prefetch` of them ready. The stream of batches is a
//! pure function of the dataset, the config and the start [`Position`]:
//! * epoch `e`'s order is a Fisher–Yates shuffle seeded by `(seed, e)` (identity when not
//!   shuffling);
//! * sample `i` of epoch `e` is augmented with a stream seeded by `(seed, e, i)`;
//! * a sample that fails to load is skipped (never fed), counted with its reason and the
//!   batch is filled from the next samples of the epoch; the epoch's [`SkipReport`] rides on
//!   its last batch.
//!
//! With `drop_last`, the incomplete tail of an epoch is dropped (counted in the report) and
//! the stream continues with the next epoch forever; without it, the tail is yielded and the
//! stream ends after `epochs` epochs.

use crate::transform::{ClsTransform, InputConvention};
use crate::{ClsDataset, DataError, mix_seed};
use detnas_space::rng::{seeded, shuffle};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, sync_channel};
use std::thread::JoinHandle;

/// Loader settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoaderConfig {
    pub batch: usize,
    pub seed: u64,
    pub shuffle: bool,
    pub drop_last: bool,
    /// Stop after this many epochs (`None`: never; only with `drop_last`).
    pub epochs: Option<u64>,
    /// Batches prepared ahead.
    pub prefetch: usize,
    pub transform: ClsTransform,
    pub convention: InputConvention,
}

/// Where the stream stands: the next sample is entry `cursor` of epoch `epoch`'s order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub epoch: u64,
    pub cursor: usize,
}

/// Samples of one epoch that could not be used.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SkipReport {
    pub epoch: u64,
    /// `(sample name, reason)` of every skipped sample.
    pub skipped: Vec<(String, String)>,
    /// Samples left in an incomplete final batch and dropped (`drop_last`).
    pub dropped_tail: usize,
}

/// One batch: `images` is `[n, 3, size, size]` row-major.
#[derive(Clone, Debug)]
pub struct Batch {
    pub images: Vec<f32>,
    pub size: usize,
    pub labels: Vec<i64>,
    /// Dataset indices of the samples, in batch order.
    pub indices: Vec<usize>,
    /// The position after this batch (save it to resume after it).
    pub after: Position,
    /// Reports of the epochs that ended with (or, when a tail was dropped, just before) this
    /// batch.
    pub epoch_reports: Vec<SkipReport>,
}

impl Batch {
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    /// `true` for an empty batch.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// The running loader; dropping it stops the background thread.
pub struct Loader {
    rx: Option<Receiver<Result<Batch, DataError>>>,
    worker: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Loader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Loader")
    }
}

/// The order of epoch `epoch`.
pub fn epoch_order(len: usize, seed: u64, epoch: u64, shuffled: bool) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    if shuffled {
        shuffle(&mut seeded(mix_seed(seed, &[0x0DE5, epoch])), &mut order);
    }
    order
}

/// Loads and transforms sample `i` of epoch `epoch`.
fn prepare(data: &dyn ClsDataset, cfg: &LoaderConfig, epoch: u64, i: usize, out: &mut [f32]) -> Result<(), DataError> {
    let img = data.load(i)?;
    let mut rng = seeded(mix_seed(cfg.seed, &[epoch, i as u64]));
    cfg.transform.apply(&img, &mut rng, cfg.convention, out);
    Ok(())
}

struct Producer {
    data: Arc<dyn ClsDataset>,
    cfg: LoaderConfig,
    pos: Position,
    order: Vec<usize>,
    report: SkipReport,
    /// Samples loaded successfully in the current epoch.
    ok_in_epoch: usize,
    /// This producer saw the current epoch from its start.
    whole_epoch: bool,
    /// Reports of finished epochs not yet attached to a batch.
    pending: Vec<SkipReport>,
}

impl Producer {
    fn new(data: Arc<dyn ClsDataset>, cfg: LoaderConfig, pos: Position) -> Producer {
        let order = epoch_order(data.len(), cfg.seed, pos.epoch, cfg.shuffle);
        Producer {
            report: SkipReport { epoch: pos.epoch, ..Default::default() },
            data,
            cfg,
            pos,
            order,
            ok_in_epoch: 0,
            whole_epoch: pos.cursor == 0,
            pending: Vec::new(),
        }
    }

    fn finished(&self) -> bool {
        self.cfg.epochs.is_some_and(|e| self.pos.epoch >= e)
    }

    fn next_epoch(&mut self) -> SkipReport {
        self.ok_in_epoch = 0;
        self.whole_epoch = true;
        self.pos = Position { epoch: self.pos.epoch + 1, cursor: 0 };
        self.order = epoch_order(self.data.len(), self.cfg.seed, self.pos.epoch, self.cfg.shuffle);
        std::mem::replace(&mut self.report, SkipReport { epoch: self.pos.epoch, ..Default::default() })
    }

    /// The next batch, `None` at the end of the stream; an error when a whole epoch failed.
    fn next_batch(&mut self) -> Option<Result<Batch, DataError>> {
        let s = self.cfg.transform.output_size() as usize;
        let per = 3 * s * s;
        let want = self.cfg.batch;
        loop {
            if self.finished() {
                return None;
            }
            let mut images = Vec::with_capacity(want * per);
            let mut labels = Vec::with_capacity(want);
            let mut indices = Vec::with_capacity(want);
            // Take candidates in order; replace failures from further in the epoch.
            while labels.len() < want && self.pos.cursor < self.order.len() {
                let take = (want - labels.len()).min(self.order.len() - self.pos.cursor);
                let cand: Vec<usize> = self.order[self.pos.cursor..self.pos.cursor + take].to_vec();
                self.pos.cursor += take;
                let epoch = self.pos.epoch;
                let results: Vec<(usize, Result<Vec<f32>, DataError>)> = cand
                    .par_iter()
                    .map(|&i| {
                        let mut buf = vec![0f32; per];
                        (i, prepare(self.data.as_ref(), &self.cfg, epoch, i, &mut buf).map(|_| buf))
                    })
                    .collect();
                for (i, r) in results {
                    match r {
                        Ok(buf) => {
                            self.ok_in_epoch += 1;
                            images.extend_from_slice(&buf);
                            labels.push(self.data.label(i) as i64);
                            indices.push(i);
                        }
                        Err(e) => self.report.skipped.push((self.data.name(i), e.to_string())),
                    }
                }
            }
            let epoch_done = self.pos.cursor >= self.order.len();
            // Only an epoch seen whole can prove that nothing loads (a resumed run starts mid-epoch).
            if epoch_done && self.ok_in_epoch == 0 && self.whole_epoch {
                let (name, why) = self.report.skipped.first().cloned().unwrap_or_default();
                return Some(Err(DataError::Invalid(format!(
                    "no sample of epoch {} could be loaded ({} failed; first: {name}: {why})",
                    self.pos.epoch,
                    self.report.skipped.len()
                ))));
            }
            let full = labels.len() == want;
            if !full && (self.cfg.drop_last || labels.is_empty()) {
                self.report.dropped_tail += labels.len();
                let r = self.next_epoch();
                self.pending.push(r);
                continue;
            }
            if epoch_done {
                let r = self.next_epoch();
                self.pending.push(r);
            }
            let epoch_reports = std::mem::take(&mut self.pending);
            return Some(Ok(Batch { images, size: s, labels, indices, after: self.pos, epoch_reports }));
        }
    }
}

impl Loader {
    /// Starts the stream at `start`.
    pub fn new(data: Arc<dyn ClsDataset>, cfg: LoaderConfig, start: Position) -> Result<Loader, DataError> {
        if cfg.batch == 0 {
            return Err(DataError::Invalid("batch size must be positive".into()));
        }
        if data.is_empty() {
            return Err(DataError::Invalid("the dataset is empty".into()));
        }
        if cfg.epochs.is_none() && !cfg.drop_last {
            return Err(DataError::Invalid("an endless loader must drop incomplete batches".into()));
        }
        if start.cursor > data.len() {
            return Err(DataError::Invalid(format!(
                "resume position {} is beyond the dataset's {} samples",
                start.cursor,
                data.len()
            )));
        }
        let (tx, rx) = sync_channel(cfg.prefetch.max(1));
        let mut producer = Producer::new(data, cfg, start);
        let worker = std::thread::Builder::new()
            .name("detnas-loader".into())
            .spawn(move || {
                while let Some(b) = producer.next_batch() {
                    let failed = b.is_err();
                    if tx.send(b).is_err() || failed {
                        return; // the loader was dropped, or the stream cannot go on
                    }
                }
            })
            .map_err(|e| DataError::Invalid(format!("cannot start the loader thread: {e}")))?;
        Ok(Loader { rx: Some(rx), worker: Some(worker) })
    }

    /// The next batch; `None` when the stream ended.
    pub fn next_batch(&mut self) -> Option<Result<Batch, DataError>> {
        self.rx.as_ref()?.recv().ok()
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.rx.take();
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}
