//! The search engine on synthetic fitness functions (no network): finding a known optimum
//! under a MACs limit, exact resume after a crash at any candidate, parallel = sequential,
//! random search with the same budget.

mod rank;

use detnas_search::config::{StrategyConfig, StrategyKind};
use detnas_search::engine::{self, SearchSetup};
use detnas_search::ledger;
use detnas_search::{Evaluation, Evaluator, EvaluatorFactory, Limits, SearchError, Workers};
use detnas_space::{Arch, Choice, Constraint, CostModel, SearchSpace, cost};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("detnas-search-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// The known optimum: DetNAS-FPN-300M's architecture. Fitness = number of blocks agreeing
/// with it, plus a small bonus for MACs so that the unconstrained optimum would differ
/// where the limit binds.
fn target() -> Arch {
    "21202112331300313132".parse().unwrap()
}

struct Matching {
    space: SearchSpace,
    calls: Arc<AtomicUsize>,
    /// Fail (a simulated crash) once this many evaluations happened in total.
    crash_at: Option<usize>,
}

impl Evaluator for Matching {
    fn evaluate(&mut self, arch: &Arch) -> Result<Evaluation, SearchError> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        if self.crash_at.is_some_and(|c| n > c) {
            return Err(SearchError::Config("simulated crash".into()));
        }
        let hits = arch.choices().iter().zip(target().choices()).filter(|(a, b)| a == b).count() as f64;
        let macs = cost(&self.space, arch, &CostModel::default()).backbone_macs as f64;
        Ok(Evaluation {
            fitness: hits + macs * 1e-12,
            metrics: vec![hits],
            recalibration_seconds: 0.0,
            evaluation_seconds: 0.0,
            threads: None,
        })
    }
}

fn limits() -> Limits {
    let space = SearchSpace::small();
    let t_macs = cost(&space, &target(), &CostModel::default()).backbone_macs;
    Limits {
        constraint: Constraint { max_backbone_macs: Some(t_macs), max_backbone_params: None },
        ..Limits::none(space)
    }
}

fn setup(name: &str, strategy: StrategyConfig, seed: u64) -> SearchSetup {
    SearchSetup {
        strategy,
        seed,
        limits: limits(),
        config_hash: "h".into(),
        dir: dir(name),
        progress: false,
        prior: Default::default(),
        cancel: Default::default(),
    }
}

fn factory(calls: Arc<AtomicUsize>, crash_at: Option<usize>) -> EvaluatorFactory {
    Arc::new(move |_| {
        Ok(Box::new(Matching { space: SearchSpace::small(), calls: calls.clone(), crash_at }) as Box<dyn Evaluator>)
    })
}

fn workers(n: usize, crash_at: Option<usize>) -> (Workers, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    (Workers::new(factory(calls.clone(), crash_at), n).unwrap(), calls)
}

/// The limit is the target's own MACs, so the target is feasible and every architecture
/// beating it on the MACs bonus at equal hits is not: the target is the unique optimum.
#[test]
fn evolution_finds_the_known_optimum_under_a_macs_limit_within_the_default_budget() {
    let mut found = 0;
    for seed in 0..3 {
        let s = setup(&format!("opt{seed}"), StrategyConfig::default(), seed);
        let (mut w, calls) = workers(1, None);
        let out = engine::run(&s, &mut w).unwrap();
        let limit = s.limits.constraint.max_backbone_macs.unwrap();
        assert!(out.entries.iter().all(|e| e.backbone_macs <= limit), "a candidate broke the limit");
        assert!(calls.load(Ordering::SeqCst) <= 50 * 20);
        let mut archs: Vec<&str> = out.entries.iter().map(|e| e.arch.as_str()).collect();
        archs.sort_unstable();
        archs.dedup();
        assert_eq!(archs.len(), out.entries.len(), "an architecture was evaluated twice");
        if out.top[0].arch == target().to_string() {
            found += 1;
        }
        let h = &out.state.history;
        assert_eq!(h.len(), 20);
        assert!(h.windows(2).all(|p| p[1].elite_best >= p[0].elite_best), "the archive is elitist");
        std::fs::remove_dir_all(&s.dir).unwrap();
    }
    assert_eq!(found, 3, "the known optimum was found by {found} of 3 seeds");
}

