//! Compiles `cxx/device_shim.cpp` (Kineto profiler, autocast settings) against the headers of
//! the libtorch that torch-sys links, with torch-sys's own flags (C++17, the C++11 ABI).

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=cxx/device_shim.cpp");
    println!("cargo:rerun-if-changed=cxx/shim_error.h");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let lib = PathBuf::from(std::env::var("DEP_TCH_LIBTORCH_LIB").expect("torch-sys exports its libtorch folder"));
    let root = lib.parent().expect("libtorch's lib folder has a parent").to_path_buf();
    cc::Build::new()
        .cpp(true)
        .file("cxx/device_shim.cpp")
        .includes([root.join("include"), root.join("include/torch/csrc/api/include"), root.join("include/kineto")])
        // The wheel's libtorch is built with Kineto; the profiler's event tree has its layout.
        .define("USE_KINETO", None)
        .flag("-std=c++17")
        .flag("-D_GLIBCXX_USE_CXX11_ABI=1")
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .flag("-w")
        .opt_level(2)
        .compile("detnas_device");
}
