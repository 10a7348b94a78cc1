//! Sampling and the evolution operators, as pure functions of an explicit RNG.
//!
//! Reference §6: mutation resamples each gene uniformly with probability `p` (0.1 in the
//! paper; the resampled gene may equal the old one, as in the official code); crossover takes
//! each gene from either parent with probability 0.5. Constraints are enforced by rejection.

#[cfg(test)]
use crate::cost::extreme_arch;
use crate::cost::{CostModel, backbone_bounds, cost};
use crate::rng::{below, bernoulli};
use crate::{Arch, Choice, SearchSpace, SpaceError, format_count};
use rand::RngCore;
use serde::{Deserialize, Serialize};

/// Upper limits an architecture must respect. `None` means unconstrained.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Constraint {
    /// Backbone (stem + blocks) MACs limit.
    pub max_backbone_macs: Option<u64>,
    /// Backbone parameters limit.
    pub max_backbone_params: Option<u64>,
}

impl Constraint {
    /// `true` when `arch` respects every limit under `model`.
    pub fn admits(&self, space: &SearchSpace, arch: &Arch, model: &CostModel) -> bool {
        if self.max_backbone_macs.is_none() && self.max_backbone_params.is_none() {
            return true;
        }
        let c = cost(space, arch, model);
        self.max_backbone_macs.is_none_or(|m| c.backbone_macs <= m)
            && self.max_backbone_params.is_none_or(|m| c.backbone_params <= m)
    }

    /// An error when no architecture of the space can satisfy the constraint (the cheapest
    /// choice per block already exceeds a limit).
    ///
    /// # Errors
    /// [`SpaceError::Unsatisfiable`] naming the MACs or parameter limit that cannot be met.
    pub fn check_satisfiable(&self, space: &SearchSpace, model: &CostModel) -> Result<(), SpaceError> {
        let (lo, _) = backbone_bounds(space, model.input);
        if let Some(m) = self.max_backbone_macs
            && lo.backbone_macs > m
        {
            return Err(SpaceError::Unsatisfiable(format!(
                "no architecture of space '{}' has backbone MACs <= {} (the smallest has {})",
                space.name,
                format_count(m),
                format_count(lo.backbone_macs)
            )));
        }
        if let Some(m) = self.max_backbone_params
            && lo.backbone_params > m
        {
            return Err(SpaceError::Unsatisfiable(format!(
                "no architecture of space '{}' has backbone params <= {} (the smallest has {})",
                space.name,
                format_count(m),
                format_count(lo.backbone_params)
            )));
        }
        Ok(())
    }
}

fn random_choice<R: RngCore + ?Sized>(allowed: &[Choice], rng: &mut R) -> Choice {
    allowed[below(rng, allowed.len() as u64) as usize]
}

/// A uniformly random architecture (each block an allowed choice with equal probability).
pub fn sample_uniform<R: RngCore + ?Sized>(space: &SearchSpace, rng: &mut R) -> Arch {
    let allowed = space.allowed();
    Arch::new((0..space.num_blocks()).map(|_| random_choice(&allowed, rng)).collect())
}

/// A uniform architecture conditioned on `constraint`, by rejection with at most
/// `max_attempts` draws. Fails at once when the constraint cannot be met by any architecture,
/// and after `max_attempts` when it is met too rarely to find by chance.
///
/// # Errors
/// [`SpaceError::Unsatisfiable`] when no architecture can meet `constraint`, or none meeting it
/// was drawn in `max_attempts` tries.
pub fn sample_constrained<R: RngCore + ?Sized>(
    space: &SearchSpace,
    constraint: &Constraint,
    model: &CostModel,
    max_attempts: usize,
    rng: &mut R,
) -> Result<Arch, SpaceError> {
    constraint.check_satisfiable(space, model)?;
    for _ in 0..max_attempts {
        let arch = sample_uniform(space, rng);
        if constraint.admits(space, &arch, model) {
            return Ok(arch);
        }
    }
    Err(SpaceError::Unsatisfiable(format!(
        "no architecture of space '{}' satisfying the constraint was found in {max_attempts} random draws",
        space.name
    )))
}

/// Each gene resampled uniformly among the allowed choices with probability `p`.
pub fn mutate<R: RngCore + ?Sized>(space: &SearchSpace, parent: &Arch, p: f64, rng: &mut R) -> Arch {
    let allowed = space.allowed();
    Arch::new(
        parent.choices().iter().map(|&c| if bernoulli(rng, p) { random_choice(&allowed, rng) } else { c }).collect(),
    )
}

