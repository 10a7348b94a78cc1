//! Link-time settings of the engine binary.
//!
//! * An rpath to the libtorch folder found at build time, so the engine also runs without
//!   the `detnas` launcher on the machine that built it.
//! * `libtorch_cuda.so` is **not** linked: loading it (and the CUDA libraries it pulls in)
//!   costs about 230 MB of resident memory in every process, GPU or not. The `detnas`
//!   launcher preloads it (`LD_PRELOAD`) when the machine has an NVIDIA GPU, which registers
//!   libtorch's CUDA backend exactly as linking it would; on other machines the engine runs
//!   CPU-only and lean.

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else { return };
    println!("cargo:rustc-link-arg-bins=-Wl,-rpath,{lib}");
}
