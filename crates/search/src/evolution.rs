//! The evolution operators at generation level, as pure functions of an explicit RNG: which
//! candidates a generation proposes, given the elitist archive and every architecture
//! already evaluated (reference: SinglePathOneShot / DetNAS `search.py`).
//!
//! Generation 0 is `population` uniform random architectures. Every later generation
//! proposes `mutations` mutants and `crossovers` crossover children of parents drawn
//! uniformly from the top-`top_k` archive, then fills up to `population` with random
//! architectures. A proposal is legal when it respects the [`Limits`] and was neither
//! evaluated before nor proposed earlier in the same generation. Each mutant or child gets
//! at most `max_attempts` draws and the random fill `max_random_draws`, so a space too small to fill a population gives a short
//! generation (its shortfall is reported) instead of spinning.

use crate::config::{StrategyConfig, StrategyKind};
use detnas_space::rng::below;
use detnas_space::{Arch, Constraint, CostModel, LatencyTable, SearchSpace, cost, crossover, mutate, sample_uniform};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

/// How a candidate was produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Origin {
    /// Drawn uniformly under the limits.
    Random,
    /// A mutation of an archive member.
    Mutation,
    /// A crossover of two archive members.
    Crossover,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            Origin::Random => "random",
            Origin::Mutation => "mutation",
            Origin::Crossover => "crossover",
        })
    }
}

/// Analytic and measured cost of one architecture.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Measured {
    /// Backbone MACs at the search's input size.
    pub backbone_macs: u64,
    /// Backbone parameters.
    pub backbone_params: u64,
    /// Latency from the per-op table, ms (when the search has one).
    pub latency_ms: Option<f64>,
}

/// The space with the limits every candidate must respect.
#[derive(Clone, Debug)]
pub struct Limits {
    /// The search space.
    pub space: SearchSpace,
    /// MACs and parameter limits.
    pub constraint: Constraint,
    /// Input size and classes the counts are taken at.
    pub model: CostModel,
    /// Latency limit, ms (needs a latency table).
    pub max_latency_ms: Option<f64>,
    /// Required when `max_latency_ms` is set; reported per candidate when present.
    pub latency: Option<LatencyTable>,
}

impl Limits {
    /// Limits without any constraint.
    pub fn none(space: SearchSpace) -> Limits {
        Limits {
            space,
            constraint: Constraint::default(),
            model: CostModel::default(),
            max_latency_ms: None,
            latency: None,
        }
    }

    /// MACs, parameters and latency of `arch`.
    pub fn measure(&self, arch: &Arch) -> Measured {
        let c = cost(&self.space, arch, &self.model);
        Measured {
            backbone_macs: c.backbone_macs,
            backbone_params: c.backbone_params,
            latency_ms: self.latency.as_ref().and_then(|t| t.latency_ms(arch).ok()),
        }
    }

    /// Whether `arch` meets every limit.
    pub fn admits(&self, arch: &Arch) -> bool {
        if !self.constraint.admits(&self.space, arch, &self.model) {
            return false;
        }
        match (self.max_latency_ms, &self.latency) {
            (Some(limit), Some(t)) => t.latency_ms(arch).is_ok_and(|l| l <= limit),
            (Some(_), None) => false,
            _ => true,
        }
    }

    /// An error when no architecture can satisfy the limits.
    ///
    /// # Errors
    /// `SpaceError::Unsatisfiable` when even the cheapest architecture exceeds a MACs, parameter
    /// or latency limit; `SpaceError::InvalidParameter` for a latency limit without a table.
    pub fn check_satisfiable(&self) -> Result<(), detnas_space::SpaceError> {
        self.constraint.check_satisfiable(&self.space, &self.model)?;
        if let Some(limit) = self.max_latency_ms {
            let t = self.latency.as_ref().ok_or_else(|| {
                detnas_space::SpaceError::InvalidParameter("a latency limit needs a latency table".into())
            })?;
            let (lo, _) = t.bounds();
            if lo > limit {
                return Err(detnas_space::SpaceError::Unsatisfiable(format!(
                    "no architecture has a summed latency <= {limit} ms (the fastest takes {lo:.3} ms)"
                )));
            }
        }
        Ok(())
    }
}

/// An evaluated architecture.
#[derive(Clone, Debug, PartialEq)]
pub struct Scored {
    /// The architecture.
    pub arch: Arch,
    /// Its fitness.
    pub fitness: f64,
}

/// Sorts best first: higher fitness, ties by the architecture (deterministic).
pub fn rank(items: &mut [Scored]) {
    items.sort_by(|a, b| b.fitness.total_cmp(&a.fitness).then_with(|| a.arch.cmp(&b.arch)));
}

