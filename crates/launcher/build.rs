//! Records the libtorch folder known at build time (exported by `scripts/env.sh`) as the
//! launcher's first guess.
fn main() {
    println!("cargo:rerun-if-env-changed=DETNAS_LIBTORCH_LIB");
    let lib = std::env::var("DETNAS_LIBTORCH_LIB").unwrap_or_default();
    println!("cargo:rustc-env=DETNAS_BUILD_LIBTORCH_LIB={lib}");
}
