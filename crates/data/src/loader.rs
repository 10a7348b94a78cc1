//! One deterministic, parallel, prefetching batch loader for every kind of sample.
//!
//! A background thread assembles batches (loading and augmenting the samples of a batch in
//! parallel with rayon) and keeps up to `prefetch` of them ready. The stream of batches is a
//! pure function of the [`SampleSource`], the [`StreamConfig`] and the start [`Position`]:
//! * epoch `e`'s order is a Fisher–Yates shuffle seeded by `(seed, e)` (identity when not
//!   shuffling);
//! * sample `i` of epoch `e` is produced with the seed `(seed, e, i)`;
//! * a sample that fails to load is skipped (never fed), counted with its reason, and the
//!   batch is filled from the next samples of the epoch; the epoch's [`SkipReport`] rides on
//!   the batch that ends it;
//! * an epoch seen whole from which nothing loads is an error, never an endless loop.
//!
//! With `drop_last`, the incomplete tail of an epoch is dropped (counted in the report) and
//! the stream continues with the next epoch forever; without it, the tail is yielded and the
//! stream ends after `epochs` epochs.
//!
//! Classification ([`Loader::new`] on [`Batch`]) and detection
//! ([`crate::det::loader::DetLoader`]) are two sources of this one loader.

use crate::transform::{ClsTransform, InputConvention, Pixels};
use crate::{ClsDataset, DataError, mix_seed};
use detnas_space::rng::{seeded, shuffle};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, sync_channel};
use std::thread::JoinHandle;

/// Where samples come from and how a batch is made of them.
pub trait SampleSource: Send + Sync + 'static {
    /// One loaded, augmented sample.
    type Sample: Send;
    /// A batch of samples.
    type Batch: Send + 'static;
    /// Number of samples.
    fn len(&self) -> usize;
    /// `true` when there are no samples.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// What the samples are (for messages), e.g. the annotation file.
    fn describe(&self) -> String;
    /// A human name of sample `i` (its file, or `synthetic #i`).
    fn name(&self, i: usize) -> String;
    /// Loads and augments sample `i`; `seed` is this (epoch, sample)'s own seed.
    ///
    /// # Errors
    /// Why the sample cannot be used (unreadable or corrupt file); the loader skips it.
    fn load(&self, i: usize, seed: u64) -> Result<Self::Sample, DataError>;
    /// Makes a batch of `samples` (dataset indices `indices`, in batch order).
    fn collate(&self, samples: Vec<Self::Sample>, indices: Vec<usize>) -> Self::Batch;
}

/// How a source is walked: batch size, order, epochs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamConfig {
    /// Samples per batch.
    pub batch: usize,
    /// Seed of the epoch orders and of every sample's augmentation.
    pub seed: u64,
    /// Reshuffle every epoch (training) or keep the order (evaluation).
    pub shuffle: bool,
    /// Drop an epoch's incomplete last batch (and continue with the next epoch).
    pub drop_last: bool,
    /// Stop after this many epochs (`None`: never; only with `drop_last`).
    pub epochs: Option<u64>,
    /// Batches prepared ahead.
    pub prefetch: usize,
    /// `(rank, world)`: this process walks only its shard of every epoch (see [`shard`]).
    #[serde(default)]
    pub shard: Option<(usize, usize)>,
}

impl StreamConfig {
    /// One unshuffled pass (evaluation, recalibration): every sample once, in order, the
    /// last batch possibly smaller.
    pub fn single_pass(batch: usize, prefetch: usize) -> StreamConfig {
        StreamConfig { batch, seed: 0, shuffle: false, drop_last: false, epochs: Some(1), prefetch, shard: None }
    }

    /// Endless shuffled epochs of full batches (training), seeded, optionally one rank's shard.
    pub fn training(batch: usize, seed: u64, prefetch: usize, shard: Option<(usize, usize)>) -> StreamConfig {
        StreamConfig { batch, seed, shuffle: true, drop_last: true, epochs: None, prefetch, shard }
    }
}

/// Classification loader settings: the stream and the per-sample transform.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoaderConfig {
    /// Batch size, shuffling and prefetch.
    #[serde(flatten)]
    pub stream: StreamConfig,
    /// Cropping, resizing, flipping and jitter.
    pub transform: ClsTransform,
    /// How the network expects the pixels.
    pub convention: InputConvention,
}

/// Where the stream stands: the next sample is entry `cursor` of epoch `epoch`'s order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// Epoch, from 0.
    pub epoch: u64,
    /// Index of the next sample in the epoch's order.
    pub cursor: usize,
}

/// Samples of one epoch that could not be used.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SkipReport {
    /// The epoch that ended.
    pub epoch: u64,
    /// `(sample name, reason)` of every skipped sample.
    pub skipped: Vec<(String, String)>,
    /// Samples left in an incomplete final batch and dropped (`drop_last`).
    pub dropped_tail: usize,
}

