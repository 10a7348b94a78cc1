//! What `detnas export` reads ([`Source::resolve`]) and the child checkpoint holding the
//! weights its evaluation scores ([`scored_checkpoint`]).

use crate::PipelineError;
use crate::layout::{self as dirs, Retrained, finished};
use detnas_runtime::checkpoint::resolve;
use detnas_space::{Arch, SearchSpace};
use std::path::{Path, PathBuf};

/// What an export reads: a child detector's checkpoint, or a supernet's and the path taken.
#[derive(Clone, Debug)]
pub struct Source {
    /// The fine-tuning checkpoint (`step-N` folder).
    pub checkpoint: PathBuf,
    /// The architecture exported.
    pub arch: Arch,
    /// Its space.
    pub space: SearchSpace,
    /// Whether `checkpoint` trained this child alone (else it is a supernet's).
    pub retrained: bool,
    /// The search that found `arch`, when it came from one.
    pub best: Option<detnas_search::BestArch>,
}

/// The kinds of folder `detnas export` reads, for error messages.
pub const SOURCE_KINDS: &str = "a pipeline run (its retrained found architecture), a retraining folder \
     (RUN/retrain-NAME) or fine-tuning run of a fixed architecture, a supernet fine-tuning folder (RUN/finetune \
     or a detnas finetune run; with --arch outside a run) or a detection search folder (RUN/search)";

impl Source {
    /// What `src` holds (module docs); `arch` picks the path of a supernet.
    ///
    /// # Errors
    /// [`PipelineError::Config`] for a folder of none of the [`SOURCE_KINDS`], a run whose found
    /// architecture is not retrained yet, a ClsNAS search, `arch` given for a fixed child, or
    /// a supernet without `arch` outside a run with a finished search; the errors of reading
    /// the records, the checkpoint's metadata or parsing `arch`.
    pub fn resolve(src: &Path, arch: Option<&str>) -> Result<Source, PipelineError> {
        let refuse = |why: String| {
            PipelineError::Config(format!("{}: {why}; detnas export reads {SOURCE_KINDS}", src.display()))
        };
        if src.join("pipeline.toml").is_file() {
            if arch.is_some() {
                return Source::resolve(&dirs::finetune(src), arch);
            }
            let (_, r) = finished::<Retrained>(&dirs::retrain(src, "found")).ok_or_else(|| {
                refuse("the found architecture is not retrained yet (export RUN/search for it with the supernet's weights)".into())
            })?;
            let best = detnas_search::run::read_best(&dirs::search(src))?;
            let (_, checkpoint) = resolve(&dirs::retrain(src, "found").join("det"))?;
            let arch = best.space.parse_arch(&r.arch)?;
            return Ok(Source { checkpoint, arch, space: best.space.clone(), retrained: true, best: Some(best) });
        }
        if src.join("config.toml").is_file() && src.join("ledger.jsonl").is_file() {
            let cfg = detnas_search::SearchConfig::load(&src.join("config.toml"), &[])?;
            match cfg.supernet.fitness {
                detnas_search::config::FitnessKind::Det => {}
                detnas_search::config::FitnessKind::Cls => {
                    return Err(refuse(
                        "a ClsNAS search scored a classification supernet, which has no detector".into(),
                    ));
                }
                detnas_search::config::FitnessKind::Entropy | detnas_search::config::FitnessKind::Naswot => {
                    return Err(refuse(
                        "a zero-cost search scored architectures at initialisation, with no trained detector (export \
                         its retraining, RUN/retrain-zero-cost)"
                            .into(),
                    ));
                }
            }
            let best = detnas_search::run::read_best(src).ok();
            let chosen = arch.map(str::to_string).or_else(|| best.as_ref().map(|b| b.arch.clone()));
            let chosen = chosen.ok_or_else(|| refuse("the search has not finished: give --arch".into()))?;
            let (_, checkpoint) = resolve(&cfg.supernet.checkpoint)?;
            return Source::of_checkpoint(checkpoint, Some(&chosen), best.filter(|b| b.arch == chosen));
        }
        let Ok((_, checkpoint)) = detnas_train::checkpoint::resolve_run(src, "det") else {
            return Err(refuse("not a folder of a kind it exports".into()));
        };
        // A supernet fine-tuning inside a run: its search's found architecture by default.
        let best = src.parent().and_then(|run| detnas_search::run::read_best(&dirs::search(run)).ok());
        let chosen = arch.map(str::to_string).or_else(|| best.as_ref().map(|b| b.arch.clone()));
        Source::of_checkpoint(checkpoint, chosen.as_deref(), best.filter(|b| Some(&b.arch) == chosen.as_ref()))
    }

