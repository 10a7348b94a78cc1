//! The own-data recipe (`configs/own-data/`) as a user runs it: a small Pascal VOC set with its
//! own class names is generated (`detnas data synth --voc-set`), the recipe's pipeline runs on
//! it end to end (shortened by `--set`), and a finished pre-training is reused by a second
//! run. Mistakes in the recipe are refused before anything runs.

use super::{engine, ok, temp_dir};
use std::path::{Path, PathBuf};

fn recipe() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/own-data/pipeline.toml")
}

/// TOML string array of `items`.
fn list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|i| format!("{:?}", i)).collect();
    format!("[{}]", quoted.join(", "))
}

/// The recipe's overrides for a run of about a minute on `voc` (96-pixel images).
fn short(voc: &Path) -> Vec<String> {
    let root = format!("{:?}", voc.display().to_string());
    let pretrain = [
        "schedule.iterations=40",
        "sampling.warm_start_steps=20",
        "runtime.checkpoint_every=20",
        "data.source.train.images=400",
        "data.source.val.images=100",
        "eval.final_paths=1",
        "eval.recalibrate_images=50",
    ]
    .map(String::from);
    let finetune = [
        format!("data.source.train_roots=[{root}]"),
        format!("data.source.test_root={root}"),
        "data.min_size=[96]".into(),
        "data.max_size=128".into(),
        "data.test_min_size=96".into(),
        "data.search_val_images=12".into(),
        "schedule.iterations=30".into(),
        "schedule.milestones=[20, 25]".into(),
        "schedule.warmup_iters=5".into(),
        "runtime.checkpoint_every=10".into(),
        "eval.recalibrate_images=10".into(),
    ];
    let search = [
        "strategy.population=4",
        "strategy.generations=1",
        "strategy.mutations=2",
        "strategy.crossovers=2",
        "strategy.top_k=2",
        "constraint.input=[96, 96]",
        "constraint.max_backbone_macs=\"5.5M\"",
        "eval.recalibrate_images=10",
    ]
    .map(String::from);
    let retrain = [
        "schedule.iterations=20",
        "schedule.milestones=[15, 18]",
        "schedule.warmup_iters=5",
        "eval.recalibrate_images=0",
    ]
    .map(String::from);
    vec![
        format!("pretrain.set={}", list(&pretrain)),
        format!("finetune.set={}", list(&finetune)),
        format!("search.set={}", list(&search)),
        format!("retrain.det_set={}", list(&retrain)),
    ]
}

