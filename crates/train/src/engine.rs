//! The training engine shared by pre-training, fine-tuning and retraining: path-wise SGD
//! (DetNAS, arXiv:1903.10979 §3.2; SPOS single-path training), with everything a long run
//! needs around the step.
//!
//! A [`TrainTask`] supplies batches and named losses; the [`Trainer`] owns the rest:
//! * **resume** — the run folder's latest verified checkpoint (or an explicit one) restores
//!   weights, momentum buffers, the step, the loader position and the path stream; a
//!   checkpoint of another search space, configuration or dataset is refused unless the
//!   mismatch is allowed (then it is logged);
//! * **the step** — the path is drawn from the run's ChaCha8 path stream (or fixed), the
//!   task's losses are summed, a non-finite loss stops the run before the update
//!   ([`TrainError::Numerical`] names the step, path and images), the gradient is optionally
//!   clipped, and [`PathSgd`] moves the path's variables only. libtorch's generator is not
//!   used: the tasks' random draws (dropout masks, the detectors' samplers) come from
//!   ChaCha8 streams seeded per sample by `(seed, step, dataset index)`;
//! * **metrics** — window averages every `runtime.log_every` steps to `metrics.jsonl`
//!   (with the resident memory), and a progress bar;
//! * **checkpoints** — every `runtime.checkpoint_every` steps, at the end, and when the
//!   [`Cancel`] token is raised (the step is finished, saved, then the run stops with
//!   [`TrainError::Interrupted`]);
//! * **the summary** — [`TrainOutcome`], which the task completes and [`write_summary`]
//!   records.
//!
//! Exactness: every random draw depends only on the run's seed, the step and the loader
//! position, all of which a checkpoint restores, so a resumed run ends with bit-identical
//! weights to an uninterrupted one on the CPU backend.
//!
//! **Data parallelism** (a [`ProcessGroup`] in [`RunOptions::dist`]): `schedule.batch` stays
//! the global batch (maskrcnn_benchmark's `IMS_PER_BATCH`); each of the `W` ranks loads its
//! shard of every epoch and `batch / W` images per step. Every rank draws the same path from
//! the same path stream. Each loss is a sum and a count ([`LossTerm`]); the counts (and the
//! sums, for the logged values) are summed over the ranks before dividing, and the path's
//! gradients are summed over the ranks in buckets ([`GradReducer`]), so the update is the one a
//! single process makes on the whole batch — with synchronized BatchNorm (`runtime.sync_bn`),
//! to float rounding. Rank 0 alone writes checkpoints (with every rank's loader position),
//! metrics and the summary; at every checkpoint the ranks check that their weights are
//! bit-identical. A resumed run must have the same number of ranks.

use crate::checkpoint;
use crate::config::{RuntimeConfig, ScheduleConfig};
pub use crate::step::{StepLosses, check_sync};
use crate::step::{StepSettings, step};
use crate::{PathSgd, TrainError};
use detnas_data::{Position, SkipReport, mix_seed};
use detnas_device::host;
use detnas_dist::ProcessGroup;
use detnas_nn::PathIndex;
use detnas_runtime::mem::{MemoryRecord, PeakMeter};
use detnas_runtime::progress::{MetricsLog, bar};
use detnas_runtime::{Cancel, fault, guard};
use detnas_space::rng::{ChaCha8Rng, seeded};
use detnas_space::{Arch, PathSampler, SearchSpace};
use rand::SeedableRng;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;
use tch::{Kind, Tensor, nn};

/// Options of one invocation (not part of the configuration).
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Resume from this checkpoint instead of the run folder's latest.
    pub resume_from: Option<PathBuf>,
    /// Accept a configuration or dataset that differs from the checkpoint's (logged).
    pub allow_mismatch: bool,
    /// Draw a progress bar on stderr.
    pub progress: bool,
    /// Raised by the binary's signal handlers: finish the step, save, stop.
    pub cancel: Cancel,
    /// The job's process group when several processes train together.
    pub dist: Option<Arc<ProcessGroup>>,
}