/// A batch and where the stream stands after it.
#[derive(Debug)]
pub struct Loaded<B> {
    /// The batch.
    pub batch: B,
    /// The position after this batch (save it to resume after it).
    pub after: Position,
    /// Reports of the epochs that ended with (or, when a tail was dropped, just before) this
    /// batch.
    pub epoch_reports: Vec<SkipReport>,
}

/// A classification batch: `images` is `[n, 3, size, size]` row-major, RGB 0–255 before
/// `convention`.
#[derive(Clone, Debug)]
pub struct Batch {
    /// The images, `N·3·S·S` values.
    pub images: Pixels,
    /// How the network expects the pixels (applied on the device).
    pub convention: InputConvention,
    /// Image side, pixels.
    pub size: usize,
    /// Class labels.
    pub labels: Vec<i64>,
    /// Dataset indices of the samples, in batch order.
    pub indices: Vec<usize>,
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

/// The order of epoch `epoch`.
pub fn epoch_order(len: usize, seed: u64, epoch: u64, shuffled: bool) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    if shuffled {
        shuffle(&mut seeded(mix_seed(seed, &[crate::streams::LOADER_EPOCH, epoch])), &mut order);
    }
    order
}

/// Rank `rank`'s shard of an epoch's `order` among `world` ranks: the order cut to a multiple
/// of `world`, then every `world`-th entry from `rank` on (torch's `DistributedSampler` without
/// padding). With a global batch of `B = world·b`, the ranks' `k`-th batches of `b` together
/// hold exactly the entries of a single process's `k`-th batch of `B`, and every rank has the
/// same number of batches per epoch.
pub fn shard(order: &[usize], rank: usize, world: usize) -> Vec<usize> {
    let keep = order.len() / world * world;
    order[..keep].iter().skip(rank).step_by(world).copied().collect()
}

/// Classification samples: a dataset, a transform and a pixel convention.
struct ClsSamples {
    data: Arc<dyn ClsDataset>,
    transform: ClsTransform,
    convention: InputConvention,
}

impl SampleSource for ClsSamples {
    type Sample = (Vec<f32>, i64);
    type Batch = Batch;

    fn len(&self) -> usize {
        self.data.len()
    }
    fn describe(&self) -> String {
        "the dataset".into()
    }
    fn name(&self, i: usize) -> String {
        self.data.name(i)
    }
    fn load(&self, i: usize, seed: u64) -> Result<(Vec<f32>, i64), DataError> {
        let img = self.data.load(i)?;
        let s = self.transform.output_size() as usize;
        let mut out = vec![0f32; 3 * s * s];
        self.transform.apply(&img, &mut seeded(seed), &mut out);
        Ok((out, self.data.label(i) as i64))
    }
    fn collate(&self, samples: Vec<(Vec<f32>, i64)>, indices: Vec<usize>) -> Batch {
        let size = self.transform.output_size() as usize;
        let mut images = Vec::with_capacity(samples.len() * 3 * size * size);
        let mut labels = Vec::with_capacity(samples.len());
        for (data, label) in samples {
            images.extend_from_slice(&data);
            labels.push(label);
        }
        Batch { images: Pixels::from_f32(images), convention: self.convention, size, labels, indices }
    }
}

struct Producer<S: SampleSource> {
    source: S,
    cfg: StreamConfig,
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

/// The entries of epoch `epoch` this loader walks: the whole order, or its shard.
fn walk(len: usize, cfg: &StreamConfig, epoch: u64) -> Vec<usize> {
    let order = epoch_order(len, cfg.seed, epoch, cfg.shuffle);
    match cfg.shard {
        Some((rank, world)) if world > 1 => shard(&order, rank, world),
        _ => order,
    }
}

impl<S: SampleSource> Producer<S> {
    fn next_epoch(&mut self) {
        self.ok_in_epoch = 0;
        self.whole_epoch = true;
        self.pos = Position { epoch: self.pos.epoch + 1, cursor: 0 };
        self.order = walk(self.source.len(), &self.cfg, self.pos.epoch);
        let r = std::mem::replace(&mut self.report, SkipReport { epoch: self.pos.epoch, ..Default::default() });
        self.pending.push(r);
    }

