//! Path-wise supernet pre-training on classification (reference §4).
//!
//! Each iteration samples one path, runs the batch through it and updates only that path's
//! variables ([`PathSgd`] over [`PathIndex::vars`]). Every random draw is reproducible: the
//! path stream is a ChaCha8 stream whose position is checkpointed, the data stream depends
//! only on the loader [`Position`], and libtorch's generator (dropout) is re-seeded from
//! `(seed, step)` before every step. A resumed run therefore ends with bit-identical weights
//! on the CPU backend.

use crate::checkpoint::{self, write_atomic};
use crate::config::{ClsSource, PretrainConfig, SamplingKind};
use crate::evaluate::{ClsScore, EvalData, batch_tensors, evaluate_path, recalibration_subset};
use crate::loss::{smooth_cross_entropy, topk_correct};
use crate::progress::{MetricsLog, bar};
use crate::{PathSgd, TrainError, fault};
use detnas_data::{
    ClsDataset, ClsTransform, IdxDataset, ImageFolder, Loader, LoaderConfig, Position, SyntheticCls, mix_seed,
};
use detnas_nn::{PathIndex, Supernet, SupernetConfig};
use detnas_space::rng::{ChaCha8Rng, seeded};
use detnas_space::{PathSampler, SearchSpace};
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;
use tch::{Device, Tensor, nn};

/// Version string recorded with every artifact.
pub fn code_version() -> String {
    format!("detnas {} ({})", env!("CARGO_PKG_VERSION"), option_env!("DETNAS_GIT_REV").unwrap_or("unknown revision"))
}

/// Stream ids for [`mix_seed`].
const PATH_STREAM: u64 = 0x9A7B;
const DROPOUT_STREAM: u64 = 0xD20F;
const EVAL_STREAM: u64 = 0xE7A1;
const INIT_STREAM: u64 = 0x1417;

/// Everything besides tensors that a checkpoint holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainState {
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
    pub classes: Vec<String>,
    /// Samples skipped so far because they could not be loaded.
    pub skipped_samples: u64,
}

/// A shared, thread-safe dataset.
pub type SharedDataset = Arc<dyn ClsDataset>;

/// Opens the train and validation sets of a config. `classes` imposes a saved mapping.
pub fn open_datasets(
    cfg: &PretrainConfig,
    classes: Option<&[String]>,
) -> Result<(SharedDataset, SharedDataset), TrainError> {
    Ok(match &cfg.data.source {
        ClsSource::Synthetic { train, val } => {
            if train.classes != val.classes {
                return Err(TrainError::Config(
                    "data.source.train and .val must have the same number of classes".into(),
                ));
            }
            (Arc::new(SyntheticCls::new(train.clone())?), Arc::new(SyntheticCls::new(val.clone())?))
        }
        ClsSource::ImageFolder { train, val } => {
            let t = ImageFolder::open(train, classes)?;
            let names = t.classes().to_vec();
            (Arc::new(t), Arc::new(ImageFolder::open(val, Some(&names))?))
        }
        ClsSource::Idx { train_images, train_labels, val_images, val_labels } => {
            let t = IdxDataset::open(train_images, train_labels)?;
            let v = IdxDataset::open(val_images, val_labels)?;
            let n = t.classes().len().max(v.classes().len());
            let names: Vec<String> =
                classes.map(<[String]>::to_vec).unwrap_or_else(|| (0..n).map(|c| c.to_string()).collect());
            (Arc::new(t.with_classes(names.clone())?), Arc::new(v.with_classes(names)?))
        }
    })
}

/// The BN-recalibration images of a run: `eval.recalibrate_images` (or `n`) training images
/// drawn by the run's seed — the same set at the end of training and in `detnas eval cls`.
pub fn recalibration_set(cfg: &PretrainConfig, train: SharedDataset, n: Option<usize>) -> SharedDataset {
    Arc::new(recalibration_subset(
        train,
        n.unwrap_or(cfg.eval.recalibrate_images),
        mix_seed(cfg.seed, &[EVAL_STREAM, 1]),
    ))
}

/// The evaluation presentation of a config.
pub fn eval_data(cfg: &PretrainConfig) -> EvalData {
    EvalData {
        transform: ClsTransform::Eval { resize: cfg.data.eval_resize, crop: cfg.data.input_size },
        convention: cfg.data.convention,
        batch: cfg.eval.batch,
        prefetch: cfg.runtime.prefetch,
    }
}

