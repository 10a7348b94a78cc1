//! Per-phase wall times of a step (`DETNAS_PHASE_TIMING=1`): backbone, FPN, head, anchors,
//! matching and sampling, proposals with NMS, RoI pooling, RoI head, losses, backward,
//! optimiser, post-processing.
//!
//! A phase is timed from [`enter`] until its guard drops. When timing is on, the device is
//! synchronised at both ends, so queued GPU work is charged to the phase that queued it (this
//! slows a GPU down; it is a diagnostic). When it is off, a guard costs one relaxed atomic load.
//! Phases do not nest: entering one while another is active on the thread ends the first.
//! Times accumulate per thread until [`take`].

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Instant;
use tch::Device;

/// 0 unknown (read the environment), 1 off, 2 on.
static STATE: AtomicU8 = AtomicU8::new(0);

thread_local! {
    static TIMES: RefCell<BTreeMap<&'static str, (f64, u64)>> = const { RefCell::new(BTreeMap::new()) };
    static ACTIVE: RefCell<Option<(&'static str, Instant, Device)>> = const { RefCell::new(None) };
}

/// Whether phases are timed: `DETNAS_PHASE_TIMING=1`, or [`set_enabled`].
pub fn enabled() -> bool {
    match STATE.load(Ordering::Relaxed) {
        2 => true,
        1 => false,
        _ => {
            let on = std::env::var("DETNAS_PHASE_TIMING").is_ok_and(|v| v == "1");
            STATE.store(if on { 2 } else { 1 }, Ordering::Relaxed);
            on
        }
    }
}

/// Turns phase timing on or off for the process.
pub fn set_enabled(on: bool) {
    STATE.store(if on { 2 } else { 1 }, Ordering::Relaxed);
}

/// The active phase; ends it when dropped.
#[must_use = "the phase ends when the guard is dropped"]
#[derive(Debug)]
pub struct Phase {
    active: bool,
}

/// Starts phase `name` of work on `device` (ending the thread's active phase, if any).
pub fn enter(name: &'static str, device: Device) -> Phase {
    if !enabled() {
        return Phase { active: false };
    }
    finish();
    crate::synchronize(device);
    ACTIVE.with(|a| *a.borrow_mut() = Some((name, Instant::now(), device)));
    Phase { active: true }
}

fn finish() {
    if let Some((name, t0, device)) = ACTIVE.with(|a| a.borrow_mut().take()) {
        crate::synchronize(device);
        let s = t0.elapsed().as_secs_f64();
        TIMES.with(|t| {
            let mut t = t.borrow_mut();
            let e = t.entry(name).or_insert((0.0, 0));
            e.0 += s;
            e.1 += 1;
        });
    }
}

impl Drop for Phase {
    fn drop(&mut self) {
        if self.active {
            finish();
        }
    }
}

/// Times `f` as phase `name`.
pub fn time<R>(name: &'static str, device: Device, f: impl FnOnce() -> R) -> R {
    let _p = enter(name, device);
    f()
}

/// This thread's accumulated seconds per phase since the last call, and clears them.
pub fn take() -> BTreeMap<String, f64> {
    finish();
    TIMES.with(|t| std::mem::take(&mut *t.borrow_mut())).into_iter().map(|(k, (s, _))| (k.to_string(), s)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_accumulate_and_do_not_nest() {
        set_enabled(true);
        let _ = take();
        {
            let _a = enter("a", Device::Cpu);
            std::thread::sleep(std::time::Duration::from_millis(20));
            let _b = enter("b", Device::Cpu);
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        time("a", Device::Cpu, || std::thread::sleep(std::time::Duration::from_millis(5)));
        let t = take();
        assert!(t["a"] >= 0.025 && t["a"] < 0.2, "{t:?}");
        assert!(t["b"] >= 0.01 && t["b"] < 0.2, "{t:?}");
        assert!(take().is_empty());
    }
}