/// Everything besides tensors that a training checkpoint holds (`state.json`): the engine's
/// part, and the task's (`T`, flattened into the same object).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainState<T> {
    pub format: u32,
    /// Completed updates.
    pub step: u64,
    pub loader: Position,
    /// Word position of the path stream (decimal string: it is a u128).
    pub path_rng_word_pos: String,
    pub config_hash: String,
    pub seed: u64,
    pub code_version: String,
    pub data_fingerprint: String,
    pub space: SearchSpace,
    /// Samples skipped so far because they could not be loaded.
    pub skipped_samples: u64,
    /// Processes that trained together (1 for a single process).
    #[serde(default = "one")]
    pub world_size: usize,
    /// Every rank's loader position, by rank (empty for a single process).
    #[serde(default)]
    pub rank_positions: Vec<Position>,
    #[serde(flatten)]
    pub task: T,
}

fn one() -> usize {
    1
}

/// Reads the configuration (`C`) and state saved in a verified checkpoint folder.
///
/// # Errors
/// [`TrainError::Checkpoint`] when `config.toml` or `state.json` is missing, does not parse as
/// this kind of checkpoint, or has another format version.
pub fn read_meta<C: DeserializeOwned, T: DeserializeOwned>(path: &Path) -> Result<(C, TrainState<T>), TrainError> {
    let err = |m: String| TrainError::Checkpoint { path: path.to_path_buf(), message: m };
    let text = std::fs::read_to_string(path.join("config.toml")).map_err(|e| err(format!("config.toml: {e}")))?;
    let cfg: C = toml::from_str(&text).map_err(|e| {
        // Name the kind of checkpoint it is, when it is another kind (a common mix-up).
        let doc: Option<toml::Table> = toml::from_str(&text).ok();
        let has = |k: &str| doc.as_ref().is_some_and(|d| d.contains_key(k));
        let section = |s: &str, k: &str| {
            doc.as_ref().and_then(|d| d.get(s)).and_then(toml::Value::as_table).is_some_and(|t| t.contains_key(k))
        };
        if section("data", "input_size") {
            err("this is a classification (pre-training) checkpoint; this command needs a fine-tuning \
                 (detection) checkpoint: a `detnas finetune` run folder or its checkpoints/step-N"
                .into())
        } else if has("detector") {
            err("this is a detection (fine-tuning) checkpoint; this command needs a pre-training \
                 checkpoint: a `detnas pretrain` run folder or its checkpoints/step-N"
                .into())
        } else {
            err(format!("config.toml: {e}"))
        }
    })?;
    let text = std::fs::read_to_string(path.join("state.json")).map_err(|e| err(format!("state.json: {e}")))?;
    let state: TrainState<T> = serde_json::from_str(&text).map_err(|e| err(format!("state.json: {e}")))?;
    if state.format != checkpoint::FORMAT {
        return Err(err(format!("state format {} is not {}", state.format, checkpoint::FORMAT)));
    }
    Ok((cfg, state))
}

/// Loads the model (and optimizer) tensors of a verified checkpoint folder.
///
/// # Errors
/// [`TrainError::Checkpoint`] when a file is missing or does not match the variables.
pub fn load_weights(path: &Path, vs: &mut nn::VarStore, opt: Option<&mut PathSgd>) -> Result<(), TrainError> {
    let err = |m: String| TrainError::Checkpoint { path: path.to_path_buf(), message: m };
    vs.load(path.join("model.safetensors")).map_err(|e| err(format!("model.safetensors: {e}")))?;
    if let Some(opt) = opt {
        let device = vs.device();
        let buffers: BTreeMap<String, Tensor> = Tensor::read_safetensors(path.join("optimizer.safetensors"))
            .map_err(|e| err(format!("optimizer.safetensors: {e}")))?
            .into_iter()
            .map(|(k, t)| (k, t.to_device(device)))
            .collect();
        opt.set_buffers(buffers);
    }
    Ok(())
}

/// A checkpoint to resume from, found before the task builds its data (which may depend on
/// the task state, e.g. a class mapping).
#[derive(Debug)]
pub struct Resume<T> {
    pub step: u64,
    pub path: PathBuf,
    pub state: TrainState<T>,
}

impl<T: DeserializeOwned> Resume<T> {
    /// The checkpoint `opts.resume_from` names, else the latest of `out/checkpoints`, else
    /// `None` (a fresh run).
    ///
    /// # Errors
    /// [`TrainError::Checkpoint`] for a checkpoint that fails verification or cannot be read
    /// as this kind — never a silent fresh start.
    pub fn find(out: &Path, opts: &RunOptions) -> Result<Option<Resume<T>>, TrainError> {
        let found = match &opts.resume_from {
            Some(p) => Some(checkpoint::resolve(p)?),
            None => checkpoint::latest(&out.join("checkpoints"))?,
        };
        found
            .map(|(step, path)| {
                let (_, state): (toml::Table, TrainState<T>) = read_meta(&path)?;
                Ok(Resume { step, path, state })
            })
            .transpose()
    }
}

