//! Compiles the c10d shim against the headers of the libtorch that torch-sys links.
//!
//! * `cxx/c10d_shim.cpp` → a static library linked into the engine (libtorch_cpu's c10d:
//!   TCPStore, ProcessGroup, ProcessGroupGloo). `ProcessGroupGloo.hpp` includes gloo's own
//!   headers, which the torch wheel does not ship: they are taken from `DETNAS_GLOO_INCLUDE`
//!   (scripts/env.sh unpacks Debian's `libgloo-dev` there), used for declarations only.
//!   Without them the shim is built without Gloo, and joining a CPU job says so.
//! * `cxx/nccl_shim.cpp` → `libdetnas_c10d_nccl.so`, a library of its own (it links
//!   libtorch_cuda, which CPU runs must not load), when the CUDA headers NCCL's header needs
//!   are found (`DETNAS_CUDA_INCLUDE`, colon-separated; scripts/env.sh installs them). It is
//!   copied beside the executables, where the engine looks for it.
//!
//! Flags as torch-sys builds its own wrapper: C++17, the C++11 ABI, glog's export macro.

use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=cxx/c10d_shim.cpp");
    println!("cargo:rerun-if-changed=cxx/nccl_shim.cpp");
    println!("cargo:rerun-if-changed=../device/cxx/shim_error.h");
    println!("cargo:rerun-if-env-changed=DETNAS_GLOO_INCLUDE");
    println!("cargo:rerun-if-env-changed=DETNAS_CUDA_INCLUDE");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let lib = PathBuf::from(std::env::var("DEP_TCH_LIBTORCH_LIB").expect("torch-sys exports its libtorch folder"));
    let root = lib.parent().expect("libtorch's lib folder has a parent").to_path_buf();
    let includes = [root.join("include"), root.join("include/torch/csrc/api/include")];

    let gloo =
        std::env::var_os("DETNAS_GLOO_INCLUDE").map(PathBuf::from).filter(|p| p.join("gloo/context.h").is_file());
    let mut b = cc::Build::new();
    b.cpp(true)
        .file("cxx/c10d_shim.cpp")
        .includes(&includes)
        // The shims' shared error reporting.
        .include("../device/cxx")
        .flag("-std=c++17")
        .flag("-D_GLIBCXX_USE_CXX11_ABI=1")
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .flag("-w")
        .opt_level(2);
    match &gloo {
        Some(g) => {
            b.include(g).define("USE_C10D_GLOO", None);
        }
        None => {
            println!(
                "cargo:warning=no gloo headers (DETNAS_GLOO_INCLUDE): multi-process CPU runs are not built in; `source scripts/env.sh` provides them"
            );
            b.define("DETNAS_NO_GLOO", None);
        }
    }
    b.compile("detnas_c10d");

    build_nccl(&lib, &includes);
}

/// Builds the NCCL shim as a shared library when the CUDA headers are available.
fn build_nccl(lib: &Path, includes: &[PathBuf]) {
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let site = lib.parent().and_then(Path::parent).expect("torch/lib is inside site-packages/torch");
    let nvidia = site.join("nvidia");
    let mut dirs: Vec<PathBuf> = vec![nvidia.join("nccl/include"), nvidia.join("cu13/include")];
    if let Some(extra) = std::env::var_os("DETNAS_CUDA_INCLUDE") {
        dirs.extend(std::env::split_paths(&extra));
    }
    let have = |f: &str| dirs.iter().any(|d| d.join(f).is_file());
    if !(lib.join("libtorch_cuda.so").is_file()
        && have("nccl.h")
        && have("cuda_runtime_api.h")
        && have("crt/host_config.h")
        && have("nv/target"))
    {
        println!("cargo:warning=no CUDA headers for NCCL (DETNAS_CUDA_INCLUDE): the NCCL shim is not built");
        return;
    }
    let so = out.join("libdetnas_c10d_nccl.so");
    let compiler = cc::Build::new().cpp(true).get_compiler();
    let mut cmd = compiler.to_command();
    cmd.args(["-shared", "-fPIC", "-O2", "-w", "-std=c++17", "-D_GLIBCXX_USE_CXX11_ABI=1", "-DGLOG_USE_GLOG_EXPORT"])
        .arg("-DUSE_C10D_NCCL")
        .arg("-DUSE_CUDA");
    for d in includes.iter().chain(&dirs) {
        cmd.arg(format!("-I{}", d.display()));
    }
    cmd.arg("cxx/nccl_shim.cpp")
        .arg("-o")
        .arg(&so)
        .arg(format!("-L{}", lib.display()))
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .args(["-ltorch_cuda", "-ltorch_cpu", "-lc10_cuda", "-lc10"]);
    let status = cmd.status().expect("the C++ compiler runs");
    assert!(status.success(), "compiling cxx/nccl_shim.cpp failed");
    println!("cargo:rustc-env=DETNAS_NCCL_SHIM={}", so.display());
    // Beside the executables (target/<profile>/), where the engine looks first.
    if let Some(profile_dir) = out.ancestors().nth(3) {
        let _ = std::fs::copy(&so, profile_dir.join("libdetnas_c10d_nccl.so"));
    }
}
