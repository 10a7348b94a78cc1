//! `detnas-engine`: the detnas command line (started through the `detnas` launcher, which
//! locates libtorch first). Parses, dispatches to the libraries, maps errors to exit codes:
//! 0 ok, 2 usage or configuration, 3 data, 4 numerical, 5 checkpoint, 1 anything else.

mod args;
mod bench_cmd;
mod data_cmd;
mod dist_cmd;
mod eval_cmd;
mod finetune_cmd;
mod net_cmd;
mod predict_cmd;
mod pretrain_cmd;
mod run_cmd;
mod runtime;
mod search_cmd;
mod space_cmd;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// jemalloc is the malloc of the whole process (its symbols are unprefixed, so libtorch's
/// CPU tensors come from it too). Measured on 2 cores against glibc malloc, same binary
/// otherwise: Small 224×224 training step 1.19× faster at 0.72× the peak memory, inference
/// 1.08×, BN recalibration 1.11×; demo-scale supernet and RetinaNet items 1.07–1.32×; FPN
/// inference and candidate evaluation unchanged. See [`malloc_conf`] for the settings.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// A C string in a `static` (a thin, immutable pointer).
#[repr(transparent)]
pub struct ConfString(*const std::ffi::c_char);
// SAFETY: points to an immutable `'static` byte string.
#[allow(unsafe_code)]
unsafe impl Sync for ConfString {}

/// jemalloc's compiled-in options (`MALLOC_CONF` in the environment still overrides them,
/// key by key):
/// * `dirty_decay_ms:-1`, `muzzy_decay_ms:-1`: freed pages are kept for reuse, never returned
///   to the kernel. With any time-based decay, large activations are purged and faulted in
///   again between steps: measured on 2 cores, decay of 1 s or 10 s cost 0.40–0.47× on the
///   224×224 items (Small training step 18.0 → 8.3 img/s) and 0.69–0.81× on demo detection.
/// * `oversize_threshold:0`: large tensors share the ordinary arenas (the dedicated oversize
///   arena purges at once, with the same cost).
/// * `lg_extent_max_active_fit:20`: a kept (dirty) extent may be split for a request up to 2^20
///   times smaller. With the default 2^6, a request more than 64 times smaller than every kept
///   extent maps new memory instead, and without decay nothing is ever given back: detection
///   training, whose tensor sizes vary every step, grew by 6–8 MB per step (demo fine-tuning:
///   500 MB at step 40, 2.1 GB at step 240). With it the same run stays at 258 MB from step 100
///   to step 2000, and `retain:false` or decay are not needed.
#[allow(non_upper_case_globals, unsafe_code)]
#[unsafe(no_mangle)]
pub static malloc_conf: ConfString =
    ConfString(c"dirty_decay_ms:-1,muzzy_decay_ms:-1,oversize_threshold:0,lg_extent_max_active_fit:20".as_ptr());

const ABOUT: &str = "DetNAS: search a detection backbone for your data and compute budget \
(Chen et al., NeurIPS 2019, arXiv:1903.10979)";

const LONG_ABOUT: &str = "DetNAS: search a detection backbone for your data and compute budget \
(Chen et al., NeurIPS 2019, arXiv:1903.10979).

The workflow, each stage resumable (re-run the same command after a crash or Ctrl-C):
  detnas pretrain   train the ShuffleNetV2 supernet path-wise on classification
  detnas finetune   fine-tune it path-wise as the backbone of RetinaNet or FPN Faster R-CNN
  detnas search     evolutionary search under FLOPs/params/latency limits
  detnas finetune   retrain the found architecture (model.arch) and evaluate it
  detnas run        all of these from one pipeline config, with a report
  detnas demo       the whole pipeline on built-in synthetic data (CPU, minutes)

Check your data first: detnas data check --config FINETUNE.toml

Exit status: 0 ok, 2 usage or configuration, 3 data, 4 numerical (NaN/Inf loss), \
5 checkpoint, 130/143 interrupted (SIGINT/SIGTERM; the last checkpoint is saved), 1 other.";

#[derive(Parser)]
#[command(name = "detnas", bin_name = "detnas", version, about = ABOUT, long_about = LONG_ABOUT, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// `detnas import …`.
/// `detnas import`.
fn import(cmd: ImportCommand) -> Result<(), Failure> {
    match cmd {
        ImportCommand::Spos { weights, out } => {
            let ckpt = detnas_pipeline::import::import_spos(&weights, &out)?;
            println!("imported {} into {} (space small-spos)", weights.display(), ckpt.display());
            Ok(())
        }
        ImportCommand::Detnas { weights, out, arch } => {
            let arch: Option<detnas_space::Arch> = arch.map(|a| a.parse()).transpose().map_err(crate::usage)?;
            let ckpt = detnas_pipeline::import::import_detnas(&weights, &out, arch.as_ref())?;
            let (_, state) = detnas_train::pretrain::read_checkpoint_meta(&ckpt)?;
            println!("imported {} into {} (space {})", weights.display(), ckpt.display(), state.space.name);
            Ok(())
        }
    }
}

