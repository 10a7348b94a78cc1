//! `detnas run`: every DetNAS stage in order, each in its own folder of the run directory,
//! each marked complete (`stage.json`, written atomically) only after its outputs are fully
//! written. Re-running the same command skips finished stages and resumes the unfinished one
//! at its own checkpoint (training steps, search ledger).
//!
//! ```text
//! RUN/configs/          the pipeline and stage configs used (embedded demo: written here)
//! RUN/data/             the synthetic detection set (train/, test/), shared by all stages
//! RUN/pretrain/         supernet pre-training (classification, path-wise)
//! RUN/finetune/         supernet fine-tuning as the detector backbone (path-wise)
//! RUN/search/           evolutionary search, fitness = AP on the search-validation split
//! RUN/search-cls/       the ClsNAS baseline search, fitness = top-1 on the pre-trained supernet
//! RUN/retrain-NAME/     cls/ (from scratch, paper protocol) and det/ for found, random, clsnas
//! RUN/report/           report.md, report.html, plots (regenerable: detnas report RUN)
//! ```

use crate::PipelineError;
use crate::config::{PipelineConfig, RetrainMode};
use detnas_data::det::DetDataset;
use detnas_data::mix_seed;
use detnas_search::run::BestArch;
use detnas_search::{FitnessKind, SearchConfig, SearchOptions};
use detnas_space::rng::seeded;
use detnas_space::sample_constrained;
use detnas_train::checkpoint::write_atomic;
use detnas_train::det_config::DetSource;
use detnas_train::finetune::{FinetuneOptions, FinetuneSummary};
use detnas_train::pretrain::{RunOptions, Summary};
use detnas_train::{FinetuneConfig, PretrainConfig};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::Device;

const STAGE_FILE: &str = "stage.json";
const RANDOM_STREAM: u64 = 0x4A4D;

/// Options of one invocation.
#[derive(Clone, Debug)]
pub struct PipelineOptions {
    pub out: PathBuf,
    pub device: Device,
    pub progress: bool,
}

#[derive(Serialize, Deserialize)]
struct StageRecord<T> {
    stage: String,
    seconds: f64,
    result: T,
}

/// The marker of a finished stage, if any.
pub fn finished<T: DeserializeOwned>(dir: &Path) -> Option<(f64, T)> {
    let text = std::fs::read_to_string(dir.join(STAGE_FILE)).ok()?;
    let r: StageRecord<T> = serde_json::from_str(&text).ok()?;
    Some((r.seconds, r.result))
}

fn stage<T: Serialize + DeserializeOwned>(
    dir: &Path,
    name: &str,
    run: impl FnOnce() -> Result<T, PipelineError>,
) -> Result<T, PipelineError> {
    if let Some((_, r)) = finished::<T>(dir) {
        tracing::info!("stage {name}: finished earlier ({})", dir.display());
        return Ok(r);
    }
    tracing::info!("stage {name}: running into {}", dir.display());
    let t = Instant::now();
    let result = run()?;
    std::fs::create_dir_all(dir).map_err(|e| PipelineError::io(dir, e))?;
    let rec = StageRecord { stage: name.to_string(), seconds: t.elapsed().as_secs_f64(), result };
    write_atomic(&dir.join(STAGE_FILE), serde_json::to_string_pretty(&rec).expect("serialisable").as_bytes())?;
    tracing::info!("stage {name}: done in {:.1} s", rec.seconds);
    Ok(rec.result)
}

/// One retrained architecture.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Retrained {
    pub label: String,
    pub arch: String,
    pub cls: Option<Summary>,
    pub det: FinetuneSummary,
}

/// What a finished pipeline produced.
#[derive(Clone, Debug)]
pub struct PipelineOutcome {
    pub found: BestArch,
    pub clsnas: Option<BestArch>,
    pub retrained: Vec<Retrained>,
    pub seconds: f64,
}