/// The new elitist archive: the best `k` of the old archive and the new scores.
pub fn update_elite(elite: &[Scored], new: &[Scored], k: usize) -> Vec<Scored> {
    let mut all: Vec<Scored> = elite.to_vec();
    for s in new {
        if !all.iter().any(|e| e.arch == s.arch) {
            all.push(s.clone());
        }
    }
    rank(&mut all);
    all.truncate(k);
    all
}

/// The candidates of one generation.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Proposal {
    /// The candidates of the next generation and how each was made.
    pub candidates: Vec<(Arch, Origin)>,
    /// Slots of `population` left empty because no legal architecture was found.
    pub shortfall: usize,
}

/// Proposes generation `generation`'s candidates (see the module documentation).
pub fn propose<R: RngCore + ?Sized>(
    cfg: &StrategyConfig,
    limits: &Limits,
    elite: &[Scored],
    visited: &HashSet<Arch>,
    generation: usize,
    rng: &mut R,
) -> Proposal {
    let mut fresh: HashSet<Arch> = HashSet::new();
    let mut out: Vec<(Arch, Origin)> = Vec::new();
    let mut offer = |arch: Arch, origin: Origin, out: &mut Vec<(Arch, Origin)>| -> bool {
        if visited.contains(&arch) || fresh.contains(&arch) || !limits.admits(&arch) {
            return false;
        }
        fresh.insert(arch.clone());
        out.push((arch, origin));
        true
    };
    let evolve = cfg.kind == StrategyKind::Evolution && generation > 0 && !elite.is_empty();
    if evolve {
        let parent = |rng: &mut R| &elite[below(rng, elite.len() as u64) as usize].arch;
        let (mut made, mut tries) = (0, 0);
        while made < cfg.mutations && tries < cfg.mutations * cfg.max_attempts {
            tries += 1;
            let child = mutate(&limits.space, parent(rng), cfg.mutation_prob, rng);
            made += usize::from(offer(child, Origin::Mutation, &mut out));
        }
        let (mut made, mut tries) = (0, 0);
        while made < cfg.crossovers && tries < cfg.crossovers * cfg.max_attempts {
            tries += 1;
            let (a, b) = (parent(rng).clone(), parent(rng).clone());
            let child = crossover(&a, &b, rng);
            made += usize::from(offer(child, Origin::Crossover, &mut out));
        }
    }
    let mut tries = 0;
    while out.len() < cfg.population && tries < cfg.max_random_draws {
        tries += 1;
        let arch = sample_uniform(&limits.space, rng);
        offer(arch, Origin::Random, &mut out);
    }
    let shortfall = cfg.population - out.len();
    Proposal { candidates: out, shortfall }
}

#[cfg(test)]
mod tests {
    use super::*;
    use detnas_space::cost::extreme_arch;
    use detnas_space::rng::seeded;
    use detnas_space::{Choice, InputSize};

    fn scored(space: &SearchSpace, n: usize, seed: u64) -> Vec<Scored> {
        let mut rng = seeded(seed);
        (0..n).map(|i| Scored { arch: sample_uniform(space, &mut rng), fitness: i as f64 }).collect()
    }

    #[test]
    fn generation_zero_is_random_legal_and_unique() {
        let limits = Limits::none(SearchSpace::small());
        let cfg = StrategyConfig::default();
        let p = propose(&cfg, &limits, &[], &HashSet::new(), 0, &mut seeded(3));
        assert_eq!(p.candidates.len(), 50);
        assert_eq!(p.shortfall, 0);
        assert!(p.candidates.iter().all(|(_, o)| *o == Origin::Random));
        let set: HashSet<&Arch> = p.candidates.iter().map(|(a, _)| a).collect();
        assert_eq!(set.len(), 50);
        // Same seed, same proposal.
        assert_eq!(p, propose(&cfg, &limits, &[], &HashSet::new(), 0, &mut seeded(3)));
    }

    #[test]
    fn later_generations_mix_mutants_crossovers_and_random_without_revisits() {
        let space = SearchSpace::small();
        let limits = Limits::none(space.clone());
        let cfg = StrategyConfig::default();
        let elite = scored(&space, 10, 1);
        let visited: HashSet<Arch> = elite.iter().map(|s| s.arch.clone()).collect();
        let p = propose(&cfg, &limits, &elite, &visited, 1, &mut seeded(4));
        let count = |o| p.candidates.iter().filter(|(_, x)| *x == o).count();
        assert_eq!((count(Origin::Mutation), count(Origin::Crossover), count(Origin::Random)), (20, 20, 10));
        assert!(p.candidates.iter().all(|(a, _)| !visited.contains(a)));
        // A mutant differs from some parent in few genes (p = 0.1 of 20 genes).
        for (a, _) in p.candidates.iter().filter(|(_, o)| *o == Origin::Mutation) {
            let d =
                elite.iter().map(|e| e.arch.choices().iter().zip(a.choices()).filter(|(x, y)| x != y).count()).min();
            assert!(d.unwrap() <= 8, "{a}");
        }
        // Crossover children take every gene from one of two parents of the archive.
        for (a, _) in p.candidates.iter().filter(|(_, o)| *o == Origin::Crossover) {
            let ok = elite.iter().any(|x| {
                elite.iter().any(|y| {
                    a.choices()
                        .iter()
                        .zip(x.arch.choices().iter().zip(y.arch.choices()))
                        .all(|(g, (u, v))| g == u || g == v)
                })
            });
            assert!(ok, "{a} is not a crossover of two elite parents");
        }
    }