/// Random search with the same budget (population × generations) on the same problem is
/// far from the optimum: the evolution's operators are what finds it.
#[test]
fn random_search_has_the_same_budget_and_does_worse() {
    let strategy = StrategyConfig { kind: StrategyKind::Random, ..StrategyConfig::default() };
    let s = setup("random", strategy, 0);
    let (mut w, _) = workers(1, None);
    let out = engine::run(&s, &mut w).unwrap();
    assert_eq!(out.entries.len(), 1000);
    assert!(out.entries.iter().all(|e| e.origin == detnas_search::Origin::Random));
    assert!(out.top[0].metrics[0] < 15.0, "random search reached {} of 20", out.top[0].metrics[0]);
    std::fs::remove_dir_all(&s.dir).unwrap();
}

fn small_strategy() -> StrategyConfig {
    StrategyConfig {
        population: 12,
        top_k: 4,
        generations: 5,
        mutations: 4,
        crossovers: 4,
        ..StrategyConfig::default()
    }
}

/// A crash after any number of candidates (mid-generation, at a generation boundary, while
/// a ledger line is half written), then a restart with the same setup: the final archive,
/// history and ledger contents equal the uninterrupted run's, and no candidate is evaluated
/// twice.
#[test]
fn crash_and_resume_is_exact() {
    let reference = setup("ref", small_strategy(), 7);
    let (mut w, _) = workers(1, None);
    let want = engine::run(&reference, &mut w).unwrap();
    assert_eq!(want.entries.len(), 60);
    for crash_at in [1, 12, 13, 30, 59] {
        let s = setup(&format!("crash{crash_at}"), small_strategy(), 7);
        let (mut w, _) = workers(1, Some(crash_at));
        assert!(engine::run(&s, &mut w).is_err());
        assert_eq!(ledger::read(&engine::ledger_path(&s.dir)).unwrap().len(), crash_at);
        if crash_at == 30 {
            // A torn last line, as a kill -9 during the append leaves it.
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new().append(true).open(engine::ledger_path(&s.dir)).unwrap();
            f.write_all(b"{\"generation\":2,\"in").unwrap();
        }
        let (mut w, calls) = workers(1, None);
        let got = engine::run(&s, &mut w).unwrap();
        assert_eq!(
            calls.load(Ordering::SeqCst),
            60 - crash_at,
            "crash at {crash_at}: re-evaluated ledgered candidates"
        );
        let masked = |s: &engine::SearchState| {
            let mut s = s.clone();
            s.history.iter_mut().for_each(|h| h.evaluated_now = 0);
            s
        };
        assert_eq!(masked(&got.state), masked(&want.state), "crash at {crash_at}");
        let key = |v: &[ledger::LedgerEntry]| {
            let mut k: Vec<(String, u64, usize)> =
                v.iter().map(|e| (e.arch.clone(), e.fitness.to_bits(), e.generation)).collect();
            k.sort();
            k
        };
        assert_eq!(key(&got.entries), key(&want.entries));
        // Once finished, running again evaluates nothing.
        let (mut w, calls) = workers(1, None);
        assert_eq!(masked(&engine::run(&s, &mut w).unwrap().state), masked(&want.state));
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        std::fs::remove_dir_all(&s.dir).unwrap();
    }
    std::fs::remove_dir_all(&reference.dir).unwrap();
}

#[test]
fn parallel_workers_give_the_sequential_result() {
    let a = setup("seq", small_strategy(), 3);
    let (mut w, _) = workers(1, None);
    let seq = engine::run(&a, &mut w).unwrap();
    let b = setup("par", small_strategy(), 3);
    let (mut w, calls) = workers(3, None);
    assert_eq!(w.count(), 3);
    let par = engine::run(&b, &mut w).unwrap();
    assert_eq!(par.state, seq.state);
    assert_eq!(calls.load(Ordering::SeqCst), 60);
    // An evaluation error in a worker stops the search with that error.
    let c = setup("par-crash", small_strategy(), 3);
    let (mut w, _) = workers(2, Some(5));
    assert!(engine::run(&c, &mut w).unwrap_err().to_string().contains("simulated crash"));
    for d in [a.dir, b.dir, c.dir] {
        std::fs::remove_dir_all(d).unwrap();
    }
}

