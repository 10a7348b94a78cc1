//! Link-time settings of the engine binary.
//!
//! * An rpath to the libtorch folder found at build time, so the engine also runs without
//!   the `detnas` launcher on the machine that built it.
//! * `libtorch_cuda.so` is **not** linked: loading it (and the CUDA libraries it pulls in)
//!   costs about 230 MB of resident memory in every process, GPU or not. The `detnas`
//!   launcher preloads it (`LD_PRELOAD`) when the machine has an NVIDIA GPU, which registers
//!   libtorch's CUDA backend exactly as linking it would; on other machines the engine runs
//!   CPU-only and lean.
//!
//! It also records the source revision for provenance (`DETNAS_REVISION`: the commit, with
//! `-dirty` when its sources (`crates/`, `Cargo.*`, the embedded `configs/demo/`) differ from
//! it), re-run when they change and on every commit.

fn main() {
    revision();
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else { return };
    println!("cargo:rustc-link-arg-bins=-Wl,-rpath,{lib}");
}

fn revision() {
    // The sources of the binary: its crates, the lock file and the embedded demo configs.
    let sources = ["crates", "Cargo.toml", "Cargo.lock", "configs/demo"];
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .current_dir("../..")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    for p in sources {
        println!("cargo:rerun-if-changed=../../{p}");
    }
    // What moves on a commit or checkout: HEAD, the branch's ref, the HEAD reflog. Resolved
    // by git and watched only when present (an absent watched path re-runs this every build).
    let head_ref = git(&["symbolic-ref", "-q", "HEAD"]);
    for p in ["HEAD", "logs/HEAD"].into_iter().map(str::to_string).chain(head_ref) {
        if let Some(path) = git(&["rev-parse", "--path-format=absolute", "--git-path", &p])
            && std::path::Path::new(&path).exists()
        {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    let Some(rev) = git(&["rev-parse", "--short=12", "HEAD"]) else { return };
    let mut status = vec!["status", "--porcelain", "--"];
    status.extend(sources);
    let dirty = git(&status).is_none_or(|s| !s.is_empty());
    println!("cargo:rustc-env=DETNAS_REVISION={rev}{}", if dirty { "-dirty" } else { "" });
}
