//! The search ledger: one JSON object per evaluated candidate (`ledger.jsonl`), appended and
//! fsynced before the search goes on, so a crash loses at most the candidates being
//! evaluated. A line cut short by a crash is dropped (and cut off the file) on reopening.

use crate::SearchError;
use crate::evolution::Origin;
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// One evaluated candidate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// Generation that proposed it, from 0.
    pub generation: usize,
    /// Position in its generation's proposal.
    pub index: usize,
    /// How it was proposed (random, mutation, crossover).
    pub origin: Origin,
    /// The architecture (one choice digit per block).
    pub arch: String,
    /// Backbone multiply-accumulates at the search's input size.
    pub backbone_macs: u64,
    /// Backbone parameters.
    pub backbone_params: u64,
    /// Latency from the per-op table, ms (when the search has one).
    pub latency_ms: Option<f64>,
    /// Fitness: AP or AP50 on the search-validation split, or top-1 (ClsNAS).
    pub fitness: f64,
    /// Every number the evaluation produced (COCO's 12 stats, or top-1/top-5).
    pub metrics: Vec<f64>,
    /// BN recalibration time, seconds.
    pub recalibration_seconds: f64,
    /// Evaluation time, seconds.
    pub evaluation_seconds: f64,
    /// The worker (thread or rank) that scored it.
    pub worker: usize,
    /// Resident memory of the search process when the entry was recorded, MiB.
    #[serde(default)]
    pub rss_mib: Option<f64>,
    /// libtorch threads of the CPU worker that scored it (see [`crate::Evaluation::threads`]);
    /// `eval det --search` reproduces the score with the same count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<i32>,
}

/// The append side of the ledger.
#[derive(Debug)]
pub struct Ledger {
    path: PathBuf,
    file: File,
}

impl Ledger {
    /// Opens (creating) the ledger at `path`, returning the complete entries already there.
    /// An incomplete last line (a crash mid-write) is dropped and truncated away; a
    /// malformed complete line is an error naming the line.
    ///
    /// # Errors
    /// [`SearchError::Io`] when the file cannot be read, truncated or opened for appending;
    /// [`SearchError::Ledger`] naming the first malformed line.
    pub fn open(path: &Path) -> Result<(Ledger, Vec<LedgerEntry>), SearchError> {
        let entries = match std::fs::read(path) {
            Ok(bytes) => {
                let keep = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
                if keep < bytes.len() {
                    tracing::warn!("{}: dropping an incomplete last line (interrupted write)", path.display());
                    let f = OpenOptions::new().write(true).open(path).map_err(|e| SearchError::io(path, e))?;
                    f.set_len(keep as u64).and_then(|_| f.sync_all()).map_err(|e| SearchError::io(path, e))?;
                }
                parse(path, &bytes[..keep])?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(SearchError::io(path, e)),
        };
        let file = OpenOptions::new().create(true).append(true).open(path).map_err(|e| SearchError::io(path, e))?;
        Ok((Ledger { path: path.to_path_buf(), file }, entries))
    }

    /// Appends one entry and fsyncs it.
    ///
    /// # Errors
    /// [`SearchError::Io`] when the write or the fsync fails.
    ///
    /// # Panics
    /// Never: an entry always serialises.
    pub fn append(&mut self, e: &LedgerEntry) -> Result<(), SearchError> {
        let mut line = serde_json::to_string(e).expect("serialisable");
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|_| self.file.sync_data())
            .map_err(|err| SearchError::io(&self.path, err))
    }
}

fn parse(path: &Path, bytes: &[u8]) -> Result<Vec<LedgerEntry>, SearchError> {
    let text = std::str::from_utf8(bytes).map_err(|e| SearchError::Ledger {
        path: path.to_path_buf(),
        line: 0,
        message: e.to_string(),
    })?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| SearchError::Ledger {
                path: path.to_path_buf(),
                line: i + 1,
                message: e.to_string(),
            })
        })
        .collect()
}

/// Reads a ledger without opening it for writing.
///
/// # Errors
/// [`SearchError::Io`] when the file cannot be read; [`SearchError::Ledger`] naming the first
/// malformed complete line.
pub fn read(path: &Path) -> Result<Vec<LedgerEntry>, SearchError> {
    let bytes = std::fs::read(path).map_err(|e| SearchError::io(path, e))?;
    let keep = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    parse(path, &bytes[..keep])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: usize, fitness: f64) -> LedgerEntry {
        LedgerEntry {
            generation: 0,
            index: i,
            origin: Origin::Random,
            arch: format!("{:020}", i),
            backbone_macs: 1,
            backbone_params: 2,
            latency_ms: None,
            fitness,
            metrics: vec![fitness, 0.1 + fitness],
            recalibration_seconds: 0.5,
            evaluation_seconds: 0.25,
            worker: 0,
            rss_mib: Some(123.5),
            threads: Some(1),
        }
    }

    #[test]
    fn round_trips_exactly_and_drops_a_torn_line() {
        let d = std::env::temp_dir().join(format!("detnas-ledger-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("ledger.jsonl");
        let (mut l, old) = Ledger::open(&p).unwrap();
        assert!(old.is_empty());
        // Fitness values must survive the text round trip bit for bit (resume exactness).
        let values = [0.1 + 0.2, 1.0 / 3.0, 0.316_227_766_016_837_94, 1e-300];
        for (i, v) in values.iter().enumerate() {
            l.append(&entry(i, *v)).unwrap();
        }
        drop(l);
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"{\"generation\":0,\"ind").unwrap();
        drop(f);
        let (mut l, back) = Ledger::open(&p).unwrap();
        assert_eq!(back.len(), 4);
        for (e, v) in back.iter().zip(values) {
            assert_eq!(e.fitness.to_bits(), v.to_bits());
        }
        l.append(&entry(9, 0.5)).unwrap();
        assert_eq!(read(&p).unwrap().len(), 5);
        std::fs::write(&p, "{\"generation\":0}\n").unwrap();
        let err = Ledger::open(&p).unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
        std::fs::remove_dir_all(d).unwrap();
    }
}
