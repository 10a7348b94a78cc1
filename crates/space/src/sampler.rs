//! Path samplers for supernet training: uniform (DetNAS) or FLOPs-binned (SPOS), optionally
//! under a backbone-MACs limit.
//!
//! FLOPs-binned: the admissible MACs range is cut into `bins` equal-width bins between the
//! 0.5 % and 99.5 % quantiles of uniformly sampled admissible paths (estimated once from 4096
//! draws of a fixed stream, so the bins depend only on the space and the limit); a bin is
//! picked uniformly, then uniform paths are drawn until one falls inside it (paths beyond the
//! quantiles count for the outer bins).

use crate::cost::{CostModel, cost};
use crate::ops::{Constraint, sample_constrained};
use crate::rng::{below, seeded};
use crate::{Arch, SearchSpace, SpaceError};
use rand::RngCore;

/// Draws per architecture before a sampler gives up.
pub const MAX_ATTEMPTS: usize = 100_000;

#[derive(Clone, Debug)]
pub struct PathSampler {
    space: SearchSpace,
    constraint: Constraint,
    model: CostModel,
    /// Inner edges of the MACs bins (empty: uniform sampling).
    edges: Vec<u64>,
    /// Always this path.
    fixed: Option<Arch>,
}

impl PathSampler {
    /// A uniform sampler under `max_backbone_macs` (at 224×224).
    ///
    /// # Errors
    /// [`SpaceError::Unsatisfiable`] when even the cheapest architecture exceeds
    /// `max_backbone_macs`.
    pub fn uniform(space: &SearchSpace, max_backbone_macs: Option<u64>) -> Result<PathSampler, SpaceError> {
        let constraint = Constraint { max_backbone_macs, max_backbone_params: None };
        let model = CostModel::default();
        constraint.check_satisfiable(space, &model)?;
        Ok(PathSampler { space: space.clone(), constraint, model, edges: Vec::new(), fixed: None })
    }

    /// A sampler that always returns `arch` (one child network trained alone).
    pub fn fixed(space: &SearchSpace, arch: Arch) -> PathSampler {
        PathSampler {
            space: space.clone(),
            constraint: Constraint::default(),
            model: CostModel::default(),
            edges: Vec::new(),
            fixed: Some(arch),
        }
    }

    /// A FLOPs-binned sampler with `bins` bins.
    ///
    /// # Errors
    /// As [`PathSampler::uniform`], and [`SpaceError::Unsatisfiable`] when admissible paths are too
    /// rare to draw.
    pub fn flops_binned(
        space: &SearchSpace,
        max_backbone_macs: Option<u64>,
        bins: usize,
    ) -> Result<PathSampler, SpaceError> {
        let mut s = PathSampler::uniform(space, max_backbone_macs)?;
        let mut rng = seeded(0xB1A5);
        let mut macs: Vec<u64> = (0..4096)
            .map(|_| sample_constrained(space, &s.constraint, &s.model, MAX_ATTEMPTS, &mut rng).map(|a| s.macs(&a)))
            .collect::<Result<_, _>>()?;
        macs.sort_unstable();
        let (lo, hi) = (macs[macs.len() / 200] as f64, macs[macs.len() - 1 - macs.len() / 200] as f64);
        s.edges = (1..bins.max(1)).map(|k| (lo + (hi - lo) * k as f64 / bins as f64) as u64).collect();
        Ok(s)
    }

    fn macs(&self, arch: &Arch) -> u64 {
        cost(&self.space, arch, &self.model).backbone_macs
    }

    fn bin_of(&self, macs: u64) -> usize {
        self.edges.iter().filter(|&&e| macs >= e).count()
    }

    /// The next path.
    ///
    /// # Errors
    /// [`SpaceError::Unsatisfiable`] when no admissible path (in the drawn bin) is found within
    /// [`MAX_ATTEMPTS`] draws; never for a fixed sampler.
    pub fn sample<R: RngCore + ?Sized>(&self, rng: &mut R) -> Result<Arch, SpaceError> {
        if let Some(a) = &self.fixed {
            return Ok(a.clone());
        }
        if self.edges.is_empty() {
            return sample_constrained(&self.space, &self.constraint, &self.model, MAX_ATTEMPTS, rng);
        }
        let bin = below(rng, self.edges.len() as u64 + 1) as usize;
        for _ in 0..MAX_ATTEMPTS {
            let a = sample_constrained(&self.space, &self.constraint, &self.model, MAX_ATTEMPTS, rng)?;
            if self.bin_of(self.macs(&a)) == bin {
                return Ok(a);
            }
        }
        Err(SpaceError::Unsatisfiable(format!("no path found in MACs bin {bin} after {MAX_ATTEMPTS} draws")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binned_sampling_flattens_the_macs_distribution() {
        let s = SearchSpace::small();
        let limit = Some(300_000_000);
        let binned = PathSampler::flops_binned(&s, limit, 5).unwrap();
        let uniform = PathSampler::uniform(&s, limit).unwrap();
        let mut rng = seeded(1);
        let count = |p: &PathSampler, rng: &mut rand_chacha::ChaCha8Rng| {
            let mut c = [0usize; 5];
            for _ in 0..1000 {
                let a = p.sample(rng).unwrap();
                assert!(binned.macs(&a) <= 300_000_000);
                c[binned.bin_of(binned.macs(&a))] += 1;
            }
            c
        };
        let cb = count(&binned, &mut rng);
        let cu = count(&uniform, &mut rng);
        assert!(cb.iter().all(|&c| (150..250).contains(&c)), "binned {cb:?}");
        // Uniform paths are far from flat across the bins (under the limit they pile up near it).
        assert!(cu.iter().min().unwrap() * 5 < *cu.iter().max().unwrap(), "uniform {cu:?}");
    }
}
