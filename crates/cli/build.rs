//! Link-time fixes for the engine binary.
//!
//! * `libtorch_cuda.so` is linked with `--no-as-needed`: the engine calls no symbol of it
//!   directly, so the default `--as-needed` drops it and CUDA then reads as unavailable.
//! * An rpath to the libtorch folder found at build time, so the engine also runs without
//!   the `detnas` launcher on the machine that built it.

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else { return };
    let dir = std::path::Path::new(&lib);
    println!("cargo:rustc-link-arg-bins=-Wl,-rpath,{lib}");
    if dir.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg-bins=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg-bins=-ltorch_cuda");
        println!("cargo:rustc-link-arg-bins=-Wl,--as-needed");
    }
}
