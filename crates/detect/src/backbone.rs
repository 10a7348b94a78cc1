//! The detector's backbone: the one-shot supernet (path given per forward) or the fixed
//! child network of one architecture. Variables live under `backbone.*` with the
//! classification network's names (`backbone.stem.*`, `backbone.features.i[.c].*`).

use crate::DetectError;
use detnas_nn::{ChildNet, ChildNetConfig, Supernet, SupernetConfig};
use detnas_space::{Arch, SearchSpace};
use tch::{Tensor, nn};

/// The detector's backbone: a supernet (any path) or a child network (one fixed architecture).
#[derive(Debug)]
pub enum Backbone {
    /// The supernet: every choice of every block.
    Supernet(Supernet),
    /// A child network of one architecture.
    Child(ChildNet),
}

impl Backbone {
    /// A supernet backbone (no classification head) under `p`.
    pub fn supernet(p: &nn::Path, space: &SearchSpace) -> Backbone {
        Backbone::Supernet(SupernetConfig { space: space.clone(), classes: None }.build(p))
    }

    /// A child backbone of `arch` under `p`.
    ///
    /// # Errors
    /// [`DetectError::Nn`] when `arch` does not fit `space`.
    pub fn child(p: &nn::Path, space: &SearchSpace, arch: &Arch) -> Result<Backbone, DetectError> {
        Ok(Backbone::Child(ChildNetConfig { space: space.clone(), arch: arch.clone(), classes: None }.build(p)?))
    }

    /// The search space.
    pub fn space(&self) -> &SearchSpace {
        match self {
            Backbone::Supernet(s) => s.space(),
            Backbone::Child(c) => c.space(),
        }
    }

    /// Channels of C2..C5.
    pub fn channels(&self) -> Vec<i64> {
        self.space().widths.iter().map(|&w| w as i64).collect()
    }

    /// Strides of C2..C5 in pixels (4, 8, 16, 32 for the DetNAS spaces).
    pub fn strides(&self) -> Vec<i64> {
        self.space().stage_strides().into_iter().map(|s| s as i64).collect()
    }

    /// C2..C5 of path `arch` (required for a supernet; a child checks it is its own).
    ///
    /// # Shapes
    /// `[N, 3, H, W] → [[N, widths[s], H/2^(s+2), W/2^(s+2)]; 4]` (strides 4, 8, 16, 32).
    ///
    /// # Errors
    /// [`DetectError::Config`] when a supernet gets no path; [`DetectError::Nn`] when the path
    /// does not fit the space, or a child is given another architecture.
    pub fn features(&self, x: &Tensor, arch: Option<&Arch>, train: bool) -> Result<Vec<Tensor>, DetectError> {
        match self {
            Backbone::Supernet(s) => {
                let arch = arch.ok_or_else(|| DetectError::Config("a supernet backbone needs a path".into()))?;
                Ok(s.features_t(x, arch, train)?)
            }
            Backbone::Child(c) => {
                if let Some(a) = arch
                    && a != c.arch()
                {
                    return Err(
                        detnas_nn::NnError::WrongChild { arch: a.to_string(), own: c.arch().to_string() }.into()
                    );
                }
                Ok(c.features_t(x, train))
            }
        }
    }
}
