//! `detnas run` on a shortened pipeline: every stage, the report, stage-level resume after
//! SIGKILL mid-fine-tuning and mid-search with the same final result, export and predict on
//! the exported folder.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use crate::{engine, ok};

fn dir(name: &str) -> PathBuf {
    crate::temp_dir("pipe", name)
}

/// Stage configs of a pipeline that runs in well under a minute.
pub(crate) fn write_configs(d: &Path) -> PathBuf {
    std::fs::write(d.join("pretrain.toml"), crate::tiny_pretrain(8)).unwrap();
    // The pipeline puts the synthetic set in RUN/data whatever the folder says.
    std::fs::write(d.join("finetune.toml"), crate::tiny_finetune(&d.join("unused-data"), 6)).unwrap();
    std::fs::write(
        d.join("search.toml"),
        r#"seed = 1
[supernet]
checkpoint = "unused"
[strategy]
population = 4
top_k = 2
generations = 2
mutations = 1
crossovers = 1
[constraint]
input = [64, 64]
max_backbone_macs = "2.8M"
[eval]
recalibrate_images = 8
batch = 4
"#,
    )
    .unwrap();
    let p = d.join("pipeline.toml");
    std::fs::write(
        &p,
        r#"name = "tiny"
seed = 4
device = "cpu"
threads = 1
[pretrain]
config = "pretrain.toml"
[finetune]
config = "finetune.toml"
[search]
config = "search.toml"
[retrain]
mode = "scratch"
cls_set = ["schedule.iterations=4"]
det_set = ["schedule.iterations=40", "eval.recalibrate_images=0"]
[baselines]
clsnas_set = ["eval.val_images=16", "eval.batch=8"]
zero_cost = true
"#,
    )
    .unwrap();
    p
}

fn run(cfg: &Path, out: &Path, fault: Option<&str>) -> Output {
    engine(&["run", "--no-progress", "--config", cfg.to_str().unwrap(), "--out", out.to_str().unwrap()], fault)
}

/// The final table; latencies are measured per run (a latency table in each search
/// folder), so they are checked for presence and left out of comparisons.
fn final_json(out: &Path) -> serde_json::Value {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report/final.json")).unwrap()).unwrap();
    for r in v.as_array_mut().unwrap() {
        assert!(r["latency_ms"].as_f64().unwrap() > 0.0, "{r}");
        r["latency_ms"] = serde_json::Value::Null;
    }
    v
}

