//! Without libtorch the launcher prints one line saying how to set up (exit code 2), not a
//! dynamic-loader error.

use std::process::Command;

#[test]
fn one_line_error_without_libtorch() {
    let empty = std::env::temp_dir().join(format!("detnas-nolib-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_detnas"))
        .args(["space", "show"])
        .env("DETNAS_LIBTORCH_LIB", &empty)
        .output()
        .unwrap();
    std::fs::remove_dir_all(&empty).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("libtorch 2.11.0 not found") && stderr.contains("scripts/env.sh"), "{stderr}");
}