/// The training loader settings of a config.
fn train_loader_config(cfg: &PretrainConfig) -> LoaderConfig {
    LoaderConfig {
        batch: cfg.schedule.batch,
        seed: mix_seed(cfg.seed, &[0xDA7A]),
        shuffle: true,
        drop_last: true,
        epochs: None,
        prefetch: cfg.runtime.prefetch,
        transform: ClsTransform::Train {
            size: cfg.data.input_size,
            scale: (cfg.data.scale_min, 1.0),
            ratio: (0.75, 4.0 / 3.0),
            flip: cfg.data.flip,
            jitter: cfg.data.jitter,
        },
        convention: cfg.data.convention,
    }
}

/// Options of one invocation (not part of the configuration).
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Resume from this checkpoint instead of the run folder's latest.
    pub resume_from: Option<PathBuf>,
    /// Accept a configuration or dataset that differs from the checkpoint's (logged).
    pub allow_mismatch: bool,
    /// Draw a progress bar on stderr.
    pub progress: bool,
}

/// What a finished run reports (also written to `summary.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Summary {
    pub steps: u64,
    pub resumed_from_step: Option<u64>,
    pub seconds: f64,
    pub images_per_second: f64,
    pub final_train_loss: f64,
    pub skipped_samples: u64,
    pub paths: Vec<ClsScore>,
    pub mean_top1: f64,
    pub config_hash: String,
    pub code_version: String,
    pub seed: u64,
    pub data_fingerprint: String,
    pub checkpoint: PathBuf,
}

static SIGNALS: OnceLock<(Arc<AtomicBool>, Arc<AtomicBool>)> = OnceLock::new();

/// Installs SIGINT/SIGTERM flags once per process: a signal finishes the current step,
/// saves a checkpoint and stops.
pub(crate) fn signal_flags() -> &'static (Arc<AtomicBool>, Arc<AtomicBool>) {
    SIGNALS.get_or_init(|| {
        let int = Arc::new(AtomicBool::new(false));
        let term = Arc::new(AtomicBool::new(false));
        let _ = signal_hook::flag::register(signal_hook::consts::SIGINT, int.clone());
        let _ = signal_hook::flag::register(signal_hook::consts::SIGTERM, term.clone());
        (int, term)
    })
}

pub(crate) fn interrupted() -> Option<&'static str> {
    let (int, term) = signal_flags();
    if int.load(Ordering::SeqCst) {
        Some("SIGINT")
    } else if term.load(Ordering::SeqCst) {
        Some("SIGTERM")
    } else {
        None
    }
}

/// Reads the configuration and state saved in a (verified) checkpoint folder.
pub fn read_checkpoint_meta(path: &Path) -> Result<(PretrainConfig, TrainState), TrainError> {
    let err = |m: String| TrainError::Checkpoint { path: path.to_path_buf(), message: m };
    let cfg_text = std::fs::read_to_string(path.join("config.toml")).map_err(|e| err(format!("config.toml: {e}")))?;
    let cfg: PretrainConfig = toml::from_str(&cfg_text).map_err(|e| err(format!("config.toml: {e}")))?;
    let text = std::fs::read_to_string(path.join("state.json")).map_err(|e| err(format!("state.json: {e}")))?;
    let state: TrainState = serde_json::from_str(&text).map_err(|e| err(format!("state.json: {e}")))?;
    if state.format != checkpoint::FORMAT {
        return Err(err(format!("state format {} is not {}", state.format, checkpoint::FORMAT)));
    }
    Ok((cfg, state))
}

/// Loads the model (and optimizer) tensors of a verified checkpoint folder.
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

/// Builds the supernet of a config with `classes` outputs.
pub fn build_supernet(space: &SearchSpace, classes: usize, device: Device) -> (nn::VarStore, Supernet) {
    let vs = nn::VarStore::new(device);
    let net = SupernetConfig { space: space.clone(), classes: Some(classes as i64) }.build(&vs.root());
    (vs, net)
}

