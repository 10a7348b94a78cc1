//! Progress display and the append-only metrics log of a run.

use crate::RuntimeError;
use crate::fsx::write_atomic;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::Write;
use std::path::{Path, PathBuf};

/// An indicatif bar on stderr (hidden when stderr is not a terminal or when disabled).
pub fn bar(total: u64, start: u64, what: &str, enabled: bool) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(
        Some(total),
        if enabled { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() },
    );
    pb.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ETA {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb.set_prefix(what.to_string());
    pb.set_position(start);
    pb
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
