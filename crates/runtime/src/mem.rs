//! Resident memory of this process, from `/proc/self/status` (Linux; `None` elsewhere).
//!
//! `VmRSS` is the resident set now, `VmHWM` its high-water mark since the process started or
//! since the last [`reset_peak`] (which writes `5` to `/proc/self/clear_refs`, Linux ≥ 4.0).
//! A stage that resets the mark at its start and reads it at its end gets its own peak even
//! when several stages run in one process.

/// A field of `/proc/self/status` in MiB (the kernel reports kB).
fn status_mib(field: &str) -> Option<f64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    let kb: f64 = line[field.len()..].split_whitespace().next()?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Resident set size now, MiB.
pub fn rss_mib() -> Option<f64> {
    status_mib("VmRSS:")
}

/// Peak resident set size since the start or the last [`reset_peak`], MiB.
pub fn peak_rss_mib() -> Option<f64> {
    status_mib("VmHWM:")
}

/// Resets the peak to the current resident set. Returns whether the kernel accepted it.
pub fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// The memory record of one stage or run: resident set at the start and end, and the peak
/// between them (MiB, `None` where the platform does not report it), plus the GPU's peak
/// allocation when the device exposes one.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MemoryRecord {
    /// Resident set at the start, MiB.
    pub start_rss_mib: Option<f64>,
    /// Resident set at the end, MiB.
    pub end_rss_mib: Option<f64>,
    /// Largest resident set between start and end, MiB.
    pub peak_rss_mib: Option<f64>,
    /// Peak bytes held by the GPU allocator, MiB (`None` on the CPU).
    #[serde(default)]
    pub gpu_peak_mib: Option<f64>,
}

/// Measures the peak of a span of work. [`PeakMeter::start`] resets the high-water mark (a
/// pipeline stage); [`PeakMeter::observe`] does not, so that a run inside such a stage
/// reports the peak since the stage began (or, alone in its process, since the start).
#[derive(Debug)]
pub struct PeakMeter {
    start: Option<f64>,
}

impl PeakMeter {
    /// Starts a span (resets the process's high-water mark).
    pub fn start() -> PeakMeter {
        reset_peak();
        PeakMeter { start: rss_mib() }
    }

    /// Starts a span without resetting the high-water mark.
    pub fn observe() -> PeakMeter {
        PeakMeter { start: rss_mib() }
    }

    /// The record of the span so far. Where the kernel refused the reset, the peak is the
    /// process's since it started: an upper bound. The kernel batches each thread's resident
    /// page count, so the mark can trail a reading by a few hundred KiB; the peak is never
    /// reported below the start or end reading.
    pub fn finish(&self) -> MemoryRecord {
        let end = rss_mib();
        let peak = [peak_rss_mib(), self.start, end].into_iter().flatten().reduce(f64::max);
        MemoryRecord { start_rss_mib: self.start, end_rss_mib: end, peak_rss_mib: peak, gpu_peak_mib: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_follows_a_large_allocation_and_resets() {
        if rss_mib().is_none() {
            return; // not Linux
        }
        let before = PeakMeter::start();
        let base = before.finish().peak_rss_mib.unwrap();
        // Touch 64 MiB so that it is resident, then free it.
        let mut v = vec![0u8; 64 << 20];
        for i in (0..v.len()).step_by(4096) {
            v[i] = 1;
        }
        std::hint::black_box(&v);
        let during = rss_mib().unwrap();
        drop(v);
        let r = before.finish();
        assert!(during >= base + 60.0, "64 MiB touched: {base} → {during}");
        assert!(r.peak_rss_mib.unwrap() >= base + 60.0, "{r:?}");
        assert!(reset_peak());
        let after = peak_rss_mib().unwrap();
        assert!(after < r.peak_rss_mib.unwrap() - 30.0, "the mark was reset: {after} vs {r:?}");
    }
}
