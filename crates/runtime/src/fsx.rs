//! Durable file writes: a file is either its old content or its new, complete content, even
//! after a crash or power loss at any point.

use crate::RuntimeError;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// Flushes a file or folder to disk.
///
/// # Errors
/// [`RuntimeError::Io`] when it cannot be opened or synced.
pub fn fsync_path(path: &Path) -> Result<(), RuntimeError> {
    File::open(path).and_then(|f| f.sync_all()).map_err(|e| RuntimeError::io(path, e))
}

/// Writes `bytes` to `path` atomically: a temporary file beside it (named after the process
/// and call, so that processes writing the same file at once don't share one), fsync, rename
/// over `path`, fsync of the folder.
///
/// # Errors
/// [`RuntimeError::Io`] naming the temporary file or `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), RuntimeError> {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".tmp-{}-{}-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id(),
        CALLS.fetch_add(1, Ordering::Relaxed)
    ));
    {
        let mut f = File::create(&tmp).map_err(|e| RuntimeError::io(&tmp, e))?;
        f.write_all(bytes).and_then(|_| f.sync_all()).map_err(|e| RuntimeError::io(&tmp, e))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| RuntimeError::io(path, e))?;
    fsync_path(dir)
}

/// Writes `value` as pretty JSON, atomically ([`write_atomic`]).
///
/// # Errors
/// As [`write_atomic`].
pub fn write_json_atomic<T: serde::Serialize>(path: &Path, value: &T) -> Result<(), RuntimeError> {
    let text =
        serde_json::to_string_pretty(value).map_err(|e| RuntimeError::Config(format!("{}: {e}", path.display())))?;
    write_atomic(path, text.as_bytes())
}

/// SHA-256 of a file's bytes, lowercase hex.
///
/// # Errors
/// [`RuntimeError::Io`] when the file cannot be read.
pub fn sha256_file(path: &Path) -> Result<String, RuntimeError> {
    let bytes = std::fs::read(path).map_err(|e| RuntimeError::io(path, e))?;
    Ok(sha256_hex(&bytes))
}

/// SHA-256 of `bytes`, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}
