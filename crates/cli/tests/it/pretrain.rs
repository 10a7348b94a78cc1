//! `detnas pretrain` / `detnas eval cls` end to end: resume exactness after SIGKILL (also
//! during a save), SIGTERM, numerical failure, corrupt checkpoints, config mismatch, and
//! real-data smoke runs on an ImageFolder and IDX files.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const TINY: &str = r#"
seed = 3
[model]
space = "small"
width_mult = 0.25
[data]
input_size = 16
eval_resize = 16
scale_min = 0.5
[data.source]
kind = "synthetic"
train = { images = 120, size = 16, seed = 1 }
val = { images = 40, size = 16, seed = 2 }
[schedule]
iterations = 12
batch = 8
lr = 0.1
[runtime]
device = "cpu"
threads = 1
checkpoint_every = 4
keep = 10
log_every = 1
[eval]
recalibrate_images = 32
batch = 16
final_paths = 1
"#;

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("detnas-pre-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn config(d: &Path, text: &str) -> PathBuf {
    std::fs::create_dir_all(d).unwrap();
    let p = d.join("cfg.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn pretrain(cfg: &Path, out: &Path, extra: &[&str], fault: Option<&str>) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_detnas-engine"));
    c.args(["pretrain", "--no-progress", "--config", cfg.to_str().unwrap(), "--out", out.to_str().unwrap()])
        .args(extra);
    if let Some(f) = fault {
        c.env("DETNAS_FAULT", f);
    }
    c.output().unwrap()
}

fn ok(o: &Output) {
    assert!(o.status.success(), "status {:?}\n{}", o.status, String::from_utf8_lossy(&o.stderr));
}

fn ckpt(out: &Path, step: u64) -> PathBuf {
    out.join("checkpoints").join(format!("step-{step:08}"))
}

fn same_files(a: &Path, b: &Path) {
    for f in ["model.safetensors", "optimizer.safetensors"] {
        assert!(std::fs::read(a.join(f)).unwrap() == std::fs::read(b.join(f)).unwrap(), "{f} differs: {a:?} vs {b:?}");
    }
    let state = |p: &Path| {
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(p.join("state.json")).unwrap()).unwrap();
        v.as_object_mut().unwrap().remove("code_version");
        v
    };
    assert_eq!(state(a), state(b));
}

