//! `detnas`: the command users run. It links no libtorch itself: it finds a libtorch 2.11.0
//! folder, puts it on the loader path and replaces itself with `detnas-engine` (same folder)
//! with the same arguments. Without libtorch it prints one line saying how to set up and
//! exits with code 2, instead of the dynamic loader's error.
//!
//! Where it looks: `$DETNAS_LIBTORCH_LIB` alone when it is set (an explicit choice is never
//! silently replaced); otherwise, in order, the folder recorded at build time, the default
//! cache venv (`$DETNAS_CACHE` or `~/.cache/detnas`, `torch-2.11.0`), and the `torch`
//! package of `python3` on `PATH`.
//!
//! CUDA: the engine does not link `libtorch_cuda.so` (it would cost every process about
//! 230 MB of memory). When the machine has an NVIDIA GPU (`/dev/nvidiactl` or
//! `/proc/driver/nvidia/gpus/*`) and the libtorch folder has `libtorch_cuda.so`, the launcher
//! adds it to `LD_PRELOAD`, which registers libtorch's CUDA backend as linking would.
//! `DETNAS_CUDA=1` forces the preload, `DETNAS_CUDA=0` prevents it.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

const TORCH_VERSION: &str = "2.11.0";
const SETUP_HINT: &str = "run `source scripts/env.sh` in the detnas checkout (it installs torch==2.11.0 into a cached venv), or set DETNAS_LIBTORCH_LIB to the lib folder of a torch 2.11.0 installation";

/// The version of the torch package whose `lib` folder is `lib`, from `../version.py`.
fn torch_version(lib: &Path) -> Option<String> {
    let text = std::fs::read_to_string(lib.parent()?.join("version.py")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("__version__"))
        .and_then(|rest| rest.split(['\'', '"']).nth(1))
        .map(|v| v.split('+').next().unwrap_or(v).to_string())
}

fn cache_candidates() -> Vec<PathBuf> {
    let cache = std::env::var_os("DETNAS_CACHE").map(PathBuf::from).or_else(|| {
        std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .map(|c| c.join("detnas"))
    });
    let Some(venv) = cache.map(|c| c.join(format!("torch-{TORCH_VERSION}"))) else { return vec![] };
    let Ok(entries) = std::fs::read_dir(venv.join("lib")) else { return vec![] };
    entries.filter_map(Result::ok).map(|e| e.path().join("site-packages/torch/lib")).collect()
}

fn python_candidate() -> Option<PathBuf> {
    let out = Command::new("python3")
        .args(["-c", "import os, torch; print(os.path.join(os.path.dirname(torch.__file__), 'lib'))"])
        .output()
        .ok()?;
    out.status.success().then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// The first candidate folder that holds libtorch; `Err` lists why candidates failed.
fn find_libtorch() -> Result<PathBuf, String> {
    let mut tried = Vec::new();
    let built = Some(env!("DETNAS_BUILD_LIBTORCH_LIB")).filter(|s| !s.is_empty()).map(PathBuf::from);
    let lazy: Vec<Box<dyn Fn() -> Vec<PathBuf>>> = match std::env::var_os("DETNAS_LIBTORCH_LIB") {
        Some(explicit) => vec![Box::new(move || vec![PathBuf::from(&explicit)])],
        None => vec![
            Box::new(move || built.clone().into_iter().collect()),
            Box::new(cache_candidates),
            Box::new(|| python_candidate().into_iter().collect()),
        ],
    };
    for candidates in lazy {
        for lib in candidates() {
            if !lib.join("libtorch_cpu.so").is_file() {
                tried.push(format!("{} (no libtorch_cpu.so)", lib.display()));
                continue;
            }
            match torch_version(&lib) {
                Some(v) if v == TORCH_VERSION => return Ok(lib),
                Some(v) => tried.push(format!("{} (torch {v})", lib.display())),
                None => return Ok(lib), // a bare libtorch folder: no version file to check
            }
        }
    }
    Err(if tried.is_empty() { "nothing found".into() } else { format!("tried {}", tried.join(", ")) })
}

/// Whether this machine shows an NVIDIA GPU to processes.
fn nvidia_gpu_present() -> bool {
    Path::new("/dev/nvidiactl").exists()
        || std::fs::read_dir("/proc/driver/nvidia/gpus").is_ok_and(|mut d| d.next().is_some())
}

/// `libtorch_cuda.so` of `lib` when CUDA should be loaded (see the module documentation).
fn cuda_preload(lib: &Path, flag: Option<&str>, gpu: bool) -> Option<PathBuf> {
    let so = lib.join("libtorch_cuda.so");
    let wanted = match flag {
        Some("0") => false,
        Some("1") => true,
        _ => gpu,
    };
    (wanted && so.is_file()).then_some(so)
}

fn main() -> ExitCode {
    let lib = match find_libtorch() {
        Ok(lib) => lib,
        Err(why) => {
            eprintln!("error: libtorch {TORCH_VERSION} not found ({why}); {SETUP_HINT}");
            return ExitCode::from(2);
        }
    };
    let engine = match std::env::current_exe() {
        Ok(exe) => exe.with_file_name("detnas-engine"),
        Err(e) => {
            eprintln!("error: cannot locate the detnas executable: {e}");
            return ExitCode::from(1);
        }
    };
    if !engine.is_file() {
        eprintln!("error: {} is missing; build it with `cargo build --release -p detnas-cli`", engine.display());
        return ExitCode::from(2);
    }
    let mut path = OsString::from(lib.as_os_str());
    if let Some(old) = std::env::var_os("LD_LIBRARY_PATH").filter(|p| !p.is_empty()) {
        path.push(":");
        path.push(old);
    }
    let mut cmd = Command::new(&engine);
    cmd.args(std::env::args_os().skip(1)).env("LD_LIBRARY_PATH", path);
    let flag = std::env::var("DETNAS_CUDA").ok();
    if let Some(so) = cuda_preload(&lib, flag.as_deref(), nvidia_gpu_present()) {
        let mut pre = OsString::from(so.as_os_str());
        if let Some(old) = std::env::var_os("LD_PRELOAD").filter(|p| !p.is_empty()) {
            pre.push(":");
            pre.push(old);
        }
        cmd.env("LD_PRELOAD", pre);
    }
    let err = cmd.exec();
    eprintln!("error: cannot start {}: {err}", engine.display());
    ExitCode::from(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuda_preload_follows_gpu_and_flag() {
        let dir = std::env::temp_dir().join(format!("detnas-launcher-cuda-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // No libtorch_cuda.so: never preloaded (a CPU-only torch build).
        assert_eq!(cuda_preload(&dir, Some("1"), true), None);
        std::fs::write(dir.join("libtorch_cuda.so"), b"").unwrap();
        let so = Some(dir.join("libtorch_cuda.so"));
        assert_eq!(cuda_preload(&dir, None, true), so);
        assert_eq!(cuda_preload(&dir, None, false), None);
        assert_eq!(cuda_preload(&dir, Some("1"), false), so);
        assert_eq!(cuda_preload(&dir, Some("0"), true), None);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn reads_torch_version_file() {
        let dir = std::env::temp_dir().join(format!("detnas-launcher-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("lib")).unwrap();
        std::fs::write(dir.join("version.py"), "__version__ = '2.11.0+cu130'\ngit_version = 'x'\n").unwrap();
        assert_eq!(torch_version(&dir.join("lib")).as_deref(), Some("2.11.0"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