/// What the engine needs to know about a run besides the task.
#[derive(Debug)]
pub struct TrainerSpec<'a> {
    /// `pretrain` or `finetune` (progress bar and logs).
    pub what: &'static str,
    /// The run folder (`checkpoints/`, `metrics.jsonl`).
    pub out: &'a Path,
    pub seed: u64,
    pub schedule: &'a ScheduleConfig,
    pub runtime: &'a RuntimeConfig,
    pub space: &'a SearchSpace,
    pub config_hash: String,
    pub config_toml: String,
    pub data_fingerprint: String,
    /// Stream id (see [`mix_seed`]) of the path stream.
    pub path_stream: u64,
    /// Synchronized BatchNorm when `runtime.sync_bn` is unset and several processes train
    /// (fine-tuning: on, as DetNAS; pre-training: off).
    pub sync_bn_default: bool,
}

/// Which path each step trains.
#[derive(Debug)]
pub enum Paths {
    /// The supernet paths of each step from the path stream ([`PathSampler::sample_step`]):
    /// one path (uniform, FLOPs-binned, or always the same one), after an optional warm start
    /// on one path, or a strict-fairness group trained on the same batch.
    Sampled(Box<PathSampler>),
    /// A child network of this fixed architecture (its variables hold no choice).
    Child(Arch),
}

/// One batch as the engine sees it.
#[derive(Debug)]
pub struct LoadedBatch<B> {
    pub batch: B,
    /// Samples in the batch.
    pub len: usize,
    /// The loader position after this batch.
    pub after: Position,
    /// Epochs that ended with this batch.
    pub epoch_reports: Vec<SkipReport>,
}

/// What a training task supplies to the [`Trainer`].
pub trait TrainTask {
    type Batch;

    /// The next training batch.
    ///
    /// # Errors
    /// A data error that stops the run (a whole epoch unreadable, the stream ended).
    fn next_batch(&mut self) -> Result<LoadedBatch<Self::Batch>, TrainError>;

    /// Losses of `batch` on path `arch` (`None` for a child network), in training mode, at
    /// step `step` (0-based; per-sample random draws are seeded from it and the sample's
    /// dataset index, so they do not depend on how the batch is split over processes).
    ///
    /// # Errors
    /// A model error (e.g. an architecture the network cannot run).
    fn losses(&mut self, batch: &Self::Batch, arch: Option<&Arch>, step: u64) -> Result<StepLosses, TrainError>;

    /// Names of up to 8 samples of `batch`, for the non-finite-loss diagnostic.
    fn describe(&self, batch: &Self::Batch) -> Vec<String>;

    /// The batch's tensor size in words ("8 images of 800×1344"), for an out-of-memory error.
    fn input_size(&self, batch: &Self::Batch) -> String;

    /// The configuration keys that lower the memory a step takes, for an out-of-memory error.
    const MEMORY_KEYS: &'static str;

    /// Called once at the start of the first step after the path sampler's warm start
    /// (also when a run resumes exactly there); the engine then clears the momentum buffers.
    ///
    /// # Errors
    /// [`TrainError::Config`] for a task without a supernet.
    fn end_warm_start(&mut self) -> Result<(), TrainError> {
        Err(TrainError::Config("this training task has no warm start".into()))
    }
}

/// What a finished training loop reports (the common part of every `summary.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainOutcome {
    pub steps: u64,
    pub resumed_from_step: Option<u64>,
    pub seconds: f64,
    pub images_per_second: f64,
    /// The loss of the last step.
    #[serde(alias = "final_train_loss")]
    pub final_loss: f64,
    pub skipped_samples: u64,
    pub config_hash: String,
    pub code_version: String,
    pub seed: u64,
    pub data_fingerprint: String,
    /// The last checkpoint written (or resumed from).
    pub checkpoint: PathBuf,
    /// Resident memory of the run (MiB; this process's).
    #[serde(default)]
    pub memory: MemoryRecord,
    /// Processes that trained together.
    #[serde(default = "one")]
    pub world_size: usize,
    /// Seconds this rank spent in collectives during the loop (gradient all-reduce, the
    /// per-step loss sums, SyncBN's forward gathers); `None` in a single process.
    #[serde(default)]
    pub collective_seconds: Option<f64>,
}

