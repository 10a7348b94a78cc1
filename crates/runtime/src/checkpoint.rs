//! Durable checkpoints.
//!
//! Layout: `DIR/step-00000123/` holding the files a caller writes plus `manifest.json`
//! (format version and SHA-256 of every file), and `DIR/LATEST` naming the newest.
//!
//! Writing: files go into `DIR/.tmp-step-…`, each is fsynced, the manifest is written and
//! fsynced, the folder is fsynced, renamed to its final name, and `DIR` is fsynced; then
//! `LATEST` is replaced the same way (temporary file, fsync, rename). A crash at any point
//! leaves either the previous checkpoint set or the new complete one; stray temporary folders
//! are removed by the next save or load. Old checkpoints beyond `keep` are deleted after the
//! new one is durable.
//!
//! Reading: the latest checkpoint is the `step-N` folder with the largest parsed `N` (never a
//! string sort; `LATEST` is informative). Every file's checksum is verified; a missing file,
//! an unknown file, a checksum mismatch or an unknown format is an error — never a silent
//! fallback to an older checkpoint or a fresh start.

use crate::RuntimeError;
use crate::fsx::{fsync_path, sha256_file, write_atomic};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Version of the checkpoint layout.
pub const FORMAT: u32 = 1;
const MANIFEST: &str = "manifest.json";

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    format: u32,
    step: u64,
    files: BTreeMap<String, String>,
}

fn step_dir_name(step: u64) -> String {
    format!("step-{step:08}")
}

/// Parses `step-N`.
pub fn parse_step_dir(name: &str) -> Option<u64> {
    name.strip_prefix("step-")?.parse().ok()
}

fn remove_stray_temps(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(".tmp-step-") {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// All complete-looking checkpoints (`step-N` folders), sorted by step ascending.
pub fn list(dir: &Path) -> Vec<(u64, PathBuf)> {
    let mut found: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| parse_step_dir(&e.file_name().to_string_lossy()).map(|s| (s, e.path())))
        .collect();
    found.sort_by_key(|(s, _)| *s);
    found
}

/// Whether run folder `out` holds progress: a checkpoint (`checkpoints/LATEST`) or a search
/// ledger with a record. A folder with only `config.toml` (and generated data) is a start
/// that failed before its first checkpoint.
pub fn has_progress(out: &Path) -> bool {
    out.join("checkpoints").join("LATEST").is_file()
        || std::fs::metadata(out.join("ledger.jsonl")).is_ok_and(|m| m.len() > 0)
}

/// How a refused run folder can be overridden, for the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MismatchOverride {
    /// `--allow-mismatch` continues with the new configuration.
    Flag(bool),
    /// The verb offers no override (a search ledger must come from one configuration).
    None,
}

/// Claims run folder `out` for a configuration: writes `config.toml` (atomically) unless the
/// folder holds progress under a different one (`hash_of` gives an existing file's result
/// hash, `None` when unreadable; `changes` lists what differs, `key: old → new`). A folder
/// without progress ([`has_progress`]) is taken over with a note.
///
/// # Errors
/// [`RuntimeError::Config`] when `out` holds progress under a different configuration and
/// no override is given, naming the changed keys; [`RuntimeError::Io`] when `out` cannot be
/// created or `config.toml` written.
pub fn claim_run_dir(
    out: &Path,
    config_toml: &str,
    hash: &str,
    hash_of: impl Fn(&str) -> Option<String>,
    changes: impl Fn(&str) -> Vec<String>,
    allow: MismatchOverride,
) -> Result<(), RuntimeError> {
    std::fs::create_dir_all(out).map_err(|e| RuntimeError::io(out, e))?;
    let cfg_path = out.join("config.toml");
    if let Ok(old) = std::fs::read_to_string(&cfg_path)
        && hash_of(&old).as_deref() != Some(hash)
    {
        let list = changes(&old);
        let what = if list.is_empty() {
            "the configuration changed".to_string()
        } else {
            format!("changed: {}", list.join("; "))
        };
        if !has_progress(out) {
            tracing::info!("{} came from a start that made no checkpoint; replacing it ({what})", cfg_path.display());
        } else {
            match allow {
                MismatchOverride::Flag(true) => {
                    tracing::warn!("configuration differs from {} ({what}); continuing as allowed", cfg_path.display())
                }
                MismatchOverride::Flag(false) => {
                    return Err(RuntimeError::Config(format!(
                        "{} holds the run of a different configuration ({what}); use another --out, or \
                         --allow-mismatch to continue this run with the new configuration",
                        cfg_path.display()
                    )));
                }
                MismatchOverride::None => {
                    return Err(RuntimeError::Config(format!(
                        "{} holds the run of a different configuration ({what}); use another --out (a search \
                         folder keeps the results of one configuration), or delete {} to start over",
                        cfg_path.display(),
                        out.display()
                    )));
                }
            }
        }
    }
    write_atomic(&cfg_path, config_toml.as_bytes())
}

