//! Memory soak tests: the engine binary, with its own allocator configuration, runs long
//! loops while its resident memory (`VmRSS`, logged by the engine itself) is watched.
//!
//! Each test lets the loop warm up, then bounds the growth of the resident set over the rest
//! by 0.1 MiB per step (or per candidate): a leak or fragmentation of 0.5 MiB per step breaks
//! it five times over. Run them under the old allocator setting to see them fail:
//! `MALLOC_CONF=lg_extent_max_active_fit:6 cargo test --release -p detnas-cli soak`.

use crate::{engine, ok, temp_dir};
use std::path::Path;

/// The tiny fine-tuning config at 96×96 (batch 8): at 64×64 the tensors vary too little for
/// the old setting to fragment, at 96×96 it grows about 2.3 MiB per step.
fn soak_finetune(data: &Path, search_val: usize) -> String {
    crate::tiny_finetune(data, search_val)
        .replace("min_size = [64]", "min_size = [96]")
        .replace("max_size = 64", "max_size = 96")
        .replace("test_min_size = 64", "test_min_size = 96")
        .replace("width = 64, height = 64", "width = 96, height = 96")
        .replace("images = 30,", "images = 60,")
        .replace("batch = 4\nlr", "batch = 8\nlr")
}

/// Growth allowed per step (or candidate) after warm-up, MiB.
const BOUND_PER_STEP: f64 = 0.1;

/// `(x, rss_mib)` of the JSON lines of `path` that carry `rss_mib`: x is the field `key`, or
/// the line's position when `key` is `None`.
fn series(path: &Path, key: Option<&str>) -> Vec<(f64, f64)> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .enumerate()
        .filter_map(|(i, l)| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            let x = match key {
                Some(k) => v[k].as_f64()?,
                None => i as f64,
            };
            Some((x, v["rss_mib"].as_f64()?))
        })
        .collect()
}

/// Asserts that after `warm` (in x units) the resident set grows by less than
/// `BOUND_PER_STEP` per unit of x, both from the first point after warm-up to the highest
/// one and as a least-squares slope.
fn assert_flat(points: &[(f64, f64)], warm: f64, what: &str) {
    let after: Vec<(f64, f64)> = points.iter().copied().filter(|p| p.0 >= warm).collect();
    assert!(after.len() >= 5, "{what}: too few memory readings after warm-up: {points:?}");
    let (x0, r0) = after[0];
    let span = after[after.len() - 1].0 - x0;
    let rise = after.iter().map(|p| p.1).fold(f64::MIN, f64::max) - r0;
    let n = after.len() as f64;
    let mx = after.iter().map(|p| p.0).sum::<f64>() / n;
    let my = after.iter().map(|p| p.1).sum::<f64>() / n;
    let slope = after.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum::<f64>()
        / after.iter().map(|p| (p.0 - mx).powi(2)).sum::<f64>();
    assert!(
        rise < BOUND_PER_STEP * span && slope < BOUND_PER_STEP,
        "{what}: resident memory grew {rise:.1} MiB over {span} steps after warm-up ({slope:.3} MiB per step; \
         bound {BOUND_PER_STEP}): {after:?}"
    );
}

#[test]
fn detection_fine_tuning_memory_stays_flat() {
    let d = temp_dir("soak", "finetune");
    let cfg = d.join("finetune.toml");
    std::fs::write(&cfg, soak_finetune(&d.join("data"), 0)).unwrap();
    let out = d.join("run");
    ok(&engine(
        &[
            "finetune",
            "--config",
            cfg.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--no-progress",
            "--set",
            "schedule.iterations=300",
            "--set",
            "runtime.log_every=10",
            "--set",
            "runtime.checkpoint_every=100",
        ],
        None,
    ));
    let points = series(&out.join("metrics.jsonl"), Some("step"));
    assert_flat(&points, 100.0, "fine-tuning");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    let peak = summary["memory"]["peak_rss_mib"].as_f64().unwrap();
    let last = points.last().unwrap().1;
    // The kernel batches per-thread page counts, so the high-water mark may trail an earlier
    // reading by a few hundred KiB: 1 MiB of slack.
    assert!(peak + 1.0 >= last && peak < 4096.0, "peak {peak} MiB, last reading {last} MiB");
    std::fs::remove_dir_all(&d).ok();
}

