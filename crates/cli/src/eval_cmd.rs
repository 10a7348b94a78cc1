//! `detnas eval cls|det|coco`: top-1/top-5 of one path of a pre-trained supernet, box AP of
//! one path of a fine-tuned detector, and COCO evaluation of a results file.

use crate::Failure;
use crate::runtime::RuntimeArgs;
use clap::{Args, Subcommand, ValueEnum};
use detnas_detect::metrics::CocoStats;
use detnas_nn::BnMode;
use detnas_train::scoring::{DetSplit, ScoreSettings};
use serde_json::json;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum EvalCommand {
    /// Classification accuracy of one path on the validation split.
    Cls(ClsArgs),
    /// Box AP of one path of a fine-tuned detector (after BN recalibration).
    Det(DetArgs),
    /// COCO box AP of a results file against a ground-truth file (pycocotools-exact).
    Coco(CocoArgs),
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum SplitArg {
    /// The test split.
    Test,
    /// The search-validation split carved from the training set.
    SearchVal,
    /// The training images (after the carve): what the model fits.
    Train,
}

#[derive(Args)]
pub struct DetArgs {
    /// A fine-tuning checkpoint (step-N folder) or run folder.
    #[arg(long, required_unless_present = "search")]
    pub checkpoint: Option<PathBuf>,
    /// Reproduce a search's score: a search folder whose supernet, recalibration images,
    /// batch, BN mode, validation images, metric and CPU thread count are used, and whose
    /// ledger score of `--arch` is printed next to the new one.
    #[arg(long, conflicts_with_all = ["checkpoint", "data", "recalibrate_bn", "bn_mode", "batch", "dt_out"], requires = "arch")]
    pub search: Option<PathBuf>,
    /// The path to evaluate (ignored for a fixed-architecture checkpoint).
    #[arg(long)]
    pub arch: Option<String>,
    /// Which split.
    #[arg(long, value_enum, default_value_t = SplitArg::Test)]
    pub data: SplitArg,
    /// Recompute BN statistics on this many training images first (0: keep them). Default:
    /// the checkpoint's eval.recalibrate_images (1000 for a supernet's path, 0 for a fixed
    /// architecture), as its run scored itself.
    #[arg(long)]
    pub recalibrate_bn: Option<usize>,
    /// How recalibration pools the statistics: exact over all images, or the official
    /// per-batch moving average. Default: the checkpoint's eval.bn_mode.
    #[arg(long, value_enum)]
    pub bn_mode: Option<BnModeArg>,
    /// Images per batch of recalibration and evaluation (default: the checkpoint's
    /// eval.batch). Recalibration results depend on it: BN normalises each batch by its own
    /// statistics on the way to the next layer.
    #[arg(long)]
    pub batch: Option<usize>,
    /// Also write the detections (COCO results JSON) here.
    #[arg(long)]
    pub dt_out: Option<PathBuf>,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct CocoArgs {
    /// Ground truth (COCO instances JSON).
    #[arg(long)]
    pub gt: PathBuf,
    /// Detections (COCO results JSON).
    #[arg(long)]
    pub dt: PathBuf,
    /// Print one JSON object with `stats` (pycocotools' order) and `per_class` (each
    /// category's `ap` and `ar100`).
    #[arg(long)]
    pub json: bool,
}

fn print_stats(stats: &CocoStats, json: bool, extra: serde_json::Value) {
    if json {
        let mut v = json!({"stats": stats.0, "names": detnas_detect::metrics::COCO_STAT_NAMES});
        if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        println!("{v}");
    } else {
        for (n, s) in stats.named() {
            println!("{n:>6}  {s:.4}");
        }
    }
}

fn run_coco(a: CocoArgs) -> Result<(), Failure> {
    let ev = detnas_detect::metrics::coco_evaluation_files(&a.gt, &a.dt)
        .map_err(|e| Failure { code: 3, error: e.into() })?;
    print_stats(&ev.stats, a.json, json!({ "per_class": ev.classes }));
    Ok(())
}

fn run_det(a: DetArgs) -> Result<(), Failure> {
    use detnas_detect::evaluate::voc_map;
    use detnas_train::finetune::OpenedDetector;
    if let Some(run) = &a.search {
        return run_det_search(&a, run);
    }
    let device = a.runtime.init()?;
    let opened = OpenedDetector::open(a.checkpoint.as_ref().expect("required by clap"), device)?;
    let arch = opened.path_of(a.arch.as_deref())?;
    let settings = settings(&opened.config.eval, opened.is_fixed(), (a.recalibrate_bn, a.bn_mode, a.batch));
    let split = match a.data {
        SplitArg::Test => DetSplit::Test,
        SplitArg::SearchVal => DetSplit::SearchVal,
        SplitArg::Train => DetSplit::Train,
    };
    let step = opened.state.step;
    let arch_s = arch.as_ref().map(|a| a.to_string()).or(opened.config.model.arch.clone()).unwrap_or_default();
    let mut scorer = opened.scorer(split, &settings, device)?;
    let (score, dets) = scorer.score_with_detections(arch.as_ref())?;
    if let Some(p) = &a.dt_out {
        detnas_runtime::fsx::write_json_atomic(p, &dets)?;
    }
    let data = scorer.val();
    let (voc_area, voc_07) = voc_map(data, &dets);
    if !a.json {
        println!("VOC mAP@0.5 (difficult ignored): {voc_area:.4} (area), {voc_07:.4} (11-point)");
        println!(
            "{arch_s} on {} images ({} detections; step {step}; {}; eval {:.2} s)",
            data.len(),
            dets.len(),
            recalibration_line(settings.recalibrate_images, score.bn_layers_recalibrated, score.recalibration_seconds),
            score.evaluation_seconds
        );
    }
    let voc = |v: f64| if v.is_finite() { json!(v) } else { json!(null) };
    print_stats(
        &score.stats,
        a.json,
        json!({"arch": arch_s, "images": data.len(), "step": step, "recalibrate_bn": settings.recalibrate_images,
               "voc_map": voc(voc_area), "voc_map_07": voc(voc_07)}),
    );
    Ok(())
}

/// The checkpoint's own scoring (`eval`; `fixed`: a fixed architecture's defaults) with the
/// command line's `--recalibrate-bn`, `--bn-mode` and `--batch`.
fn settings(
    eval: &detnas_train::config::EvalConfig,
    fixed: bool,
    (recalibrate_bn, bn_mode, batch): (Option<usize>, Option<BnModeArg>, Option<usize>),
) -> ScoreSettings {
    let own = ScoreSettings::of_run(eval, fixed);
    ScoreSettings {
        recalibrate_images: recalibrate_bn.unwrap_or(own.recalibrate_images),
        bn_mode: bn_mode.map_or(own.bn_mode, BnMode::from),
        batch: batch.map(|b| b.max(1)),
        ..own
    }
}

fn recalibration_line(images: usize, layers: usize, seconds: f64) -> String {
    if images == 0 {
        "BN statistics kept".into()
    } else {
        format!("BN recalibrated on {images} images, {layers} layers, {seconds:.2} s")
    }
}

/// `eval det --search RUN --arch A`: scores `A` exactly as the search did (its evaluator, its
/// settings, its worker's thread count) and sets the result beside the ledger's.
fn run_det_search(a: &DetArgs, run: &std::path::Path) -> Result<(), Failure> {
    use detnas_search::config::FitnessKind;
    use detnas_search::fitness::{DetEvaluator, SupernetInfo};
    use detnas_search::{Evaluator, SearchConfig, engine::ledger_path, ledger};
    let arch_s = a.arch.as_deref().expect("required by clap");
    let cfg_path = run.join("config.toml");
    if !cfg_path.is_file() {
        return Err(crate::usage(anyhow::anyhow!("{} is not a search folder (no config.toml)", run.display())));
    }
    let cfg = SearchConfig::load(&cfg_path, &[])?;
    if cfg.supernet.fitness != FitnessKind::Det {
        return Err(crate::usage(anyhow::anyhow!(
            "{} scored {} (not a detection search); eval det reproduces detection scores",
            run.display(),
            cfg.supernet.fitness
        )));
    }
    let entries = ledger::read(&ledger_path(run))?;
    let recorded = entries.iter().find(|e| e.arch == arch_s);
    let cpu_threads = recorded.and_then(|e| e.threads);
    if a.runtime.threads.is_none()
        && let Some(t) = cpu_threads
    {
        tch::set_num_threads(t);
    }
    // A score recorded by a CPU worker is reproduced on the CPU unless told otherwise.
    let device = match (cpu_threads, a.runtime.device.as_str()) {
        (Some(_), "auto") => {
            a.runtime.init()?;
            tch::Device::Cpu
        }
        _ => a.runtime.init()?,
    };
    let info = SupernetInfo::open(&cfg)?;
    detnas_search::run::check_scored(run, &info)?;
    let arch = info.space.parse_arch(arch_s).map_err(|e| crate::usage(anyhow::anyhow!("--arch {arch_s}: {e}")))?;
    let mut evaluator = DetEvaluator::open(&info.checkpoint, &cfg.eval, cfg.runtime.prefetch, device)?;
    let images = evaluator.scorer().val().len();
    let ev = evaluator.evaluate(&arch)?;
    let stats =
        CocoStats(ev.metrics.clone().try_into().map_err(|_| anyhow::anyhow!("the evaluator gave no COCO stats"))?);
    let metric = detnas_search::run::metric_name(&cfg);
    let ledger_fitness = recorded.map(|e| e.fitness);
    let matches = ledger_fitness.map(|f| f == ev.fitness);
    if !a.json {
        match (ledger_fitness, cpu_threads) {
            (Some(f), threads) => println!(
                "{arch_s}: {metric} {:.8} now, {f:.8} in {} ({}; {} thread(s))",
                ev.fitness,
                ledger_path(run).display(),
                if matches == Some(true) { "identical" } else { "DIFFERENT" },
                threads.map_or("unrecorded".into(), |t| t.to_string())
            ),
            (None, _) => {
                println!("{arch_s}: {metric} {:.6} ({} has no score for it)", ev.fitness, ledger_path(run).display())
            }
        }
    }
    if matches == Some(false) {
        tracing::warn!(
            "the score differs from the ledger's: another thread count, device or libtorch build changes the last digits"
        );
    }
    print_stats(
        &stats,
        a.json,
        json!({"arch": arch_s, "images": images, "step": info.step, "fitness": ev.fitness,
               "ledger_fitness": ledger_fitness, "matches_ledger": matches}),
    );
    Ok(())
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum BnModeArg {
    /// Exact mean/variance over the recalibration images.
    Exact,
    /// The official EMA (momentum 0.1) after a reset.
    Ema,
}

impl From<BnModeArg> for BnMode {
    fn from(m: BnModeArg) -> BnMode {
        match m {
            BnModeArg::Exact => BnMode::Exact,
            BnModeArg::Ema => BnMode::Ema,
        }
    }
}

#[derive(Args)]
pub struct ClsArgs {
    /// A checkpoint (step-N folder) or a run folder (its latest checkpoint).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// The path to evaluate.
    #[arg(long)]
    pub arch: String,
    /// Recompute BN statistics on this many training images first (0: keep them). Default:
    /// the checkpoint's eval.recalibrate_images (1000 for a supernet's path, 0 for a fixed
    /// architecture), as its run scored itself.
    #[arg(long)]
    pub recalibrate_bn: Option<usize>,
    /// How recalibration pools the statistics: exact over all images, or the official
    /// per-batch moving average. Default: the checkpoint's eval.bn_mode.
    #[arg(long, value_enum)]
    pub bn_mode: Option<BnModeArg>,
    /// Batch size (default: the config's eval.batch).
    #[arg(long)]
    pub batch: Option<usize>,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(cmd: EvalCommand) -> Result<(), Failure> {
    use detnas_train::pretrain::OpenedSupernet;
    let a = match cmd {
        EvalCommand::Cls(a) => a,
        EvalCommand::Det(a) => return run_det(a),
        EvalCommand::Coco(a) => return run_coco(a),
    };
    let device = a.runtime.init()?;
    let opened = OpenedSupernet::open(&a.checkpoint, device)?;
    let arch = opened.state.space.parse_arch(&a.arch).map_err(crate::usage)?;
    let settings = settings(&opened.config.eval, opened.is_fixed(), (a.recalibrate_bn, a.bn_mode, a.batch));
    let (ckpt, step) = (opened.path.clone(), opened.state.step);
    let s = opened.scorer(&settings, device)?.score(&arch)?;
    if a.json {
        println!(
            "{}",
            json!({"checkpoint": ckpt, "step": step, "recalibrate_bn": settings.recalibrate_images, "score": s})
        );
    } else {
        println!(
            "{}  top-1 {:.2}%  top-5 {:.2}%  on {} images (step {step}; {}; eval {:.2} s)",
            s.arch,
            100.0 * s.top1,
            100.0 * s.top5,
            s.images,
            recalibration_line(settings.recalibrate_images, s.bn_layers_recalibrated, s.recalibration_seconds),
            s.evaluation_seconds
        );
    }
    Ok(())
}