/// Saves checkpoint `step` into `dir`: `write` fills the given temporary folder with files.
/// Calls `before_rename` (fault injection) between writing and publishing.
///
/// # Errors
/// Whatever `write` returns; [`RuntimeError::Io`] when a folder or file cannot be created,
/// read, synced or renamed; [`RuntimeError::Checkpoint`] saying so when the disk is full.
/// A checkpoint that fails before it is published leaves no partial folder behind.
pub fn save(
    dir: &Path,
    step: u64,
    keep: usize,
    write: impl FnOnce(&Path) -> Result<(), RuntimeError>,
    before_rename: impl FnOnce(),
) -> Result<PathBuf, RuntimeError> {
    std::fs::create_dir_all(dir).map_err(|e| RuntimeError::io(dir, e))?;
    remove_stray_temps(dir);
    let name = step_dir_name(step);
    let tmp = dir.join(format!(".tmp-{name}"));
    if let Err(e) = stage(&tmp, step, write) {
        // A partial checkpoint only holds space: remove it, keep the previous one.
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(if is_disk_full(&e) {
            RuntimeError::checkpoint(
                dir,
                format!(
                    "the disk is full: checkpoint {name} could not be written ({e}); its partial files were \
                     removed and earlier checkpoints are intact; free space and re-run the same command to resume"
                ),
            )
        } else {
            e
        });
    }
    before_rename();
    let final_dir = dir.join(&name);
    if final_dir.exists() {
        std::fs::remove_dir_all(&final_dir).map_err(|e| RuntimeError::io(&final_dir, e))?;
    }
    std::fs::rename(&tmp, &final_dir).map_err(|e| RuntimeError::io(&final_dir, e))?;
    fsync_path(dir)?;
    write_atomic(&dir.join("LATEST"), format!("{name}\n").as_bytes())?;
    let all = list(dir);
    if all.len() > keep.max(1) {
        for (_, old) in &all[..all.len() - keep.max(1)] {
            let _ = std::fs::remove_dir_all(old);
        }
    }
    Ok(final_dir)
}

/// Fills `tmp` (`write`), then writes its manifest and syncs it.
fn stage(tmp: &Path, step: u64, write: impl FnOnce(&Path) -> Result<(), RuntimeError>) -> Result<(), RuntimeError> {
    std::fs::create_dir_all(tmp).map_err(|e| RuntimeError::io(tmp, e))?;
    write(tmp)?;
    let mut files = BTreeMap::new();
    for e in std::fs::read_dir(tmp).map_err(|e| RuntimeError::io(tmp, e))? {
        let e = e.map_err(|e| RuntimeError::io(tmp, e))?;
        let fname = e.file_name().to_string_lossy().into_owned();
        fsync_path(&e.path())?;
        files.insert(fname, sha256_file(&e.path())?);
    }
    let manifest = Manifest { format: FORMAT, step, files };
    write_atomic(&tmp.join(MANIFEST), serde_json::to_string_pretty(&manifest).expect("serialisable").as_bytes())?;
    fsync_path(tmp)
}

/// Whether `e` reports a full disk (`ENOSPC`), directly or in a library's message.
fn is_disk_full(e: &RuntimeError) -> bool {
    match e {
        RuntimeError::Io { source, .. } if source.kind() == std::io::ErrorKind::StorageFull => true,
        e => {
            let m = e.to_string();
            m.contains("No space left on device") || m.contains("os error 28") || m.contains("StorageFull")
        }
    }
}