fn runtime_overrides(cfg: &PipelineConfig, device: Device) -> Vec<String> {
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

fn with(a: &[String], b: &[String], c: &[String]) -> Vec<String> {
    a.iter().chain(b).chain(c).cloned().collect()
}

/// The folders of a run.
pub mod dirs {
    use std::path::{Path, PathBuf};
    pub fn data(run: &Path) -> PathBuf {
        run.join("data")
    }
    pub fn pretrain(run: &Path) -> PathBuf {
        run.join("pretrain")
    }
    pub fn finetune(run: &Path) -> PathBuf {
        run.join("finetune")
    }
    pub fn search(run: &Path) -> PathBuf {
        run.join("search")
    }
    pub fn search_cls(run: &Path) -> PathBuf {
        run.join("search-cls")
    }
    pub fn retrain(run: &Path, label: &str) -> PathBuf {
        run.join(format!("retrain-{label}"))
    }
    pub fn report(run: &Path) -> PathBuf {
        run.join("report")
    }
}

fn finetune_config(
    cfg: &PipelineConfig,
    run: &Path,
    extra: &[String],
    ro: &[String],
) -> Result<FinetuneConfig, PipelineError> {
    let mut f = FinetuneConfig::load(&cfg.finetune.config, &with(&cfg.finetune.set, extra, ro))?;
    if let DetSource::Synthetic { folder, .. } = &mut f.data.source {
        *folder = dirs::data(run);
    }
    Ok(f)
}

/// Runs (or resumes) the pipeline of `cfg` into `opts.out`.
pub fn run(cfg: &PipelineConfig, opts: &PipelineOptions) -> Result<PipelineOutcome, PipelineError> {
    let started = Instant::now();
    std::fs::create_dir_all(&opts.out).map_err(|e| PipelineError::io(&opts.out, e))?;
    // Absolute: stage configs carry these paths, and a relative synthetic-data folder would be
    // taken relative to each stage's own run folder.
    let run_abs = std::fs::canonicalize(&opts.out).map_err(|e| PipelineError::io(&opts.out, e))?;
    let run = run_abs.as_path();
    let ro = runtime_overrides(cfg, opts.device);
    let progress = opts.progress;

    // Record the configuration; another one in the same folder is refused.
    let text = toml::to_string(cfg).expect("serialisable");
    let cfg_path = run.join("pipeline.toml");
    match std::fs::read_to_string(&cfg_path) {
        Ok(old) if toml::from_str::<PipelineConfig>(&old).ok().as_ref() != Some(cfg) => {
            return Err(PipelineError::Config(format!(
                "{} holds another pipeline configuration; use another --out",
                cfg_path.display()
            )));
        }
        Ok(_) => {}
        Err(_) => write_atomic(&cfg_path, text.as_bytes())?,
    }

    let ft_base = finetune_config(cfg, run, &[], &ro)?;
    stage(&dirs::data(run), "data", || {
        if let DetSource::Synthetic { train, test, .. } = &ft_base.data.source {
            let a: DetDataset = train.write(&dirs::data(run).join("train"))?;
            let b: DetDataset = test.write(&dirs::data(run).join("test"))?;
            Ok(serde_json::json!({"train_images": a.len(), "test_images": b.len()}))
        } else {
            Ok(serde_json::json!({"synthetic": false}))
        }
    })?;

    let pre_cfg = PretrainConfig::load(Some(&cfg.pretrain.config), &with(&cfg.pretrain.set, &[], &ro))?;
    stage(&dirs::pretrain(run), "pretrain", || {
        Ok(detnas_train::pretrain::run(
            &pre_cfg,
            &dirs::pretrain(run),
            opts.device,
            &RunOptions { progress, ..RunOptions::default() },
        )?)
    })?;

    let mut ft = ft_base.clone();
    ft.model.pretrained = Some(dirs::pretrain(run));
    ft.check()?;
    stage(&dirs::finetune(run), "finetune", || {
        Ok(detnas_train::finetune::run(
            &ft,
            &dirs::finetune(run),
            opts.device,
            &FinetuneOptions { progress, ..FinetuneOptions::default() },
        )?)
    })?;

    let (workers, threads_per_worker) =
        detnas_search::run::default_workers(&[opts.device], cfg.threads.unwrap_or_else(tch::get_num_threads));
    let search_opts =
        |out: PathBuf| SearchOptions { out, devices: vec![opts.device], workers, threads_per_worker, progress };
    let mut scfg = SearchConfig::load(&cfg.search.config, &with(&cfg.search.set, &[], &ro))?;
    scfg.supernet.checkpoint = dirs::finetune(run);
    scfg.supernet.fitness = FitnessKind::Det;
    // Latency of every candidate for the report: measured once into the search folder.
    if scfg.constraint.latency_table.is_none() {
        scfg.constraint.latency_table = Some(dirs::search(run).join("latency-table.json"));
    }
    let found: BestArch =
        stage(
            &dirs::search(run),
            "search",
            || Ok(detnas_search::search(&scfg, &search_opts(dirs::search(run)))?.best),
        )?;

    let clsnas: Option<BestArch> = if cfg.baselines.clsnas {
        let mut c = SearchConfig::load(&cfg.search.config, &with(&cfg.search.set, &cfg.baselines.clsnas_set, &ro))?;
        c.supernet.checkpoint = dirs::pretrain(run);
        c.supernet.fitness = FitnessKind::Cls;
        c.runtime.reuse.clear();
        Some(stage(&dirs::search_cls(run), "search-cls", || {
            Ok(detnas_search::search(&c, &search_opts(dirs::search_cls(run)))?.best)
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
            &mut seeded(mix_seed(cfg.seed, &[RANDOM_STREAM])),
        )?;
        archs.push(("random".into(), arch.to_string()));
    }
    if let Some(c) = &clsnas {
        archs.push(("clsnas".into(), c.arch.clone()));
    }

    let mut retrained = Vec::new();
    for (label, arch) in archs {
        let dir = dirs::retrain(run, &label);
        let r: Retrained = stage(&dir, &format!("retrain-{label}"), || {
            let cls = match cfg.retrain.mode {
                RetrainMode::Scratch => {
                    let mut p = PretrainConfig::load(
                        Some(&cfg.pretrain.config),
                        &with(&cfg.pretrain.set, &cfg.retrain.cls_set, &ro),
                    )?;
                    p.sampling.kind = detnas_train::config::SamplingKind::Fixed;
                    p.sampling.arch = Some(arch.clone());
                    p.sampling.max_backbone_macs = None;
                    p.eval.final_paths = 1;
                    p.check()?;
                    Some(detnas_train::pretrain::run(
                        &p,
                        &dir.join("cls"),
                        opts.device,
                        &RunOptions { progress, ..RunOptions::default() },
                    )?)
                }
                RetrainMode::Inherit => None,
            };
            let mut f = finetune_config(cfg, run, &cfg.retrain.det_set, &ro)?;
            f.model.arch = Some(arch.clone());
            f.model.pretrained = Some(if cls.is_some() { dir.join("cls") } else { dirs::pretrain(run) });
            f.check()?;
            let det = detnas_train::finetune::run(
                &f,
                &dir.join("det"),
                opts.device,
                &FinetuneOptions { progress, ..FinetuneOptions::default() },
            )?;
            Ok(Retrained { label: label.clone(), arch: arch.clone(), cls, det })
        })?;
        retrained.push(r);
    }
    let outcome = PipelineOutcome { found, clsnas, retrained, seconds: started.elapsed().as_secs_f64() };
    crate::report::write(run)?;
    Ok(outcome)
}