#[derive(Subcommand)]
enum ImportCommand {
    /// The SinglePathOneShot supernet (megvii-model/SinglePathOneShot, published as
    /// `Supernet/checkpoint-150000.pth.tar`; convert it to safetensors first with
    /// `python scripts/pth_to_safetensors.py FILE.pth.tar OUT.safetensors`). Writes a
    /// pre-training run folder of the `small-spos` space for `model.pretrained` and `eval cls`.
    Spos {
        /// The state dict as safetensors (official names, `module.` prefix optional).
        #[arg(long)]
        weights: std::path::PathBuf,
        /// The run folder to write (`OUT/checkpoints/step-00000000`).
        #[arg(long)]
        out: std::path::PathBuf,
    },
    /// DetNAS's ImageNet weights (megvii-model/DetNAS README): its ImageNet supernet
    /// (`Supernet-ImageNet/detnasnet.py`), or a searched model with `--arch`, Small (300M) or
    /// Large (1.3G). Writes a pre-training run folder of the `small` or `large` space.
    Detnas {
        /// The state dict as safetensors (official names, `module.` prefix optional).
        #[arg(long)]
        weights: std::path::PathBuf,
        /// The run folder to write (`OUT/checkpoints/step-00000000`).
        #[arg(long)]
        out: std::path::PathBuf,
        /// A searched model's architecture (its names hold no choice): one choice id per block,
        /// e.g. `21202112331300313132`.
        #[arg(long)]
        arch: Option<String>,
    },
}

#[derive(Subcommand)]
enum Command {
    /// Inspect search spaces: sizes, MACs/params of architectures, sampling.
    #[command(subcommand)]
    Space(space_cmd::SpaceCommand),
    /// Build networks and check them: feature shapes, measured vs analytic counts, timing.
    #[command(subcommand)]
    Net(net_cmd::NetCommand),
    /// Train the supernet path-wise on classification (resumes where it stopped).
    Pretrain(pretrain_cmd::PretrainArgs),
    /// Fine-tune the supernet path-wise as a detector backbone (resumes where it stopped).
    Finetune(finetune_cmd::FinetuneArgs),
    /// Detect objects in images with one path of a fine-tuned detector.
    Predict(predict_cmd::PredictArgs),
    /// Evolutionary (or random) search on a trained supernet; `search show RUN` reads one.
    Search(search_cmd::SearchArgs),
    /// Evaluate one path of a trained supernet, or a detection results file.
    #[command(subcommand)]
    Eval(eval_cmd::EvalCommand),
    /// Check a dataset before training (`data check`: every split loaded and decoded, boxes per
    /// class, errors by file) and write the built-in synthetic sets (`synth`, `synth-cls`).
    #[command(subcommand)]
    Data(data_cmd::DataCommand),
    /// The embedded demo: the whole pipeline on built-in synthetic data, CPU, no download
    /// (the same as `detnas run` without --config).
    Demo(run_cmd::RunArgs),
    /// The whole pipeline: data, pre-training, fine-tuning, search, retraining, baselines,
    /// report (no arguments: the embedded demo). Re-running resumes.
    Run(run_cmd::RunArgs),
    /// Multi-process jobs: `dist check` tests the process group under a launcher.
    #[command(subcommand)]
    Dist(DistCommand),
    /// Measure one benchmark item (bench/run.sh runs them all, beside PyTorch).
    Bench(bench_cmd::BenchArgs),
    /// Regenerate the report of a run folder.
    Report(run_cmd::ReportArgs),
    /// Export the found architecture: official-name weights for PyTorch, detector for predict.
    Export(run_cmd::ExportArgs),
    /// Convert official ImageNet weights into a detnas pre-training checkpoint (`import spos`:
    /// the SinglePathOneShot supernet; `import detnas`: the DetNAS ImageNet supernet).
    #[command(subcommand)]
    Import(ImportCommand),
    /// How far a run's search ranking can be trusted: architectures from its ledger trained
    /// stand-alone, Kendall τ of the supernet's scores against them. Re-running resumes.
    RankCheck(run_cmd::RankCheckArgs),
}