/// Verifies a checkpoint folder: format, every listed file present with its checksum, no
/// unlisted file. Returns its step.
///
/// # Errors
/// [`RuntimeError::Checkpoint`] for a missing or corrupt manifest, an unsupported format, or a
/// missing, altered or unlisted file; [`RuntimeError::Io`] when a file cannot be read.
pub fn verify(path: &Path) -> Result<u64, RuntimeError> {
    let mpath = path.join(MANIFEST);
    let text = std::fs::read_to_string(&mpath)
        .map_err(|e| RuntimeError::checkpoint(path, format!("no readable manifest.json ({e})")))?;
    let m: Manifest = serde_json::from_str(&text)
        .map_err(|e| RuntimeError::checkpoint(path, format!("corrupt manifest.json: {e}")))?;
    if m.format != FORMAT {
        return Err(RuntimeError::checkpoint(
            path,
            format!("checkpoint format {} is not the supported format {FORMAT}", m.format),
        ));
    }
    for (name, want) in &m.files {
        let f = path.join(name);
        if !f.is_file() {
            return Err(RuntimeError::checkpoint(path, format!("file {name} listed in the manifest is missing")));
        }
        let got = sha256_file(&f)?;
        if &got != want {
            return Err(RuntimeError::checkpoint(
                path,
                format!("checksum mismatch for {name} (file corrupted or modified)"),
            ));
        }
    }
    for e in std::fs::read_dir(path).map_err(|e| RuntimeError::io(path, e))?.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n != MANIFEST && !m.files.contains_key(&n) {
            return Err(RuntimeError::checkpoint(path, format!("unexpected file {n} not in the manifest")));
        }
    }
    Ok(m.step)
}

/// The newest verified checkpoint of `dir`, or `None` when there is none at all.
///
/// # Errors
/// As [`verify`] for the newest `step-N` folder (the message lists the older ones), and
/// [`RuntimeError::Checkpoint`] when its manifest's step differs from its name.
pub fn latest(dir: &Path) -> Result<Option<(u64, PathBuf)>, RuntimeError> {
    remove_stray_temps(dir);
    let all = list(dir);
    let Some((step, path)) = all.last().cloned() else { return Ok(None) };
    let verified = verify(&path).map_err(|e| {
        let older: Vec<String> = all[..all.len() - 1].iter().map(|(_, p)| p.display().to_string()).collect();
        match e {
            RuntimeError::Checkpoint { path, message } if !older.is_empty() => RuntimeError::Checkpoint {
                path,
                message: format!(
                    "{message}; older checkpoints exist ({}) — pass one explicitly to resume from it",
                    older.join(", ")
                ),
            },
            other => other,
        }
    })?;
    if verified != step {
        return Err(RuntimeError::checkpoint(&path, format!("manifest says step {verified}, folder name says {step}")));
    }
    Ok(Some((step, path)))
}

