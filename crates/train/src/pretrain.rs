//! Path-wise supernet pre-training on classification (DetNAS arXiv:1903.10979 §3.2, step 1;
//! the official `train.py` of megvii-model/DetNAS and SinglePathOneShot): one path per
//! iteration, label-smoothed cross-entropy, only the path's variables updated
//! ([`crate::engine`] runs the loop). After training, a few random paths are scored on the
//! validation split after BN recalibration.

use crate::TrainError;
use crate::config::{ClsSource, PretrainConfig, SamplingKind};
use crate::engine::{
    LoadedBatch, Paths, Resume, RunOptions, StepLosses, TrainOutcome, TrainTask, Trainer, TrainerSpec,
};
use crate::engine::{RunStart, start_run};
use crate::evaluate::autocast;
use crate::evaluate::{ClsScore, batch_tensors};
use crate::loss::{smooth_cross_entropy, topk_hits};
use crate::scoring::{ClsScorer, ScoreSettings};
use detnas_data::{
    Batch, ClsDataset, ClsLoader, ClsTransform, IdxDataset, ImageFolder, LoaderConfig, StreamConfig, SyntheticCls,
    mix_seed,
};
use detnas_nn::LossTerm;
use detnas_nn::layers::dropout_mask;
use detnas_nn::{Supernet, SupernetConfig};
use detnas_runtime::ConfigDocument;
use detnas_space::rng::seeded;
use detnas_space::{Arch, PathSampler, SearchSpace};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;
use tch::{Device, nn};

use detnas_data::streams::{PRETRAIN_DATA, PRETRAIN_DROPOUT, PRETRAIN_EVAL, PRETRAIN_INIT, PRETRAIN_PATHS};

/// The classification part of a checkpoint's state: the class names, in label order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClsState {
    /// Class names, in label order.
    pub classes: Vec<String>,
}

/// A pre-training checkpoint's state.
pub type TrainState = crate::engine::TrainState<ClsState>;

pub use crate::evaluate::SharedDataset;

/// Opens the train and validation sets of a config. `classes` imposes a saved mapping.
///
/// # Errors
/// [`TrainError::Data`] when a set cannot be read, [`TrainError::Config`] when the synthetic
/// sets disagree on their classes.
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