#[derive(Subcommand)]
enum DistCommand {
    /// Checks the job's process group (collectives, synchronized-BN all-gather, the store);
    /// run it under torchrun, srun or mpirun. One JSON line per rank.
    Check(dist_cmd::CheckArgs),
}

/// An error with the exit code it maps to.
#[derive(Debug)]
pub struct Failure {
    /// The process's exit code (2 usage, 3 data, 4 numerical, 5 checkpoint, 1 other).
    pub code: u8,
    /// The error, printed with its causes.
    pub error: anyhow::Error,
}

/// A cancellation token that SIGINT and SIGTERM raise, for the verbs whose loops finish their
/// unit of work, save and stop (training, search, the pipeline). Other verbs keep the default
/// signal behaviour.
///
/// # Errors
/// Exit code 1 when the signal handlers cannot be installed.
pub fn cancel_on_signals() -> Result<detnas_runtime::Cancel, Failure> {
    let cancel = detnas_runtime::Cancel::new();
    cancel
        .install_signal_handlers()
        .map_err(|e| Failure { code: 1, error: anyhow::anyhow!("cannot install signal handlers: {e}") })?;
    Ok(cancel)
}

/// Usage or configuration error (exit code 2).
pub fn usage(error: impl Into<anyhow::Error>) -> Failure {
    Failure { code: 2, error: error.into() }
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Failure {
        let error: anyhow::Error = e.into();
        let code = if let Some(t) = error.downcast_ref::<detnas_train::TrainError>() {
            t.exit_code()
        } else if let Some(s) = error.downcast_ref::<detnas_search::SearchError>() {
            s.exit_code()
        } else if let Some(p) = error.downcast_ref::<detnas_pipeline::PipelineError>() {
            p.exit_code()
        } else if let Some(d) = error.downcast_ref::<detnas_dist::DistError>() {
            d.exit_code()
        } else if let Some(r) = error.downcast_ref::<detnas_runtime::RuntimeError>() {
            r.exit_code()
        } else if let Some(d) = error.downcast_ref::<detnas_detect::DetectError>() {
            match d {
                detnas_detect::DetectError::Data(_) => 3,
                detnas_detect::DetectError::Config(_) => 2,
                _ => 1,
            }
        } else if error.downcast_ref::<detnas_data::DataError>().is_some() {
            3
        } else if error.downcast_ref::<detnas_space::SpaceError>().is_some() {
            2
        } else if let Some(nn) = error.downcast_ref::<detnas_nn::NnError>() {
            if matches!(nn, detnas_nn::NnError::Space(_)) { 2 } else { 1 }
        } else {
            1
        };
        Failure { code, error }
    }
}

fn main() -> ExitCode {
    if let Some(revision) = option_env!("DETNAS_REVISION") {
        detnas_runtime::provenance::set_revision(revision);
    }
    // In a multi-process job only rank 0 logs progress; the others log warnings and errors.
    let rank = detnas_dist::Launch::from_env().ok().flatten().map_or(0, |l| l.rank);
    let default_level = if rank == 0 { "info" } else { "warn" };
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DETNAS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .init();
    let cli = Cli::parse();
    if let Err(e) = detnas_device::settings::apply_environment() {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let result = match cli.command {
        Command::Space(c) => space_cmd::run(c),
        Command::Net(c) => net_cmd::run(c),
        Command::Pretrain(a) => pretrain_cmd::run(a),
        Command::Eval(c) => eval_cmd::run(c),
        Command::Finetune(a) => finetune_cmd::run(a),
        Command::Search(a) => search_cmd::run(a),
        Command::Predict(a) => predict_cmd::run(a),
        Command::Data(c) => data_cmd::run(c),
        Command::Demo(a) => run_cmd::run(a),
        Command::Run(a) => run_cmd::run(a),
        Command::Report(a) => run_cmd::report(a),
        Command::Bench(a) => bench_cmd::run(a),
        Command::Dist(DistCommand::Check(a)) => dist_cmd::check(a),
        Command::Export(a) => run_cmd::export(a),
        Command::Import(c) => import(c),
        Command::RankCheck(a) => run_cmd::rank_check(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            // The chain, without causes the messages already quote (most errors here embed
            // their source in their own message).
            let mut msg = f.error.to_string();
            for cause in f.error.chain().skip(1) {
                let c = cause.to_string();
                if !msg.contains(&c) {
                    msg = format!("{msg}: {c}");
                }
            }
            eprintln!("error: {msg}");
            ExitCode::from(f.code)
        }
    }
}