/// The summary of a run that already finished: `out/summary.json` when the latest
/// checkpoint is the last step (`resume_step == total`) and the summary records `hash`.
/// Re-running a finished run then reports it instead of redoing the evaluation and
/// overwriting the summary with an empty loop's numbers. `None` in a multi-process job (the
/// ranks must run the same code path) or when anything does not match.
pub fn finished_summary<S: DeserializeOwned>(
    out: &Path,
    resume_step: Option<u64>,
    total: u64,
    hash: &str,
    opts: &RunOptions,
) -> Option<S> {
    #[derive(serde::Deserialize)]
    struct Head {
        config_hash: String,
        steps: u64,
    }
    if opts.dist.is_some() || opts.resume_from.is_some() || resume_step != Some(total) {
        return None;
    }
    let text = std::fs::read_to_string(out.join("summary.json")).ok()?;
    let head: Head = serde_json::from_str(&text).ok()?;
    if head.config_hash != hash || head.steps != total {
        return None;
    }
    let summary = serde_json::from_str(&text).ok()?;
    tracing::info!(
        "{} already finished at step {total}: its summary is {} (delete the folder or use another --out to run again)",
        out.display(),
        out.join("summary.json").display()
    );
    Some(summary)
}

/// Writes `summary` to `out/summary.json` atomically.
///
/// # Errors
/// [`TrainError::Io`] when the file cannot be written.
pub fn write_summary<S: Serialize>(out: &Path, summary: &S) -> Result<(), TrainError> {
    Ok(detnas_runtime::fsx::write_json_atomic(&out.join("summary.json"), summary)?)
}

/// Synchronized BatchNorm over a process group.
struct GroupSync(Arc<ProcessGroup>);

impl detnas_nn::bn::BnSync for GroupSync {
    fn all_gather(&self, stats: &Tensor) -> Result<Tensor, String> {
        self.0.all_gather(stats).map_err(|e| e.to_string())
    }

    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor, String> {
        let t = t.copy();
        self.0.all_reduce_sum(&[&t]).map_err(|e| e.to_string())?;
        Ok(t)
    }
}

/// Synchronized BatchNorm on this thread over `pg` while the guard lives.
pub fn sync_bn(pg: &Arc<ProcessGroup>) -> detnas_nn::bn::SyncGuard {
    detnas_nn::bn::synchronize(Rc::new(GroupSync(pg.clone())))
}

/// The training loop of one run.
#[derive(Debug)]
pub struct Trainer<'a> {
    spec: TrainerSpec<'a>,
    paths: Paths,
    index: PathIndex,
    opt: PathSgd,
    path_rng: ChaCha8Rng,
    position: Position,
    step: u64,
    skipped: u64,
    resumed_from: Option<(u64, PathBuf)>,
    dist: Option<Arc<ProcessGroup>>,
}