#[test]
fn pipeline_runs_every_stage_resumes_after_kills_and_exports() {
    let d = dir("run");
    let cfg = write_configs(&d);
    let reference = d.join("ref");
    let first = run(&cfg, &reference, None);
    let printed = ok(&first);
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert!(printed.contains("found architecture") && printed.contains("clsnas"), "{printed}");
    let rows = final_json(&reference);
    let labels: Vec<&str> = rows.as_array().unwrap().iter().map(|r| r["label"].as_str().unwrap()).collect();
    assert_eq!(labels, ["found", "random", "clsnas", "zero-cost"]);
    // The zero-cost pick is the best entropy score of its search, which had no supernet.
    let zero = serde_json::from_str::<serde_json::Value>(
        &std::fs::read_to_string(reference.join("search-zero-cost/best_arch.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(zero["fitness_kind"], "entropy");
    assert_eq!(rows[3]["arch"], zero["arch"]);
    for r in rows.as_array().unwrap() {
        assert_eq!(r["stats"].as_array().unwrap().len(), 12);
        assert!(r["backbone_macs"].as_u64().unwrap() <= 2_800_000, "{r}");
    }
    let aps: Vec<f64> = rows.as_array().unwrap().iter().map(|r| r["stats"][1].as_f64().unwrap()).collect();
    assert!(aps.iter().any(|&a| a > 0.0), "every AP50 is 0: the comparison below would be vacuous ({aps:?})");
    // Paper protocol: every retrained architecture went through classification first.
    for l in ["found", "random", "clsnas", "zero-cost"] {
        assert!(reference.join(format!("retrain-{l}/cls/summary.json")).is_file(), "{l}");
    }
    let html = std::fs::read_to_string(reference.join("report/report.html")).unwrap();
    for needle in ["DetNAS search", "ClsNAS search", "Pareto front", "architectures", "<svg", "retraining: detection"] {
        assert!(html.contains(needle), "report.html lacks {needle}");
    }
    let md = std::fs::read_to_string(reference.join("report/report.md")).unwrap();
    assert!(md.contains("| found |") && md.contains("| zero-cost |") && md.contains("plots/search_pareto.svg"), "{md}");
    // Where and how it ran: the machine and libtorch build, every stage's resolved config.
    assert!(md.contains("Machine: ") && md.contains("cores, CPU kernels ") && md.contains("libtorch 2."), "{md}");
    assert!(md.contains("stage finetune: resolved configuration") && md.contains("stage retrain-found det:"), "{md}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(reference.join("finetune/summary.json")).unwrap()).unwrap();
    let capability = summary["machine"]["cpu_capability"].as_str().unwrap();
    assert!(!capability.is_empty() && md.contains(&format!("CPU kernels {capability}")), "{summary}");
    // The trivial grid baseline sits in the final table; the tiny test split is called too
    // small to separate models, on the terminal and in the report.
    assert!(md.contains("| grid |") && md.contains("px boxes, no training"), "{md}");
    assert!(printed.contains("grid ") && printed.contains("(trivial baseline, no training)"), "{printed}");
    assert!(stderr.contains("warning: the test split (") && md.contains("too small to separate models"), "{stderr}");
    let plots = std::fs::read_dir(reference.join("report/plots")).unwrap().count();
    assert!(plots >= 8, "{plots} plots");

    // Killed during fine-tuning (step 10 of 40: pre-training has only 8), then during the
    // search (after its 3rd candidate), then left to finish: the same final table.
    let killed = d.join("killed");
    let o = run(&cfg, &killed, Some("kill_after_step:10"));
    assert_eq!(o.status.signal(), Some(9), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(killed.join("pretrain/stage.json").is_file() && !killed.join("finetune/stage.json").exists());
    let o = run(&cfg, &killed, Some("kill_after_candidate:3"));
    assert_eq!(o.status.signal(), Some(9), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(killed.join("finetune/stage.json").is_file() && !killed.join("search/stage.json").exists());
    ok(&run(&cfg, &killed, None));
    assert_eq!(final_json(&killed), final_json(&reference));
    // Each stage's record counts the sessions that worked on it.
    let sessions = |run: &Path, stage: &str| {
        let text = std::fs::read_to_string(run.join(stage).join("stage.json")).unwrap();
        serde_json::from_str::<serde_json::Value>(&text).unwrap()["sessions"].as_u64().unwrap()
    };
    assert_eq!([sessions(&killed, "pretrain"), sessions(&killed, "finetune"), sessions(&killed, "search")], [1, 2, 2]);
    assert_eq!(sessions(&reference, "finetune"), 1);

    // The report regenerates from the folder alone.
    std::fs::remove_dir_all(reference.join("report")).unwrap();
    ok(&engine(&["report", reference.to_str().unwrap()], None));
    let o = engine(&["report", reference.join("finetune").to_str().unwrap()], None);
    assert_eq!(o.status.code(), Some(2), "a folder that is not a pipeline run is refused");
    assert_eq!(final_json(&reference), rows);

    // eval det on each retraining stage folder gives exactly the report's test AP (the fixed
    // architecture keeps its own statistics by default), and scores its training images too.
    for r in rows.as_array().unwrap() {
        let stage = reference.join(format!("retrain-{}", r["label"].as_str().unwrap()));
        let eval = |extra: &[&str]| -> serde_json::Value {
            let mut args = vec!["eval", "det", "--checkpoint", stage.to_str().unwrap(), "--threads", "1", "--json"];
            args.extend(extra);
            serde_json::from_str(ok(&engine(&args, None)).trim()).unwrap()
        };
        let v = eval(&[]);
        assert_eq!(v["stats"], r["stats"], "eval det vs final.json for {}", r["label"]);
        let train = eval(&["--data", "train"]);
        assert!(train["images"].as_u64().unwrap() > v["images"].as_u64().unwrap(), "{train}");
        // The kept test detections score the same from their files, class by class.
        let test = stage.join("det/test");
        let (gt, dt) = (test.join("gt.json"), test.join("detections.json"));
        let args = ["eval", "coco", "--gt", gt.to_str().unwrap(), "--dt", dt.to_str().unwrap(), "--json"];
        let coco: serde_json::Value = serde_json::from_str(ok(&engine(&args, None)).trim()).unwrap();
        assert_eq!(coco["stats"], r["stats"], "eval coco of {} vs final.json", test.display());
        assert_eq!(coco["per_class"], r["per_class"], "{}", r["label"]);
    }
    // Per class, under the dataset's class names; four test pictures of the found model.
    let names: Vec<String> =
        rows[0]["per_class"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap().to_string()).collect();
    assert!(names.len() >= 2 && md.contains("### Per class") && names.iter().all(|n| md.contains(&format!("| {n} |"))));
    for i in 1..=4 {
        let svg = std::fs::read_to_string(reference.join(format!("report/plots/predictions-{i}.svg"))).unwrap();
        assert!(svg.contains("data:image/png;base64,") && svg.contains("ground truth (dashed)"), "picture {i}");
    }
    assert!(md.contains("### Example predictions") && md.contains("plots/predictions-4.svg"), "{md}");

    // Export, then predict with the exported detector.
    let ex = d.join("export");
    ok(&engine(&["export", reference.to_str().unwrap(), "--out", ex.to_str().unwrap()], None));
    for f in ["arch.json", "backbone.safetensors", "name-mapping.tsv", "README.md"] {
        assert!(ex.join(f).is_file(), "{f}");
    }
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ex.join("arch.json")).unwrap()).unwrap();
    let classes = info["classes"].as_array().unwrap();
    assert!(!classes.is_empty() && classes.iter().all(|c| c["name"].is_string()), "{info}");
    let mapping = std::fs::read_to_string(ex.join("name-mapping.tsv")).unwrap();
    assert!(mapping.contains("stem.conv.weight\tfirst_conv.conv.weight"), "{mapping}");
    let img = reference.join("data/test/images");
    let first = std::fs::read_dir(&img).unwrap().flatten().next().unwrap().path();
    let pred = d.join("pred");
    ok(&engine(
        &[
            "predict",
            "--checkpoint",
            ex.join("detector").to_str().unwrap(),
            first.to_str().unwrap(),
            "--out",
            pred.to_str().unwrap(),
            "--device",
            "cpu",
        ],
        None,
    ));
    assert!(pred.join("detections.json").is_file());
    assert!(ex.join("detector.safetensors").is_file() && info["retrained"] == true, "{info}");
    checks_pass(&ex);
    export_folders(&reference, &d, info["arch"].as_str().unwrap());

    rank_check(&reference);

    // Another configuration into the same folder is refused.
    let o = engine(
        &[
            "run",
            "--no-progress",
            "--config",
            cfg.to_str().unwrap(),
            "--out",
            reference.to_str().unwrap(),
            "--set",
            "seed=5",
        ],
        None,
    );
    assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::remove_dir_all(&d).unwrap();
}

/// The export's own checks: `model.py` (PyTorch) and the ONNX graphs (ONNX Runtime) give
/// detnas's outputs to 1e-4.
fn checks_pass(ex: &Path) {
    let (model, onnx) = (ex.join("model.py"), ex.join("predict_onnx.py"));
    for args in [vec![model.to_str().unwrap(), "check", ex.to_str().unwrap()], vec![onnx.to_str().unwrap(), "check"]] {
        let r: serde_json::Value = serde_json::from_str(crate::export_python(&args).trim()).unwrap();
        assert!(r["max_relative_difference"].as_f64().unwrap() < 1e-4, "{args:?}: {r}");
    }
}

/// `detnas export` of a run's search and fine-tuning folders: the found path with the
/// supernet's weights, labelled not retrained, whose exported detector scores exactly what
/// the supernet's path scores (BN recomputed the same way) on the test split; folders of other
/// kinds are refused, naming the kinds accepted.
fn export_folders(run: &Path, d: &Path, found: &str) {
    let stats = |ckpt: &Path, arch: Option<&str>| -> Vec<f64> {
        let mut args = vec!["eval", "det", "--checkpoint", ckpt.to_str().unwrap(), "--threads", "1", "--json"];
        if let Some(a) = arch {
            args.extend(["--arch", a]);
        }
        let v: serde_json::Value = serde_json::from_str(ok(&engine(&args, None)).trim()).unwrap();
        v["stats"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
    };
    let path = stats(&run.join("finetune"), Some(found));
    assert!(path[1] > 0.0, "the supernet's path detects nothing: the comparison would be vacuous ({path:?})");
    for src in ["search", "finetune"] {
        let ex = d.join(format!("export-{src}"));
        ok(&engine(&["export", run.join(src).to_str().unwrap(), "--out", ex.to_str().unwrap()], None));
        for f in ["arch.json", "detector.safetensors", "backbone.safetensors", "name-mapping.tsv", "README.md"] {
            assert!(ex.join(f).is_file(), "{src}: {f}");
        }
        let info: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(ex.join("arch.json")).unwrap()).unwrap();
        assert_eq!((info["arch"].as_str(), &info["retrained"]), (Some(found), &serde_json::json!(false)), "{info}");
        assert!(info["weights"]["bn_recalibration_images"].as_u64().unwrap() > 0, "{info}");
        assert!(std::fs::read_to_string(ex.join("README.md")).unwrap().contains("**Not retrained**"));
        checks_pass(&ex);
        let exported = stats(&ex.join("detector"), None);
        for (i, (e, p)) in exported.iter().zip(&path).enumerate() {
            assert!((e - p).abs() < 1e-6, "{src}: stat {i} of the exported child {e} vs the supernet's path {p}");
        }
    }
    // A failure after writing began (a runtime that does not exist) leaves no new folder.
    let failed = d.join("export-failed");
    let args = ["export", run.to_str().unwrap(), "--out", failed.to_str().unwrap(), "--python", "/nonexistent/python"];
    let o = engine(&args, None);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("--python /nonexistent/python"), "{err}");
    assert!(!failed.exists(), "a failed export left {}", failed.display());
    for (src, why) in [("data", "detnas export reads a pipeline run"), ("search-cls", "ClsNAS")] {
        let o =
            engine(&["export", run.join(src).to_str().unwrap(), "--out", d.join("refused").to_str().unwrap()], None);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(why) && err.contains("RUN/retrain-NAME"), "{src}: {err}");
    }
}

/// `detnas rank-check` on the finished tiny run: killed inside its first unit and resumed; its
/// figures are those of the ledger and of the units' own records; a re-run trains nothing; a
/// plan made with other options is refused.
fn rank_check(run: &Path) {
    let r = run.to_str().unwrap();
    let args = ["rank-check", r, "--archs", "3", "--seeds", "2", "--resamples", "200", "--no-progress", "--json"];
    // Units retrain with the pipeline's protocol: 4 classification steps, then detection.
    let o = engine(&args, Some("kill_after_step:6"));
    assert_eq!(o.status.signal(), Some(9), "{}", String::from_utf8_lossy(&o.stderr));
    let printed = ok(&engine(&args, None));
    let result: serde_json::Value = serde_json::from_str(&printed).unwrap();
    let archs = result["archs"].as_array().unwrap();
    assert!((3..=5).contains(&archs.len()), "3 drawn, plus found and ClsNAS when not drawn: {}", archs.len());
    assert_eq!(result["complete"], true);
    assert_eq!(result["n"].as_u64().unwrap() as usize, archs.len());
    let ledger: std::collections::HashMap<String, f64> =
        crate::ledger_scores(&run.join("search")).into_iter().collect();
    let found =
        serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(run.join("search/best_arch.json")).unwrap())
            .unwrap()["arch"]
            .as_str()
            .unwrap()
            .to_string();
    assert_eq!(result["found"], found.as_str());
    let mut seeds_differ = false;
    for a in archs {
        let arch = a["arch"].as_str().unwrap();
        if let Some(&f) = ledger.get(arch) {
            assert_eq!(a["det_proxy"].as_f64().unwrap(), f, "{arch}: the proxy is the ledger's score");
        }
        assert!(a["cls_proxy"].as_f64().is_some() && a["init_proxy"].as_f64().is_some(), "{a}");
        let gt: Vec<f64> = a["ground_truth"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        assert_eq!(gt.len(), 2);
        for (s, &ap) in gt.iter().enumerate() {
            let unit = run.join(format!("rank-check/units/{arch}-seed{s}/stage.json"));
            let rec: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&unit).unwrap()).unwrap();
            assert_eq!(rec["result"]["det"]["paths"][0]["stats"][0].as_f64().unwrap(), ap, "{}", unit.display());
            // Unit seed s, plus the pipeline's seed (4) as for every stage.
            assert_eq!(rec["result"]["det"]["seed"], s + 4, "the unit trained with its own seed");
        }
        seeds_differ |= gt[0] != gt[1];
    }
    assert!(seeds_differ, "two seeds gave identical scores everywhere: {archs:?}");
    let p = result["found_percentile"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&p), "{p}");
    for key in ["spread", "seed_sd", "tau_chance_sd"] {
        assert!(result[key].as_f64().is_some_and(f64::is_finite), "{key}: {result}");
    }
    assert!(result.get("seed_tau").is_some(), "undefined only when a seed scores every architecture alike");
    assert_eq!(result["retrain_mode"], "scratch");
    // The killed unit (the first architecture's seed 0) resumed from its step-4 checkpoint.
    let first = run.join(format!("rank-check/units/{}-seed0/stage.json", archs[0]["arch"].as_str().unwrap()));
    let rec: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(first).unwrap()).unwrap();
    assert_eq!(rec["result"]["det"]["resumed_from_step"], 4, "{rec}");
    let md = std::fs::read_to_string(run.join("report/report.md")).unwrap();
    assert!(md.contains("Ranking check") && md.contains("seed-to-seed standard deviation"), "{md}");
    // Every proxy, the free baselines included, with its statistics and the verdict.
    let proxies = result["proxies"].as_array().unwrap();
    let names: Vec<&str> = proxies.iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["one-shot", "clsnas", "control", "backbone MACs", "params", "latency", "entropy", "naswot", "synflow"]
    );
    // The training-free proxies scored every architecture, and differently.
    for key in ["entropy_proxy", "naswot_proxy", "synflow_proxy"] {
        let v: Vec<f64> = archs.iter().map(|a| a[key].as_f64().unwrap()).collect();
        assert!(v.iter().all(|x| x.is_finite()) && v.iter().any(|x| *x != v[0]), "{key}: {v:?}");
    }
    assert_eq!(proxies[0]["kendall_tau"], result["kendall_tau"]);
    assert!(proxies[0]["delta_tau_vs_oneshot_ci95"].is_null());
    for p in proxies {
        assert_eq!(p["n"].as_u64().unwrap() as usize, archs.len(), "{p}");
        let ci = |k: &str| p[k].as_array().map(|v| v.len());
        assert!(p["name"] == "one-shot" || ci("delta_tau_vs_oneshot_ci95") == Some(2), "{p}");
        assert!(p["precision_top_quartile"].as_f64().is_some_and(|v| (0.0..=1.0).contains(&v)), "{p}");
    }
    // MACs' regret by hand: the best mean AP minus that of the largest backbone (first listed).
    let mean = |a: &serde_json::Value| a["ground_truth_mean"].as_f64().unwrap();
    let best = archs.iter().map(mean).fold(f64::NEG_INFINITY, f64::max);
    let largest = archs
        .iter()
        .fold(&archs[0], |m, a| if a["backbone_macs"].as_u64() > m["backbone_macs"].as_u64() { a } else { m });
    let macs = &proxies[3];
    assert!((macs["regret"].as_f64().unwrap() - (best - mean(largest))).abs() < 1e-12, "{macs}");
    let verdict = result["verdict"].as_str().unwrap();
    assert!(["ranks better than", "not distinguishable from"].iter().any(|v| verdict.contains(v)), "{verdict}");
    assert!(md.contains(&format!("**Verdict**: {verdict}")) && md.contains("precision@top ¼"), "{md}");
    for plot in
        ["rank_check_macs", "rank_check_params", "rank_check_latency", "rank_check_entropy", "rank_check_naswot"]
    {
        assert!(run.join(format!("report/plots/{plot}.svg")).is_file(), "{plot}");
    }
    // Finished: a re-run trains nothing and gives the same figures.
    let o = engine(&args, None);
    let again: serde_json::Value = serde_json::from_str(&ok(&o)).unwrap();
    assert_eq!(again, result);
    let log = String::from_utf8_lossy(&o.stderr);
    assert!(!log.contains("running into") && log.matches("finished earlier").count() == 2 * archs.len(), "{log}");
    // Fewer seeds summarise the first ones without training; more seeds train only the new units.
    let o = engine(
        &["rank-check", r, "--archs", "3", "--seeds", "1", "--resamples", "200", "--no-progress", "--json"],
        None,
    );
    let one: serde_json::Value = serde_json::from_str(&ok(&o)).unwrap();
    assert!(!String::from_utf8_lossy(&o.stderr).contains("running into"));
    assert_eq!(one["seeds"], 1);
    for (a, b) in one["archs"].as_array().unwrap().iter().zip(archs) {
        assert_eq!(a["ground_truth"], serde_json::json!([b["ground_truth"][0]]), "{a}");
    }
    let o = engine(
        &["rank-check", r, "--archs", "3", "--seeds", "3", "--resamples", "200", "--no-progress", "--json"],
        None,
    );
    let three: serde_json::Value = serde_json::from_str(&ok(&o)).unwrap();
    let log = String::from_utf8_lossy(&o.stderr);
    assert_eq!(log.matches("finished earlier").count(), 2 * archs.len(), "{log}");
    assert_eq!(three["complete"], true);
    for (a, b) in three["archs"].as_array().unwrap().iter().zip(archs) {
        let gt = a["ground_truth"].as_array().unwrap();
        assert_eq!((gt.len(), &gt[..2]), (3, &b["ground_truth"].as_array().unwrap()[..]), "{a}");
    }
    // A second supernet, fine-tuned again with seed 1, ranks the same architectures; no unit
    // trains again.
    let two_args = [
        "rank-check",
        r,
        "--archs",
        "3",
        "--seeds",
        "3",
        "--supernets",
        "2",
        "--resamples",
        "200",
        "--no-progress",
        "--json",
    ];
    let o = engine(&two_args, None);
    let two: serde_json::Value = serde_json::from_str(&ok(&o)).unwrap();
    let log = String::from_utf8_lossy(&o.stderr);
    assert_eq!(log.matches("running into").count(), 1, "only the new supernet trains: {log}");
    assert!(log.contains("architectures on supernet 1"), "supernet 1 scores the plan: {log}");
    let sdir = run.join("rank-check/supernets/1");
    let stage_seed = |d: &Path| {
        let rec: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(d.join("stage.json")).unwrap()).unwrap();
        rec["result"]["seed"].as_u64().unwrap()
    };
    assert_eq!(stage_seed(&sdir), stage_seed(&run.join("finetune")) + 1, "the search's fine-tuning seed plus 1");
    let scores: std::collections::BTreeMap<String, f64> =
        serde_json::from_str(&std::fs::read_to_string(sdir.join("scores.json")).unwrap()).unwrap();
    let sup = two["supernets"].as_array().unwrap();
    assert_eq!(sup.len(), 2, "{two}");
    assert_eq!(sup[0]["kendall_tau"], three["kendall_tau"], "supernet 0 is the search's own");
    assert_eq!(sup[0]["chosen"], found.as_str(), "the search's own supernet scores the found one best");
    let mut differ = false;
    let (mut x, mut y, mut x1) = (Vec::new(), Vec::new(), Vec::new());
    for a in two["archs"].as_array().unwrap() {
        let arch = a["arch"].as_str().unwrap();
        let second = scores[arch];
        let proxies: Vec<f64> = a["supernet_proxies"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        assert_eq!(proxies, [a["det_proxy"].as_f64().unwrap(), second], "{a}");
        differ |= proxies[0] != proxies[1];
        x.push((proxies[0] + proxies[1]) / 2.0);
        x1.push(second);
        y.push(a["ground_truth_mean"].as_f64().unwrap());
    }
    assert!(differ, "another fine-tuning seed scored every architecture alike: {scores:?}");
    // The mean of the two supernets' scores is the proxy of `supernet_mean` (its best one chosen).
    let best =
        two["archs"].as_array().unwrap()[(0..x.len()).fold(0, |b, i| if x[i] > x[b] { i } else { b })]["arch"].clone();
    assert_eq!(two["supernet_mean"]["chosen"], best, "{two}");
    assert_eq!(two["supernet_mean"]["n"], x.len());
    // τ-b by hand: (C − D) / √((C + D + Tx)(C + D + Ty)), pairs tied in both left out.
    let tau_b = |x: &[f64], y: &[f64]| {
        let (mut c, mut d, mut tx, mut ty) = (0.0, 0.0, 0.0, 0.0);
        for i in 0..x.len() {
            for j in i + 1..x.len() {
                let (a, b) = (x[i] - x[j], y[i] - y[j]);
                match (a == 0.0, b == 0.0) {
                    (true, true) => {}
                    (true, false) => tx += 1.0,
                    (false, true) => ty += 1.0,
                    _ if a * b > 0.0 => c += 1.0,
                    _ => d += 1.0,
                }
            }
        }
        (c - d) / f64::sqrt((c + d + tx) * (c + d + ty))
    };
    let close = |a: f64, b: f64, what: &str| assert!((a - b).abs() < 1e-12, "{what}: {a} vs {b}");
    close(two["supernet_mean"]["kendall_tau"].as_f64().unwrap(), tau_b(&x, &y), "τ-b of the mean scores");
    let (t0, t1) = (sup[0]["kendall_tau"].as_f64().unwrap(), sup[1]["kendall_tau"].as_f64().unwrap());
    close(t1, tau_b(&x1, &y), "τ-b of supernet 1's scores");
    close(two["supernet_tau_mean"].as_f64().unwrap(), (t0 + t1) / 2.0, "mean of the supernets' τ");
    close(two["supernet_tau_sd"].as_f64().unwrap(), (t0 - t1).abs() / 2f64.sqrt(), "sample sd of two τ");
    // Supernet 1's score of an architecture is `eval det` on its checkpoint with the search's
    // settings (8 recalibration images, batches of 4, exact BN statistics).
    let a0 = two["archs"][0]["arch"].as_str().unwrap();
    let o = engine(
        &[
            "eval",
            "det",
            "--checkpoint",
            sdir.to_str().unwrap(),
            "--arch",
            a0,
            "--data",
            "search-val",
            "--recalibrate-bn",
            "8",
            "--batch",
            "4",
            "--bn-mode",
            "exact",
            "--threads",
            "1",
            "--device",
            "cpu",
            "--json",
        ],
        None,
    );
    let ev: serde_json::Value = serde_json::from_str(&ok(&o)).unwrap();
    assert_eq!(ev["stats"][0].as_f64().unwrap(), scores[a0], "{ev}");
    let md = std::fs::read_to_string(run.join("report/report.md")).unwrap();
    assert!(md.contains("fine-tuned again, seed + 1") && md.contains("mean of the 2 supernets"), "{md}");
    // Again: nothing trains, nothing is re-scored; back to one supernet: no supernet figures.
    let o = engine(&two_args, None);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&ok(&o)).unwrap(), two);
    let log = String::from_utf8_lossy(&o.stderr);
    assert!(!log.contains("running into") && !log.contains("architectures on supernet"), "{log}");
    let one = engine(
        &["rank-check", r, "--archs", "3", "--seeds", "3", "--resamples", "200", "--no-progress", "--json"],
        None,
    );
    let one: serde_json::Value = serde_json::from_str(&ok(&one)).unwrap();
    assert!(one["supernets"].as_array().unwrap().is_empty() && one["supernet_mean"].is_null(), "{one}");
    // Another draw or protocol against the recorded plan is refused.
    let o = engine(&["rank-check", r, "--archs", "4", "--no-progress"], None);
    assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("other options"));
}