/// The training loader settings of a config for a rank's share `(rank, world)` of the global
/// batch.
fn train_loader_config(cfg: &PretrainConfig, shard: Option<(usize, usize)>) -> LoaderConfig {
    LoaderConfig {
        stream: StreamConfig::training(
            cfg.schedule.batch / shard.map_or(1, |s| s.1),
            mix_seed(cfg.seed, &[PRETRAIN_DATA]),
            cfg.runtime.prefetch,
            shard,
        ),
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

/// What a finished run reports (also written to `summary.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Summary {
    /// The training loop's outcome.
    #[serde(flatten)]
    pub train: TrainOutcome,
    /// Random paths scored on the validation split after BN recalibration.
    pub paths: Vec<ClsScore>,
    /// Mean top-1 of `paths`.
    pub mean_top1: f64,
}

/// Reads the configuration and state saved in a (verified) checkpoint folder.
///
/// # Errors
/// [`TrainError::Checkpoint`] when it is not a readable pre-training checkpoint.
pub fn read_checkpoint_meta(path: &Path) -> Result<(PretrainConfig, TrainState), TrainError> {
    crate::engine::read_meta(path)
}

/// A pre-training checkpoint opened for scoring: its configuration, state and supernet (or
/// fixed child) with the weights loaded.
pub struct OpenedSupernet {
    /// The resolved pre-training configuration.
    pub config: PretrainConfig,
    /// The checkpoint's state (classes).
    pub state: TrainState,
    /// The supernet (or fixed child), weights loaded.
    pub net: Supernet,
    /// Its variables.
    pub vs: nn::VarStore,
    /// The resolved `step-N` folder.
    pub path: std::path::PathBuf,
}

impl OpenedSupernet {
    /// Opens a pre-training checkpoint (a `step-N` folder, a run folder's latest, or the `cls`
    /// run of a pipeline retraining stage folder).
    ///
    /// # Errors
    /// [`TrainError::Checkpoint`] for a missing, corrupt or foreign checkpoint.
    pub fn open(ckpt: &Path, device: Device) -> Result<OpenedSupernet, TrainError> {
        let (_, path) = crate::checkpoint::resolve_run(ckpt, "cls")?;
        let (config, state) = read_checkpoint_meta(&path)?;
        let (mut vs, net) = build_supernet(&state.space, state.task.classes.len(), device);
        crate::engine::load_weights(&path, &mut vs, None)?;
        Ok(OpenedSupernet { config, state, net, vs, path })
    }

    /// The training and validation sets of its run, with the checkpoint's class mapping.
    ///
    /// # Errors
    /// As [`open_datasets`].
    pub fn datasets(&self) -> Result<(SharedDataset, SharedDataset), TrainError> {
        open_datasets(&self.config, Some(&self.state.task.classes))
    }

    /// Whether the checkpoint holds one fixed child (`sampling.kind = "fixed"`).
    pub fn is_fixed(&self) -> bool {
        self.config.sampling.kind == SamplingKind::Fixed
    }

    /// A scorer of its paths on the run's validation split ([`ClsScorer`]).
    ///
    /// # Errors
    /// As [`OpenedSupernet::datasets`].
    pub fn scorer(self, s: &ScoreSettings, device: Device) -> Result<ClsScorer, TrainError> {
        let (train, val) = self.datasets()?;
        Ok(ClsScorer::new(self.net, self.vs, &self.config, (train, val), s, device))
    }
}

/// Builds the supernet of a space with `classes` outputs.
pub fn build_supernet(space: &SearchSpace, classes: usize, device: Device) -> (nn::VarStore, Supernet) {
    let vs = nn::VarStore::new(device);
    let net = SupernetConfig { space: space.clone(), classes: Some(classes as i64) }.build(&vs.root());
    (vs, net)
}

/// The path sampler of a config.
///
/// # Errors
/// [`TrainError::Config`] for a fixed sampler without an architecture, and a space error for
/// an unsatisfiable MACs limit.
pub fn sampler(cfg: &PretrainConfig, space: &SearchSpace) -> Result<PathSampler, TrainError> {
    let sampler = match cfg.sampling.kind {
        SamplingKind::Uniform => PathSampler::uniform(space, cfg.max_backbone_macs()?)?,
        SamplingKind::FlopsBinned => PathSampler::flops_binned(space, cfg.max_backbone_macs()?, cfg.sampling.bins)?,
        SamplingKind::Fair => PathSampler::fair(space),
        SamplingKind::Fixed => {
            let text = cfg
                .sampling
                .arch
                .as_deref()
                .ok_or_else(|| TrainError::Config("sampling.kind = \"fixed\" needs sampling.arch".into()))?;
            PathSampler::fixed(space, space.parse_arch(text)?)
        }
    };
    Ok(match detnas_nn::Supernet::reference_choice(space) {
        Some(c) if cfg.sampling.warm_start_steps > 0 => {
            sampler.with_warm_start(Arch::uniform(c, space.num_blocks()), cfg.sampling.warm_start_steps)
        }
        _ => sampler,
    })
}

/// Classification batches and the label-smoothed loss of a supernet path.
struct ClsTask<'a> {
    net: &'a Supernet,
    loader: ClsLoader,
    train: SharedDataset,
    device: Device,
    label_smoothing: f64,
    /// The run's seed (the dropout masks derive from it).
    seed: u64,
}

impl TrainTask for ClsTask<'_> {
    type Batch = Batch;

    fn next_batch(&mut self) -> Result<LoadedBatch<Batch>, TrainError> {
        let l = self.loader.next_batch().ok_or_else(|| TrainError::Config("the training stream ended".into()))??;
        Ok(LoadedBatch { len: l.batch.len(), batch: l.batch, after: l.after, epoch_reports: l.epoch_reports })
    }

    fn losses(&mut self, batch: &Batch, arch: Option<&Arch>, step: u64) -> Result<StepLosses, TrainError> {
        let arch = arch.ok_or_else(|| TrainError::Config("pre-training trains supernet paths".into()))?;
        let (x, y) = batch_tensors(batch, self.device);
        // Each sample's dropout mask comes from its own seed (step, dataset index).
        let head = self.net.head().ok_or_else(|| TrainError::Config("the supernet has no head".into()))?;
        let seeds: Vec<u64> =
            batch.indices.iter().map(|&i| mix_seed(self.seed, &[PRETRAIN_DROPOUT, step, i as u64])).collect();
        let mask = dropout_mask(&seeds, head.channels(), head.dropout, self.device);
        let logits = {
            let _amp = autocast(self.device, true)?;
            self.net.forward_masked(&x, arch, true, Some(&mask))?
        };
        let n = batch.len() as f64;
        let logits = logits.to_kind(tch::Kind::Float);
        let loss = smooth_cross_entropy(&logits, &y, self.label_smoothing) * n;
        let correct = tch::no_grad(|| topk_hits(&logits, &y, 1));
        let term = LossTerm::with_count("ce", loss, n);
        let images = term.count.shallow_clone();
        Ok(StepLosses { losses: vec![term], metrics: vec![("top1", correct, images)], exact: None })
    }

    fn describe(&self, batch: &Batch) -> Vec<String> {
        batch.indices.iter().take(8).map(|&i| self.train.name(i)).collect()
    }

    fn input_size(&self, batch: &Batch) -> String {
        format!("{} images of {}×{}", batch.len(), batch.size, batch.size)
    }

    const MEMORY_KEYS: &'static str = "schedule.batch or data.input_size";

    fn end_warm_start(&mut self) -> Result<(), TrainError> {
        self.net.align_choices();
        Ok(())
    }
}

