//! The host-access rule: in `nn`, `detect` and `train`, tensor data moves between the host and
//! a device only through `detnas_device::host` (counted). A raw read or upload anywhere else in
//! their library code (outside `#[cfg(test)]` modules, which come last in a file) fails here,
//! naming the file and line.

use std::path::{Path, PathBuf};

/// What reads tensor data on the host or makes a tensor from host data.
const FORBIDDEN: [&str; 14] = [
    "to_device(Device::Cpu)",
    "to_device(tch::Device::Cpu)",
    "::try_from(&",
    ">::try_from(",
    "f64::try_from(",
    "f32::try_from(",
    "bool::try_from(",
    "double_value(",
    "int64_value(",
    ".nonzero()",
    "masked_select(",
    ".equal(",
    "Tensor::from_slice(",
    ".copy_data(",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn only_the_host_module_moves_tensor_data() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    for c in ["nn", "detect", "train"] {
        rust_files(&crates.join(c).join("src"), &mut files);
    }
    assert!(files.len() > 30, "the sources were found: {}", files.len());
    let mut found = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        for (i, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("#[cfg(test)]") {
                break;
            }
            if line.trim_start().starts_with("//") {
                continue;
            }
            for pat in FORBIDDEN {
                if line.contains(pat) {
                    found.push(format!("{}:{}: {pat}: {}", f.display(), i + 1, line.trim()));
                }
            }
        }
    }
    assert!(found.is_empty(), "raw host access outside detnas_device::host:\n{}", found.join("\n"));
}

/// The rule has teeth: each pattern is caught on a line of the kind it is meant for.
#[test]
fn the_patterns_catch_raw_reads() {
    let raw = [
        "let v = Vec::<f32>::try_from(t.reshape([-1])).unwrap();",
        "let x = f64::try_from(&loss)?;",
        "let n = t.double_value(&[]);",
        "let i = t.nonzero();",
        "let u = Tensor::from_slice(&idx).to_device(dev);",
        "let c = t.to_device(tch::Device::Cpu);",
    ];
    for line in raw {
        assert!(FORBIDDEN.iter().any(|p| line.contains(p)), "{line}");
    }
}
