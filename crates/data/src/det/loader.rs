//! A deterministic, prefetching loader of padded detection batches — the classification
//! loader's contract ([`crate::loader`]): epoch order seeded by `(seed, epoch)`, sample
//! augmentation by `(seed, epoch, index)`, unreadable images skipped and reported, resumable
//! at a saved [`Position`].

use super::DetDataset;
use super::transform::{DetBatch, DetSample, DetTransform, collate};
use crate::loader::epoch_order;
use crate::{DataError, InputConvention, Position, SkipReport, mix_seed};
use detnas_space::rng::seeded;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, sync_channel};
use std::thread::JoinHandle;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DetLoaderConfig {
    pub batch: usize,
    pub seed: u64,
    pub shuffle: bool,
    pub drop_last: bool,
    /// Stop after this many epochs (`None`: never; only with `drop_last`).
    pub epochs: Option<u64>,
    pub prefetch: usize,
    pub transform: DetTransform,
    pub convention: InputConvention,
    pub divisibility: u32,
}

/// A batch and where the stream stands after it.
#[derive(Debug)]
pub struct DetLoaderBatch {
    pub batch: DetBatch,
    pub after: Position,
    pub epoch_reports: Vec<SkipReport>,
}

pub struct DetLoader {
    rx: Option<Receiver<Result<DetLoaderBatch, DataError>>>,
    worker: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for DetLoader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DetLoader")
    }
}

struct Producer {
    data: Arc<DetDataset>,
    cfg: DetLoaderConfig,
    pos: Position,
    order: Vec<usize>,
    report: SkipReport,
    ok_in_epoch: usize,
    /// This producer saw the current epoch from its start.
    whole_epoch: bool,
    pending: Vec<SkipReport>,
}

impl Producer {
    fn next_epoch(&mut self) {
        self.ok_in_epoch = 0;
        self.whole_epoch = true;
        self.pos = Position { epoch: self.pos.epoch + 1, cursor: 0 };
        self.order = epoch_order(self.data.len(), self.cfg.seed, self.pos.epoch, self.cfg.shuffle);
        let r = std::mem::replace(&mut self.report, SkipReport { epoch: self.pos.epoch, ..Default::default() });
        self.pending.push(r);
    }

    fn next_batch(&mut self) -> Option<Result<DetLoaderBatch, DataError>> {
        let want = self.cfg.batch;
        loop {
            if self.cfg.epochs.is_some_and(|e| self.pos.epoch >= e) {
                return None;
            }
            let mut samples: Vec<DetSample> = Vec::with_capacity(want);
            let mut indices = Vec::with_capacity(want);
            while samples.len() < want && self.pos.cursor < self.order.len() {
                let take = (want - samples.len()).min(self.order.len() - self.pos.cursor);
                let cand = self.order[self.pos.cursor..self.pos.cursor + take].to_vec();
                self.pos.cursor += take;
                let epoch = self.pos.epoch;
                let (data, cfg) = (&self.data, &self.cfg);
                let results: Vec<(usize, Result<DetSample, DataError>)> = cand
                    .par_iter()
                    .map(|&i| {
                        let r = data.load(i).map(|img| {
                            let mut rng = seeded(mix_seed(cfg.seed, &[epoch, i as u64]));
                            cfg.transform.apply(&img, &data.images[i], &mut rng, cfg.convention)
                        });
                        (i, r)
                    })
                    .collect();
                for (i, r) in results {
                    match r {
                        Ok(s) => {
                            self.ok_in_epoch += 1;
                            samples.push(s);
                            indices.push(i);
                        }
                        Err(e) => {
                            self.report.skipped.push((self.data.images[i].file.display().to_string(), e.to_string()))
                        }
                    }
                }
            }
            let epoch_done = self.pos.cursor >= self.order.len();
            // Only an epoch seen whole can prove that nothing loads (a resumed run starts mid-epoch).
            if epoch_done && self.ok_in_epoch == 0 && self.whole_epoch {
                let (name, why) = self.report.skipped.first().cloned().unwrap_or_default();
                return Some(Err(DataError::Invalid(format!(
                    "no image of epoch {} could be loaded ({} failed; first: {name}: {why})",
                    self.pos.epoch,
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
            let batch = collate(samples, indices, self.cfg.divisibility);
            return Some(Ok(DetLoaderBatch {
                batch,
                after: self.pos,
                epoch_reports: std::mem::take(&mut self.pending),
            }));
        }
    }
}

impl DetLoader {
    pub fn new(data: Arc<DetDataset>, cfg: DetLoaderConfig, start: Position) -> Result<DetLoader, DataError> {
        if cfg.batch == 0 {
            return Err(DataError::Invalid("batch size must be positive".into()));
        }
        if data.is_empty() {
            return Err(DataError::Invalid(format!("{} has no images", data.source)));
        }
        if cfg.transform.min_size.is_empty() {
            return Err(DataError::Invalid("transform.min_size is empty".into()));
        }
        if cfg.epochs.is_none() && !cfg.drop_last {
            return Err(DataError::Invalid("an endless loader must drop incomplete batches".into()));
        }
        if start.cursor > data.len() {
            return Err(DataError::Invalid(format!(
                "resume position {} is beyond the {} images",
                start.cursor,
                data.len()
            )));
        }
        let (tx, rx) = sync_channel(cfg.prefetch.max(1));
        let order = epoch_order(data.len(), cfg.seed, start.epoch, cfg.shuffle);
        let mut p = Producer {
            report: SkipReport { epoch: start.epoch, ..Default::default() },
            data,
            cfg,
            pos: start,
            order,
            ok_in_epoch: 0,
            whole_epoch: start.cursor == 0,
            pending: Vec::new(),
        };
        let worker = std::thread::Builder::new()
            .name("detnas-det-loader".into())
            .spawn(move || {
                while let Some(b) = p.next_batch() {
                    let failed = b.is_err();
                    if tx.send(b).is_err() || failed {
                        return;
                    }
                }
            })
            .map_err(|e| DataError::Invalid(format!("cannot start the loader thread: {e}")))?;
        Ok(DetLoader { rx: Some(rx), worker: Some(worker) })
    }

    pub fn next_batch(&mut self) -> Option<Result<DetLoaderBatch, DataError>> {
        self.rx.as_ref()?.recv().ok()
    }
}

impl Drop for DetLoader {
    fn drop(&mut self) {
        self.rx.take();
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
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
            batch: 3,
            seed: 9,
            shuffle: true,
            drop_last: true,
            epochs: None,
            prefetch: 2,
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