fn run_recipe(out: &Path, sets: &[String]) -> std::process::Output {
    let mut args = vec!["run".to_string(), "--no-progress".into(), "--config".into(), recipe().display().to_string()];
    args.extend(["--out".to_string(), out.display().to_string()]);
    for s in sets {
        args.extend(["--set".to_string(), s.clone()]);
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    engine(&refs, None)
}

#[test]
fn the_own_data_recipe_runs_on_generated_voc_and_reuses_a_pretraining() {
    let d = temp_dir("own-data", "voc");
    let voc = d.join("VOC");
    for (set, images, seed) in [("trainval", "70", "21"), ("test", "24", "22")] {
        let args =
            ["data", "synth", "--voc-set", set, "--images", images, "--seed", seed, "--size", "96", "--classes", "2"];
        let mut all: Vec<&str> = args.to_vec();
        let out = voc.display().to_string();
        all.extend(["--out", &out]);
        ok(&engine(&all, None));
    }
    assert!(voc.join("ImageSets/Main/test.txt").is_file() && voc.join("Annotations").is_dir());

    // A typo in the data path: refused before pre-training, naming stage, key and file.
    let mut bad = short(&voc);
    bad[1] = bad[1].replace(&voc.display().to_string(), &d.join("VCO").display().to_string());
    let o = run_recipe(&d.join("typo"), &bad);
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(e.contains("stage finetune") && e.contains("data.source.train_roots[0]") && e.contains("VCO"), "{e}");
    assert!(!d.join("typo/pretrain").exists(), "nothing ran");

    // A carve larger than the training set: refused before pre-training too.
    let mut bad = short(&voc);
    bad[1] = bad[1].replace("data.search_val_images=12", "data.search_val_images=70");
    let o = run_recipe(&d.join("carve"), &bad);
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(e.contains("stage finetune") && e.contains("data.search_val_images = 70: cannot carve 70 images"), "{e}");
    assert!(!d.join("carve/pretrain").exists(), "nothing ran");

    // A broken image is reported before pre-training, by name: the VOC reader refuses it
    // while opening the splits (were it read, the decode check would name it; the run would
    // stop on the limit no architecture meets, checked after the images).
    let broken = d.join("VOC-broken");
    std::fs::create_dir_all(broken.join("JPEGImages")).unwrap();
    for sub in ["Annotations", "ImageSets/Main", "JPEGImages"] {
        std::fs::create_dir_all(broken.join(sub)).unwrap();
        for e in std::fs::read_dir(voc.join(sub)).unwrap().flatten() {
            std::fs::copy(e.path(), broken.join(sub).join(e.file_name())).unwrap();
        }
    }
    std::fs::write(broken.join("JPEGImages/trainval_000005.png"), b"not a PNG").unwrap();
    let mut bad = short(&broken);
    bad[2] = bad[2].replace("max_backbone_macs=\\\"5.5M\\\"", "max_backbone_macs=\\\"1k\\\"");
    assert!(bad[2].contains("1k"), "{}", bad[2]);
    let o = run_recipe(&d.join("broken"), &bad);
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(e.contains("trainval_000005.png") && e.contains("cannot decode image"), "{e}");
    assert!(!d.join("broken/pretrain").exists(), "nothing ran");

    // The recipe end to end.
    let run = d.join("run");
    let o = run_recipe(&run, &short(&voc));
    let printed = ok(&o);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        printed.contains("found architecture") && printed.contains("random") && printed.contains("grid"),
        "{printed}"
    );
    assert!(stderr.contains("warning: the test split (24 images"), "{stderr}");
    let md = std::fs::read_to_string(run.join("report/report.md")).unwrap();
    assert!(md.contains("| found |") && md.contains("| grid |"), "{md}");

    // The same command again: every stage finished and unchanged, nothing runs. A runtime
    // flag is no part of a stage's identity.
    let mut sets = short(&voc);
    sets.push("threads=1".into());
    let o = run_recipe(&run, &sets);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && stderr.contains("stage search: finished earlier"), "{stderr}");
    let recorded = std::fs::read_to_string(run.join("pipeline.toml")).unwrap();

    // A changed fine-tuning: refused, naming the stage and the key; the recorded pipeline
    // configuration stays as it was.
    let mut changed = short(&voc);
    changed[1] = changed[1].replace("schedule.iterations=30", "schedule.iterations=32");
    let o = run_recipe(&run, &changed);
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(e.contains("stages changed since they ran") && e.contains("--rerun-changed"), "{e}");
    // Every changed stage is listed with its keys; the unchanged ones are not.
    for stage in ["finetune", "baseline-grid", "search", "retrain-found"] {
        assert!(e.contains(&format!("stage {stage} (")), "{stage} not listed: {e}");
    }
    assert!(e.contains("config.schedule.iterations: 30 → 32"), "{e}");
    assert!(!e.contains("stage pretrain (") && !e.contains("stage retrain-random ("), "{e}");
    assert_eq!(std::fs::read_to_string(run.join("pipeline.toml")).unwrap(), recorded);
    // With --rerun-changed: the fine-tuning and every stage after it run again in fresh
    // folders, the old ones kept under replaced/; the stages it does not feed are kept.
    let mut cmd: Vec<String> =
        vec!["run".into(), "--no-progress".into(), "--config".into(), recipe().display().to_string()];
    cmd.extend(["--out".into(), run.display().to_string(), "--rerun-changed".into()]);
    for s in &changed {
        cmd.extend(["--set".into(), s.clone()]);
    }
    let refs: Vec<&str> = cmd.iter().map(String::as_str).collect();
    let o = engine(&refs, None);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    for stage in ["finetune", "baseline-grid", "search", "retrain-found"] {
        assert!(run.join(format!("replaced/{stage}-1/stage.json")).is_file(), "{stage} kept aside");
        assert!(run.join(stage).join("stage.json").is_file(), "{stage} ran again");
    }
    // The random baseline depends on neither (its retraining overrides the iterations).
    for kept in ["data", "pretrain", "retrain-random"] {
        assert!(!run.join(format!("replaced/{kept}-1")).exists(), "{kept} was replaced");
    }
    let steps = std::fs::read_to_string(run.join("finetune/summary.json")).unwrap();
    assert!(steps.contains("\"steps\": 32") || steps.contains("\"steps\":32"), "{steps}");

    // A second run reuses the finished pre-training instead of running it.
    let mut sets = short(&voc);
    sets.push(format!("pretrain.reuse={:?}", run.join("pretrain").display().to_string()));
    let again = d.join("again");
    let o = run_recipe(&again, &sets);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(stderr.contains("reusing the finished pre-training"), "{stderr}");
    assert!(!again.join("pretrain/checkpoints").exists(), "no pre-training ran");
    let ft_cfg = std::fs::read_to_string(again.join("finetune/config.toml")).unwrap();
    assert!(ft_cfg.contains(&run.join("pretrain").display().to_string()), "{ft_cfg}");

    // A reused folder that is no finished pre-training is refused up front.
    let mut sets = short(&voc);
    sets.push(format!("pretrain.reuse={:?}", run.join("finetune").display().to_string()));
    let o = run_recipe(&d.join("wrong"), &sets);
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(e.contains("pretrain.reuse") && !d.join("wrong/pretrain").exists(), "{e}");
    std::fs::remove_dir_all(&d).unwrap();
}