    fn of_checkpoint(
        checkpoint: PathBuf,
        arch: Option<&str>,
        best: Option<detnas_search::BestArch>,
    ) -> Result<Source, PipelineError> {
        let (cfg, state) = detnas_train::finetune::read_meta(&checkpoint)?;
        let space = state.space;
        match (&cfg.model.arch, arch) {
            (Some(fixed), Some(a)) if fixed != a => Err(PipelineError::Config(format!(
                "{}: a fine-tuning of the fixed architecture {fixed}, not of a supernet: --arch {a} does not apply",
                checkpoint.display()
            ))),
            (Some(fixed), _) => Ok(Source { checkpoint, arch: space.parse_arch(fixed)?, space, retrained: true, best }),
            (None, Some(a)) => Ok(Source { checkpoint, arch: space.parse_arch(a)?, space, retrained: false, best }),
            (None, None) => Err(PipelineError::Config(format!(
                "{}: a supernet fine-tuning: give the path to export with --arch",
                checkpoint.display()
            ))),
        }
    }
}

/// Where an exported child's weights come from.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Weights {
    /// Whether the child was trained alone; else its weights are a supernet's path.
    pub retrained: bool,
    /// The supernet fine-tuning checkpoint, when not retrained.
    pub supernet: Option<PathBuf>,
    /// Training images its BN statistics were recomputed on before export (0: kept).
    pub bn_recalibration_images: usize,
}

/// The child checkpoint that holds the weights the source's evaluation scores: a retrained
/// child's own checkpoint when its evaluation keeps its BN statistics
/// (`eval.recalibrate_images` 0, the default for a fixed architecture); otherwise a new one
/// written into `dir/checkpoints/step-N` with the BN statistics recomputed as the evaluation
/// (and the search) recomputes them, on the fine-tuning's recalibration set; for a supernet,
/// the path's variables copied out ([`detnas_nn::net::supernet_name`]) and the
/// configuration's `model.arch` set. Returns the checkpoint and the number of images.
///
/// # Errors
/// As [`detnas_train::finetune::OpenedDetector::open`] and its recalibration (the training
/// data must be readable); [`PipelineError::Config`] when a child variable has no supernet
/// counterpart of its shape.
pub fn scored_checkpoint(source: &Source, dir: &Path) -> Result<(PathBuf, usize), PipelineError> {
    use detnas_train::finetune::{OpenedDetector, build_detector};
    let (ckpt, arch) = (&source.checkpoint, &source.arch);
    let device = tch::Device::Cpu;
    let opened = OpenedDetector::open(ckpt, device)?;
    let n = opened.config.eval.recalibrate_images(source.retrained);
    if source.retrained && n == 0 {
        return Ok((ckpt.clone(), 0));
    }
    let splits = opened.splits()?;
    let settings = opened.config.eval_settings();
    let path = (!source.retrained).then_some(arch);
    opened.recalibrate(&splits, path, n, &settings, opened.config.eval.bn_mode.into(), device)?;
    let mut cfg = opened.config.clone();
    cfg.model.arch = Some(arch.to_string());
    let child = if source.retrained {
        opened.vs
    } else {
        let (child, _, _) = build_detector(&cfg, &opened.state.space, opened.state.task.categories.len(), device)?;
        let supernet = opened.vs.variables();
        for (name, mut var) in child.variables() {
            let from = detnas_nn::net::supernet_name(&name, arch)
                .ok()
                .and_then(|s| supernet.get(&s))
                .filter(|t| t.size() == var.size())
                .ok_or_else(|| {
                    PipelineError::Config(format!("{}: no supernet variable for child variable {name}", ckpt.display()))
                })?;
            tch::no_grad(|| var.copy_(from));
        }
        child
    };
    let toml = detnas_runtime::ConfigDocument::to_toml(&cfg);
    let state = opened.state.clone();
    let step = state.step;
    let written = detnas_runtime::checkpoint::save(
        &dir.join("checkpoints"),
        step,
        1,
        |tmp| {
            let fail = |e: String| detnas_runtime::RuntimeError::checkpoint(tmp, e);
            child.save(tmp.join("model.safetensors")).map_err(|e| fail(e.to_string()))?;
            let json = serde_json::to_string_pretty(&state).map_err(|e| fail(e.to_string()))?;
            std::fs::write(tmp.join("state.json"), json).map_err(|e| detnas_runtime::RuntimeError::io(tmp, e))?;
            std::fs::write(tmp.join("config.toml"), &toml).map_err(|e| detnas_runtime::RuntimeError::io(tmp, e))
        },
        || (),
    )?;
    Ok((written, n))
}
