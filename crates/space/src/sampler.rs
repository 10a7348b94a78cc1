//! Path samplers for supernet training: uniform (DetNAS) or FLOPs-binned (SPOS), optionally
//! under a backbone-MACs limit, or strict-fairness groups (FairNAS).
//!
//! Strict fairness (Chu et al., "FairNAS", arXiv:1907.01845, Algorithm 1): each step draws as
//! many paths as a block has choices, from an independent uniform permutation of the allowed
//! choices per block; path `k` takes the `k`-th entry of every permutation, so within one step
//! every choice of every block is on exactly one path.
//!
//! FLOPs-binned: the admissible MACs range is cut into `bins` equal-width bins between the
//! 0.5 % and 99.5 % quantiles of uniformly sampled admissible paths (estimated once from 4096
//! draws of a fixed stream, so the bins depend only on the space and the limit); a bin is
//! picked uniformly, then uniform paths are drawn until one falls inside it (paths beyond the
//! quantiles count for the outer bins).

use crate::cost::{CostModel, cost};
use crate::ops::{Constraint, sample_constrained};
use crate::rng::{below, seeded, shuffle};
use crate::{Arch, SearchSpace, SpaceError};
use rand::RngCore;

/// Draws per architecture before a sampler gives up.
pub const MAX_ATTEMPTS: usize = 100_000;

/// Draws supernet paths: uniform, FLOPs-binned (SPOS), optionally under a MACs limit, with an optional warm start on one path and strict-fairness groups.
#[derive(Clone, Debug)]
pub struct PathSampler {
    space: SearchSpace,
    constraint: Constraint,
    model: CostModel,
    /// Inner edges of the MACs bins (empty: uniform sampling).
    edges: Vec<u64>,
    /// Always this path.
    fixed: Option<Arch>,
    /// Strict-fairness groups ([`PathSampler::sample_step`]).
    fair: bool,
    /// Warm start: this path for the first steps.
    warm_start: Option<(Arch, u64)>,
}

impl PathSampler {
    /// A uniform sampler under `max_backbone_macs` (at 224×224).
    ///
    /// # Errors
    /// [`SpaceError::Unsatisfiable`] when even the cheapest architecture exceeds
    /// `max_backbone_macs`.
    pub fn uniform(space: &SearchSpace, max_backbone_macs: Option<u64>) -> Result<PathSampler, SpaceError> {
        let constraint = Constraint { max_backbone_macs, max_backbone_params: None };
        let s = PathSampler { constraint, ..PathSampler::base(space) };
        s.constraint.check_satisfiable(space, &s.model)?;
        Ok(s)
    }

    /// Uniform sampling without a limit; the other constructors adjust it.
    fn base(space: &SearchSpace) -> PathSampler {
        PathSampler {
            space: space.clone(),
            constraint: Constraint::default(),
            model: CostModel::default(),
            edges: Vec::new(),
            fixed: None,
            fair: false,
            warm_start: None,
        }
    }

    /// A sampler that always returns `arch` (one child network trained alone).
    pub fn fixed(space: &SearchSpace, arch: Arch) -> PathSampler {
        PathSampler { fixed: Some(arch), ..PathSampler::base(space) }
    }

    /// A strict-fairness sampler: [`PathSampler::sample_step`] returns one group of
    /// `space.allowed().len()` paths covering every choice of every block once;
    /// [`PathSampler::sample`] draws one uniform path (for evaluation). No MACs limit (a
    /// limit would break the fairness).
    pub fn fair(space: &SearchSpace) -> PathSampler {
        PathSampler { fair: true, ..PathSampler::base(space) }
    }

    /// The same sampler, but steps `0..steps` all train `arch` (a warm start).
    pub fn with_warm_start(mut self, arch: Arch, steps: u64) -> PathSampler {
        self.warm_start = (steps > 0).then_some((arch, steps));
        self
    }

