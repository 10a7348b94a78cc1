//! Progress display and the append-only metrics log of a run.

use crate::RuntimeError;
use crate::fsx::write_atomic;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Progress of a long loop: an indicatif bar when stderr is a terminal; otherwise (nohup,
/// sbatch, a redirect) a log line at most every [`LOG_EVERY`] with position, rate, message
/// and ETA. Disabled: nothing.
#[derive(Debug)]
pub struct Progress {
    bar: ProgressBar,
    /// Log lines instead of a bar (stderr not a terminal).
    lines: Option<std::sync::Mutex<Lines>>,
}

#[derive(Debug)]
struct Lines {
    what: String,
    total: u64,
    started: std::time::Instant,
    start: u64,
    last: std::time::Instant,
    message: String,
}

/// How often a progress line is logged when stderr is not a terminal.
pub const LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// A progress display for `total` units starting at `start` (see [`Progress`]).
///
/// # Panics
/// Never: the template is a constant.
pub fn bar(total: u64, start: u64, what: &str, enabled: bool) -> Progress {
    use std::io::IsTerminal;
    let terminal = std::io::stderr().is_terminal();
    let pb = ProgressBar::with_draw_target(
        Some(total),
        if enabled && terminal { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() },
    );
    pb.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ETA {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb.set_prefix(what.to_string());
    pb.set_position(start);
    let now = std::time::Instant::now();
    let lines = (enabled && !terminal).then(|| {
        std::sync::Mutex::new(Lines {
            what: what.into(),
            total,
            started: now,
            start,
            last: now,
            message: String::new(),
        })
    });
    Progress { bar: pb, lines }
}

impl Progress {
    /// Moves the bar to `pos` (and logs a line when due, without a terminal).
    pub fn set_position(&self, pos: u64) {
        self.bar.set_position(pos);
        self.maybe_log(pos);
    }

    /// Advances the bar by `n`.
    pub fn inc(&self, n: u64) {
        self.bar.inc(n);
        self.maybe_log(self.bar.position());
    }

    /// The text shown beside the bar (and in the logged lines).
    pub fn set_message(&self, msg: String) {
        if let Some(l) = &self.lines
            && let Ok(mut l) = l.lock()
        {
            l.message.clone_from(&msg);
        }
        self.bar.set_message(msg);
    }

    /// Leaves the bar where it stopped (a failed or interrupted run).
    pub fn abandon(&self) {
        self.bar.abandon();
    }

    /// Removes the bar once the work is done.
    pub fn finish_and_clear(&self) {
        self.bar.finish_and_clear();
    }

    fn maybe_log(&self, pos: u64) {
        let Some(l) = &self.lines else { return };
        let Ok(mut l) = l.lock() else { return };
        let now = std::time::Instant::now();
        if now.duration_since(l.last) < LOG_EVERY && pos < l.total {
            return;
        }
        l.last = now;
        let secs = now.duration_since(l.started).as_secs_f64();
        let done = pos.saturating_sub(l.start);
        let eta = if done > 0 && pos < l.total {
            let s = secs / done as f64 * (l.total - pos) as f64;
            format!(
                ", ETA {}",
                if s >= 3600.0 { format!("{:.1} h", s / 3600.0) } else { format!("{:.0} min", (s / 60.0).ceil()) }
            )
        } else {
            String::new()
        };
        let pct = 100.0 * pos as f64 / l.total.max(1) as f64;
        tracing::info!("{} {pos}/{} ({pct:.0}%) {}{eta}", l.what, l.total, l.message);
    }
}

/// Append-only JSON-lines metrics file, one object per line, each with a `step` field.
#[derive(Debug)]
pub struct MetricsLog {
    path: PathBuf,
    file: std::fs::File,
}

impl MetricsLog {
    /// Opens `path` for appending, first dropping lines with `step > keep_upto` (written by
    /// a run that crashed after its last checkpoint, and about to be redone).
    ///
    /// # Errors
    /// [`RuntimeError::Io`] when an existing log cannot be rewritten or `path` cannot be opened
    /// for appending.
    pub fn open(path: &Path, keep_upto: u64) -> Result<MetricsLog, RuntimeError> {
        if let Ok(text) = std::fs::read_to_string(path) {
            let kept: String = text
                .lines()
                .filter(|l| {
                    serde_json::from_str::<serde_json::Value>(l)
                        .ok()
                        .and_then(|v| v["step"].as_u64())
                        .is_some_and(|s| s <= keep_upto)
                })
                .map(|l| format!("{l}\n"))
                .collect();
            write_atomic(path, kept.as_bytes())?;
        }
        let file =
            std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(|e| RuntimeError::io(path, e))?;
        Ok(MetricsLog { path: path.to_path_buf(), file })
    }

    /// Appends one record.
    ///
    /// # Errors
    /// [`RuntimeError::Io`] when the write fails.
    pub fn write(&mut self, record: &serde_json::Value) -> Result<(), RuntimeError> {
        writeln!(self.file, "{record}").map_err(|e| RuntimeError::io(&self.path, e))
    }

    /// Flushes to disk (called at checkpoints).
    ///
    /// # Errors
    /// [`RuntimeError::Io`] when the flush fails.
    pub fn sync(&mut self) -> Result<(), RuntimeError> {
        self.file.sync_data().map_err(|e| RuntimeError::io(&self.path, e))
    }
}