impl<'a> Trainer<'a> {
    /// Builds the engine state for `vs`: a fresh run, or the state of `resume` after checking
    /// that it belongs to this run and loading its tensors into `vs`. With several processes,
    /// every rank must resume the same checkpoint, and rank 0's weights are broadcast.
    ///
    /// # Errors
    /// [`TrainError::Checkpoint`] for a checkpoint of another space, configuration, dataset
    /// or number of processes (the first three allowed by `opts.allow_mismatch`), or
    /// unreadable tensors; [`TrainError::Config`] for a global batch the ranks cannot share;
    /// [`TrainError::Dist`] when the ranks disagree or a collective fails.
    pub fn new<T>(
        spec: TrainerSpec<'a>,
        paths: Paths,
        vs: &mut nn::VarStore,
        resume: Option<&Resume<T>>,
        opts: &RunOptions,
    ) -> Result<Trainer<'a>, TrainError> {
        let dist = opts.dist.clone();
        let (rank, world) = dist.as_ref().map_or((0, 1), |pg| (pg.rank(), pg.world()));
        if spec.schedule.batch % world != 0 {
            return Err(TrainError::Config(format!(
                "schedule.batch = {} (the global batch) cannot be shared by {world} processes",
                spec.schedule.batch
            )));
        }
        let index = PathIndex::new(vs);
        let mut opt = PathSgd::new(spec.schedule.momentum, spec.schedule.weight_decay);
        let mut path_rng = seeded(mix_seed(spec.seed, &[spec.path_stream]));
        let (mut position, mut step, mut skipped, mut resumed_from) = (Position::default(), 0, 0, None);
        if let Some(pg) = &dist {
            // Every rank resumes from the same step (a shared run folder).
            agree(pg, resume.map_or(0, |r| r.step), "the checkpoint step to resume from")?;
        }
        if let Some(r) = resume {
            let mismatch = |what: &str| TrainError::Checkpoint {
                path: r.path.clone(),
                message: format!(
                    "{what} differs from this run's; refusing to resume (use --allow-mismatch to override)"
                ),
            };
            let s = &r.state;
            if &s.space != spec.space {
                return Err(mismatch("the search space"));
            }
            if s.world_size != world {
                return Err(TrainError::Checkpoint {
                    path: r.path.clone(),
                    message: format!(
                        "was written by {} process(es); this run has {world}: resume with the same number \
                         (the data stream is sharded per process)",
                        s.world_size
                    ),
                });
            }
            for (differs, what) in [
                (s.config_hash != spec.config_hash, "the configuration"),
                (s.data_fingerprint != spec.data_fingerprint, "the training data"),
            ] {
                if differs {
                    if !opts.allow_mismatch {
                        return Err(mismatch(what));
                    }
                    tracing::warn!("resuming {} with {what} changed (allowed by --allow-mismatch)", r.path.display());
                }
            }
            load_weights(&r.path, vs, Some(&mut opt))?;
            let pos: u128 = s.path_rng_word_pos.parse().map_err(|_| mismatch("path_rng_word_pos"))?;
            path_rng = ChaCha8Rng::seed_from_u64(mix_seed(spec.seed, &[spec.path_stream]));
            path_rng.set_word_pos(pos);
            position = if world > 1 {
                *s.rank_positions.get(rank).ok_or_else(|| mismatch("the loader positions of the ranks"))?
            } else {
                s.loader
            };
            step = s.step;
            skipped = s.skipped_samples;
            resumed_from = Some((r.step, r.path.clone()));
            if rank == 0 {
                tracing::info!("resuming from {} (step {step})", r.path.display());
            }
        }
        if let Some(pg) = &dist {
            // Identical initial weights everywhere: rank 0's.
            // Sorted by name: the store's map has a per-process order.
            let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
            vars.sort_by(|a, b| a.0.cmp(&b.0));
            tch::no_grad(|| pg.broadcast(&vars.iter().map(|v| &v.1).collect::<Vec<_>>(), 0))?;
        }
        Ok(Trainer { spec, paths, index, opt, path_rng, position, step, skipped, resumed_from, dist })
    }

    /// Where this rank's loader starts (the resumed position, or the beginning).
    pub fn position(&self) -> Position {
        self.position
    }

    /// The step the loop starts at.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// The path stream (for draws after training, e.g. the final evaluation).
    pub fn paths(&self) -> &Paths {
        &self.paths
    }

    /// `(rank, world)` of a multi-process run: the loader's shard.
    pub fn shard(&self) -> Option<(usize, usize)> {
        self.dist.as_ref().map(|pg| (pg.rank(), pg.world()))
    }

    /// Whether this process writes the run's files (rank 0, or a single process).
    pub fn is_writer(&self) -> bool {
        self.dist.as_ref().is_none_or(|pg| pg.rank() == 0)
    }

    fn save<T: Serialize>(&self, vs: &nn::VarStore, task_state: &T) -> Result<Option<PathBuf>, TrainError> {
        let (world, rank_positions) = match &self.dist {
            None => (1, Vec::new()),
            Some(pg) => {
                broadcast_buffers(pg, vs)?;
                check_identical(pg, vs)?;
                (pg.world(), gather_positions(pg, self.position)?)
            }
        };
        if !self.is_writer() {
            return Ok(None);
        }
        let state = TrainState {
            format: checkpoint::FORMAT,
            step: self.step,
            loader: self.position,
            path_rng_word_pos: self.path_rng.get_word_pos().to_string(),
            config_hash: self.spec.config_hash.clone(),
            seed: self.spec.seed,
            code_version: detnas_runtime::code_version(),
            data_fingerprint: self.spec.data_fingerprint.clone(),
            space: self.spec.space.clone(),
            skipped_samples: self.skipped,
            world_size: world,
            rank_positions,
            task: task_state,
        };
        checkpoint::save_training(
            &self.spec.out.join("checkpoints"),
            self.step,
            self.spec.runtime.keep,
            vs,
            &self.opt,
            &state,
            &self.spec.config_toml,
        )
        .map(Some)
    }

    fn report_skips(&mut self, reports: &[SkipReport]) {
        for r in reports {
            self.skipped += r.skipped.len() as u64;
            if r.skipped.is_empty() {
                tracing::debug!(
                    "epoch {} done; {} samples of the last partial batch left for the next epoch",
                    r.epoch,
                    r.dropped_tail
                );
            } else {
                let first: Vec<String> = r.skipped.iter().take(3).map(|(n, why)| format!("{n}: {why}")).collect();
                tracing::warn!(
                    "epoch {}: {} unreadable samples skipped (never fed to the network): {}{}",
                    r.epoch,
                    r.skipped.len(),
                    first.join("; "),
                    if r.skipped.len() > 3 { "; …" } else { "" }
                );
            }
        }
    }

    /// Trains until `schedule.iterations`, checkpointing as configured; `task_state` is
    /// saved with every checkpoint.
    ///
    /// # Errors
    /// [`TrainError::Numerical`] for a non-finite loss (nothing is updated at that step),
    /// [`TrainError::Interrupted`] after saving when `opts.cancel` was raised (on any rank),
    /// [`TrainError::Dist`] when a collective fails, and any error of the task, the metrics
    /// file or a checkpoint.
    pub fn run<B, T: Serialize, Task: TrainTask<Batch = B>>(
        &mut self,
        task: &mut Task,
        vs: &nn::VarStore,
        task_state: &T,
        opts: &RunOptions,
    ) -> Result<TrainOutcome, TrainError> {
        let schedule = self.spec.schedule.lr_schedule();
        let total = self.spec.schedule.iterations;
        let writer = self.is_writer();
        let mut metrics =
            if writer { Some(MetricsLog::open(&self.spec.out.join("metrics.jsonl"), self.step)?) } else { None };
        let meter = PeakMeter::observe();
        let pb = bar(total, self.step, self.spec.what, opts.progress && writer);
        let dist = self.dist.clone();
        let sync = match &dist {
            Some(pg) if self.spec.runtime.sync_bn.unwrap_or(self.spec.sync_bn_default) => Some(sync_bn(pg)),
            _ => None,
        };
        let started = Instant::now();
        let comm_start = dist.as_ref().map(|pg| pg.collective_seconds());
        let start_step = self.step;
        let mut window: BTreeMap<String, f64> = BTreeMap::new();
        let (mut win_steps, mut win_images, mut win_start) = (0usize, 0usize, Instant::now());
        // Host reads of the steps in the window (this thread's), and phase times.
        let mut win_reads = host::counts();
        let buffers: Vec<Tensor> = vs.variables().into_values().filter(|t| !t.requires_grad()).collect();
        let _ = detnas_device::phase::take();
        let mut last_loss = f64::NAN;
        let mut last_ckpt = self.resumed_from.as_ref().map(|(_, p)| p.clone());
        while self.step < total {
            // One path, or a strict-fairness group trained on the same batch with its
            // gradients summed into one update.
            if let Paths::Sampled(s) = &self.paths
                && s.warm_start_steps() > 0
                && self.step == s.warm_start_steps()
            {
                task.end_warm_start()?;
                self.opt.clear_buffers();
                tracing::info!("warm start ended at step {}: every choice aligned to the trained path", self.step);
            }
            let group: Vec<Arch> = match &self.paths {
                Paths::Sampled(s) => s.sample_step(self.step, &mut self.path_rng)?,
                Paths::Child(a) => vec![a.clone()],
            };
            let lb = task.next_batch()?;
            self.report_skips(&lb.epoch_reports);
            let lr = schedule.lr(self.step);
            let signal = opts.cancel.requested();
            let vars = self.index.union_vars(&group);
            let settings = StepSettings {
                buffers: &buffers,
                lr,
                clip_grad_norm: self.spec.schedule.clip_grad_norm,
                stop: signal.is_some(),
                nan: fault::nan_at(self.step + 1),
                dist: dist.as_deref(),
            };
            let child = matches!(self.paths, Paths::Child(_));
            let at = self.step;
            let images = task.describe(&lb.batch).join(", ");
            let input_size = task.input_size(&lb.batch);
            let device = vs.device();
            let report = guard::catch(|| {
                step(
                    group.len(),
                    |i| {
                        if fault::out_of_memory_at(at + 1) {
                            // A real allocator failure: more bytes than any machine holds.
                            let _ = Tensor::empty([1i64 << 52], (Kind::Float, device));
                        }
                        task.losses(&lb.batch, (!child).then(|| &group[i]), at)
                    },
                    &vars,
                    &mut self.opt,
                    &settings,
                    |i, loss| TrainError::Numerical { step: at + 1, loss, lr, arch: group[i].to_string(), images },
                )
            })
            .map_err(|f| {
                let during = format!(
                    "{} step {} (path {}; {input_size} on {device:?})",
                    self.spec.what,
                    at + 1,
                    group.iter().map(Arch::to_string).collect::<Vec<_>>().join(",")
                );
                TrainError::compute(during, f, <Task as TrainTask>::MEMORY_KEYS)
            })??;
            let share = 1.0 / group.len() as f64;
            for p in &report.paths {
                for (name, v) in &p.losses {
                    *window.entry(format!("loss_{name}")).or_default() += v * share;
                }
                for (name, v) in &p.metrics {
                    *window.entry((*name).to_string()).or_default() += v * share;
                }
            }
            *window.entry("grad_norm".to_string()).or_default() += report.grad_norm;
            if report.rerun_on_host {
                *window.entry("host_reruns".to_string()).or_default() += 1.0;
            }
            let value: f64 = report.paths.iter().map(|p| p.total() * share).sum();
            let stop_any = report.stop;
            self.step += 1;
            self.position = lb.after;
            last_loss = value;
            win_steps += 1;
            win_images += lb.len * dist.as_ref().map_or(1, |pg| pg.world());

            // Every rank stops at the same step when any was asked to.
            let stop = stop_any.then(|| signal.unwrap_or(detnas_runtime::Signal::Terminate));
            let step = self.step;
            if step % self.spec.runtime.log_every == 0 || step == total || stop.is_some() {
                let secs = win_start.elapsed().as_secs_f64();
                let mut rec = serde_json::json!({
                    "step": step, "epoch": self.position.epoch, "lr": lr,
                    "images_per_second": win_images as f64 / secs,
                    "arch": group.iter().map(Arch::to_string).collect::<Vec<_>>().join(","),
                    "rss_mib": detnas_runtime::mem::rss_mib(),
                });
                let reads = host::counts() - win_reads;
                rec["host_reads_per_step"] = serde_json::json!(reads.reads as f64 / win_steps as f64);
                rec["host_kernel_reads_per_step"] = serde_json::json!(reads.kernel_reads as f64 / win_steps as f64);
                let phases = detnas_device::phase::take();
                if !phases.is_empty() {
                    let per_step: BTreeMap<String, f64> =
                        phases.into_iter().map(|(k, v)| (k, v / win_steps as f64)).collect();
                    rec["phases"] = serde_json::json!(per_step);
                }
                let mut sum = 0.0;
                for (k, v) in &window {
                    let mean = v / win_steps as f64;
                    rec[k] = serde_json::json!(mean);
                    if k.starts_with("loss_") {
                        sum += mean;
                    }
                }
                rec["loss"] = serde_json::json!(sum);
                if let Some(m) = &mut metrics {
                    m.write(&rec)?;
                }
                pb.set_message(format!("loss {sum:.3} lr {lr:.4} {:.1} img/s", win_images as f64 / secs));
                (window, win_steps, win_images, win_start) = (BTreeMap::new(), 0, 0, Instant::now());
                win_reads = host::counts();
            }
            pb.set_position(step);
            if step % self.spec.runtime.checkpoint_every == 0 || step == total || stop.is_some() {
                if let Some(m) = &mut metrics {
                    m.sync()?;
                }
                if let Some(p) = self.save(vs, task_state)? {
                    last_ckpt = Some(p);
                }
            }
            fault::after_step(step);
            if let Some(signal) = stop {
                pb.abandon();
                return Err(TrainError::Interrupted { signal, step });
            }
        }
        drop(sync);
        pb.finish_and_clear();
        let seconds = started.elapsed().as_secs_f64();
        let trained = self.step - start_step;
        Ok(TrainOutcome {
            steps: self.step,
            resumed_from_step: self.resumed_from.as_ref().map(|(s, _)| *s),
            seconds,
            images_per_second: trained as f64 * self.spec.schedule.batch as f64 / seconds.max(1e-9),
            final_loss: last_loss,
            skipped_samples: self.skipped,
            config_hash: self.spec.config_hash.clone(),
            code_version: detnas_runtime::code_version(),
            seed: self.spec.seed,
            data_fingerprint: self.spec.data_fingerprint.clone(),
            checkpoint: last_ckpt.unwrap_or_default(),
            memory: MemoryRecord { gpu_peak_mib: detnas_dist::cuda_memory::peak_of(vs.device()), ..meter.finish() },
            world_size: dist.as_ref().map_or(1, |pg| pg.world()),
            collective_seconds: dist.as_ref().zip(comm_start).map(|(pg, s)| pg.collective_seconds() - s),
        })
    }
}