#[test]
fn killed_runs_resume_to_identical_weights() {
    let d = dir("kill");
    let cfg = config(&d, TINY);
    let reference = d.join("reference");
    ok(&pretrain(&cfg, &reference, &[], None));

    // SIGKILL right after step 6: the latest checkpoint is step 4.
    let run = d.join("killed");
    let o = pretrain(&cfg, &run, &[], Some("kill_after_step:6"));
    assert_eq!(o.status.signal(), Some(9), "{:?}", o.status);
    assert!(ckpt(&run, 4).exists() && !ckpt(&run, 8).exists());
    ok(&pretrain(&cfg, &run, &[], None));
    same_files(&ckpt(&reference, 12), &ckpt(&run, 12));

    // SIGKILL in the middle of writing checkpoint 8: step 4 stays the latest complete one.
    let run2 = d.join("killed-in-save");
    let o = pretrain(&cfg, &run2, &[], Some("kill_during_save:8"));
    assert_eq!(o.status.signal(), Some(9));
    assert!(run2.join("checkpoints/.tmp-step-00000008").exists() && !ckpt(&run2, 8).exists());
    let o = pretrain(&cfg, &run2, &[], None);
    ok(&o);
    assert!(String::from_utf8_lossy(&o.stderr).contains("resuming from"), "{}", String::from_utf8_lossy(&o.stderr));
    same_files(&ckpt(&reference, 12), &ckpt(&run2, 12));
    // The metrics log holds each step exactly once.
    let steps: Vec<u64> = std::fs::read_to_string(run2.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, (1..=12).collect::<Vec<_>>());
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn bad_checkpoints_and_changed_configs_are_refused() {
    let d = dir("refuse");
    let cfg = config(&d, TINY);
    let run = d.join("run");
    ok(&pretrain(&cfg, &run, &[], None));
    // Another configuration into the same folder.
    let o = pretrain(&cfg, &run, &["--set", "schedule.lr=0.2"], None);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("different configuration") && err.contains("schedule.lr: "), "{err}");
    // eval cls defaults to the run's own scoring (its eval.recalibrate_images, bn_mode and
    // batch): the summary's score again, to the bit.
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    let path = &summary["paths"][0];
    let arch = path["arch"].as_str().unwrap();
    let o = crate::engine(
        &["eval", "cls", "--checkpoint", run.to_str().unwrap(), "--arch", arch, "--threads", "1", "--json"],
        None,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_str(String::from_utf8_lossy(&o.stdout).trim()).unwrap();
    assert_eq!(v["recalibrate_bn"], 32);
    for k in ["top1", "top5", "images", "bn_layers_recalibrated"] {
        assert_eq!(v["score"][k], path[k], "{k}: eval cls {v} vs summary {path}");
    }
    // eval.recalibrate_images = 0 keeps the statistics (no recalibration, no error).
    let kept = d.join("kept");
    let o = pretrain(&cfg, &kept, &["--set", "eval.recalibrate_images=0"], None);
    ok(&o);
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(kept.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["paths"][0]["bn_layers_recalibrated"], 0, "{summary}");
    assert!(summary["paths"][0]["top1"].as_f64().unwrap() > 0.0, "{summary}");
    // A bad eval value is refused before the first step: exit 2, the key named, nothing written.
    for set in ["eval.batch=0", "eval.final_paths=0", "eval.recalibrate_images=-1"] {
        let fresh = d.join("fresh");
        let o = pretrain(&cfg, &fresh, &["--set", set], None);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{set}: {err}");
        assert!(err.contains(&format!("--set {set}")), "{set}: {err}");
        assert!(!fresh.exists(), "{set}: {fresh:?} was written");
    }
    // A pre-training checkpoint where a detection one is needed is named as such.
    let o = crate::engine(&["eval", "det", "--checkpoint", run.to_str().unwrap(), "--arch", "0123"], None);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(5), "{err}");
    assert!(err.contains("this is a classification (pre-training) checkpoint"), "{err}");
    // A corrupted latest checkpoint: exit 5, no silent fallback or fresh start.
    let model = ckpt(&run, 12).join("model.safetensors");
    let mut bytes = std::fs::read(&model).unwrap();
    let n = bytes.len();
    bytes[n - 5] ^= 0x55;
    std::fs::write(&model, bytes).unwrap();
    let o = pretrain(&cfg, &run, &[], None);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(5), "{err}");
    assert!(err.contains("checksum mismatch for model.safetensors") && err.contains("step-00000008"), "{err}");
    // A checkpoint of another space cannot be resumed from.
    let other = d.join("other");
    let o = pretrain(
        &cfg,
        &other,
        &["--set", "model.width_mult=0.5", "--resume-from", ckpt(&run, 8).to_str().unwrap()],
        None,
    );
    assert_eq!(o.status.code(), Some(5));
    assert!(String::from_utf8_lossy(&o.stderr).contains("search space differs"));
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn non_finite_loss_stops_with_a_diagnostic() {
    let d = dir("nan");
    let cfg = config(&d, TINY);
    let o = pretrain(&cfg, &d.join("run"), &[], Some("nan_at_step:3"));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(4), "{err}");
    assert!(err.contains("non-finite loss NaN at step 3") && err.contains("synthetic #"), "{err}");
    std::fs::remove_dir_all(&d).unwrap();
}

/// A libtorch failure inside a step (here a real allocator refusal at step 6) is an error
/// naming the stage, step, path and batch, with what to lower: exit 1, no panic report; the
/// checkpoint of step 4 stays and the re-run resumes from it.
#[test]
fn out_of_memory_is_an_error_naming_the_step_and_what_to_lower() {
    let d = dir("oom");
    let cfg = config(&d, TINY);
    let run = d.join("run");
    let o = pretrain(&cfg, &run, &[], Some("out_of_memory_at_step:6"));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        err.contains("pretrain step 6 (path ")
            && err.contains("8 images of 16×16 on Cpu")
            && err.contains("libtorch failed")
            && err.contains("out of memory: lower schedule.batch or data.input_size"),
        "{err}"
    );
    let o = pretrain(&cfg, &run, &[], None);
    ok(&o);
    assert!(String::from_utf8_lossy(&o.stderr).contains("resuming from"), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn sigterm_finishes_the_step_saves_and_exits_143() {
    let d = dir("term");
    let cfg = config(&d, &TINY.replace("iterations = 12", "iterations = 100000"));
    let run = d.join("run");
    let child = Command::new(env!("CARGO_BIN_EXE_detnas-engine"))
        .args(["pretrain", "--no-progress", "--config", cfg.to_str().unwrap(), "--out", run.to_str().unwrap()])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let metrics = run.join("metrics.jsonl");
    let t0 = std::time::Instant::now();
    while std::fs::read_to_string(&metrics).map(|t| t.lines().count()).unwrap_or(0) < 3 {
        assert!(t0.elapsed().as_secs() < 60, "no progress");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(143), "{err}");
    let last: u64 = std::fs::read_to_string(&metrics)
        .unwrap()
        .lines()
        .last()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["step"].as_u64().unwrap())
        .unwrap();
    assert!(ckpt(&run, last).join("manifest.json").exists(), "checkpoint of step {last} missing: {err}");
    assert!(err.contains(&format!("after step {last}")), "{err}");
    std::fs::remove_dir_all(&d).unwrap();
}

