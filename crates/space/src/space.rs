//! Search-space definitions: the three published spaces, user-defined ones from TOML, and
//! width-multiplied variants for CPU-scale work.

use crate::{Arch, Choice, SpaceError};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// A ShuffleNetV2 search space (DetNAS arXiv:1903.10979 §3.1, Table 6; official
/// `detnasnet.py`).
///
/// The backbone is a stem (3×3 conv, stride 2, with bias, BN, ReLU) followed by
/// `sum(depths)` choice blocks; the first block of each stage has stride 2. For
/// classification a 1×1 conv to `last_conv` channels (bias, BN, ReLU), dropout, global
/// average pooling and an FC layer follow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchSpace {
    /// Display name (`small`, `large`, `large-3.8g`, or the user's; `…-w0.25` when scaled).
    pub name: String,
    /// Stem output channels.
    pub stem: u64,
    /// Output channels of each stage.
    pub widths: Vec<u64>,
    /// Number of blocks of each stage.
    pub depths: Vec<u64>,
    /// Channels of the classification head's last 1×1 conv.
    pub last_conv: u64,
    /// Choice ids a block may take (a space file without `choices`: all four).
    pub choices: Vec<u8>,
    /// How stride-1 blocks split their input (default: DetNAS's).
    #[serde(default, skip_serializing_if = "ChannelShuffle::is_detnas")]
    pub shuffle: ChannelShuffle,
}

/// How a stride-1 block splits its input into the half it passes through and the half its
/// branch transforms. The two official codes differ, so weights trained with one do not fit
/// the other.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChannelShuffle {
    /// DetNAS's ("method 1" of megvii-model/DetNAS `shuffle_blocks.py`): view the channels
    /// as `[2, C/2]`, transpose, and take the first and second half.
    #[default]
    Detnas,
    /// SPOS's (`channel_shuffle` of megvii-model/SinglePathOneShot `src/Supernet/blocks.py`):
    /// the even channels pass through, the odd ones go to the branch.
    EvenOdd,
}

impl ChannelShuffle {
    /// Whether this is the default, DetNAS's.
    pub fn is_detnas(&self) -> bool {
        *self == ChannelShuffle::Detnas
    }
}

fn all_choice_ids() -> Vec<u8> {
    Choice::ALL.iter().map(|c| c.id()).collect()
}

/// Where a space comes from: a preset name or a TOML file, plus a width multiplier.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SpaceSpec {
    /// `small`, `large`, `large-3.8g`, or a path to a `.toml` space definition.
    pub space: String,
    /// Multiplier on every width (1.0 keeps the space as defined).
    pub width_mult: f64,
}

impl SpaceSpec {
    /// Resolves the spec to a validated space.
    ///
    /// # Errors
    /// As [`SearchSpace::named`] and [`SearchSpace::scaled`].
    pub fn resolve(&self) -> Result<SearchSpace, SpaceError> {
        let base = SearchSpace::named(&self.space)?;
        if self.width_mult == 1.0 { Ok(base) } else { base.scaled(self.width_mult) }
    }
}

/// One block's place in the network, as derived from the space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockSlot {
    /// Global block index (gene index).
    pub index: usize,
    /// Stage index, 0-based (stage 0 outputs C2).
    pub stage: usize,
    /// Input channels.
    pub in_channels: u64,
    /// Output channels.
    pub out_channels: u64,
    /// 2 for the first block of a stage, else 1.
    pub stride: u64,
    /// How the block splits its input when its stride is 1 (the space's).
    pub shuffle: ChannelShuffle,
}

impl SearchSpace {
    /// The 20-block space of DetNAS-300M (stem 16; widths 64, 160, 320, 640; depths 4, 4, 8, 4).
    pub fn small() -> SearchSpace {
        SearchSpace::preset("small", 16, [64, 160, 320, 640], [4, 4, 8, 4], 1024)
    }