/// A space of 64 architectures under a limit admitting about half of them: every feasible
/// architecture is evaluated exactly once, the short generation is reported, and the search
/// stops with a reason instead of spinning.
#[test]
fn an_exhausted_space_stops_the_search_with_a_reason() {
    let mut space = SearchSpace::small().scaled(0.25).unwrap();
    space.name = "tiny".into();
    space.depths = vec![1, 1, 1];
    space.widths.truncate(3);
    space.check().unwrap();
    let model = CostModel::default();
    let all: Vec<Arch> = (0..64u32)
        .map(|i| Arch::new((0..3).map(|b| Choice::from_id(((i >> (2 * b)) & 3) as u8).unwrap()).collect()))
        .collect();
    let mut macs: Vec<u64> = all.iter().map(|a| cost(&space, a, &model).backbone_macs).collect();
    macs.sort_unstable();
    let limit = macs[31];
    let feasible = all.iter().filter(|a| cost(&space, a, &model).backbone_macs <= limit).count();
    let s = SearchSetup {
        strategy: StrategyConfig { max_attempts: 200, max_random_draws: 5000, ..small_strategy() },
        seed: 1,
        limits: Limits {
            constraint: Constraint { max_backbone_macs: Some(limit), max_backbone_params: None },
            ..Limits::none(space.clone())
        },
        config_hash: "h".into(),
        dir: dir("tiny"),
        progress: false,
        prior: Default::default(),
        cancel: Default::default(),
    };
    let calls = Arc::new(AtomicUsize::new(0));
    struct Cheap(Arc<AtomicUsize>);
    impl Evaluator for Cheap {
        fn evaluate(&mut self, arch: &Arch) -> Result<Evaluation, SearchError> {
            self.0.fetch_add(1, Ordering::SeqCst);
            let v = arch.choices().iter().map(|c| c.id() as f64).sum();
            Ok(Evaluation {
                fitness: v,
                metrics: vec![],
                recalibration_seconds: 0.0,
                evaluation_seconds: 0.0,
                threads: None,
            })
        }
    }
    let c3 = calls.clone();
    let mut w = Workers::new(Arc::new(move |_| Ok(Box::new(Cheap(c3.clone())) as Box<dyn Evaluator>)), 1).unwrap();
    let t = std::time::Instant::now();
    let out = engine::run(&s, &mut w).unwrap();
    assert!(t.elapsed().as_secs() < 60);
    assert!(out.state.finished);
    assert_eq!(out.entries.len(), feasible, "every feasible architecture once");
    assert_eq!(calls.load(Ordering::SeqCst), feasible);
    assert!(out.state.history.iter().any(|h| h.shortfall > 0));
    assert!(
        out.state.stop_reason.as_deref().is_some_and(|r| r.contains("no architecture within the limits")),
        "{:?}",
        out.state
    );
    assert!(out.entries.iter().all(|e| e.backbone_macs <= limit));
    std::fs::remove_dir_all(&s.dir).unwrap();
}

/// Every shipped search preset loads and checks; the paper presets use the reference
/// numbers.
#[test]
fn search_presets_load() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
    let mut n = 0;
    for sub in ["demo", "coco", "voc"] {
        for e in std::fs::read_dir(root.join(sub)).unwrap().flatten() {
            let p = e.path();
            if p.file_name().unwrap().to_string_lossy().starts_with("search") {
                let cfg = detnas_search::SearchConfig::load(&p, &[]).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                if sub == "coco" {
                    let s = &cfg.strategy;
                    assert_eq!((s.population, s.top_k, s.generations, s.mutations, s.crossovers), (50, 10, 20, 20, 20));
                    assert!(cfg.constraint.max_backbone_macs.is_some());
                }
                n += 1;
            }
        }
    }
    assert!(n >= 4, "{n} presets");
}