/// Resolves a user-given checkpoint path: a `step-N` folder, or a run/checkpoints folder
/// (its latest). Verifies it.
///
/// # Errors
/// As [`verify`] and [`latest`]; [`RuntimeError::Checkpoint`] when no checkpoint is found.
pub fn resolve(path: &Path) -> Result<(u64, PathBuf), RuntimeError> {
    if path.join(MANIFEST).is_file() {
        return Ok((verify(path)?, path.to_path_buf()));
    }
    for dir in [path.join("checkpoints"), path.to_path_buf()] {
        if let Some(found) = latest(&dir)? {
            return Ok(found);
        }
    }
    Err(RuntimeError::checkpoint(
        path,
        "no checkpoint found (expected a step-N folder, a checkpoints folder or a run folder)",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_folders_refuse_other_configurations_only_once_they_hold_progress() {
        let d = tmpdir("claim");
        let hash_of = |t: &str| Some(t.trim().to_string());
        let changes = |old: &str| vec![format!("x: {} → b", old.trim())];
        claim_run_dir(&d, "a", "a", hash_of, changes, MismatchOverride::Flag(false)).unwrap();
        // A start that failed before its first checkpoint does not block the corrected one.
        claim_run_dir(&d, "b", "b", hash_of, changes, MismatchOverride::Flag(false)).unwrap();
        assert_eq!(std::fs::read_to_string(d.join("config.toml")).unwrap(), "b");
        std::fs::create_dir_all(d.join("checkpoints")).unwrap();
        std::fs::write(d.join("checkpoints/LATEST"), "step-00000001\n").unwrap();
        let e = claim_run_dir(&d, "c", "c", hash_of, changes, MismatchOverride::Flag(false)).unwrap_err().to_string();
        assert!(e.contains("changed: x: b → b") && e.contains("--allow-mismatch"), "{e}");
        let e = claim_run_dir(&d, "c", "c", hash_of, changes, MismatchOverride::None).unwrap_err().to_string();
        assert!(!e.contains("--allow-mismatch") && e.contains("another --out"), "{e}");
        claim_run_dir(&d, "c", "c", hash_of, changes, MismatchOverride::Flag(true)).unwrap();
        assert_eq!(std::fs::read_to_string(d.join("config.toml")).unwrap(), "c");
        std::fs::remove_dir_all(&d).unwrap();
    }

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("detnas-ckpt-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn save_text(dir: &Path, step: u64, keep: usize, text: &str) -> PathBuf {
        save(
            dir,
            step,
            keep,
            |tmp| std::fs::write(tmp.join("a.txt"), text).map_err(|e| RuntimeError::io(tmp, e)),
            || (),
        )
        .unwrap()
    }

    #[test]
    fn latest_by_parsed_step_with_keep() {
        let d = tmpdir("order");
        for s in [9, 10, 100, 99] {
            save_text(&d, s, 3, &s.to_string());
        }
        // keep = 3 removed the smallest step (by number, not by string).
        assert_eq!(list(&d).iter().map(|x| x.0).collect::<Vec<_>>(), vec![10, 99, 100]);
        assert_eq!(latest(&d).unwrap().unwrap().0, 100);
        assert_eq!(std::fs::read_to_string(d.join("LATEST")).unwrap().trim(), "step-00000099");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn corruption_is_an_error_not_a_fallback() {
        let d = tmpdir("corrupt");
        save_text(&d, 1, 5, "one");
        let p = save_text(&d, 2, 5, "two");
        std::fs::write(p.join("a.txt"), "tw0").unwrap();
        let e = latest(&d).unwrap_err().to_string();
        assert!(e.contains("checksum mismatch for a.txt") && e.contains("step-00000001"), "{e}");
        std::fs::write(p.join("a.txt"), "two").unwrap();
        assert_eq!(latest(&d).unwrap().unwrap().0, 2);
        std::fs::write(p.join("extra"), "x").unwrap();
        assert!(latest(&d).unwrap_err().to_string().contains("unexpected file extra"));
        std::fs::remove_file(p.join("extra")).unwrap();
        std::fs::remove_file(p.join("a.txt")).unwrap();
        assert!(latest(&d).unwrap_err().to_string().contains("missing"));
        std::fs::write(p.join(MANIFEST), "{").unwrap();
        assert!(latest(&d).unwrap_err().to_string().contains("corrupt manifest"));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_full_disk_removes_the_partial_checkpoint_and_says_so() {
        let d = tmpdir("full");
        save_text(&d, 1, 5, "one");
        // /dev/full fails every write with ENOSPC, as a full disk does.
        let e = save(
            &d,
            2,
            5,
            |tmp| {
                std::fs::write(tmp.join("a.txt"), "two").map_err(|e| RuntimeError::io(tmp, e))?;
                std::fs::write("/dev/full", "two").map_err(|e| RuntimeError::io(&tmp.join("b.txt"), e))
            },
            || {},
        )
        .unwrap_err();
        let m = e.to_string();
        assert!(m.contains("the disk is full") && m.contains("re-run the same command to resume"), "{m}");
        assert_eq!(e.exit_code(), 5);
        assert!(!d.join(".tmp-step-00000002").exists(), "the partial checkpoint holds the space");
        assert_eq!(latest(&d).unwrap().unwrap().0, 1);
        // Another failure is passed on as it is, and its partial files are removed too.
        let e = save(&d, 3, 5, |tmp| Err(RuntimeError::checkpoint(tmp, "bad tensor")), || {}).unwrap_err();
        assert!(e.to_string().contains("bad tensor") && !e.to_string().contains("disk is full"));
        assert!(!d.join(".tmp-step-00000003").exists());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn interrupted_save_leaves_previous_checkpoint() {
        let d = tmpdir("interrupt");
        save_text(&d, 1, 5, "one");
        // A save that dies before publishing leaves only a temporary folder.
        let r = std::panic::catch_unwind(|| {
            save(
                &d,
                2,
                5,
                |tmp| std::fs::write(tmp.join("a.txt"), "two").map_err(|e| RuntimeError::io(tmp, e)),
                || panic!("killed"),
            )
        });
        assert!(r.is_err());
        assert!(d.join(".tmp-step-00000002").exists());
        assert_eq!(latest(&d).unwrap().unwrap().0, 1);
        assert!(!d.join(".tmp-step-00000002").exists(), "stray temporary folder removed");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
