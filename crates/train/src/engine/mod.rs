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
//!   [`detnas_runtime::Cancel`] token is raised (the step is finished, saved, then the run stops with
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
//! the same path stream. Each loss is a sum and a count ([`detnas_nn::LossTerm`]); the counts (and the
//! sums, for the logged values) are summed over the ranks before dividing, and the path's
//! gradients are summed over the ranks in buckets ([`detnas_dist::GradReducer`]), so the update is the one a
//! single process makes on the whole batch — with synchronized BatchNorm (`runtime.sync_bn`),
//! to float rounding. Rank 0 alone writes checkpoints (with every rank's loader position),
//! metrics and the summary; at every checkpoint the ranks check that their weights are
//! bit-identical. A resumed run must have the same number of ranks.

mod dist;
mod options;
mod task;

pub use crate::checkpoint::{Resume, TrainState, load_weights, read_meta};
pub use crate::step::{StepLosses, check_sync};
pub use dist::{finish_rank, sync_bn};
pub use options::{Paths, RunOptions, RunStart, TrainerSpec, start_run};
pub use task::{LoadedBatch, TrainOutcome, TrainTask, finished_summary, write_summary};

use crate::checkpoint;
use crate::step::{StepReport, StepSettings, step};
use crate::{PathSgd, TrainError};
use detnas_data::{Position, SkipReport, mix_seed};
use detnas_device::host;
use detnas_dist::ProcessGroup;
use detnas_nn::PathIndex;
use detnas_runtime::mem::{MemoryRecord, PeakMeter};
use detnas_runtime::progress::MetricsLog;
use detnas_runtime::progress::bar;
use detnas_runtime::{fault, guard};
use detnas_space::Arch;
use detnas_space::rng::{ChaCha8Rng, seeded};
use dist::{agree, broadcast_buffers, check_identical, gather_positions};
use rand::SeedableRng;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use tch::{Kind, Tensor, nn};

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
    /// saved with every checkpoint. Each step: the next paths, the task's batch, the guarded
    /// update, the metrics window, a checkpoint when due.
    ///
    /// # Errors
    /// [`TrainError::Numerical`] for a non-finite loss (nothing is updated at that step),
    /// [`TrainError::Compute`] when libtorch fails inside the step, [`TrainError::Interrupted`]
    /// after saving when `opts.cancel` was raised (on any rank), [`TrainError::Dist`] when a
    /// collective fails, and any error of the task, the metrics file or a checkpoint.
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
        let buffers: Vec<Tensor> = vs.variables().into_values().filter(|t| !t.requires_grad()).collect();
        let mut window = Window::start();
        let mut last_loss = f64::NAN;
        let mut last_ckpt = self.resumed_from.as_ref().map(|(_, p)| p.clone());
        while self.step < total {
            let group = self.next_paths(task)?;
            let lb = task.next_batch()?;
            self.report_skips(&lb.epoch_reports);
            let lr = schedule.lr(self.step);
            let signal = opts.cancel.requested();
            let report = self.train_step(task, &lb.batch, &group, &buffers, lr, signal.is_some(), vs.device())?;
            window.add(&report, lb.len * dist.as_ref().map_or(1, |pg| pg.world()));
            last_loss = report.paths.iter().map(|p| p.total() / group.len() as f64).sum();
            self.step += 1;
            self.position = lb.after;

            // Every rank stops at the same step when any was asked to.
            let stop = report.stop.then(|| signal.unwrap_or(detnas_runtime::Signal::Terminate));
            let step = self.step;
            if step % self.spec.runtime.log_every == 0 || step == total || stop.is_some() {
                let rec = window.record(step, self.position.epoch, lr, &group);
                if let Some(m) = &mut metrics {
                    m.write(&rec)?;
                }
                pb.set_message(format!(
                    "loss {:.3} lr {lr:.4} {:.1} img/s",
                    rec["loss"].as_f64().unwrap_or(f64::NAN),
                    rec["images_per_second"].as_f64().unwrap_or(0.0)
                ));
                window = Window::start();
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
            machine: detnas_device::machine(),
        })
    }

    /// The paths of the next step: one, or a strict-fairness group trained on the same batch
    /// with its gradients summed into one update. Ends the warm start when it is due.
    fn next_paths(&mut self, task: &mut impl TrainTask) -> Result<Vec<Arch>, TrainError> {
        if let Paths::Sampled(s) = &self.paths
            && s.warm_start_steps() > 0
            && self.step == s.warm_start_steps()
        {
            task.end_warm_start()?;
            self.opt.clear_buffers();
            tracing::info!("warm start ended at step {}: every choice aligned to the trained path", self.step);
        }
        Ok(match &self.paths {
            Paths::Sampled(s) => s.sample_step(self.step, &mut self.path_rng)?,
            Paths::Child(a) => vec![a.clone()],
        })
    }

    /// One update of `group` on `batch` ([`step`]), inside the [`guard`] that turns a libtorch
    /// failure into [`TrainError::Compute`] naming the step, the paths and the batch.
    #[allow(clippy::too_many_arguments)]
    fn train_step<Task: TrainTask>(
        &mut self,
        task: &mut Task,
        batch: &Task::Batch,
        group: &[Arch],
        buffers: &[Tensor],
        lr: f64,
        stop: bool,
        device: tch::Device,
    ) -> Result<StepReport, TrainError> {
        let at = self.step;
        let settings = StepSettings {
            buffers,
            lr,
            clip_grad_norm: self.spec.schedule.clip_grad_norm,
            stop,
            nan: fault::nan_at(at + 1),
            dist: self.dist.as_deref(),
        };
        let child = matches!(self.paths, Paths::Child(_));
        let images = task.describe(batch).join(", ");
        let vars = self.index.union_vars(group);
        let opt = &mut self.opt;
        guard::catch(|| {
            step(
                group.len(),
                |i| {
                    if fault::out_of_memory_at(at + 1) {
                        // A real allocator failure: more bytes than any machine holds.
                        let _ = Tensor::empty([1i64 << 52], (Kind::Float, device));
                    }
                    task.losses(batch, (!child).then(|| &group[i]), at)
                },
                &vars,
                opt,
                &settings,
                |i, loss| TrainError::Numerical { step: at + 1, loss, lr, arch: group[i].to_string(), images },
            )
        })
        .map_err(|f| {
            let paths = group.iter().map(Arch::to_string).collect::<Vec<_>>().join(",");
            let during =
                format!("{} step {} (path {paths}; {} on {device:?})", self.spec.what, at + 1, task.input_size(batch));
            TrainError::compute(during, f, Task::MEMORY_KEYS)
        })?
    }
}

