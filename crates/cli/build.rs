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
//! `-dirty` when tracked or unignored files differ from it), re-run on any change under
//! `crates/` and on every commit.

fn main() {
    revision();
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else { return };
    println!("cargo:rustc-link-arg-bins=-Wl,-rpath,{lib}");
}

fn revision() {
    for p in ["../../crates", "../../Cargo.toml", "../../Cargo.lock", "../../.git/HEAD", "../../.git/refs/heads"] {
        println!("cargo:rerun-if-changed={p}");
    }
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let Some(rev) = git(&["rev-parse", "--short=12", "HEAD"]) else { return };
    let dirty = git(&["status", "--porcelain"]).is_none_or(|s| !s.is_empty());
    println!("cargo:rustc-env=DETNAS_REVISION={rev}{}", if dirty { "-dirty" } else { "" });
}
