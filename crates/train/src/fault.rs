//! Test-only fault injection through `DETNAS_FAULT` (comma-separated):
//! * `kill_after_step:N` — SIGKILL this process right after step N's update (and its
//!   checkpoint, if one is due);
//! * `kill_during_save:N` — SIGKILL while checkpoint N is written, before it is published;
//! * `nan_at_step:N` — make step N's loss NaN;
//! * `kill_after_candidate:N` — SIGKILL a search right after its N-th ledgered candidate
//!   (counted over the whole ledger).
//!
//! Kill tests run the real binary as a child and assert it died of SIGKILL.

fn value(kind: &str) -> Option<u64> {
    let spec = std::env::var("DETNAS_FAULT").ok()?;
    spec.split(',').find_map(|p| p.strip_prefix(kind)?.strip_prefix(':')?.trim().parse().ok())
}

/// Kills this process with SIGKILL (no destructors, no flushing: a real crash).
pub fn kill_now() -> ! {
    let _ = std::process::Command::new("kill").args(["-KILL", &std::process::id().to_string()]).status();
    // `kill` must not return; abort if it did.
    std::process::abort()
}

/// Called after step `step` completed.
pub fn after_step(step: u64) {
    if value("kill_after_step") == Some(step) {
        kill_now();
    }
}

/// Called while checkpoint `step` is being written.
pub fn during_save(step: u64) {
    if value("kill_during_save") == Some(step) {
        kill_now();
    }
}

/// Whether step `step`'s loss must be replaced by NaN.
pub fn nan_at(step: u64) -> bool {
    value("nan_at_step") == Some(step)
}

/// Called after a search appended its `count`-th ledger entry.
pub fn after_candidate(count: u64) {
    if value("kill_after_candidate") == Some(count) {
        kill_now();
    }
}