/// Waits at the end of a run until every rank has finished it (rank 0 evaluates and writes
/// while the others wait), so that the ranks start the next stage together.
///
/// # Errors
/// [`TrainError::Dist`] when a rank failed or the timeout passed.
pub fn finish_rank(opts: &RunOptions) -> Result<(), TrainError> {
    if let Some(pg) = &opts.dist {
        pg.barrier()?;
    }
    Ok(())
}

/// Whether this rank's `mine` differs from rank 0's (broadcast), agreed by every rank; rank
/// 0's values are returned beside.
fn differs_from_root(pg: &ProcessGroup, mine: &[f64], site: &'static str) -> Result<(bool, Vec<f64>), TrainError> {
    let root = host::upload(mine, &[mine.len() as i64], tch::Device::Cpu, site);
    pg.broadcast(&[&root], 0)?;
    let root: Vec<f64> = host::read(&root, site)?;
    let differs = host::upload(&[f64::from(u8::from(root.as_slice() != mine))], &[1], tch::Device::Cpu, site);
    pg.all_reduce_sum(&[&differs])?;
    Ok((host::scalar(&differs, site)? > 0.0, root))
}

/// Fails unless every rank holds the same `value` (rank 0's, broadcast).
fn agree(pg: &ProcessGroup, value: u64, what: &str) -> Result<(), TrainError> {
    let (differs, root) = differs_from_root(pg, &[value as f64], "train.dist.agree")?;
    if differs {
        return Err(TrainError::Dist(detnas_dist::DistError::Collective(format!(
            "the ranks disagree on {what} (rank {} has {value}, rank 0 has {}): they must share the run folder",
            pg.rank(),
            root[0]
        ))));
    }
    Ok(())
}