fn idx(dims: &[u32], payload: &[u8]) -> Vec<u8> {
    let mut b = vec![0, 0, 8, dims.len() as u8];
    for d in dims {
        b.extend_from_slice(&d.to_be_bytes());
    }
    b.extend_from_slice(payload);
    b
}

#[test]
fn real_data_smoke_runs_and_eval() {
    let d = dir("real");
    // ImageFolder written by `detnas data synth-cls`, plus one truncated file that must be
    // skipped and reported.
    for (split, seed) in [("train", "1"), ("val", "2")] {
        let out = d.join(split);
        let o = Command::new(env!("CARGO_BIN_EXE_detnas-engine"))
            .args([
                "data",
                "synth-cls",
                "--out",
                out.to_str().unwrap(),
                "--images",
                "60",
                "--size",
                "16",
                "--classes",
                "3",
                "--seed",
                seed,
            ])
            .output()
            .unwrap();
        ok(&o);
    }
    let victim = std::fs::read_dir(d.join("train/disc")).unwrap().next().unwrap().unwrap().path();
    let bytes = std::fs::read(&victim).unwrap();
    std::fs::write(&victim, &bytes[..bytes.len() / 2]).unwrap();
    let folder_cfg = TINY
        .replace(
            "kind = \"synthetic\"",
            &format!(
                "kind = \"image-folder\"\ntrain = \"{}\"\nval = \"{}\"",
                d.join("train").display(),
                d.join("val").display()
            ),
        )
        .replace("train = { images = 120, size = 16, seed = 1 }\n", "")
        .replace("val = { images = 40, size = 16, seed = 2 }\n", "");
    let cfg = config(&d, &folder_cfg);
    let run = d.join("run-folder");
    let o = pretrain(&cfg, &run, &[], None);
    ok(&o);
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    assert!(summary["skipped_samples"].as_u64().unwrap() >= 1, "{summary}");
    assert!(String::from_utf8_lossy(&o.stderr).contains(victim.file_name().unwrap().to_str().unwrap()));
    assert_eq!(summary["paths"][0]["images"], 60);

    // Evaluation of one path of the trained supernet.
    let arch = "01230123012301230123";
    let o = Command::new(env!("CARGO_BIN_EXE_detnas-engine"))
        .args([
            "eval",
            "cls",
            "--checkpoint",
            run.to_str().unwrap(),
            "--arch",
            arch,
            "--recalibrate-bn",
            "30",
            "--device",
            "cpu",
            "--json",
        ])
        .output()
        .unwrap();
    ok(&o);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((v["step"].as_u64(), v["score"]["images"].as_u64()), (Some(12), Some(60)));
    // Every BN of the path: 4 stride-2 blocks of choice 0 (3 branch + 2 projection BNs each),
    // 5 Xception blocks (6 each), 11 other blocks (3 each), the stem and the head's last conv.
    assert_eq!(v["score"]["bn_layers_recalibrated"].as_u64(), Some(4 * 5 + 5 * 6 + 11 * 3 + 2));
    let top1 = v["score"]["top1"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&top1));
    let o = Command::new(env!("CARGO_BIN_EXE_detnas-engine"))
        .args(["eval", "cls", "--checkpoint", run.to_str().unwrap(), "--arch", "0123", "--device", "cpu"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));

    // MNIST-style IDX files (one gzip-free pair per split).
    let (n, h, w) = (48u32, 16u32, 16u32);
    let pixels: Vec<u8> = (0..n * h * w).map(|i| ((i * 37) % 251) as u8).collect();
    let labels: Vec<u8> = (0..n).map(|i| (i % 4) as u8).collect();
    for split in ["train", "val"] {
        std::fs::write(d.join(format!("{split}-images.idx")), idx(&[n, h, w], &pixels)).unwrap();
        std::fs::write(d.join(format!("{split}-labels.idx")), idx(&[n], &labels)).unwrap();
    }
    let idx_cfg = folder_cfg
        .replace("kind = \"image-folder\"", "kind = \"idx\"")
        .replace(&format!("train = \"{}\"\nval = \"{}\"", d.join("train").display(), d.join("val").display()), &format!(
            "train_images = \"{0}/train-images.idx\"\ntrain_labels = \"{0}/train-labels.idx\"\nval_images = \"{0}/val-images.idx\"\nval_labels = \"{0}/val-labels.idx\"",
            d.display()
        ));
    let cfg = config(&d, &idx_cfg);
    let run = d.join("run-idx");
    ok(&pretrain(&cfg, &run, &[], None));
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["steps"], 12);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn warm_start_and_fair_sampling_train_their_paths_and_resume_exactly() {
    let d = dir("warm");
    // Warm start for 4 steps: SIGKILL after step 6 resumes from step 4, the step before which
    // the choices are aligned, so the alignment runs again on resume.
    let cfg = config(&d, &format!("{TINY}\n[sampling]\nwarm_start_steps = 4\n"));
    let reference = d.join("reference");
    let o = pretrain(&cfg, &reference, &[], None);
    ok(&o);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.matches("warm start ended at step 4").count(), 1, "{err}");
    let paths = crate::logged_archs(&reference);
    assert!(paths[..4].iter().all(|p| p == &"0".repeat(20)), "{paths:?}");
    assert!(paths[4..].iter().all(|p| p != &"0".repeat(20)), "{paths:?}");
    // The alignment ran: a block whose 7×7 choice was not sampled in steps 5–8 still has the
    // zero ring around its kernel's 3×3 centre at step 8 (random initialisation has none).
    let weights: std::collections::HashMap<String, tch::Tensor> =
        tch::Tensor::read_safetensors(ckpt(&reference, 8).join("model.safetensors")).unwrap().into_iter().collect();
    let untouched: Vec<usize> = (0..20).filter(|&b| paths[4..8].iter().all(|p| p.as_bytes()[b] != b'2')).collect();
    assert!(!untouched.is_empty(), "{paths:?}");
    for b in untouched {
        let k = &weights[&format!("features.{b}.2.branch.1.conv.weight")];
        let total = f64::try_from(k.abs().sum(tch::Kind::Double)).unwrap();
        let centre = f64::try_from(k.narrow(2, 2, 3).narrow(3, 2, 3).abs().sum(tch::Kind::Double)).unwrap();
        assert!(centre > 0.0 && total == centre, "block {b}: kernel sum {total}, centre {centre}");
    }
    let run = d.join("killed");
    let o = pretrain(&cfg, &run, &[], Some("kill_after_step:6"));
    assert_eq!(o.status.signal(), Some(9), "{:?}", o.status);
    let o = pretrain(&cfg, &run, &[], None);
    ok(&o);
    assert!(String::from_utf8_lossy(&o.stderr).contains("warm start ended at step 4"));
    same_files(&ckpt(&reference, 12), &ckpt(&run, 12));
    // A warm start as long as the run is refused.
    let o = pretrain(&cfg, &d.join("long"), &["--set", "sampling.warm_start_steps=12"], None);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("must be below schedule.iterations"));

    // Strict fairness: each step trains 4 paths that hold every choice of every block once.
    let fair = config(&d.join("f"), &format!("{TINY}\n[sampling]\nkind = \"fair\"\n"));
    let reference = d.join("fair-reference");
    ok(&pretrain(&fair, &reference, &[], None));
    for group in crate::logged_archs(&reference) {
        let paths: Vec<&str> = group.split(',').collect();
        assert_eq!(paths.len(), 4, "{group}");
        for b in 0..20 {
            let mut ids: Vec<u8> = paths.iter().map(|p| p.as_bytes()[b]).collect();
            ids.sort_unstable();
            assert_eq!(ids, b"0123", "{group}");
        }
    }
    let run = d.join("fair-killed");
    let o = pretrain(&fair, &run, &[], Some("kill_after_step:6"));
    assert_eq!(o.status.signal(), Some(9), "{:?}", o.status);
    ok(&pretrain(&fair, &run, &[], None));
    same_files(&ckpt(&reference, 12), &ckpt(&run, 12));
    let o = pretrain(&fair, &d.join("fair-macs"), &["--set", "sampling.max_backbone_macs=\"300M\""], None);
    assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::remove_dir_all(&d).unwrap();
}
