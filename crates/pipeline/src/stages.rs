//! `detnas run`: every DetNAS stage in order, each in its own folder of the run directory
//! ([`crate::layout`]), each marked complete (`stage.json`, written atomically) only after its
//! outputs are fully written. Re-running the same command skips finished stages and resumes
//! the unfinished one at its own checkpoint (training steps, search ledger).

use crate::PipelineError;
use crate::config::{PipelineConfig, RetrainMode};
use crate::layout::{self as dirs, GridRecord, Retrained, STAGE_FILE, SplitCounts, StageRecord, finished};
use detnas_data::det::DetDataset;
use detnas_data::mix_seed;
use detnas_dist::ProcessGroup;
use detnas_runtime::fsx::{write_atomic, write_json_atomic};
use detnas_runtime::mem::{MemoryRecord, PeakMeter};
use detnas_runtime::{Cancel, ConfigDocument};
use detnas_search::run::BestArch;
use detnas_search::{FitnessKind, SearchConfig, SearchOptions};
use detnas_space::rng::seeded;
use detnas_space::sample_constrained;
use detnas_train::det_config::{DetSource, SyntheticDetSource};
use detnas_train::finetune::FinetuneSummary;
use detnas_train::{FinetuneConfig, PretrainConfig, RunOptions};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use tch::Device;

/// Options of one invocation.
#[derive(Clone, Debug)]
pub struct PipelineOptions {
    /// The run folder.
    pub out: PathBuf,
    /// The device of every stage.
    pub device: Device,
    /// Draw progress bars on stderr.
    pub progress: bool,
    /// Raised by the binary's signal handlers: the running stage stops at its next safe point.
    pub cancel: Cancel,
    /// The job's process group when several processes run the pipeline together: every
    /// training stage and the search run data-parallel, rank 0 writes the stage records, the
    /// synthetic data and the report.
    pub dist: Option<Arc<ProcessGroup>>,
    /// A stage whose configuration or inputs changed since it ran is run again (with every
    /// stage after it) instead of refused.
    pub rerun_changed: bool,
}

impl PipelineOptions {
    pub(crate) fn writer(&self) -> bool {
        self.dist.as_ref().is_none_or(|pg| pg.rank() == 0)
    }

    /// Waits for every rank (no-op for a single process).
    pub(crate) fn barrier(&self) -> Result<(), PipelineError> {
        if let Some(pg) = &self.dist {
            pg.barrier().map_err(detnas_train::TrainError::from)?;
        }
        Ok(())
    }
}

/// The file of a stage folder that records the stage's identity (what determines its
/// result: its resolved configuration and the identities of the stages it reads).
const IDENTITY_FILE: &str = "identity.json";

/// Runs stage `name` into `dir` unless it finished earlier, and records it (rank 0). Every
/// rank runs `run` (training and the search are collective); the ranks leave together.
///
/// `identity` (`Null`: not checked) is compared with the one the folder recorded when the
/// stage started: a stage that changed since is refused ([`PipelineError::StageChanged`],
/// naming the changed keys), or with `opts.rerun_changed` moved aside to `RUN/replaced/` and
/// run again into a fresh folder.
pub(crate) fn stage<T: Serialize + DeserializeOwned>(
    opts: &PipelineOptions,
    dir: &Path,
    name: &str,
    identity: &serde_json::Value,
    run: impl FnOnce() -> Result<T, PipelineError>,
) -> Result<T, PipelineError> {
    let id_path = dir.join(IDENTITY_FILE);
    let recorded: Option<serde_json::Value> =
        std::fs::read_to_string(&id_path).ok().and_then(|t| serde_json::from_str(&t).ok());
    if let Some(old) = recorded.filter(|old| !identity.is_null() && old != identity) {
        let keys = detnas_runtime::config::diff_keys(&old, identity);
        if !opts.rerun_changed {
            // Listed; the stage's recorded result lets the later ones be compared too.
            CHANGED.with(|c| c.borrow_mut().push(format!("stage {name} ({}): {}", dir.display(), keys.join("; "))));
            return finished::<T>(dir).map(|(_, r)| r).ok_or_else(changed_error);
        }
        if opts.writer() {
            move_aside(dir)?;
        }
        opts.barrier()?;
        tracing::warn!("stage {name} changed ({}): running it again", keys.join("; "));
    }
    if !identity.is_null() && opts.writer() {
        std::fs::create_dir_all(dir).map_err(|e| PipelineError::io(dir, e))?;
        write_json_atomic(&id_path, identity)?;
    }
    if let Some((_, r)) = finished::<T>(dir) {
        tracing::info!("stage {name}: finished earlier ({})", dir.display());
        return Ok(r);
    }
    // A stage to run after a changed one that is not to be redone: stop with the list.
    if CHANGED.with(|c| !c.borrow().is_empty()) {
        return Err(changed_error());
    }
    tracing::info!("stage {name}: running into {}", dir.display());
    let clock = crate::clock::SessionClock::start(dir, opts.writer());
    let meter = PeakMeter::start();
    detnas_dist::cuda_memory::reset_of(opts.device);
    let result = run()?;
    let memory = MemoryRecord { gpu_peak_mib: detnas_dist::cuda_memory::peak_of(opts.device), ..meter.finish() };
    let (seconds, sessions) = clock.finish();
    let rec =
        StageRecord { stage: name.to_string(), seconds, sessions, result, memory, machine: detnas_device::machine() };
    if opts.writer() {
        std::fs::create_dir_all(dir).map_err(|e| PipelineError::io(dir, e))?;
        write_json_atomic(&dir.join(STAGE_FILE), &rec)?;
    }
    opts.barrier()?;
    tracing::info!(
        "stage {name}: done in {:.1} s{}, peak resident memory {}",
        rec.seconds,
        if sessions > 1 { format!(" over {sessions} sessions") } else { String::new() },
        memory.peak_rss_mib.map_or("unknown".into(), |m| format!("{m:.0} MiB"))
    );
    Ok(rec.result)
}