/// Runs (or resumes) pre-training into `out`.
///
/// # Errors
/// [`TrainError::Config`] for a configuration that fails its checks or a run folder holding
/// another one, [`TrainError::Checkpoint`] for a checkpoint that cannot be resumed, data,
/// numerical and interruption errors of the loop ([`Trainer::run`]).
pub fn run(cfg: &PretrainConfig, out: &Path, device: Device, opts: &RunOptions) -> Result<Summary, TrainError> {
    let RunStart { hash, writer } = start_run(cfg, (&cfg.schedule, &cfg.runtime), out, opts, || Ok(()))?;
    let space = cfg.space()?;

    let resume: Option<Resume<ClsState>> = Resume::find(out, opts.resume_from.as_deref())?;
    if let Some(done) =
        crate::engine::finished_summary(out, resume.as_ref().map(|r| r.step), cfg.schedule.iterations, &hash, opts)
    {
        return Ok(done);
    }
    let (train, val) = open_datasets(cfg, resume.as_ref().map(|r| r.state.task.classes.as_slice()))?;
    let state = ClsState { classes: train.classes().to_vec() };

    // Initial weights come from libtorch's generator: seed it so that a run is reproducible
    // from its seed alone (a resumed run then loads the checkpoint over them).
    tch::manual_seed(mix_seed(cfg.seed, &[PRETRAIN_INIT]) as i64);
    let (mut vs, net) = build_supernet(&space, state.classes.len(), device);
    let spec = TrainerSpec {
        what: "pretrain",
        out,
        seed: cfg.seed,
        schedule: &cfg.schedule,
        runtime: &cfg.runtime,
        space: &space,
        config_hash: hash,
        config_toml: cfg.to_toml(),
        data_fingerprint: train.fingerprint(),
        path_stream: PRETRAIN_PATHS,
        sync_bn_default: false,
    };
    let sampler = sampler(cfg, &space)?;
    let mut trainer = Trainer::new(spec, Paths::Sampled(Box::new(sampler.clone())), &mut vs, resume.as_ref(), opts)?;
    let loader = ClsLoader::new(train.clone(), train_loader_config(cfg, trainer.shard()), trainer.position())?;
    let mut task = ClsTask {
        net: &net,
        loader,
        train: train.clone(),
        device,
        label_smoothing: cfg.schedule.label_smoothing,
        seed: cfg.seed,
    };
    let outcome = trainer.run(&mut task, &vs, &state, opts)?;
    drop(task);
    if !writer {
        // Rank 0 evaluates and writes the summary.
        crate::engine::finish_rank(opts)?;
        return Ok(Summary { train: outcome, paths: Vec::new(), mean_top1: f64::NAN });
    }

    // Final evaluation of a few random paths (after recalibrating their BN statistics).
    drop(trainer);
    let fixed = cfg.sampling.kind == SamplingKind::Fixed;
    let settings = ScoreSettings::of_run(&cfg.eval, fixed);
    let mut scorer = ClsScorer::new(net, vs, cfg, (train, val), &settings, device);
    let mut eval_rng = seeded(mix_seed(cfg.seed, &[PRETRAIN_EVAL]));
    let mut scores = Vec::new();
    for _ in 0..cfg.eval.final_paths {
        let arch = sampler.sample(&mut eval_rng)?;
        scores.push(scorer.score(&arch)?);
    }
    let mean_top1 = scores.iter().map(|s| s.top1).sum::<f64>() / scores.len().max(1) as f64;
    let summary = Summary { train: outcome, paths: scores, mean_top1 };
    crate::engine::write_summary(out, &summary)?;
    crate::engine::finish_rank(opts)?;
    Ok(summary)
}
