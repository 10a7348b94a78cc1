//! [`Arch`]: one choice id per block.

use crate::{Choice, SpaceError};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// An architecture: the choice id of every block, stage by stage, first block first.
///
/// Written as a string of digits (`21202112331300313132`) — the form the paper and the
/// official code use — or, on input only, as comma-separated ids (`2,1,2,0,…`). Serialised
/// as that digit string. An `Arch` is only meaningful together with a
/// [`SearchSpace`](crate::SearchSpace); [`SearchSpace::validate`](crate::SearchSpace::validate)
/// checks length and allowed choices.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Arch(Vec<Choice>);

impl Arch {
    /// An architecture from its choices.
    pub fn new(choices: Vec<Choice>) -> Arch {
        Arch(choices)
    }

    /// All blocks use `choice`.
    pub fn uniform(choice: Choice, blocks: usize) -> Arch {
        Arch(vec![choice; blocks])
    }

    /// Number of blocks (genes).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True for the empty architecture.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The choices, block by block.
    pub fn choices(&self) -> &[Choice] {
        &self.0
    }

    /// The choice ids, block by block.
    pub fn ids(&self) -> Vec<u8> {
        self.0.iter().map(|c| c.id()).collect()
    }
}

impl FromStr for Arch {
    type Err = SpaceError;

    fn from_str(text: &str) -> Result<Arch, SpaceError> {
        let err = |message: String| SpaceError::ParseArch { text: text.to_string(), message };
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err(err("empty".into()));
        }
        let tokens: Vec<&str> = if trimmed.contains(',') {
            trimmed.split(',').map(str::trim).collect()
        } else {
            trimmed.split("").filter(|s| !s.is_empty()).collect()
        };
        tokens
            .iter()
            .enumerate()
            .map(|(i, tok)| {
                let id: u8 =
                    tok.parse().map_err(|_| err(format!("gene {i} is '{tok}', expected a choice id 0..=3")))?;
                Choice::from_id(id).ok_or_else(|| err(format!("gene {i} is {id}, expected a choice id 0..=3")))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Arch)
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in &self.0 {
            write!(f, "{}", c.id())?;
        }
        Ok(())
    }
}

impl Serialize for Arch {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Arch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Arch, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_forms_and_prints_digits() {
        let a: Arch = "21202112331300313132".parse().unwrap();
        let b: Arch = "2,1,2,0,2,1,1,2,3,3,1,3,0,0,3,1,3,1,3,2".parse().unwrap();
        assert_eq!(a, b);
        assert_eq!(a.len(), 20);
        assert_eq!(a.to_string(), "21202112331300313132");
        assert_eq!(a.choices()[8], Choice::Xception);
    }

    #[test]
    fn rejects_bad_genes_with_position() {
        let e = "2120x".parse::<Arch>().unwrap_err().to_string();
        assert!(e.contains("gene 4"), "{e}");
        let e = "2,4".parse::<Arch>().unwrap_err().to_string();
        assert!(e.contains("gene 1 is 4"), "{e}");
        let e = "21,3".parse::<Arch>().unwrap_err().to_string();
        assert!(e.contains("gene 0 is 21"), "{e}");
        assert!("".parse::<Arch>().is_err());
        assert!("1,,2".parse::<Arch>().is_err());
    }

    #[test]
    fn serde_round_trip() {
        let a: Arch = "0123".parse().unwrap();
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(json, "\"0123\"");
        assert_eq!(serde_json::from_str::<Arch>(&json).unwrap(), a);
        assert!(serde_json::from_str::<Arch>("\"0129\"").is_err());
    }
}
