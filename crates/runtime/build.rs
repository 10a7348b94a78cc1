//! Records the git revision for provenance (`code_version`).
fn main() {
    println!("cargo:rerun-if-changed=../../.git/HEAD");
    println!("cargo:rerun-if-changed=../../.git/refs/heads");
    if let Ok(out) = std::process::Command::new("git").args(["rev-parse", "--short=12", "HEAD"]).output()
        && out.status.success()
    {
        println!("cargo:rustc-env=DETNAS_GIT_REV={}", String::from_utf8_lossy(&out.stdout).trim());
    }
}
