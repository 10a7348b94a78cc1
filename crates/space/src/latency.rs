//! Measured-latency tables: the forward latency of the stem and of every allowed choice of
//! every block, measured once on one device at one input size (by the `nn` crate), cached to
//! disk, and summed per architecture. Block latencies are independent of the other blocks'
//! choices (each block's input shape is fixed by the space), so the sum is a per-op lookup
//! table as in hardware-aware NAS; it ignores inter-op effects (caches, launch overlap).

use crate::cost::InputSize;
use crate::{Arch, SearchSpace, SpaceError};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Per-op latencies in milliseconds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LatencyTable {
    /// The space the table was measured for (compared in full when the table is used).
    pub space: SearchSpace,
    /// Input size of the whole network the ops were measured at.
    pub input: InputSize,
    /// Batch size of the measurement.
    pub batch: u64,
    /// Device as written by the measurer (`cpu`, `cuda:0`).
    pub device: String,
    /// Intra-op threads during the measurement.
    pub threads: u64,
    /// Median over this many timed repetitions (after warm-up).
    pub repeats: u64,
    /// Stem latency.
    pub stem_ms: f64,
    /// `blocks[b][choice id]`: latency of that choice in block `b`; `None` for choices the
    /// space does not allow.
    pub blocks: Vec<[Option<f64>; 4]>,
}

impl LatencyTable {
    /// Summed latency of `arch` (stem + its choice in every block), in milliseconds.
    ///
    /// # Errors
    /// [`SpaceError::WrongLength`] or [`SpaceError::ChoiceNotAllowed`] when `arch` does not fit
    /// the table's space; [`SpaceError::InvalidParameter`] for a missing entry.
    pub fn latency_ms(&self, arch: &Arch) -> Result<f64, SpaceError> {
        self.space.validate(arch)?;
        let mut total = self.stem_ms;
        for (b, c) in arch.choices().iter().enumerate() {
            total += self.blocks[b][c.id() as usize].ok_or_else(|| {
                SpaceError::InvalidParameter(format!("latency table has no entry for block {b} choice {}", c.id()))
            })?;
        }
        Ok(total)
    }

    /// An error unless the table was measured for `space`, `input` and `device`.
    ///
    /// # Errors
    /// [`SpaceError::InvalidParameter`] naming the first mismatch: space, input size, device or
    /// number of blocks.
    pub fn check_matches(&self, space: &SearchSpace, input: InputSize, device: &str) -> Result<(), SpaceError> {
        let mismatch = |what: &str| {
            Err(SpaceError::InvalidParameter(format!(
                "latency table was measured for another {what}; measure it again"
            )))
        };
        if &self.space != space {
            return mismatch(&format!("space ('{}', not '{}')", self.space.name, space.name));
        }
        if self.input != input {
            return mismatch(&format!(
                "input size ({}x{}, not {}x{})",
                self.input.height, self.input.width, input.height, input.width
            ));
        }
        if self.device != device {
            return mismatch(&format!("device ('{}', not '{device}')", self.device));
        }
        if self.blocks.len() != space.num_blocks() {
            return mismatch("number of blocks");
        }
        Ok(())
    }

    /// The smallest and largest summed latency over the space (per-block extremes).
    pub fn bounds(&self) -> (f64, f64) {
        self.blocks.iter().fold((self.stem_ms, self.stem_ms), |(lo, hi), row| {
            let v: Vec<f64> = row.iter().flatten().copied().collect();
            (lo + v.iter().copied().fold(f64::INFINITY, f64::min), hi + v.iter().copied().fold(0.0, f64::max))
        })
    }

    /// Reads a table written by [`LatencyTable::write`].
    ///
    /// # Errors
    /// [`SpaceError::Io`] when the file cannot be read; [`SpaceError::Toml`] when its JSON is not a
    /// table.
    pub fn read(path: &Path) -> Result<LatencyTable, SpaceError> {
        let text = std::fs::read_to_string(path).map_err(|e| SpaceError::Io { path: path.to_path_buf(), source: e })?;
        serde_json::from_str(&text)
            .map_err(|e| SpaceError::Toml { path: path.to_path_buf(), message: format!("latency table: {e}") })
    }

    /// Writes the table as JSON (through a temporary file and a rename).
    ///
    /// # Errors
    /// [`SpaceError::Io`] when the folder or the temporary file cannot be written or renamed.
    ///
    /// # Panics
    /// Never: a table always serialises.
    pub fn write(&self, path: &Path) -> Result<(), SpaceError> {
        let io = |e| SpaceError::Io { path: path.to_path_buf(), source: e };
        if let Some(d) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(d).map_err(io)?;
        }
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_string_pretty(self).expect("serialisable")).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Choice;

    fn table(space: &SearchSpace) -> LatencyTable {
        // Block b, choice c costs (b + 1) * 10^c ms: sums are easy to state by hand.
        LatencyTable {
            space: space.clone(),
            input: InputSize::square(224),
            batch: 1,
            device: "cpu".into(),
            threads: 1,
            repeats: 3,
            stem_ms: 0.5,
            blocks: (0..space.num_blocks())
                .map(|b| std::array::from_fn(|c| Some((b as f64 + 1.0) * 10f64.powi(c as i32))))
                .collect(),
        }
    }

    #[test]
    fn sums_per_op_entries() {
        let s = SearchSpace::small();
        let t = table(&s);
        let all3 = Arch::uniform(Choice::Shuffle3, 20);
        // 0.5 + Σ_{b=1..20} b = 210.5
        assert_eq!(t.latency_ms(&all3).unwrap(), 210.5);
        let mut ids = vec![0u8; 20];
        ids[4] = 3; // block 4: 5 * 1000 instead of 5
        let a = Arch::new(ids.into_iter().map(|i| Choice::from_id(i).unwrap()).collect());
        assert_eq!(t.latency_ms(&a).unwrap(), 210.5 - 5.0 + 5000.0);
        let (lo, hi) = t.bounds();
        assert_eq!((lo, hi), (210.5, 0.5 + 210.0 * 1000.0));
    }

    #[test]
    fn mismatches_and_round_trip() {
        let s = SearchSpace::small();
        let t = table(&s);
        assert!(t.check_matches(&s, InputSize::square(224), "cpu").is_ok());
        assert!(t.check_matches(&s, InputSize::square(320), "cpu").unwrap_err().to_string().contains("input size"));
        assert!(t.check_matches(&SearchSpace::large(), InputSize::square(224), "cpu").is_err());
        assert!(t.check_matches(&s, InputSize::square(224), "cuda:0").unwrap_err().to_string().contains("device"));
        assert!(t.latency_ms(&Arch::uniform(Choice::Shuffle3, 40)).is_err());
        let p = std::env::temp_dir().join(format!("detnas-lat-{}.json", std::process::id()));
        t.write(&p).unwrap();
        assert_eq!(LatencyTable::read(&p).unwrap(), t);
        std::fs::remove_file(p).unwrap();
    }
}