/// 160 candidates of each fitness that loops over candidates in one process (detection AP,
/// and the training-free entropy and NASWOT): resident memory flat after the first 20.
#[test]
fn search_memory_stays_flat_over_many_candidates() {
    let d = temp_dir("soak", "search");
    let ft = crate::finetuned(&d, &soak_finetune(&d.join("data"), 12));
    let cfg = d.join("search.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"seed = 3
[supernet]
checkpoint = "{}"
fitness = "det"
[strategy]
kind = "random"
population = 20
generations = 8
[eval]
recalibrate_images = 8
batch = 4
[runtime]
device = "cpu"
threads = 1
"#,
            ft.display()
        ),
    )
    .unwrap();
    let out = d.join("search");
    ok(&engine(
        &[
            "search",
            "--no-progress",
            "--config",
            cfg.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--workers",
            "1",
        ],
        None,
    ));
    // The ledger in the order the candidates were recorded.
    let points = series(&out.join("ledger.jsonl"), None);
    assert_eq!(points.len(), 160);
    assert_flat(&points, 20.0, "search");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["evaluated_now"], 160);
    assert!(summary["memory"]["peak_rss_mib"].as_f64().unwrap() > 0.0);
    // The training-free fitnesses over as many candidates: entropy (no checkpoint) and NASWOT
    // (the run's training images).
    let space = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/demo/space.toml");
    for (name, supernet) in [
        ("entropy", format!("fitness = \"entropy\"\nspace = \"{}\"", space.display())),
        ("naswot", format!("fitness = \"naswot\"\ncheckpoint = \"{}\"", ft.display())),
    ] {
        let cfg = d.join(format!("{name}.toml"));
        let text = format!(
            "seed = 3\n[supernet]\n{supernet}\n[strategy]\nkind = \"random\"\npopulation = 20\ngenerations = 8\n\
             [constraint]\ninput = [64, 64]\n[zero_cost]\nbatch = 2\nrepeats = 2\nimages = 8\n\
             [runtime]\ndevice = \"cpu\"\nthreads = 1\n"
        );
        std::fs::write(&cfg, text).unwrap();
        let out = d.join(name);
        let args = ["search", "--no-progress", "--config", cfg.to_str().unwrap(), "--out", out.to_str().unwrap()];
        ok(&engine(&[&args[..], &["--workers", "1"]].concat(), None));
        let points = series(&out.join("ledger.jsonl"), None);
        assert_eq!(points.len(), 160, "{name}");
        assert_flat(&points, 20.0, name);
    }
    std::fs::remove_dir_all(&d).ok();
}

/// The stages of `detnas run` in one process: each retraining stage's detection run stays
/// flat after warm-up (with the old setting, each grew and the growth added up from stage to
/// stage), and no stage starts above the highest peak of the stages before it plus 32 MiB
/// (what a stage allocated is released or reused, not kept).
#[test]
fn pipeline_stages_release_their_memory() {
    let d = temp_dir("soak", "pipeline");
    // The pipeline test's stages, with the 96×96 fine-tuning and longer detection retraining.
    let cfg = crate::pipeline::write_configs(&d);
    std::fs::write(d.join("finetune.toml"), soak_finetune(&d.join("unused"), 12)).unwrap();
    // The search's limit counted at the fine-tuning's 96×96 (the MACs scale with the pixels).
    let search = std::fs::read_to_string(d.join("search.toml")).unwrap();
    let limit = "input = [64, 64]\nmax_backbone_macs = \"2.8M\"";
    assert!(search.contains(limit));
    std::fs::write(d.join("search.toml"), search.replace(limit, "input = [96, 96]\nmax_backbone_macs = \"6.3M\""))
        .unwrap();
    let pipeline = std::fs::read_to_string(&cfg).unwrap();
    let short = r#"det_set = ["schedule.iterations=40", "eval.recalibrate_images=0"]"#;
    assert!(pipeline.contains(short));
    std::fs::write(
        &cfg,
        pipeline.replace(
            short,
            r#"det_set = ["schedule.iterations=120", "runtime.log_every=10", "eval.recalibrate_images=0"]"#,
        ),
    )
    .unwrap();
    let out = d.join("run");
    ok(&engine(&["run", "--no-progress", "--config", cfg.to_str().unwrap(), "--out", out.to_str().unwrap()], None));
    let mut highest: Option<(String, f64)> = None;
    for stage in ["pretrain", "finetune", "search", "search-cls", "retrain-found", "retrain-random", "retrain-clsnas"] {
        let rec: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join(stage).join("stage.json")).unwrap()).unwrap();
        let m = &rec["memory"];
        let (start, peak) = (m["start_rss_mib"].as_f64().unwrap(), m["peak_rss_mib"].as_f64().unwrap());
        assert!(peak >= start, "{stage}: {m}");
        if let Some((before, p)) = &highest {
            assert!(
                start <= p + 32.0,
                "{stage} starts at {start:.1} MiB, above the peak {p:.1} MiB of {before} and earlier"
            );
        }
        if highest.as_ref().is_none_or(|h| peak > h.1) {
            highest = Some((stage.to_string(), peak));
        }
        if let Some(l) = stage.strip_prefix("retrain-") {
            let points = series(&out.join(format!("retrain-{l}/det/metrics.jsonl")), Some("step"));
            assert_flat(&points, 40.0, stage);
        }
    }
    std::fs::remove_dir_all(&d).ok();
}

/// The bound itself: a series growing 0.5 MiB per step with ±2 MiB of noise fails it, a flat
/// one with the same noise passes.
#[test]
fn the_flatness_bound_catches_half_a_mib_per_step() {
    let noise = |i: usize| [0.0, 1.7, -2.0, 0.4, 1.1, -0.9, 2.0, -1.5][i % 8];
    let flat: Vec<(f64, f64)> = (0..30).map(|i| (10.0 * i as f64, 300.0 + noise(i))).collect();
    assert_flat(&flat, 100.0, "flat");
    let leaking: Vec<(f64, f64)> = flat.iter().map(|&(x, y)| (x, y + 0.5 * x)).collect();
    assert!(std::panic::catch_unwind(|| assert_flat(&leaking, 100.0, "leaking")).is_err());
}