thread_local! {
    /// The stages of this invocation found changed since they ran (without `--rerun-changed`).
    static CHANGED: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The refusal listing every changed stage found so far.
fn changed_error() -> PipelineError {
    let list = CHANGED.with(|c| c.borrow().join("\n  "));
    PipelineError::StageChanged(format!(
        "stages changed since they ran (their configuration or the stages they read):\n  {list}\nRun again with \
         --rerun-changed to redo them in fresh folders (the old ones move to RUN/replaced/), or use another --out"
    ))
}

/// `RUN/replaced/`, where the folders of changed stages go.
fn replaced_dir(dir: &Path) -> PathBuf {
    dir.parent().unwrap_or(dir).join("replaced")
}

/// Moves stage folder `dir` to `RUN/replaced/<stage>-<n>` (the first free `n`) and forgets
/// its sessions.
fn move_aside(dir: &Path) -> Result<(), PipelineError> {
    let to_dir = replaced_dir(dir);
    std::fs::create_dir_all(&to_dir).map_err(|e| PipelineError::io(&to_dir, e))?;
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let to = (1..).map(|n| to_dir.join(format!("{name}-{n}"))).find(|p| !p.exists()).expect("a free name");
    std::fs::rename(dir, &to).map_err(|e| PipelineError::io(dir, e))?;
    crate::clock::forget(dir);
    tracing::info!("moved {} to {}", dir.display(), to.display());
    Ok(())
}

/// What a finished pipeline produced.
#[derive(Clone, Debug)]
pub struct PipelineOutcome {
    /// The DetNAS search's result.
    pub found: BestArch,
    /// The ClsNAS search's result, if run.
    pub clsnas: Option<BestArch>,
    /// The retrained architectures.
    pub retrained: Vec<Retrained>,
    /// Wall time, seconds.
    pub seconds: f64,
}

pub(crate) fn runtime_overrides(cfg: &PipelineConfig, device: Device) -> Vec<String> {
    let d = match device {
        Device::Cuda(i) => format!("cuda:{i}"),
        _ => "cpu".into(),
    };
    let mut o = vec![format!("runtime.device=\"{d}\"")];
    if let Some(t) = cfg.threads {
        o.push(format!("runtime.threads={t}"));
    }
    o
}

/// The classification training of `arch` from scratch (`retrain.mode = "scratch"`): the
/// pre-training config with `retrain.cls_set`, `cls_extra` and `ro`, one fixed path, no MACs
/// limit and no warm start, the run's seed added.
///
/// # Errors
/// A config that does not load or check.
pub(crate) fn scratch_cls_config(
    cfg: &PipelineConfig,
    arch: &str,
    cls_extra: &[String],
    ro: &[String],
) -> Result<PretrainConfig, PipelineError> {
    // The warm start is cleared while loading: it is checked against the (shorter) run.
    let set: Vec<String> = with(&cfg.pretrain.set, &cfg.retrain.cls_set, cls_extra);
    let fixed = ["sampling.warm_start_steps=0".to_string()];
    let mut p = PretrainConfig::load(Some(&cfg.pretrain.config), &with(&set, &fixed, ro))?;
    p.seed = p.seed.wrapping_add(cfg.seed);
    p.sampling.kind = detnas_train::config::SamplingKind::Fixed;
    p.sampling.arch = Some(arch.to_string());
    p.sampling.max_backbone_macs = None;
    p.eval.final_paths = 1;
    p.check()?;
    Ok(p)
}

pub(crate) fn with(a: &[String], b: &[String], c: &[String]) -> Vec<String> {
    a.iter().chain(b).chain(c).cloned().collect()
}

/// The pre-trained supernet of the run: `pretrain.reuse`, else `RUN/pretrain`.
fn pretrained(cfg: &PipelineConfig, run: &Path) -> PathBuf {
    cfg.pretrain.reuse.clone().unwrap_or_else(|| dirs::pretrain(run))
}

fn finetune_config(
    cfg: &PipelineConfig,
    run: &Path,
    extra: &[String],
    ro: &[String],
) -> Result<FinetuneConfig, PipelineError> {
    let mut f = FinetuneConfig::load(&cfg.finetune.config, &with(&cfg.finetune.set, extra, ro))?;
    f.seed = f.seed.wrapping_add(cfg.seed);
    if let DetSource::Synthetic(SyntheticDetSource { folder, .. }) = &mut f.data.source {
        *folder = dirs::data(run);
    }
    Ok(f)
}

/// Trains `arch` stand-alone into `dir` with the pipeline's retraining protocol: with
/// `retrain.mode = "scratch"` classification from scratch into `dir/cls` first (the paper's
/// protocol), then detection into `dir/det` from those weights, or from the pre-trained
/// supernet's with `"inherit"`. `cls_extra` / `det_extra` apply after `retrain.cls_set` /
/// `retrain.det_set`; `run` is the (absolute) run folder.
///
/// # Errors
/// The first configuration or training error.
#[allow(clippy::too_many_arguments)]
pub(crate) fn retrain(
    cfg: &PipelineConfig,
    run: &Path,
    dir: &Path,
    label: &str,
    arch: &str,
    (cls_extra, det_extra): (&[String], &[String]),
    opts: &PipelineOptions,
    train_opts: &RunOptions,
) -> Result<Retrained, PipelineError> {
    let ro = runtime_overrides(cfg, opts.device);
    let (cls_cfg, mut f) = retrain_configs(cfg, run, arch, (cls_extra, det_extra), &ro)?;
    let cls = match &cls_cfg {
        Some(p) => Some(detnas_train::pretrain::run(p, &dir.join("cls"), opts.device, train_opts)?),
        None => None,
    };
    if cls.is_some() {
        f.model.pretrained = Some(dir.join("cls"));
    }
    let det = detnas_train::finetune::run(&f, &dir.join("det"), opts.device, train_opts)?;
    Ok(Retrained { label: label.to_string(), arch: arch.to_string(), cls, det })
}

/// The configurations of [`retrain`]: the classification from scratch (`retrain.mode =
/// "scratch"`) and the detection training of `arch`, which starts from the pre-trained
/// supernet (the retraining's own `cls/` replaces it after a classification from scratch).
///
/// # Errors
/// The first configuration that does not load or check.
pub(crate) fn retrain_configs(
    cfg: &PipelineConfig,
    run: &Path,
    arch: &str,
    (cls_extra, det_extra): (&[String], &[String]),
    ro: &[String],
) -> Result<(Option<PretrainConfig>, FinetuneConfig), PipelineError> {
    let cls = match cfg.retrain.mode {
        RetrainMode::Scratch => Some(scratch_cls_config(cfg, arch, cls_extra, ro)?),
        RetrainMode::Inherit => None,
    };
    let mut f = finetune_config(cfg, run, &with(&cfg.retrain.det_set, det_extra, &[]), ro)?;
    f.model.arch = Some(arch.to_string());
    f.model.pretrained = Some(pretrained(cfg, run));
    f.check()?;
    Ok((cls, f))
}

/// Fine-tunes the pre-trained supernet of `run` path-wise into `dir` with the pipeline's
/// fine-tuning config; its seed is the config's plus the run's plus `seed_offset` (0 for the
/// pipeline's own fine-tuning).
///
/// # Errors
/// The first configuration or training error.
pub(crate) fn finetune_supernet(
    cfg: &PipelineConfig,
    run: &Path,
    dir: &Path,
    seed_offset: u64,
    opts: &PipelineOptions,
    train_opts: &RunOptions,
) -> Result<FinetuneSummary, PipelineError> {
    let f = finetune_supernet_config(cfg, run, seed_offset, &runtime_overrides(cfg, opts.device))?;
    Ok(detnas_train::finetune::run(&f, dir, opts.device, train_opts)?)
}

/// The configuration of [`finetune_supernet`].
///
/// # Errors
/// The first configuration error.
pub(crate) fn finetune_supernet_config(
    cfg: &PipelineConfig,
    run: &Path,
    seed_offset: u64,
    ro: &[String],
) -> Result<FinetuneConfig, PipelineError> {
    let mut f = finetune_config(cfg, run, &[], ro)?;
    f.seed = f.seed.wrapping_add(seed_offset);
    f.model.pretrained = Some(pretrained(cfg, run));
    f.check()?;
    Ok(f)
}

/// Loads and checks every stage configuration the pipeline of `cfg` will run (pre-training,
/// fine-tuning, both searches, the retraining's classification and detection configs), with
/// the pipeline's overrides, before anything is written: a bad value in any of them is
/// refused before the first step. `run` is the run folder (it need not exist).
///
/// # Errors
/// The first stage configuration that does not load or check, named by its stage.
pub fn check_stages(cfg: &PipelineConfig, run: &Path, device: Device) -> Result<(), PipelineError> {
    let ro = runtime_overrides(cfg, device);
    let named = |stage: &str, path: &Path, e: PipelineError| -> PipelineError {
        match e.exit_code() {
            2 => PipelineError::Config(format!("stage {stage} ({}): {e}", path.display())),
            _ => e,
        }
    };
    let pre = PretrainConfig::load(Some(&cfg.pretrain.config), &with(&cfg.pretrain.set, &[], &ro))
        .map_err(|e| named("pretrain", &cfg.pretrain.config, e.into()))?;
    let ft = finetune_config(cfg, run, &[], &ro).map_err(|e| named("finetune", &cfg.finetune.config, e))?;
    if let Some(reused) = &cfg.pretrain.reuse {
        let path = reused.join("config.toml");
        let text = std::fs::read_to_string(&path).map_err(|e| PipelineError::io(&path, e))?;
        let theirs: PretrainConfig = toml::from_str(&text)
            .map_err(|e| PipelineError::Config(format!("pretrain.reuse: {}: {e}", path.display())))?;
        // The same network, wherever its space file lies.
        let shape = |s: &detnas_space::SearchSpace| {
            (s.stem, s.widths.clone(), s.depths.clone(), s.last_conv, s.choices.clone(), s.shuffle)
        };
        let (mine, other) = (pre.space()?, theirs.space()?);
        if shape(&mine) != shape(&other) {
            return Err(PipelineError::Config(format!(
                "pretrain.reuse: {} pre-trained the space {} (stem {}, widths {:?}, depths {:?}); the pre-training config {} names {} (stem {}, widths {:?}, depths {:?})",
                reused.display(),
                other.name,
                other.stem,
                other.widths,
                other.depths,
                cfg.pretrain.config.display(),
                mine.name,
                mine.stem,
                mine.widths,
                mine.depths
            )));
        }
    }
    // The data every stage reads exists (a typo is found in seconds, not after pre-training).
    let missing: Vec<String> = [("pretrain", &cfg.pretrain.config, pre.data.source.paths())]
        .into_iter()
        .chain([("finetune", &cfg.finetune.config, ft.data.source.paths())])
        .flat_map(|(stage, file, paths)| {
            paths.into_iter().filter(|(_, p)| !p.exists()).map(move |(key, p)| {
                format!("stage {stage} ({}): data.source.{key}: {} does not exist", file.display(), p.display())
            })
        })
        .collect();
    if !missing.is_empty() {
        return Err(PipelineError::Config(missing.join("\n")));
    }
    // The fine-tuning's splits open (annotations, classes, the search-validation carve) and
    // their images decode; a synthetic set is generated later and checked by its rules.
    if !matches!(ft.data.source, DetSource::Synthetic(_)) {
        let splits = detnas_train::finetune::open_splits(&ft, run)
            .map_err(|e| PipelineError::Config(format!("stage finetune ({}): {e}", cfg.finetune.config.display())))?;
        // Every image decoded (`runtime.decode_check`): a broken file, or a size that differs
        // from its annotation, is reported now rather than after pre-training (training skips
        // such images).
        if ft.runtime.decode_check {
            detnas_train::finetune::decode_check(&splits);
        }
    }
    let search = SearchConfig::load(&cfg.search.config, &with(&cfg.search.set, &[], &ro))
        .map_err(|e| named("search", &cfg.search.config, e.into()))?;
    // The limits are counted at a size some stage uses: the classification convention of the
    // paper (224×224) or the detection test size.
    let [h, w] = search.constraint.input;
    let side = u64::from(ft.data.test_min_size);
    let limited = search.constraint.max_backbone_macs.is_some() || search.constraint.max_latency_ms.is_some();
    if limited && [h, w] != [224, 224] && h.min(w) != side {
        return Err(PipelineError::Config(format!(
            "stage search ({}): constraint.input = [{h}, {w}] is neither the classification convention [224, 224] nor \
             the fine-tuning's test size (data.test_min_size = {side} in {}): the limits would be counted at a size no \
             stage uses; set constraint.input = [{side}, {side}] and scale max_backbone_macs with the pixel count",
            cfg.search.config.display(),
            cfg.finetune.config.display()
        )));
    }
    // Some architecture of the pre-trained space meets the search's limits.
    search.constraint.constraint().check_satisfiable(&pre.space()?, &search.constraint.cost_model()).map_err(|e| {
        PipelineError::Config(format!("stage search ({}): [constraint]: {e}", cfg.search.config.display()))
    })?;
    if cfg.baselines.clsnas {
        SearchConfig::load(&cfg.search.config, &with(&cfg.search.set, &cfg.baselines.clsnas_set, &ro))
            .map_err(|e| named("search-cls (baselines.clsnas_set)", &cfg.search.config, e.into()))?;
    }
    if cfg.baselines.zero_cost {
        let z = zero_cost_search_config(cfg, &pre, &ro)
            .map_err(|e| named("search-zero-cost (baselines.zero_cost)", &cfg.search.config, e))?;
        detnas_search::fitness::SupernetInfo::open(&z)
            .map_err(|e| named("search-zero-cost (baselines.zero_cost)", &cfg.search.config, e.into()))?;
    }
    // The retraining of any architecture: one uniform path stands for the one found.
    let space = pre.space()?;
    let arch = detnas_space::Arch::uniform(space.allowed()[0], space.num_blocks()).to_string();
    if cfg.retrain.mode == RetrainMode::Scratch {
        scratch_cls_config(cfg, &arch, &[], &ro)
            .map_err(|e| named("retrain (retrain.cls_set)", &cfg.pretrain.config, e))?;
    }
    let mut f = finetune_config(cfg, run, &cfg.retrain.det_set, &ro)
        .map_err(|e| named("retrain (retrain.det_set)", &cfg.finetune.config, e))?;
    f.model.arch = Some(arch);
    f.check().map_err(|e| named("retrain (retrain.det_set)", &cfg.finetune.config, e.into()))?;
    Ok(())
}

/// Runs (or resumes) the stages of `cfg` into `opts.out` (the report is written by
/// [`crate::run`]).
///
/// # Errors
/// [`PipelineError::Config`] when `opts.out` holds another pipeline configuration;
/// [`PipelineError::Io`] when it cannot be created; otherwise the first error of a stage (its
/// configuration, training, search or record).
///
/// # Panics
/// Never: a configuration always serialises.
pub fn run(cfg: &PipelineConfig, opts: &PipelineOptions) -> Result<PipelineOutcome, PipelineError> {
    let started = Instant::now();
    let planned = std::path::absolute(&opts.out).map_err(|e| PipelineError::io(&opts.out, e))?;
    check_stages(cfg, &planned, opts.device)?;
    std::fs::create_dir_all(&opts.out).map_err(|e| PipelineError::io(&opts.out, e))?;
    // Absolute: stage configs carry these paths, and a relative synthetic-data folder would be
    // taken relative to each stage's own run folder.
    let run_abs = std::fs::canonicalize(&opts.out).map_err(|e| PipelineError::io(&opts.out, e))?;
    let run = run_abs.as_path();

    // Record the configuration. Another one may replace it: each stage checks its own
    // identity, and a refused change puts the old one back.
    let text = toml::to_string(cfg).expect("serialisable");
    let cfg_path = run.join("pipeline.toml");
    let previous = std::fs::read_to_string(&cfg_path).ok().filter(|old| *old != text);
    if opts.writer() && (previous.is_some() || !cfg_path.exists()) {
        write_atomic(&cfg_path, text.as_bytes())?;
    }
    opts.barrier()?;
    CHANGED.with(|c| c.borrow_mut().clear());
    let mut result = run_stages(cfg, opts, run, started);
    if result.is_ok() && CHANGED.with(|c| !c.borrow().is_empty()) {
        result = Err(changed_error());
    }
    CHANGED.with(|c| c.borrow_mut().clear());
    if let (Err(PipelineError::StageChanged(_)), Some(old)) = (&result, &previous)
        && opts.writer()
    {
        write_atomic(&cfg_path, old.as_bytes())?;
    }
    result
}

/// The stages of [`run`], in order, into the (absolute) run folder `run`.
fn run_stages(
    cfg: &PipelineConfig,
    opts: &PipelineOptions,
    run: &Path,
    started: Instant,
) -> Result<PipelineOutcome, PipelineError> {
    let ro = runtime_overrides(cfg, opts.device);
    let progress = opts.progress;

    let ft_base = finetune_config(cfg, run, &[], &ro)?;
    let id_data = match &ft_base.data.source {
        DetSource::Synthetic(s) => serde_json::json!({ "synthetic": s }),
        _ => serde_json::json!({ "synthetic": null }),
    };
    stage(opts, &dirs::data(run), "data", &id_data, || {
        if let DetSource::Synthetic(SyntheticDetSource { train, test, .. }) = &ft_base.data.source
            && opts.writer()
        {
            let a: DetDataset = train.write(&dirs::data(run).join("train"))?;
            let b: DetDataset = test.write(&dirs::data(run).join("test"))?;
            Ok(serde_json::json!({"train_images": a.len(), "test_images": b.len()}))
        } else {
            Ok(serde_json::json!({"synthetic": false}))
        }
    })?;

    let mut pre_cfg = PretrainConfig::load(Some(&cfg.pretrain.config), &with(&cfg.pretrain.set, &[], &ro))?;
    pre_cfg.seed = pre_cfg.seed.wrapping_add(cfg.seed);
    let train_opts =
        RunOptions { progress, cancel: opts.cancel.clone(), dist: opts.dist.clone(), ..RunOptions::default() };
    let id_pre = match &cfg.pretrain.reuse {
        Some(r) => serde_json::json!({ "reuse": r }),
        None => serde_json::json!({ "config": pre_cfg.result_parts() }),
    };
    stage(opts, &dirs::pretrain(run), "pretrain", &id_pre, || match &cfg.pretrain.reuse {
        Some(reused) => {
            tracing::info!("stage pretrain: reusing the finished pre-training {}", reused.display());
            let path = reused.join("summary.json");
            let text = std::fs::read_to_string(&path).map_err(|e| PipelineError::io(&path, e))?;
            let summary: detnas_train::pretrain::Summary = serde_json::from_str(&text)
                .map_err(|e| PipelineError::Config(format!("pretrain.reuse: {}: {e}", path.display())))?;
            Ok(summary)
        }
        None => Ok(detnas_train::pretrain::run(&pre_cfg, &dirs::pretrain(run), opts.device, &train_opts)?),
    })?;

    let ft_cfg = finetune_supernet_config(cfg, run, 0, &ro)?;
    let id_ft = serde_json::json!({ "config": ft_cfg.result_parts(), "pretrain": id_pre });
    stage(opts, &dirs::finetune(run), "finetune", &id_ft, || {
        finetune_supernet(cfg, run, &dirs::finetune(run), 0, opts, &train_opts)
    })?;

    let id_grid = serde_json::json!({ "finetune": id_ft });
    stage(opts, &dirs::baseline_grid(run), "baseline-grid", &id_grid, || {
        grid_baseline(&ft_base, &dirs::finetune(run))
    })?;

    let (workers, threads_per_worker) =
        detnas_search::run::default_workers(&[opts.device], cfg.threads.unwrap_or_else(tch::get_num_threads));
    let search_opts = |out: PathBuf| SearchOptions {
        out,
        devices: vec![opts.device],
        workers,
        threads_per_worker,
        progress,
        cancel: opts.cancel.clone(),
        dist: opts.dist.clone(),
    };
    let mut scfg = SearchConfig::load(&cfg.search.config, &with(&cfg.search.set, &[], &ro))?;
    scfg.supernet.checkpoint = dirs::finetune(run);
    scfg.seed = scfg.seed.wrapping_add(cfg.seed);
    scfg.supernet.fitness = FitnessKind::Det;
    // Latency of every candidate for the report: measured once into the search folder.
    if scfg.constraint.latency_table.is_none() {
        scfg.constraint.latency_table = Some(dirs::search(run).join("latency-table.json"));
    }
    let id_search = serde_json::json!({ "config": scfg.result_parts(), "finetune": id_ft });
    let found: BestArch = stage(opts, &dirs::search(run), "search", &id_search, || {
        Ok(detnas_search::search(&scfg, &search_opts(dirs::search(run)))?.best)
    })?;

    let mut id_cls = serde_json::Value::Null;
    let clsnas: Option<BestArch> = if cfg.baselines.clsnas {
        let mut c = SearchConfig::load(&cfg.search.config, &with(&cfg.search.set, &cfg.baselines.clsnas_set, &ro))?;
        c.supernet.checkpoint = pretrained(cfg, run);
        c.seed = c.seed.wrapping_add(cfg.seed);
        c.supernet.fitness = FitnessKind::Cls;
        c.runtime.reuse.clear();
        id_cls = serde_json::json!({ "config": c.result_parts(), "pretrain": id_pre });
        Some(stage(opts, &dirs::search_cls(run), "search-cls", &id_cls, || {
            Ok(detnas_search::search(&c, &search_opts(dirs::search_cls(run)))?.best)
        })?)
    } else {
        None
    };

    // The zero-cost baseline: the same search with the training-free fitness, no supernet.
    let mut id_zero = serde_json::Value::Null;
    let zero_cost: Option<BestArch> = if cfg.baselines.zero_cost {
        let z = zero_cost_search_config(cfg, &pre_cfg, &ro)?;
        id_zero = serde_json::json!({ "config": z.result_parts() });
        Some(stage(opts, &dirs::search_zero_cost(run), "search-zero-cost", &id_zero, || {
            Ok(detnas_search::search(&z, &search_opts(dirs::search_zero_cost(run)))?.best)
        })?)
    } else {
        None
    };

    let space = pre_cfg.space()?;
    let mut archs = vec![("found".to_string(), found.arch.clone())];
    if cfg.baselines.random {
        let arch = sample_constrained(
            &space,
            &scfg.constraint.constraint(),
            &scfg.constraint.cost_model(),
            1_000_000,
            &mut seeded(mix_seed(cfg.seed, &[detnas_data::streams::RANDOM_BASELINE])),
        )?;
        archs.push(("random".into(), arch.to_string()));
    }
    if let Some(c) = &clsnas {
        archs.push(("clsnas".into(), c.arch.clone()));
    }
    if let Some(z) = &zero_cost {
        archs.push(("zero-cost".into(), z.arch.clone()));
    }

    let mut retrained = Vec::new();
    for (label, arch) in archs {
        let dir = dirs::retrain(run, &label);
        let (cls_cfg, det_cfg) = retrain_configs(cfg, run, &arch, (&[], &[]), &ro)?;
        let upstream = match label.as_str() {
            "found" => id_search.clone(),
            "clsnas" => id_cls.clone(),
            "zero-cost" => id_zero.clone(),
            _ => serde_json::json!({ "pretrain": id_pre }),
        };
        let id_retrain = serde_json::json!({
            "arch": arch,
            "cls": cls_cfg.as_ref().map(ConfigDocument::result_parts),
            "det": det_cfg.result_parts(),
            "upstream": upstream,
        });
        let r: Retrained = stage(opts, &dir, &format!("retrain-{label}"), &id_retrain, || {
            retrain(cfg, run, &dir, &label, &arch, (&[], &[]), opts, &train_opts)
        })?;
        retrained.push(r);
    }
    Ok(PipelineOutcome { found, clsnas, retrained, seconds: started.elapsed().as_secs_f64() })
}

/// The zero-cost baseline's search: the pipeline's search config (strategy, limits, seed)
/// with `fitness = "entropy"` on the pre-training's space, no checkpoint, no latency table
/// (the DetNAS search's limits are MACs and params; a latency limit is refused).
///
/// # Errors
/// As [`SearchConfig::load`]; [`PipelineError::Config`] for a latency limit.
fn zero_cost_search_config(
    cfg: &PipelineConfig,
    pre: &PretrainConfig,
    ro: &[String],
) -> Result<SearchConfig, PipelineError> {
    let mut z = SearchConfig::load(&cfg.search.config, &with(&cfg.search.set, &[], ro))?;
    if z.constraint.max_latency_ms.is_some() {
        return Err(PipelineError::Config(format!(
            "baselines.zero_cost: {} limits latency, which the zero-cost search cannot measure without the \
             search's latency table; limit MACs or params instead",
            cfg.search.config.display()
        )));
    }
    z.seed = z.seed.wrapping_add(cfg.seed);
    z.supernet = detnas_search::config::SupernetRef {
        checkpoint: PathBuf::new(),
        fitness: FitnessKind::Entropy,
        space: Some(pre.model.space.clone()),
        width_mult: Some(pre.model.width_mult),
    };
    z.constraint.latency_table = None;
    z.runtime.reuse.clear();
    Ok(z)
}

/// The trivial grid detector fitted to the fine-tuning's training split and scored on its
/// test and search-validation splits (annotations only; no image is read).
fn grid_baseline(ft: &FinetuneConfig, finetune_dir: &Path) -> Result<GridRecord, PipelineError> {
    use detnas_detect::baseline::GridBaseline;
    let splits = detnas_train::finetune::splits::open_splits(ft, finetune_dir)?;
    let counts = |d: &DetDataset| SplitCounts {
        images: d.len(),
        boxes: d.images.iter().map(|i| i.objects.iter().filter(|o| !o.crowd).count()).sum(),
    };
    let grid = GridBaseline::fit(&splits.train);
    let carved = !splits.search_val.images.is_empty();
    let score = |d: &DetDataset| grid.map(|g| g.score(d).map_err(detnas_train::TrainError::from)).transpose();
    Ok(GridRecord {
        grid,
        test: score(&splits.test)?,
        search_val: if carved { score(&splits.search_val)? } else { None },
        test_counts: counts(&splits.test),
        search_val_counts: carved.then(|| counts(&splits.search_val)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_retrains_from_scratch_without_its_warm_start() {
        let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../configs/demo/pipeline.toml");
        let mut cfg = PipelineConfig::load(&root, &[]).unwrap();
        cfg.retrain.mode = RetrainMode::Scratch;
        let supernet = PretrainConfig::load(Some(&cfg.pretrain.config), &cfg.pretrain.set).unwrap();
        assert!(supernet.sampling.warm_start_steps > 0, "the demo pre-training has a warm start");
        let p = scratch_cls_config(&cfg, "01230", &[], &[]).unwrap();
        assert_eq!(p.sampling.warm_start_steps, 0);
        assert_eq!(p.sampling.kind, detnas_train::config::SamplingKind::Fixed);
        assert_eq!(p.sampling.arch.as_deref(), Some("01230"));
        assert_eq!(p.schedule.iterations, 800, "retrain.cls_set applies");
    }

    #[test]
    fn a_bad_value_in_any_stage_is_refused_before_anything_is_written() {
        let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../configs/demo/pipeline.toml");
        let out = std::env::temp_dir().join(format!("detnas-preflight-{}", std::process::id()));
        for (key, set, stage) in [
            ("finetune.set", "detector.head.focal_gamma=-1.0", "stage finetune"),
            ("search.set", "strategy.mutation_prob=2.0", "stage search"),
            ("pretrain.set", "schedule.lr=0", "stage pretrain"),
            ("baselines.clsnas_set", "eval.batch=0", "stage search-cls"),
            ("retrain.det_set", "detector.head.fg_iou=1.5", "stage retrain (retrain.det_set)"),
            ("retrain.cls_set", "data.scale_min=0", "stage retrain (retrain.cls_set)"),
        ] {
            let mut cfg = PipelineConfig::load(&root, &[]).unwrap();
            cfg.retrain.mode = RetrainMode::Scratch;
            match key {
                "finetune.set" => cfg.finetune.set.push(set.into()),
                "search.set" => cfg.search.set.push(set.into()),
                "pretrain.set" => cfg.pretrain.set.push(set.into()),
                "baselines.clsnas_set" => cfg.baselines.clsnas_set.push(set.into()),
                "retrain.det_set" => cfg.retrain.det_set.push(set.into()),
                _ => cfg.retrain.cls_set.push(set.into()),
            }
            let e = check_stages(&cfg, &out, Device::Cpu).unwrap_err();
            let m = e.to_string();
            let k = set.split('=').next().unwrap();
            assert!(m.contains(stage) && m.contains(k) && m.contains(&format!("--set {set}")), "{key}: {m}");
            assert_eq!(e.exit_code(), 2, "{m}");
            if key == "finetune.set" {
                let opts = PipelineOptions {
                    out: out.clone(),
                    device: Device::Cpu,
                    progress: false,
                    cancel: Cancel::new(),
                    dist: None,
                    rerun_changed: false,
                };
                assert_eq!(run(&cfg, &opts).unwrap_err().to_string(), m);
                assert!(!out.exists(), "the run folder was created");
            }
        }
        // In the demo's mode (inherit) the classification retraining does not run.
        let mut cfg = PipelineConfig::load(&root, &[]).unwrap();
        cfg.retrain.cls_set.push("data.scale_min=0".into());
        assert_eq!(cfg.retrain.mode, RetrainMode::Inherit);
        check_stages(&cfg, &out, Device::Cpu).unwrap();
    }

    /// Data a stage would read that does not exist, and limits no architecture meets, are
    /// refused before anything runs, naming the stage, the key and the file.
    #[test]
    fn missing_data_and_unsatisfiable_limits_are_refused_before_anything_runs() {
        let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../configs/demo/pipeline.toml");
        let out = std::env::temp_dir().join(format!("detnas-preflight-data-{}", std::process::id()));
        let mut cfg = PipelineConfig::load(&root, &[]).unwrap();
        cfg.finetune.set.push(
            "data.source={ kind = \"coco\", train_json = \"/no/such/train.json\", train_images = \"/no/such/train\", \
             test_json = \"/no/such/test.json\", test_images = \"/no/such/test\" }"
                .into(),
        );
        let m = check_stages(&cfg, &out, Device::Cpu).unwrap_err().to_string();
        for needle in
            ["stage finetune", "finetune-retinanet.toml", "data.source.train_json: /no/such/train.json does not exist"]
        {
            assert!(m.contains(needle), "{needle}: {m}");
        }
        assert_eq!(m.lines().count(), 4, "{m}");
        let mut cfg = PipelineConfig::load(&root, &[]).unwrap();
        cfg.search.set.push("constraint.max_backbone_macs=\"1k\"".into());
        let e = check_stages(&cfg, &out, Device::Cpu).unwrap_err();
        let m = e.to_string();
        assert!(
            m.contains("stage search") && m.contains("[constraint]") && m.contains("backbone MACs <= 1.00k"),
            "{m}"
        );
        assert_eq!(e.exit_code(), 2);
        assert!(!out.exists());
    }
}