/// Runs (or resumes) pre-training into `out`.
pub fn run(cfg: &PretrainConfig, out: &Path, device: Device, opts: &RunOptions) -> Result<Summary, TrainError> {
    cfg.check()?;
    let space = cfg.space()?;
    let hash = cfg.result_hash();
    // The resolved config is written before work starts; an existing, different one is kept
    // unless the mismatch is allowed.
    let hash_of = |text: &str| toml::from_str::<PretrainConfig>(text).ok().map(|o| o.result_hash());
    checkpoint::claim_run_dir(out, &cfg.to_toml(), &hash, hash_of, opts.allow_mismatch)?;

    let ckpt_dir = out.join("checkpoints");
    let resume = match &opts.resume_from {
        Some(p) => Some(checkpoint::resolve(p)?),
        None => checkpoint::latest(&ckpt_dir)?,
    };
    let saved = resume.as_ref().map(|(_, p)| read_checkpoint_meta(p).map(|(_, state)| state)).transpose()?;
    let (train, val) = open_datasets(cfg, saved.as_ref().map(|s| s.classes.as_slice()))?;
    let classes = train.classes().to_vec();
    let fingerprint = train.fingerprint();

    // Initial weights come from libtorch's generator: seed it so that a run is reproducible
    // from its seed alone (a resumed run then loads the checkpoint over them).
    tch::manual_seed(mix_seed(cfg.seed, &[INIT_STREAM]) as i64);
    let (mut vs, net) = build_supernet(&space, classes.len(), device);
    let index = PathIndex::new(&vs);
    let mut opt = PathSgd::new(cfg.schedule.momentum, cfg.schedule.weight_decay);
    let mut path_rng = seeded(mix_seed(cfg.seed, &[PATH_STREAM]));
    let mut position = Position::default();
    let mut step = 0u64;
    let mut skipped = 0u64;
    let mut resumed_from = None;
    if let (Some((s, path)), Some(state)) = (&resume, saved) {
        let mismatch = |what: &str| TrainError::Checkpoint {
            path: path.clone(),
            message: format!("{what} differs from this run's; refusing to resume (use --allow-mismatch to override)"),
        };
        if state.space != space {
            return Err(mismatch("the search space"));
        }
        load_weights(path, &mut vs, Some(&mut opt))?;
        if state.config_hash != hash {
            if !opts.allow_mismatch {
                return Err(mismatch("the configuration"));
            }
            tracing::warn!("resuming {} with a different configuration (allowed)", path.display());
        }
        if state.data_fingerprint != fingerprint {
            if !opts.allow_mismatch {
                return Err(mismatch("the training data"));
            }
            tracing::warn!("resuming {} with different training data (allowed)", path.display());
        }
        let pos: u128 = state.path_rng_word_pos.parse().map_err(|_| mismatch("path_rng_word_pos"))?;
        path_rng = ChaCha8Rng::seed_from_u64(mix_seed(cfg.seed, &[PATH_STREAM]));
        path_rng.set_word_pos(pos);
        position = state.loader;
        step = state.step;
        skipped = state.skipped_samples;
        resumed_from = Some(*s);
        tracing::info!("resuming from {} (step {step})", path.display());
    }

    let sampler = match cfg.sampling.kind {
        SamplingKind::Uniform => PathSampler::uniform(&space, cfg.max_backbone_macs()?)?,
        SamplingKind::FlopsBinned => PathSampler::flops_binned(&space, cfg.max_backbone_macs()?, cfg.sampling.bins)?,
        SamplingKind::Fixed => {
            let text = cfg
                .sampling
                .arch
                .as_deref()
                .ok_or_else(|| TrainError::Config("sampling.kind = \"fixed\" needs sampling.arch".into()))?;
            PathSampler::fixed(&space, space.parse_arch(text)?)
        }
    };
    let schedule = cfg.schedule.lr_schedule();
    let mut metrics = MetricsLog::open(&out.join("metrics.jsonl"), step)?;
    let mut loader = Loader::new(train.clone(), train_loader_config(cfg), position)?;
    signal_flags();

    let save = |step: u64,
                vs: &nn::VarStore,
                opt: &PathSgd,
                position: Position,
                path_rng: &ChaCha8Rng,
                skipped: u64|
     -> Result<PathBuf, TrainError> {
        let state = TrainState {
            format: checkpoint::FORMAT,
            step,
            loader: position,
            path_rng_word_pos: path_rng.get_word_pos().to_string(),
            config_hash: hash.clone(),
            seed: cfg.seed,
            code_version: code_version(),
            data_fingerprint: fingerprint.clone(),
            space: space.clone(),
            classes: classes.clone(),
            skipped_samples: skipped,
        };
        checkpoint::save_training(&ckpt_dir, step, cfg.runtime.keep, vs, opt, &state, &cfg.to_toml())
    };

    let total = cfg.schedule.iterations;
    let pb = bar(total, step, "pretrain", opts.progress);
    let started = Instant::now();
    let start_step = step;
    let (mut win_loss, mut win_correct, mut win_images, mut win_start) = (0.0, 0i64, 0usize, Instant::now());
    let mut last_loss = f64::NAN;
    let mut last_ckpt = resume.as_ref().map(|(_, p)| p.clone());
    while step < total {
        let arch = sampler.sample(&mut path_rng)?;
        let batch = loader.next_batch().ok_or_else(|| TrainError::Config("the training stream ended".into()))??;
        for r in &batch.epoch_reports {
            skipped += r.skipped.len() as u64;
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
        let (x, y) = batch_tensors(&batch, device);
        let lr = schedule.lr(step);
        tch::manual_seed(mix_seed(cfg.seed, &[DROPOUT_STREAM, step]) as i64);
        let logits = net.forward_t(&x, &arch, true)?;
        let loss = smooth_cross_entropy(&logits, &y, cfg.schedule.label_smoothing);
        let mut loss_v = f64::try_from(&loss)?;
        if fault::nan_at(step + 1) {
            loss_v = f64::NAN;
        }
        if !loss_v.is_finite() {
            let images: Vec<String> = batch.indices.iter().take(8).map(|&i| train.name(i)).collect();
            return Err(TrainError::Numerical {
                step: step + 1,
                loss: loss_v,
                lr,
                arch: arch.to_string(),
                images: images.join(", "),
            });
        }
        loss.backward();
        opt.step(index.vars(&arch), lr);
        step += 1;
        position = batch.after;
        last_loss = loss_v;
        win_loss += loss_v * batch.len() as f64;
        win_correct += tch::no_grad(|| topk_correct(&logits, &y, 1));
        win_images += batch.len();

        let signal = interrupted();
        if step % cfg.runtime.log_every == 0 || step == total || signal.is_some() {
            let secs = win_start.elapsed().as_secs_f64();
            let rec = serde_json::json!({
                "step": step, "epoch": position.epoch, "loss": win_loss / win_images as f64,
                "top1": win_correct as f64 / win_images as f64, "lr": lr,
                "images_per_second": win_images as f64 / secs, "arch": arch.to_string(),
            });
            metrics.write(&rec)?;
            pb.set_message(format!(
                "loss {:.3} top1 {:.3} lr {:.4} {:.0} img/s",
                win_loss / win_images as f64,
                win_correct as f64 / win_images as f64,
                lr,
                win_images as f64 / secs
            ));
            (win_loss, win_correct, win_images, win_start) = (0.0, 0, 0, Instant::now());
        }
        pb.set_position(step);
        if step % cfg.runtime.checkpoint_every == 0 || step == total || signal.is_some() {
            metrics.sync()?;
            last_ckpt = Some(save(step, &vs, &opt, position, &path_rng, skipped)?);
        }
        fault::after_step(step);
        if let Some(signal) = signal {
            pb.abandon();
            return Err(TrainError::Interrupted { signal, step });
        }
    }
    pb.finish_and_clear();
    drop(loader);
    let seconds = started.elapsed().as_secs_f64();
    let trained = step - start_step;

    // Final evaluation of a few random paths (after recalibrating their BN statistics).
    let ed = eval_data(cfg);
    let mut eval_rng = seeded(mix_seed(cfg.seed, &[EVAL_STREAM]));
    let recal = Arc::new(recalibration_subset(
        train.clone(),
        cfg.eval.recalibrate_images,
        mix_seed(cfg.seed, &[EVAL_STREAM, 1]),
    ));
    let mut scores = Vec::new();
    for _ in 0..cfg.eval.final_paths {
        let arch = sampler.sample(&mut eval_rng)?;
        scores.push(evaluate_path(
            &net,
            &arch,
            Some((recal.clone(), cfg.eval.bn_mode.into())),
            val.clone(),
            &ed,
            device,
        )?);
    }
    let mean_top1 = scores.iter().map(|s| s.top1).sum::<f64>() / scores.len().max(1) as f64;
    let summary = Summary {
        steps: step,
        resumed_from_step: resumed_from,
        seconds,
        images_per_second: (trained as f64 * cfg.schedule.batch as f64) / seconds.max(1e-9),
        final_train_loss: last_loss,
        skipped_samples: skipped,
        paths: scores,
        mean_top1,
        config_hash: hash.clone(),
        code_version: code_version(),
        seed: cfg.seed,
        data_fingerprint: fingerprint.clone(),
        checkpoint: last_ckpt.unwrap_or_default(),
    };
    write_atomic(&out.join("summary.json"), serde_json::to_string_pretty(&summary).expect("serialisable").as_bytes())?;
    Ok(summary)
}
