//! Fault injection for the crash tests, armed only by `DETNAS_FAULT` in the environment of
//! the process (read once, at the first check). Comma-separated:
//! * `kill_after_step:N` — SIGKILL right after training step N (and its checkpoint, if due);
//! * `kill_during_save:N` — SIGKILL while checkpoint N is written, before it is published;
//! * `nan_at_step:N` — make step N's loss NaN;
//! * `out_of_memory_at_step:N` — make step N ask libtorch for more memory than exists;
//! * `kill_after_candidate:N` — SIGKILL a search right after its N-th ledger entry (on a
//!   worker rank of a multi-process search: once it has claimed its N-th candidate, before
//!   its result).
//!
//! Unarmed, every check is one load of a static. The crash tests run the real binary as a
//! child and assert that it died of SIGKILL.

use std::sync::OnceLock;

#[derive(Debug, Default)]
struct Faults {
    kill_after_step: Option<u64>,
    kill_during_save: Option<u64>,
    nan_at_step: Option<u64>,
    out_of_memory_at_step: Option<u64>,
    kill_after_candidate: Option<u64>,
}

fn faults() -> &'static Faults {
    static FAULTS: OnceLock<Faults> = OnceLock::new();
    FAULTS.get_or_init(|| {
        let Ok(spec) = std::env::var("DETNAS_FAULT") else { return Faults::default() };
        let get = |kind: &str| {
            spec.split(',').find_map(|p| p.trim().strip_prefix(kind)?.strip_prefix(':')?.trim().parse().ok())
        };
        Faults {
            kill_after_step: get("kill_after_step"),
            kill_during_save: get("kill_during_save"),
            nan_at_step: get("nan_at_step"),
            out_of_memory_at_step: get("out_of_memory_at_step"),
            kill_after_candidate: get("kill_after_candidate"),
        }
    })
}

/// Ends this process with SIGKILL: no destructors, no flushing, as a real crash.
pub fn kill_now() -> ! {
    #[allow(unsafe_code)]
    // SAFETY: kill(2) on our own pid with a valid signal number has no memory effects.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
    std::process::abort()
}

/// Called after training step `step` completed.
pub fn after_step(step: u64) {
    if faults().kill_after_step == Some(step) {
        kill_now();
    }
}

/// Called while checkpoint `step` is being written.
pub fn during_save(step: u64) {
    if faults().kill_during_save == Some(step) {
        kill_now();
    }
}

/// Whether step `step`'s loss must be replaced by NaN.
pub fn nan_at(step: u64) -> bool {
    faults().nan_at_step == Some(step)
}

/// Whether step `step` should fail to allocate.
pub fn out_of_memory_at(step: u64) -> bool {
    faults().out_of_memory_at_step == Some(step)
}

/// Called after a search appended its `count`-th ledger entry.
pub fn after_candidate(count: u64) {
    if faults().kill_after_candidate == Some(count) {
        kill_now();
    }
}