/// Every rank's loader position, by rank.
fn gather_positions(pg: &ProcessGroup, mine: Position) -> Result<Vec<Position>, TrainError> {
    let w = pg.world();
    let mut v = vec![0f64; 2 * w];
    v[2 * pg.rank()] = mine.epoch as f64;
    v[2 * pg.rank() + 1] = mine.cursor as f64;
    let t = host::upload(&v, &[v.len() as i64], tch::Device::Cpu, "train.dist.positions");
    pg.all_reduce_sum(&[&t])?;
    let v: Vec<f64> = host::read(&t, "train.dist.positions")?;
    Ok((0..w).map(|r| Position { epoch: v[2 * r] as u64, cursor: v[2 * r + 1] as usize }).collect())
}

/// Gives every rank rank 0's buffers (BN running statistics), as DDP's `broadcast_buffers`
/// does. Without SyncBN each rank's running statistics follow its own shard; a checkpoint
/// holds rank 0's, so every rank continues from the state a resumed run would load.
fn broadcast_buffers(pg: &ProcessGroup, vs: &nn::VarStore) -> Result<(), TrainError> {
    let mut bufs: Vec<(String, Tensor)> = vs.variables().into_iter().filter(|(_, t)| !t.requires_grad()).collect();
    bufs.sort_by(|a, b| a.0.cmp(&b.0));
    if !bufs.is_empty() {
        tch::no_grad(|| pg.broadcast(&bufs.iter().map(|b| &b.1).collect::<Vec<_>>(), 0))?;
    }
    Ok(())
}

/// Fails unless every rank's weights are bit-identical to rank 0's (checked through a
/// checksum of every variable, read in one piece).
fn check_identical(pg: &ProcessGroup, vs: &nn::VarStore) -> Result<(), TrainError> {
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    let sums = tch::no_grad(|| {
        Tensor::stack(&vars.iter().map(|(_, t)| t.to_kind(Kind::Double).sum(Kind::Double)).collect::<Vec<_>>(), 0)
    });
    let sums: Vec<f64> = host::read(&sums, "train.dist.check_identical")?;
    if differs_from_root(pg, &sums, "train.dist.check_identical")?.0 {
        return Err(TrainError::Dist(detnas_dist::DistError::Collective(
            "the ranks' weights differ from rank 0's: the data-parallel update diverged".into(),
        )));
    }
    Ok(())
}