    /// [`SearchSpace::small`] with SPOS's channel shuffle: the network of the SinglePathOneShot
    /// supernet (megvii-model/SinglePathOneShot `src/Supernet/network.py`), whose
    /// ImageNet-trained weights `detnas import spos` converts.
    pub fn small_spos() -> SearchSpace {
        SearchSpace { name: "small-spos".into(), shuffle: ChannelShuffle::EvenOdd, ..SearchSpace::small() }
    }

    /// The 40-block space of DetNAS-1.3G (stem 48; widths 96, 240, 480, 960; depths 8, 8, 16, 8).
    pub fn large() -> SearchSpace {
        SearchSpace::preset("large", 48, [96, 240, 480, 960], [8, 8, 16, 8], 1024)
    }

    /// The widened 40-block space of DetNAS-3.8G (stem 72; widths 172, 432, 864, 1728).
    pub fn large_3_8g() -> SearchSpace {
        SearchSpace::preset("large-3.8g", 72, [172, 432, 864, 1728], [8, 8, 16, 8], 1728)
    }

    fn preset(name: &str, stem: u64, widths: [u64; 4], depths: [u64; 4], last_conv: u64) -> SearchSpace {
        SearchSpace {
            name: name.to_string(),
            stem,
            widths: widths.to_vec(),
            depths: depths.to_vec(),
            last_conv,
            choices: all_choice_ids(),
            shuffle: ChannelShuffle::Detnas,
        }
    }

    /// A preset by name, or a space read from a `.toml` file.
    ///
    /// # Errors
    /// [`SpaceError::UnknownSpace`] for another name that is neither a file nor ends in `.toml`;
    /// as [`SearchSpace::from_toml_file`] for a file.
    pub fn named(name: &str) -> Result<SearchSpace, SpaceError> {
        match name {
            "small" => Ok(SearchSpace::small()),
            "small-spos" => Ok(SearchSpace::small_spos()),
            "large" => Ok(SearchSpace::large()),
            "large-3.8g" | "large-3.8G" => Ok(SearchSpace::large_3_8g()),
            other if other.ends_with(".toml") || Path::new(other).is_file() => {
                SearchSpace::from_toml_file(Path::new(other))
            }
            other => Err(SpaceError::UnknownSpace(other.to_string())),
        }
    }