    /// The number of warm-start steps (0 without a warm start).
    pub fn warm_start_steps(&self) -> u64 {
        self.warm_start.as_ref().map_or(0, |(_, n)| *n)
    }

    /// The paths of training step `step` (0-based): the warm-start path during a warm start
    /// (drawing nothing from `rng`), a strict-fairness group for a fair sampler (blocks'
    /// permutations drawn block by block from `rng`), otherwise the one path of
    /// [`PathSampler::sample`].
    ///
    /// # Errors
    /// As [`PathSampler::sample`].
    pub fn sample_step<R: RngCore + ?Sized>(&self, step: u64, rng: &mut R) -> Result<Vec<Arch>, SpaceError> {
        if let Some((arch, n)) = &self.warm_start
            && step < *n
        {
            return Ok(vec![arch.clone()]);
        }
        if !self.fair {
            return Ok(vec![self.sample(rng)?]);
        }
        let allowed = self.space.allowed();
        let mut paths = vec![Vec::with_capacity(self.space.num_blocks()); allowed.len()];
        for _ in 0..self.space.num_blocks() {
            let mut perm = allowed.clone();
            shuffle(rng, &mut perm);
            for (path, c) in paths.iter_mut().zip(perm) {
                path.push(c);
            }
        }
        Ok(paths.into_iter().map(Arch::new).collect())
    }

    /// Paths per step: the group size of a fair sampler, otherwise 1.
    pub fn paths_per_step(&self) -> usize {
        if self.fair { self.space.allowed().len() } else { 1 }
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
        if self.fair {
            return Ok(crate::ops::sample_uniform(&self.space, rng));
        }
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
    fn fair_groups_cover_every_choice_of_every_block_once() {
        let s = SearchSpace::small();
        let fair = PathSampler::fair(&s);
        assert_eq!(fair.paths_per_step(), 4);
        assert_eq!(PathSampler::uniform(&s, None).unwrap().paths_per_step(), 1);
        let mut rng = seeded(3);
        // Over many groups each block's choice on path 0 is uniform (the permutations are
        // drawn, not fixed), and within a group every block holds each choice exactly once.
        let mut first = [[0usize; 4]; 20];
        for _ in 0..2000 {
            let group = fair.sample_step(0, &mut rng).unwrap();
            assert_eq!(group.len(), 4);
            for b in 0..s.num_blocks() {
                let mut ids: Vec<u8> = group.iter().map(|a| a.choices()[b].id()).collect();
                ids.sort_unstable();
                assert_eq!(ids, [0, 1, 2, 3], "block {b}");
                first[b][group[0].choices()[b].id() as usize] += 1;
            }
            for a in &group {
                s.validate(a).unwrap();
            }
        }
        for counts in first {
            assert!(counts.iter().all(|&c| (420..580).contains(&c)), "{counts:?}");
        }
        // Two groups of the same stream differ; the same seed gives the same groups.
        let g1 = fair.sample_step(0, &mut seeded(9)).unwrap();
        assert_eq!(g1, fair.sample_step(0, &mut seeded(9)).unwrap());
        assert_ne!(g1, fair.sample_step(0, &mut seeded(10)).unwrap());
        // A warm start trains its path for its steps without drawing, then samples.
        let warm = Arch::uniform(crate::Choice::Shuffle3, s.num_blocks());
        let w = PathSampler::uniform(&s, None).unwrap().with_warm_start(warm.clone(), 5);
        assert_eq!(w.warm_start_steps(), 5);
        let (mut r1, mut r2) = (seeded(4), seeded(4));
        for step in 0..5 {
            assert_eq!(w.sample_step(step, &mut r1).unwrap(), vec![warm.clone()]);
        }
        assert_eq!(
            w.sample_step(5, &mut r1).unwrap(),
            vec![PathSampler::uniform(&s, None).unwrap().sample(&mut r2).unwrap()]
        );
    }

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