/// Each gene taken from `a` or `b` with probability 0.5.
///
/// # Panics
/// If the parents differ in length.
pub fn crossover<R: RngCore + ?Sized>(a: &Arch, b: &Arch, rng: &mut R) -> Arch {
    assert_eq!(a.len(), b.len(), "crossover of architectures of different lengths");
    Arch::new(a.choices().iter().zip(b.choices()).map(|(&x, &y)| if bernoulli(rng, 0.5) { x } else { y }).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::seeded;
    use proptest::prelude::*;

    #[test]
    fn uniform_sampling_covers_choices_evenly_and_is_reproducible() {
        let s = SearchSpace::small();
        let mut rng = seeded(1);
        let mut counts = [0u32; 4];
        for _ in 0..1000 {
            for c in sample_uniform(&s, &mut rng).choices() {
                counts[c.id() as usize] += 1;
            }
        }
        for c in counts {
            assert!((4_700..5_300).contains(&c), "{counts:?}");
        }
        assert_eq!(sample_uniform(&s, &mut seeded(9)), sample_uniform(&s, &mut seeded(9)));
    }

    #[test]
    fn about_69_percent_of_small_paths_fit_300m() {
        // Reference §3: "about 69 % of uniform Small paths are <= 300M".
        let s = SearchSpace::small();
        let m = CostModel::default();
        let c = Constraint { max_backbone_macs: Some(300_000_000), max_backbone_params: None };
        let mut rng = seeded(2);
        let n = 4000;
        let ok = (0..n).filter(|_| c.admits(&s, &sample_uniform(&s, &mut rng), &m)).count();
        let frac = ok as f64 / n as f64;
        assert!((0.66..0.72).contains(&frac), "{frac}");
    }

    #[test]
    fn constrained_sampling_respects_limits_and_reports_impossible_ones() {
        let s = SearchSpace::small();
        let m = CostModel::default();
        let c = Constraint { max_backbone_macs: Some(270_000_000), max_backbone_params: Some(1_700_000) };
        let mut rng = seeded(3);
        for _ in 0..20 {
            let a = sample_constrained(&s, &c, &m, 100_000, &mut rng).unwrap();
            let k = cost(&s, &a, &m);
            assert!(k.backbone_macs <= 270_000_000 && k.backbone_params <= 1_700_000);
        }
        let impossible = Constraint { max_backbone_macs: Some(200_000_000), max_backbone_params: None };
        let e = sample_constrained(&s, &impossible, &m, 10, &mut rng).unwrap_err().to_string();
        assert!(e.contains("237.22M") && e.contains("200.00M"), "{e}");
        // Only the cheapest path meets a limit at the exact minimum: feasible, not by chance.
        let cheapest = extreme_arch(&s, m.input, false);
        let min = cost(&s, &cheapest, &m).backbone_macs;
        let edge = Constraint { max_backbone_macs: Some(min), max_backbone_params: None };
        assert!(edge.check_satisfiable(&s, &m).is_ok());
        assert!(edge.admits(&s, &cheapest, &m));
        let below = Constraint { max_backbone_macs: Some(min - 1), max_backbone_params: None };
        assert!(below.check_satisfiable(&s, &m).is_err());
        let e = sample_constrained(&s, &edge, &m, 50, &mut rng).unwrap_err().to_string();
        assert!(e.contains("50 random draws"), "{e}");
    }

    #[test]
    fn mutation_rate_matches_p() {
        let s = SearchSpace::large();
        let parent = Arch::uniform(Choice::Shuffle3, 40);
        let mut rng = seeded(4);
        let n = 2000;
        let changed: usize = (0..n)
            .map(|_| mutate(&s, &parent, 0.1, &mut rng).choices().iter().filter(|&&c| c != Choice::Shuffle3).count())
            .sum();
        // A resampled gene changes with probability 3/4: expected rate 0.075.
        let rate = changed as f64 / (n * 40) as f64;
        assert!((0.07..0.08).contains(&rate), "{rate}");
        assert_eq!(mutate(&s, &parent, 0.0, &mut rng), parent);
    }

    #[test]
    fn crossover_mixes_half_and_half() {
        let a = Arch::uniform(Choice::Shuffle3, 40);
        let b = Arch::uniform(Choice::Xception, 40);
        let mut rng = seeded(5);
        let n = 2000;
        let from_a: usize = (0..n)
            .map(|_| crossover(&a, &b, &mut rng).choices().iter().filter(|&&c| c == Choice::Shuffle3).count())
            .sum();
        let frac = from_a as f64 / (n * 40) as f64;
        assert!((0.49..0.51).contains(&frac), "{frac}");
    }

    proptest! {
        #[test]
        fn operators_stay_in_the_space(seed in any::<u64>(), p in 0.0f64..1.0) {
            let mut s = SearchSpace::small();
            s.choices = vec![1, 3];
            let mut rng = seeded(seed);
            let a = sample_uniform(&s, &mut rng);
            let b = sample_uniform(&s, &mut rng);
            prop_assert!(s.validate(&a).is_ok());
            let m = mutate(&s, &a, p, &mut rng);
            prop_assert!(s.validate(&m).is_ok());
            let x = crossover(&a, &b, &mut rng);
            prop_assert!(s.validate(&x).is_ok());
            for (i, c) in x.choices().iter().enumerate() {
                prop_assert!(*c == a.choices()[i] || *c == b.choices()[i]);
            }
        }

        #[test]
        fn arch_text_round_trips(ids in proptest::collection::vec(0u8..4, 1..60)) {
            let a = Arch::new(ids.iter().map(|&i| Choice::from_id(i).unwrap()).collect());
            prop_assert_eq!(a.to_string().parse::<Arch>().unwrap(), a.clone());
            let commas = ids.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(",");
            prop_assert_eq!(commas.parse::<Arch>().unwrap(), a);
        }
    }
}
