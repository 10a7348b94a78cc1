//! `detnas search` end to end on real (tiny) supernets: DetNAS fitness on a fine-tuned
//! detector with MACs and latency limits, exact resume after SIGKILL, parallel workers equal
//! to the sequential run, `search show`, the ClsNAS fitness on a pre-trained supernet, and
//! refusals.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use crate::{engine, ok};

fn dir(name: &str) -> PathBuf {
    crate::temp_dir("search-cli", name)
}

fn search_config(checkpoint: &Path, fitness: &str, extra: &str) -> String {
    format!(
        r#"
seed = 2
[supernet]
checkpoint = "{ckpt}"
fitness = "{fitness}"
[strategy]
population = 4
top_k = 2
generations = 3
mutations = 1
crossovers = 1
[eval]
recalibrate_images = 8
batch = 4
{extra}
[runtime]
device = "cpu"
threads = 1
"#,
        ckpt = checkpoint.display()
    )
}

fn search(cfg: &Path, out: &Path, extra: &[&str], fault: Option<&str>) -> Output {
    let mut args = vec!["search", "--no-progress", "--config", cfg.to_str().unwrap(), "--out", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    engine(&args, fault)
}

fn json(p: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// The state without the per-process counters.
fn state(out: &Path) -> serde_json::Value {
    let mut s = json(&out.join("state.json"));
    for h in s["history"].as_array_mut().unwrap() {
        h["evaluated_now"] = serde_json::Value::Null;
    }
    s
}

fn ledger(out: &Path) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = std::fs::read_to_string(out.join("ledger.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let e: serde_json::Value = serde_json::from_str(l).unwrap();
            (e["arch"].as_str().unwrap().to_string(), e["fitness"].as_f64().unwrap().to_bits())
        })
        .collect();
    v.sort();
    v
}

#[test]
fn detection_search_resumes_exactly_after_sigkill_and_parallel_equals_sequential() {
    let d = dir("det");
    let ft = crate::finetuned(&d, &crate::tiny_finetune(&d.join("data"), 6));

    // Limits: backbone MACs at 64x64 below the space's maximum, and a latency limit that
    // needs the table (measured into the run folder, then reused).
    let cfg = d.join("search.toml");
    std::fs::write(
        &cfg,
        search_config(
            &ft,
            "det",
            "[constraint]\ninput = [64, 64]\nmax_backbone_macs = \"2.8M\"\nmax_latency_ms = 1000.0\n",
        ),
    )
    .unwrap();
    let reference = d.join("ref");
    // The sequential reference (on the CPU the default is one worker per thread).
    let out = ok(&search(&cfg, &reference, &["--workers", "1"], None));
    assert!(out.contains("best ") && out.contains("AP"), "{out}");
    assert!(reference.join("latency-table.json").is_file());
    let best = json(&reference.join("best_arch.json"));
    assert_eq!(best["evaluated"], 12);
    assert_eq!(best["top_k"].as_array().unwrap().len(), 2);
    assert_eq!(best["metrics"].as_array().unwrap().len(), 12, "the 12 COCO stats");
    assert!(best["backbone_macs"].as_u64().unwrap() <= 2_800_000);
    assert!(best["latency_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(best["provenance"]["seed"], 2);
    assert_eq!(best["provenance"]["supernet_sha256"].as_str().unwrap().len(), 64);
    let entries = ledger(&reference);
    assert_eq!(entries.len(), 12);
    let ap = best["fitness"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&ap), "{ap}");
    let mut distinct: Vec<u64> = entries.iter().map(|e| e.1).collect();
    distinct.sort_unstable();
    distinct.dedup();
    assert!(ap > 0.0 && distinct.len() >= 3, "the paths must score differently for the test to mean something");
    // The search scores candidates on inputs prepared once; `eval det` reads the images on
    // every pass: the same path, recalibration images and batch size give the same AP.
    let shown = ok(&engine(
        &[
            "eval",
            "det",
            "--checkpoint",
            ft.to_str().unwrap(),
            "--arch",
            best["arch"].as_str().unwrap(),
            "--data",
            "search-val",
            "--recalibrate-bn",
            "8",
            "--json",
        ],
        None,
    ));
    let read: serde_json::Value = serde_json::from_str(shown.lines().last().unwrap()).unwrap();
    assert_eq!(read["stats"][0].as_f64().unwrap(), ap, "{shown}");
    // `eval det --search` takes every setting from the search folder, the thread count from
    // the ledger, and reproduces each recorded score bit for bit.
    let raw = std::fs::read_to_string(reference.join("ledger.jsonl")).unwrap();
    let worst = raw
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .inspect(|e| assert_eq!(e["threads"], 1, "the ledger records the worker's threads"))
        .min_by(|x, y| x["fitness"].as_f64().unwrap().total_cmp(&y["fitness"].as_f64().unwrap()))
        .unwrap();
    for (arch, fitness) in
        [(best["arch"].as_str().unwrap(), ap), (worst["arch"].as_str().unwrap(), worst["fitness"].as_f64().unwrap())]
    {
        let shown =
            ok(&engine(&["eval", "det", "--search", reference.to_str().unwrap(), "--arch", arch, "--json"], None));
        let read: serde_json::Value = serde_json::from_str(shown.lines().last().unwrap()).unwrap();
        assert_eq!(read["fitness"].as_f64().unwrap(), fitness, "{arch}: {shown}");
        assert_eq!(read["ledger_fitness"].as_f64().unwrap(), fitness);
        assert_eq!(read["matches_ledger"], true);
    }
    // The same search folder: nothing left to do.
    let again = ok(&search(&cfg, &reference, &["--workers", "1"], None));
    assert!(again.contains(best["arch"].as_str().unwrap()));

    // Killed after candidate 6 (mid-generation 1): rerunning the command finishes with the
    // same archive and the same ledger, evaluating only what was missing.
    let killed = d.join("killed");
    let o = search(&cfg, &killed, &[], Some("kill_after_candidate:6"));
    assert_eq!(o.status.signal(), Some(9), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(ledger(&killed).len(), 6);
    ok(&search(&cfg, &killed, &[], None));
    assert_eq!(state(&killed), state(&reference));
    assert_eq!(ledger(&killed), entries);
    let archs = |b: &serde_json::Value| -> Vec<(String, f64)> {
        b["top_k"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["arch"].as_str().unwrap().into(), e["fitness"].as_f64().unwrap()))
            .collect()
    };
    assert_eq!(archs(&json(&killed.join("best_arch.json"))), archs(&best));

    // NASWOT as the fitness: the run's training images only (training-free), the limits kept,
    // the best score that of its architecture computed alone.
    let zero = d.join("naswot.toml");
    std::fs::write(
        &zero,
        search_config(
            &ft,
            "naswot",
            "[constraint]\ninput = [64, 64]\nmax_backbone_macs = \"2.8M\"\n[zero_cost]\nimages = 6\n",
        ),
    )
    .unwrap();
    let out = ok(&search(&zero, &d.join("naswot"), &[], None));
    let nb = json(&d.join("naswot/best_arch.json"));
    assert!(out.contains("naswot") && nb["metric"] == "naswot" && nb["evaluated"] == 12, "{out}");
    assert!(nb["backbone_macs"].as_u64().unwrap() <= 2_800_000);
    let opened = detnas_train::finetune::OpenedDetector::open(&ft, tch::Device::Cpu).unwrap();
    let images = opened.evaluation_batch(&opened.splits().unwrap().train, 6).unwrap().input;
    let space = &opened.state.space;
    let alone =
        detnas_nn::zero_cost::naswot(space, &space.parse_arch(nb["arch"].as_str().unwrap()).unwrap(), &images, 2);
    assert_eq!(nb["fitness"].as_f64(), alone);

    // Two workers with one thread each: the sequential result.
    let par = d.join("par");
    ok(&search(&cfg, &par, &["--workers", "2", "--threads", "2"], None));
    assert_eq!(state(&par), state(&reference));
    assert_eq!(ledger(&par), entries);

    // search show: tables and JSON.
    let shown = ok(&engine(&["search", "show", reference.to_str().unwrap()], None));
    for needle in [
        "finished: 3 generations, 12 candidates",
        "top-k best",
        "backbone MACs <= 2.80M",
        best["arch"].as_str().unwrap(),
    ] {
        assert!(shown.contains(needle), "{needle}\n{shown}");
    }
    let j: serde_json::Value =
        serde_json::from_str(&ok(&engine(&["search", "show", "--json", killed.to_str().unwrap()], None))).unwrap();
    assert_eq!(j["history"].as_array().unwrap().len(), 3);
    assert_eq!(j["evaluated"], 12);

    // Another configuration into the same folder is refused.
    let o = search(&cfg, &reference, &["--set", "seed=9"], None);
    assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));

    // A pre-training checkpoint is not a detector; a fine-tuning run without a
    // search-validation split cannot be searched.
    let ft0_cfg = d.join("ft0.toml");
    std::fs::write(&ft0_cfg, crate::tiny_finetune(&d.join("data0"), 0)).unwrap();
    let ft0 = d.join("ft0");
    ok(&engine(
        &["finetune", "--no-progress", "--config", ft0_cfg.to_str().unwrap(), "--out", ft0.to_str().unwrap()],
        None,
    ));
    let cfg0 = d.join("search0.toml");
    std::fs::write(&cfg0, search_config(&ft0, "det", "")).unwrap();
    let o = search(&cfg0, &d.join("s0"), &[], None);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no search-validation split"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let cfg1 = d.join("search1.toml");
    std::fs::write(&cfg1, search_config(&ft, "cls", "")).unwrap();
    let o = search(&cfg1, &d.join("s1"), &[], None);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a pre-training checkpoint"));
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn clsnas_fitness_searches_a_pretrained_supernet() {
    let d = dir("cls");
    let pcfg = d.join("pre.toml");
    std::fs::write(&pcfg, crate::tiny_pretrain(4)).unwrap();
    let pre = d.join("pre");
    ok(&engine(
        &["pretrain", "--no-progress", "--config", pcfg.to_str().unwrap(), "--out", pre.to_str().unwrap()],
        None,
    ));
    let cfg = d.join("search.toml");
    std::fs::write(&cfg, search_config(&pre, "cls", "val_images = 16")).unwrap();
    let out = d.join("s");
    let printed = ok(&search(&cfg, &out, &["--set", "strategy.kind=\"random\""], None));
    assert!(printed.contains("top1"), "{printed}");
    let best = json(&out.join("best_arch.json"));
    assert_eq!(best["fitness_kind"], "cls");
    assert_eq!(best["strategy"], "random");
    let top1 = best["fitness"].as_f64().unwrap();
    // 16 validation images: top-1 is a multiple of 1/16.
    assert_eq!((top1 * 16.0).fract(), 0.0, "{top1}");
    assert_eq!(best["metrics"].as_array().unwrap().len(), 2);
    std::fs::remove_dir_all(&d).unwrap();
}

/// The zero-cost search (`fitness = "entropy"`): no checkpoint, no data; every candidate
/// within the MACs limit; its scores are the entropy score computed alone; a SIGKILL
/// mid-search resumes to the same ledger and archive; the refusals name the missing key.
#[test]
fn zero_cost_search_needs_no_checkpoint_respects_limits_and_resumes_exactly() {
    let d = dir("zero-cost");
    let space = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/demo/space.toml");
    let text = format!(
        r#"
seed = 3
[supernet]
fitness = "entropy"
space = "{}"
[strategy]
population = 6
top_k = 3
generations = 4
mutations = 2
crossovers = 2
[constraint]
input = [64, 64]
max_backbone_macs = "2.3M"
[zero_cost]
batch = 2
repeats = 2
[runtime]
device = "cpu"
threads = 1
"#,
        space.display()
    );
    let cfg = d.join("zero-cost.toml");
    std::fs::write(&cfg, &text).unwrap();
    let reference = d.join("reference");
    let out = ok(&search(&cfg, &reference, &["--workers", "1"], None));
    assert!(out.contains("entropy"), "{out}");
    let best = json(&reference.join("best_arch.json"));
    assert_eq!(best["metric"], "entropy");
    assert_eq!(best["fitness_kind"], "entropy");
    let entries = ledger(&reference);
    assert_eq!(entries.len(), 24, "4 generations of 6");
    for l in std::fs::read_to_string(reference.join("ledger.jsonl")).unwrap().lines() {
        let e: serde_json::Value = serde_json::from_str(l).unwrap();
        assert!(e["backbone_macs"].as_u64().unwrap() <= 2_300_000, "{e}");
    }
    // The best candidate's score is the entropy score of its architecture, computed alone.
    let s = detnas_space::SearchSpace::named(space.to_str().unwrap()).unwrap();
    let arch = s.parse_arch(best["arch"].as_str().unwrap()).unwrap();
    let settings = detnas_nn::zero_cost::EntropySettings { batch: 2, input: [64, 64], repeats: 2, seed: 3 };
    let (alone, _) = detnas_nn::zero_cost::entropy(&s, &arch, &settings).unwrap();
    assert_eq!(best["fitness"].as_f64().unwrap(), alone);

    // Killed after candidate 9: the rerun evaluates what was missing and ends as the reference.
    let killed = d.join("killed");
    let o = search(&cfg, &killed, &[], Some("kill_after_candidate:9"));
    assert_eq!(o.status.signal(), Some(9), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(ledger(&killed).len(), 9);
    ok(&search(&cfg, &killed, &[], None));
    assert_eq!(state(&killed), state(&reference));
    assert_eq!(ledger(&killed), entries);
    let top = |b: &serde_json::Value| -> Vec<(String, f64)> {
        let k = b["top_k"].as_array().unwrap();
        k.iter().map(|e| (e["arch"].as_str().unwrap().into(), e["fitness"].as_f64().unwrap())).collect()
    };
    assert_eq!(top(&json(&killed.join("best_arch.json"))), top(&best));

    // A space file that does not exist: named, and no search folder is left.
    let bad = d.join("bad.toml");
    std::fs::write(&bad, text.replace(&space.display().to_string(), "/nonexistent/space.toml")).unwrap();
    let o = search(&bad, &d.join("bad"), &[], None);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent/space.toml"), "{o:?}");
    assert!(!d.join("bad").exists());

    // Without a space there is nothing to search; a det search still needs its checkpoint.
    std::fs::write(&bad, text.replace(&format!("space = \"{}\"\n", space.display()), "")).unwrap();
    let o = search(&bad, &d.join("bad"), &[], None);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("required key not given: supernet.space"), "{o:?}");
    std::fs::write(&bad, text.replace("fitness = \"entropy\"", "fitness = \"det\"")).unwrap();
    let o = search(&bad, &d.join("bad"), &[], None);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("required key not given: supernet.checkpoint"), "{o:?}");
    // With the fitness left at its default (det), the rule names the checkpoint too.
    std::fs::write(&bad, text.replace("fitness = \"entropy\"\n", "")).unwrap();
    let o = search(&bad, &d.join("bad"), &[], None);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("supernet.checkpoint is required"), "{o:?}");
    std::fs::remove_dir_all(&d).unwrap();
}
