//! Argument types shared by several verbs.

use clap::Args;
use detnas_space::{CostModel, InputSize, SearchSpace, SpaceSpec};

/// Which search space.
#[derive(Args, Clone, Debug)]
pub struct SpaceArgs {
    /// `small`, `large`, `large-3.8g`, or a path to a space definition (.toml).
    #[arg(long, default_value = "small")]
    pub space: String,
    /// Multiplies every width (rounded to multiples of 4): tiny CPU-scale variants.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub width_mult: f64,
}

impl SpaceArgs {
    pub fn resolve(&self) -> Result<SearchSpace, crate::Failure> {
        SpaceSpec { space: self.space.clone(), width_mult: self.width_mult }.resolve().map_err(crate::usage)
    }
}

/// Where counts are taken.
#[derive(Args, Clone, Debug)]
pub struct CostArgs {
    /// Input size: `224` (square) or `HxW` such as `800x1333`.
    #[arg(long, default_value = "224", value_parser = parse_input)]
    pub input: InputSize,
    /// Classes of the classification head (for total MACs/params).
    #[arg(long, default_value_t = 1000)]
    pub classes: u64,
}

impl CostArgs {
    pub fn model(&self) -> CostModel {
        CostModel { input: self.input, classes: self.classes }
    }
}

/// Parses `224` or `800x1333`.
pub fn parse_input(text: &str) -> Result<InputSize, String> {
    let parse = |s: &str| -> Result<u64, String> {
        match s.trim().parse::<u64>() {
            Ok(v) if v >= 1 => Ok(v),
            _ => Err(format!("'{s}' is not a positive pixel count")),
        }
    };
    match text.split_once(['x', 'X']) {
        Some((h, w)) => Ok(InputSize { height: parse(h)?, width: parse(w)? }),
        None => Ok(InputSize::square(parse(text)?)),
    }
}

/// Parses a count such as `300M` or `1.3G`.
pub fn parse_count(text: &str) -> Result<u64, String> {
    detnas_space::parse_count(text).map_err(|e| e.to_string())
}