    /// The next batch, `None` at the end of the stream; an error when a whole epoch failed.
    fn next_batch(&mut self) -> Option<Result<Loaded<S::Batch>, DataError>> {
        let want = self.cfg.batch;
        loop {
            if self.cfg.epochs.is_some_and(|e| self.pos.epoch >= e) {
                return None;
            }
            let mut samples = Vec::with_capacity(want);
            let mut indices = Vec::with_capacity(want);
            // Take candidates in order; replace failures from further in the epoch.
            while samples.len() < want && self.pos.cursor < self.order.len() {
                let take = (want - samples.len()).min(self.order.len() - self.pos.cursor);
                let cand = self.order[self.pos.cursor..self.pos.cursor + take].to_vec();
                self.pos.cursor += take;
                let (epoch, seed, source) = (self.pos.epoch, self.cfg.seed, &self.source);
                let results: Vec<(usize, Result<S::Sample, DataError>)> =
                    cand.par_iter().map(|&i| (i, source.load(i, mix_seed(seed, &[epoch, i as u64])))).collect();
                for (i, r) in results {
                    match r {
                        Ok(s) => {
                            self.ok_in_epoch += 1;
                            samples.push(s);
                            indices.push(i);
                        }
                        Err(e) => self.report.skipped.push((self.source.name(i), e.to_string())),
                    }
                }
            }
            let epoch_done = self.pos.cursor >= self.order.len();
            // Only an epoch seen whole can prove that nothing loads (a resumed run starts mid-epoch).
            if epoch_done && self.ok_in_epoch == 0 && self.whole_epoch {
                let (name, why) = self.report.skipped.first().cloned().unwrap_or_default();
                return Some(Err(DataError::Invalid(format!(
                    "no sample of epoch {} of {} could be loaded ({} failed; first: {name}: {why})",
                    self.pos.epoch,
                    self.source.describe(),
                    self.report.skipped.len()
                ))));
            }
            if samples.len() < want && (self.cfg.drop_last || samples.is_empty()) {
                self.report.dropped_tail += samples.len();
                self.next_epoch();
                continue;
            }
            if epoch_done {
                self.next_epoch();
            }
            let batch = self.source.collate(samples, indices);
            return Some(Ok(Loaded { batch, after: self.pos, epoch_reports: std::mem::take(&mut self.pending) }));
        }
    }
}

/// The classification loader.
pub type ClsLoader = Loader<Batch>;

/// The running loader; dropping it stops the background thread.
pub struct Loader<B> {
    rx: Option<Receiver<Result<Loaded<B>, DataError>>>,
    worker: Option<JoinHandle<()>>,
}

impl<B> std::fmt::Debug for Loader<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Loader")
    }
}

impl<B: Send + 'static> Loader<B> {
    /// Starts the stream of `source` at `start`.
    ///
    /// # Errors
    /// [`DataError::Invalid`] for a zero batch size, an empty source, an endless stream that
    /// keeps incomplete batches, or a start position beyond the source.
    pub fn start<S: SampleSource<Batch = B>>(
        source: S,
        cfg: StreamConfig,
        start: Position,
    ) -> Result<Loader<B>, DataError> {
        if cfg.batch == 0 {
            return Err(DataError::Invalid("batch size must be positive".into()));
        }
        if source.is_empty() {
            return Err(DataError::Invalid(format!("{} has no samples", source.describe())));
        }
        if cfg.epochs.is_none() && !cfg.drop_last {
            return Err(DataError::Invalid("an endless loader must drop incomplete batches".into()));
        }
        if let Some((rank, world)) = cfg.shard
            && (world == 0 || rank >= world || source.len() < world)
        {
            return Err(DataError::Invalid(format!(
                "shard {rank} of {world}: {} has {} samples",
                source.describe(),
                source.len()
            )));
        }
        let order = walk(source.len(), &cfg, start.epoch);
        if start.cursor > order.len() {
            return Err(DataError::Invalid(format!(
                "resume position {} is beyond the {} samples of {}",
                start.cursor,
                order.len(),
                source.describe()
            )));
        }
        let (tx, rx) = sync_channel(cfg.prefetch.max(1));
        let mut producer = Producer {
            source,
            cfg,
            pos: start,
            order,
            report: SkipReport { epoch: start.epoch, ..Default::default() },
            ok_in_epoch: 0,
            whole_epoch: start.cursor == 0,
            pending: Vec::new(),
        };
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
    pub fn next_batch(&mut self) -> Option<Result<Loaded<B>, DataError>> {
        self.rx.as_ref()?.recv().ok()
    }
}

impl Loader<Batch> {
    /// A classification loader over `data`, started at `start`.
    ///
    /// # Errors
    /// As [`Loader::start`].
    pub fn new(data: Arc<dyn ClsDataset>, cfg: LoaderConfig, start: Position) -> Result<Loader<Batch>, DataError> {
        Loader::start(ClsSamples { data, transform: cfg.transform, convention: cfg.convention }, cfg.stream, start)
    }
}

impl<B> Drop for Loader<B> {
    fn drop(&mut self) {
        self.rx.take();
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}