/// The steps between two metric lines: their summed losses, metrics and gradient norms,
/// images, host reads and phase times, averaged into one `metrics.jsonl` record.
struct Window {
    sums: BTreeMap<String, f64>,
    steps: usize,
    images: usize,
    start: Instant,
    reads: host::Counts,
}

impl Window {
    fn start() -> Window {
        let _ = detnas_device::phase::take();
        Window { sums: BTreeMap::new(), steps: 0, images: 0, start: Instant::now(), reads: host::counts() }
    }

    /// Adds one step's report (`images` over every rank).
    fn add(&mut self, report: &StepReport, images: usize) {
        let share = 1.0 / report.paths.len() as f64;
        for p in &report.paths {
            for (name, v) in &p.losses {
                *self.sums.entry(format!("loss_{name}")).or_default() += v * share;
            }
            for (name, v) in &p.metrics {
                *self.sums.entry((*name).to_string()).or_default() += v * share;
            }
        }
        *self.sums.entry("grad_norm".to_string()).or_default() += report.grad_norm;
        if report.rerun_on_host {
            *self.sums.entry("host_reruns".to_string()).or_default() += 1.0;
        }
        self.steps += 1;
        self.images += images;
    }

    /// The record of the window ending at `step`.
    fn record(&self, step: u64, epoch: u64, lr: f64, group: &[Arch]) -> serde_json::Value {
        let steps = self.steps.max(1) as f64;
        let secs = self.start.elapsed().as_secs_f64();
        let mut rec = serde_json::json!({
            "step": step, "epoch": epoch, "lr": lr,
            "images_per_second": self.images as f64 / secs,
            "arch": group.iter().map(Arch::to_string).collect::<Vec<_>>().join(","),
            "rss_mib": detnas_runtime::mem::rss_mib(),
        });
        let reads = host::counts() - self.reads;
        rec["host_reads_per_step"] = serde_json::json!(reads.reads as f64 / steps);
        rec["host_kernel_reads_per_step"] = serde_json::json!(reads.kernel_reads as f64 / steps);
        let phases = detnas_device::phase::take();
        if !phases.is_empty() {
            let per_step: BTreeMap<String, f64> = phases.into_iter().map(|(k, v)| (k, v / steps)).collect();
            rec["phases"] = serde_json::json!(per_step);
        }
        let mut sum = 0.0;
        for (k, v) in &self.sums {
            let mean = v / steps;
            rec[k] = serde_json::json!(mean);
            if k.starts_with("loss_") {
                sum += mean;
            }
        }
        rec["loss"] = serde_json::json!(sum);
        rec
    }
}