    /// Reads and validates a space from TOML (fields as in this struct; `name` defaults to
    /// the file stem, `choices` to all four).
    ///
    /// # Errors
    /// [`SpaceError::Io`] when the file cannot be read; otherwise as
    /// [`SearchSpace::from_toml_str`], with the path in [`SpaceError::Toml`].
    pub fn from_toml_file(path: &Path) -> Result<SearchSpace, SpaceError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| SpaceError::Io { path: path.to_path_buf(), source })?;
        let default_name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        SearchSpace::from_toml_str(&text, &default_name).map_err(|e| match e {
            SpaceError::Toml { message, .. } => SpaceError::Toml { path: path.to_path_buf(), message },
            other => other,
        })
    }

    /// Parses and validates a space from TOML text.
    ///
    /// # Errors
    /// [`SpaceError::Toml`] for invalid TOML or unknown or missing fields;
    /// [`SpaceError::InvalidSpace`] as [`SearchSpace::check`].
    pub fn from_toml_str(text: &str, default_name: &str) -> Result<SearchSpace, SpaceError> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Raw {
            name: Option<String>,
            stem: u64,
            widths: Vec<u64>,
            depths: Vec<u64>,
            last_conv: u64,
            choices: Option<Vec<u8>>,
            shuffle: Option<ChannelShuffle>,
        }
        let raw: Raw = toml::from_str(text)
            .map_err(|e| SpaceError::Toml { path: Default::default(), message: e.message().to_string() })?;
        let space = SearchSpace {
            name: raw.name.unwrap_or_else(|| default_name.to_string()),
            stem: raw.stem,
            widths: raw.widths,
            depths: raw.depths,
            last_conv: raw.last_conv,
            choices: raw.choices.unwrap_or_else(all_choice_ids),
            shuffle: raw.shuffle.unwrap_or_default(),
        };
        space.check()?;
        Ok(space)
    }

    /// The TOML form of this space (readable back by [`SearchSpace::from_toml_str`]).
    ///
    /// # Panics
    /// Never: a space always serialises.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a space always serialises")
    }

    /// Every width multiplied by `mult` and rounded to the nearest multiple of 4 (at least 4);
    /// depths and choices unchanged. The stage split and channel shuffle need widths
    /// divisible by 4.
    ///
    /// # Errors
    /// [`SpaceError::InvalidParameter`] when `mult` is not finite and positive;
    /// [`SpaceError::InvalidSpace`] when the rounded widths break [`SearchSpace::check`] (e.g. no
    /// longer increasing).
    pub fn scaled(&self, mult: f64) -> Result<SearchSpace, SpaceError> {
        if !(mult.is_finite() && mult > 0.0) {
            return Err(SpaceError::InvalidParameter(format!("width multiplier must be positive, got {mult}")));
        }
        let round4 = |c: u64| (((c as f64 * mult) / 4.0).round() as u64).max(1) * 4;
        let space = SearchSpace {
            name: format!("{}-w{mult:?}", self.name),
            stem: round4(self.stem),
            widths: self.widths.iter().map(|&w| round4(w)).collect(),
            depths: self.depths.clone(),
            last_conv: round4(self.last_conv),
            choices: self.choices.clone(),
            shuffle: self.shuffle,
        };
        space.check()?;
        Ok(space)
    }

    /// Checks the structural rules a space must satisfy.
    ///
    /// # Errors
    /// [`SpaceError::InvalidSpace`] naming the first rule broken.
    pub fn check(&self) -> Result<(), SpaceError> {
        let bad = |message: String| Err(SpaceError::InvalidSpace { space: self.name.clone(), message });
        if self.widths.is_empty() {
            return bad("needs at least one stage".into());
        }
        if self.widths.len() != self.depths.len() {
            return bad(format!("{} widths but {} depths", self.widths.len(), self.depths.len()));
        }
        if self.stem == 0 || self.last_conv == 0 {
            return bad("stem and last_conv must be positive".into());
        }
        if let Some(d) = self.depths.iter().position(|&d| d == 0) {
            return bad(format!("stage {} has depth 0", d + 1));
        }
        let mut prev = self.stem;
        for (i, &w) in self.widths.iter().enumerate() {
            if w == 0 || w % 4 != 0 {
                return bad(format!(
                    "stage {} width {w} is not a positive multiple of 4 (the split and shuffle need it)",
                    i + 1
                ));
            }
            if w <= prev {
                return bad(format!(
                    "stage {} width {w} must exceed the previous width {prev} (the stride-2 branch outputs the difference)",
                    i + 1
                ));
            }
            prev = w;
        }
        if self.choices.is_empty() {
            return bad("needs at least one choice".into());
        }
        let mut seen = [false; 4];
        for &c in &self.choices {
            if Choice::from_id(c).is_none() {
                return bad(format!("choice id {c} does not exist (ids are 0..=3)"));
            }
            if std::mem::replace(&mut seen[c as usize], true) {
                return bad(format!("choice id {c} is listed twice"));
            }
        }
        Ok(())
    }

    /// Total number of blocks (genes of an architecture).
    pub fn num_blocks(&self) -> usize {
        self.depths.iter().sum::<u64>() as usize
    }

    /// The allowed choices, in the order given by the space.
    pub fn allowed(&self) -> Vec<Choice> {
        self.choices.iter().filter_map(|&c| Choice::from_id(c)).collect()
    }

    /// `true` when `choice` may be used in a block.
    pub fn allows(&self, choice: Choice) -> bool {
        self.choices.contains(&choice.id())
    }

    /// Every block with its channels and stride.
    pub fn slots(&self) -> Vec<BlockSlot> {
        let mut slots = Vec::with_capacity(self.num_blocks());
        let mut in_c = self.stem;
        for (stage, (&w, &d)) in self.widths.iter().zip(&self.depths).enumerate() {
            for j in 0..d {
                slots.push(BlockSlot {
                    index: slots.len(),
                    stage,
                    in_channels: in_c,
                    out_channels: w,
                    stride: if j == 0 { 2 } else { 1 },
                    shuffle: self.shuffle,
                });
                in_c = w;
            }
        }
        slots
    }

    /// Index of the last block of each stage (the blocks whose outputs are C2, C3, …).
    pub fn stage_ends(&self) -> Vec<usize> {
        self.depths
            .iter()
            .scan(0usize, |acc, &d| {
                *acc += d as usize;
                Some(*acc - 1)
            })
            .collect()
    }

    /// Output stride of each stage (4, 8, 16, 32 for four stages).
    pub fn stage_strides(&self) -> Vec<u64> {
        (0..self.widths.len()).map(|i| 1u64 << (i + 2)).collect()
    }

    /// Number of architectures, as `log10` (exact counts overflow for large spaces).
    pub fn log10_paths(&self) -> f64 {
        self.num_blocks() as f64 * (self.choices.len() as f64).log10()
    }

    /// Number of architectures when it fits in a `u128`.
    pub fn num_paths(&self) -> Option<u128> {
        (self.choices.len() as u128).checked_pow(self.num_blocks() as u32)
    }

    /// Checks that `arch` has one allowed choice per block.
    ///
    /// # Errors
    /// [`SpaceError::WrongLength`] for a wrong number of genes; [`SpaceError::ChoiceNotAllowed`]
    /// naming the first block with a choice the space does not allow.
    pub fn validate(&self, arch: &Arch) -> Result<(), SpaceError> {
        if arch.len() != self.num_blocks() {
            return Err(SpaceError::WrongLength {
                space: self.name.clone(),
                expected: self.num_blocks(),
                got: arch.len(),
            });
        }
        for (block, &c) in arch.choices().iter().enumerate() {
            if !self.allows(c) {
                return Err(SpaceError::ChoiceNotAllowed {
                    space: self.name.clone(),
                    block,
                    choice: c.id(),
                    allowed: self.choices.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(","),
                });
            }
        }
        Ok(())
    }

    /// Parses an architecture string and validates it against this space.
    ///
    /// # Errors
    /// [`SpaceError::ParseArch`] for text that is not choice ids 0..=3; then as
    /// [`SearchSpace::validate`].
    pub fn parse_arch(&self, text: &str) -> Result<Arch, SpaceError> {
        let arch: Arch = text.parse()?;
        self.validate(&arch)?;
        Ok(arch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_match_reference() {
        let s = SearchSpace::small();
        assert_eq!(s.num_blocks(), 20);
        assert_eq!(s.num_paths(), Some(1u128 << 40));
        assert_eq!(s.stage_ends(), vec![3, 7, 15, 19]);
        let l = SearchSpace::large();
        assert_eq!(l.num_blocks(), 40);
        assert_eq!(l.num_paths(), Some(1u128 << 80));
        assert_eq!(SearchSpace::large_3_8g().widths, vec![172, 432, 864, 1728]);
        for sp in [s, l, SearchSpace::large_3_8g()] {
            sp.check().unwrap();
        }
    }

    #[test]
    fn slots_have_strides_and_channels() {
        let s = SearchSpace::small();
        let slots = s.slots();
        assert_eq!(
            slots[0],
            BlockSlot {
                index: 0,
                stage: 0,
                in_channels: 16,
                out_channels: 64,
                stride: 2,
                shuffle: ChannelShuffle::Detnas
            }
        );
        assert_eq!(slots[1].stride, 1);
        assert_eq!(
            slots[4],
            BlockSlot {
                index: 4,
                stage: 1,
                in_channels: 64,
                out_channels: 160,
                stride: 2,
                shuffle: ChannelShuffle::Detnas
            }
        );
        // The SPOS network: the same slots, SPOS's shuffle; named by its preset, read back from TOML.
        let spos = SearchSpace::named("small-spos").unwrap();
        assert!(spos.slots().iter().all(|s| s.shuffle == ChannelShuffle::EvenOdd));
        assert_eq!((spos.widths.clone(), spos.depths.clone()), (s.widths.clone(), s.depths.clone()));
        assert_eq!(SearchSpace::from_toml_str(&spos.to_toml(), "x").unwrap(), spos);
        assert!(!s.to_toml().contains("shuffle"), "the default is not written");
        assert_eq!(slots.iter().filter(|s| s.stride == 2).count(), 4);
    }

    #[test]
    fn scaling_rounds_to_multiples_of_four() {
        let s = SearchSpace::small().scaled(0.25).unwrap();
        assert_eq!(s.stem, 4);
        assert_eq!(s.widths, vec![16, 40, 80, 160]);
        assert_eq!(s.last_conv, 256);
        assert_eq!(s.name, "small-w0.25");
        let t = SearchSpace::large_3_8g().scaled(0.1).unwrap();
        assert!(t.widths.iter().all(|w| w % 4 == 0));
        assert!(SearchSpace::small().scaled(0.0).is_err());
        assert!(SearchSpace::small().scaled(f64::NAN).is_err());
    }

    #[test]
    fn validation_names_the_problem() {
        let s = SearchSpace::small();
        let e = s.parse_arch("0123").unwrap_err().to_string();
        assert!(e.contains("4 genes") && e.contains("20 blocks"), "{e}");
        let mut only3 = SearchSpace::small();
        only3.choices = vec![0, 1, 2];
        let e = only3.parse_arch("00000000000000000003").unwrap_err().to_string();
        assert!(e.contains("block 19"), "{e}");
    }

    #[test]
    fn toml_spaces_are_checked() {
        let ok = "stem = 8\nwidths = [16, 32]\ndepths = [2, 3]\nlast_conv = 64\nchoices = [0, 3]\n";
        let s = SearchSpace::from_toml_str(ok, "mine").unwrap();
        assert_eq!(s.name, "mine");
        assert_eq!(s.num_blocks(), 5);
        assert_eq!(s.allowed(), vec![Choice::Shuffle3, Choice::Xception]);
        assert_eq!(SearchSpace::from_toml_str(&s.to_toml(), "x").unwrap(), s);
        for (bad, needle) in [
            ("stem = 8\nwidths = [18, 32]\ndepths = [2, 3]\nlast_conv = 64\n", "multiple of 4"),
            ("stem = 8\nwidths = [16, 32]\ndepths = [2]\nlast_conv = 64\n", "2 widths but 1 depths"),
            ("stem = 20\nwidths = [16, 32]\ndepths = [2, 3]\nlast_conv = 64\n", "must exceed"),
            ("stem = 8\nwidths = [16, 32]\ndepths = [2, 0]\nlast_conv = 64\n", "depth 0"),
            ("stem = 8\nwidths = [16, 32]\ndepths = [2, 3]\nlast_conv = 64\nchoices = [0, 7]\n", "does not exist"),
            ("stem = 8\nwidths = [16, 32]\ndepths = [2, 3]\nlast_conv = 64\nchoices = [0, 0]\n", "twice"),
            ("stem = 8\nwidths = [16, 32]\ndepths = [2, 3]\n", "last_conv"),
            ("stem = 8\nwidths = [16, 32]\ndepths = [2, 3]\nlast_conv = 64\nbogus = 1\n", "bogus"),
        ] {
            let e = SearchSpace::from_toml_str(bad, "b").unwrap_err().to_string();
            assert!(e.contains(needle), "{bad:?}: {e}");
        }
    }

    #[test]
    fn unknown_space_is_an_error() {
        let e = SearchSpace::named("medium").unwrap_err().to_string();
        assert!(e.contains("medium"), "{e}");
        let e = SearchSpace::named("/nonexistent/space.toml").unwrap_err().to_string();
        assert!(e.contains("/nonexistent/space.toml"), "{e}");
    }
}