    /// Mutation resamples each gene with probability p, uniformly among the 4 choices (the
    /// resample may keep the old value): the per-gene change rate is p·3/4.
    #[test]
    fn mutation_rate_matches_p() {
        let space = SearchSpace::small();
        let parent = Arch::uniform(Choice::Shuffle3, 20);
        let mut rng = seeded(9);
        let n = 20_000;
        let changed: usize = (0..n)
            .map(|_| {
                mutate(&space, &parent, 0.1, &mut rng).choices().iter().filter(|&&c| c != Choice::Shuffle3).count()
            })
            .sum();
        let rate = changed as f64 / (n * 20) as f64;
        assert!((rate - 0.075).abs() < 0.003, "{rate}");
    }

    /// Crossover takes each gene from either parent with probability 1/2.
    #[test]
    fn crossover_mixes_evenly() {
        let a = Arch::uniform(Choice::Shuffle3, 20);
        let b = Arch::uniform(Choice::Xception, 20);
        let mut rng = seeded(10);
        let n = 10_000;
        let from_a: usize = (0..n)
            .map(|_| crossover(&a, &b, &mut rng).choices().iter().filter(|&&c| c == Choice::Shuffle3).count())
            .sum();
        let share = from_a as f64 / (n * 20) as f64;
        assert!((share - 0.5).abs() < 0.01, "{share}");
    }

    #[test]
    fn constraint_rejects_at_generation_time() {
        let space = SearchSpace::small();
        let model = CostModel::default();
        let limit = 300_000_000;
        let limits = Limits {
            constraint: Constraint { max_backbone_macs: Some(limit), max_backbone_params: None },
            ..Limits::none(space.clone())
        };
        let cfg = StrategyConfig::default();
        let elite = scored(&space, 10, 2);
        let p = propose(&cfg, &limits, &elite, &HashSet::new(), 3, &mut seeded(5));
        assert_eq!(p.candidates.len(), 50);
        assert!(p.candidates.iter().all(|(a, _)| cost(&space, a, &model).backbone_macs <= limit));
    }

    /// Only one architecture respects the minimum MACs: generation 0 gets it, generation 1
    /// has nothing left, and both return promptly with the shortfall stated.
    #[test]
    fn tiny_feasible_sets_give_short_generations_instead_of_spinning() {
        let space = SearchSpace::small();
        let lo = extreme_arch(&space, InputSize::square(224), false);
        let lo_macs = cost(&space, &lo, &CostModel::default()).backbone_macs;
        let limits = Limits {
            constraint: Constraint { max_backbone_macs: Some(lo_macs), max_backbone_params: None },
            ..Limits::none(space.clone())
        };
        let cfg = StrategyConfig { max_attempts: 50, max_random_draws: 2000, ..StrategyConfig::default() };
        let t = std::time::Instant::now();
        let mut rng = seeded(6);
        // Random draws hit the single feasible architecture with probability 4^-20: seed it
        // through the archive instead, as a mutation of itself.
        let elite = vec![Scored { arch: lo.clone(), fitness: 1.0 }];
        let p = propose(&cfg, &limits, &elite, &HashSet::new(), 1, &mut rng);
        assert_eq!(p.candidates, vec![(lo.clone(), Origin::Mutation)]);
        assert_eq!(p.shortfall, 49);
        let visited: HashSet<Arch> = [lo].into_iter().collect();
        let p = propose(&cfg, &limits, &elite, &visited, 2, &mut rng);
        assert!(p.candidates.is_empty());
        assert_eq!(p.shortfall, 50);
        assert!(t.elapsed().as_secs() < 10);
    }

    #[test]
    fn elite_keeps_the_best_across_generations() {
        let space = SearchSpace::small();
        let a = scored(&space, 10, 1);
        let mut b = scored(&space, 10, 2);
        for s in &mut b {
            s.fitness += 5.0;
        }
        let e = update_elite(&a, &b, 10);
        assert_eq!(e.len(), 10);
        let f: Vec<f64> = e.iter().map(|s| s.fitness).collect();
        assert_eq!(f, [14.0, 13.0, 12.0, 11.0, 10.0, 9.0, 9.0, 8.0, 8.0, 7.0]);
        // Re-offering archive members does not duplicate them.
        assert_eq!(update_elite(&e, &e, 10), e);
        assert!(e.windows(2).all(|w| w[0].fitness >= w[1].fitness));
    }
}
