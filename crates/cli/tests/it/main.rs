//! The engine binary as a user runs it: outputs, JSON contracts, errors and exit codes.

mod data;
mod detect;
mod dist;
mod import;
mod own_data;
mod pipeline;
mod pretrain;
mod search;
mod soak;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A fresh temporary folder for one test (`detnas-{what}-{name}-{pid}`).
fn temp_dir(what: &str, name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("detnas-{what}-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs the engine, optionally with a `DETNAS_FAULT` injection.
fn engine(args: &[&str], fault: Option<&str>) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_detnas-engine"));
    c.args(args);
    if let Some(f) = fault {
        c.env("DETNAS_FAULT", f);
    }
    c.output().unwrap()
}

/// The paths trained, one per line of a run's `metrics.jsonl` (log_every = 1; a
/// strict-fairness group is its paths joined by commas).
fn logged_archs(run: &Path) -> Vec<String> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["arch"].as_str().unwrap().to_string())
        .collect()
}

/// The demo space file.
fn demo_space() -> String {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/demo/space.toml").display().to_string()
}

/// A pre-training config of a few seconds: demo space, 32×32 synthetic shapes, CPU, 1 thread.
fn tiny_pretrain(iterations: u64) -> String {
    format!(
        r#"seed = 3
[model]
space = "{space}"
[data]
input_size = 32
eval_resize = 32
[data.source]
kind = "synthetic"
train = {{ images = 64, size = 32, seed = 1 }}
val = {{ images = 24, size = 32, seed = 2 }}
[schedule]
iterations = {iterations}
batch = 8
lr = 0.1
[runtime]
device = "cpu"
threads = 1
checkpoint_every = 4
[eval]
recalibrate_images = 16
batch = 8
final_paths = 1
"#,
        space = demo_space()
    )
}

/// A RetinaNet fine-tuning config of a few seconds (64×64 synthetic set, 40 steps: enough
/// for non-zero AP on some paths); `data` is the synthetic set's folder.
fn tiny_finetune(data: &std::path::Path, search_val: usize) -> String {
    format!(
        r#"seed = 5
[model]
space = "{space}"
[detector]
fpn_channels = 16
[detector.head]
kind = "retinanet"
num_convs = 1
anchor_sizes = [16.0, 32.0, 64.0, 128.0, 256.0]
[data]
min_size = [64]
max_size = 64
test_min_size = 64
search_val_images = {search_val}
[data.source]
kind = "synthetic"
folder = "{data}"
train = {{ images = 30, width = 64, height = 64, classes = 3, seed = 1 }}
test = {{ images = 6, width = 64, height = 64, classes = 3, seed = 2 }}
[schedule]
iterations = 40
batch = 4
lr = 0.02
warmup_iters = 4
[runtime]
device = "cpu"
threads = 1
checkpoint_every = 4
log_every = 2
[eval]
recalibrate_images = 8
batch = 4
final_paths = 1
"#,
        space = demo_space(),
        data = data.display()
    )
}

/// Fine-tunes with the config text `config` into `d/ft` (config in `d/ft.toml`); returns
/// the run folder.
fn finetuned(d: &std::path::Path, config: &str) -> std::path::PathBuf {
    let cfg = d.join("ft.toml");
    std::fs::write(&cfg, config).unwrap();
    let ft = d.join("ft");
    ok(&engine(&["finetune", "--no-progress", "--config", cfg.to_str().unwrap(), "--out", ft.to_str().unwrap()], None));
    ft
}

/// Asserts success; returns stdout.
/// `(arch, fitness)` of every entry of a search folder's `ledger.jsonl`, sorted by
/// architecture.
fn ledger_scores(search: &std::path::Path) -> Vec<(String, f64)> {
    let mut v: Vec<(String, f64)> = std::fs::read_to_string(search.join("ledger.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let e: serde_json::Value = serde_json::from_str(l).unwrap();
            (e["arch"].as_str().unwrap().to_string(), e["fitness"].as_f64().unwrap())
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn ok(o: &Output) -> String {
    assert!(o.status.success(), "status {:?}\n{}", o.status, String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Runs the Python of the export's own runtimes (`DETNAS_EXPORT_PYTHON`, set by
/// `scripts/export-peers.sh`, which `scripts/test.sh` sources) with `args`; its stdout.
fn export_python(args: &[&str]) -> String {
    let python = std::env::var("DETNAS_EXPORT_PYTHON").expect(
        "DETNAS_EXPORT_PYTHON is not set: run the tests with scripts/test.sh (or source scripts/export-peers.sh)",
    );
    let o = Command::new(&python).args(args).output().expect("the export peers' Python runs");
    assert!(
        o.status.success(),
        "{python} {args:?}: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn detnas(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_detnas-engine")).args(args).output().expect("engine runs")
}

fn json(args: &[&str]) -> serde_json::Value {
    let out = detnas(args);
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.trim().lines().count(), 1, "exactly one JSON line expected: {text}");
    serde_json::from_str(&text).unwrap()
}

/// Fails with exit code 2 and a one-line message containing `needle`.
fn usage_error(args: &[&str], needle: &str) {
    let out = detnas(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
    assert!(err.lines().next().unwrap_or("").contains(needle), "{args:?}: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn stats_json_reproduces_the_reference_table() {
    for (space, arch, expected) in [
        ("small", "21202112331300313132", [288_082_368u64, 321_219_008, 1_849_680, 3_533_112]),
        ("small", "23113213311133203333", [291_205_824, 324_342_464, 2_041_888, 3_725_320]),
        ("large", "0031210203123320211320222131033313333333", [1_269_181_536, 1_318_374_496, 8_415_216, 10_426_328]),
    ] {
        let v = json(&["space", "stats", "--space", space, "--arch", arch, "--json"]);
        let got = ["backbone_macs", "total_macs", "backbone_params", "total_params"].map(|k| v[k].as_u64().unwrap());
        assert_eq!(got, expected, "{arch}");
    }
    // Comma form, other input size and class count: total grows by exactly the FC difference.
    let a = json(&["space", "stats", "--arch", "2,1,2,0,2,1,1,2,3,3,1,3,0,0,3,1,3,1,3,2", "--classes", "80", "--json"]);
    let b = json(&["space", "stats", "--arch", "21202112331300313132", "--classes", "81", "--json"]);
    assert_eq!(b["total_params"].as_u64().unwrap() - a["total_params"].as_u64().unwrap(), 1024 + 1);
    assert_eq!(b["total_macs"].as_u64().unwrap() - a["total_macs"].as_u64().unwrap(), 1024);
    let big = json(&["space", "stats", "--arch", "21202112331300313132", "--input", "800x1333", "--json"]);
    assert!(big["backbone_macs"].as_u64().unwrap() > 20 * 288_082_368 / 2);
}

#[test]
fn sample_respects_limits_and_seed() {
    let run = |seed: &str| {
        json(&[
            "space",
            "sample",
            "--max-backbone-macs",
            "280M",
            "--max-params",
            "1.8M",
            "-n",
            "8",
            "--seed",
            seed,
            "--json",
        ])
    };
    let a = run("5");
    assert_eq!(a.as_array().unwrap().len(), 8);
    for row in a.as_array().unwrap() {
        assert!(row["backbone_macs"].as_u64().unwrap() <= 280_000_000);
        assert!(row["backbone_params"].as_u64().unwrap() <= 1_800_000);
        let arch = row["arch"].as_str().unwrap();
        let v = json(&["space", "stats", "--arch", arch, "--json"]);
        assert_eq!(v["backbone_macs"], row["backbone_macs"]);
    }
    assert_eq!(a, run("5"));
    assert_ne!(a, run("6"));
}

#[test]
fn show_describes_spaces() {
    let v = json(&["space", "show", "--space", "small", "--json"]);
    assert_eq!(v["blocks"], 20);
    assert_eq!(v["paths"], "1099511627776");
    assert_eq!(v["backbone_macs_min"], 237_222_720);
    let v = json(&["space", "show", "--space", "large-3.8g", "--width-mult", "0.25", "--json"]);
    assert_eq!(v["widths"], serde_json::json!([44, 108, 216, 432]));
    assert_eq!(v["name"], "large-3.8g-w0.25");
    let dir = std::env::temp_dir().join(format!("detnas-cli-space-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("mine.toml");
    std::fs::write(&file, "stem = 8\nwidths = [16, 32]\ndepths = [1, 2]\nlast_conv = 64\nchoices = [0, 3]\n").unwrap();
    let v = json(&["space", "show", "--space", file.to_str().unwrap(), "--json"]);
    assert_eq!((v["blocks"].as_u64(), v["paths"].as_str()), (Some(3), Some("8")));
    std::fs::write(&file, "stem = 8\nwidths = [18, 32]\ndepths = [1, 2]\nlast_conv = 64\n").unwrap();
    usage_error(&["space", "show", "--space", file.to_str().unwrap()], "multiple of 4");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_input_is_a_one_line_usage_error() {
    usage_error(&["space", "stats", "--arch", "0123"], "4 genes");
    usage_error(&["space", "stats", "--arch", "2120211233130031313x"], "gene 19");
    usage_error(&["space", "stats", "--space", "medium", "--arch", "0"], "unknown search space 'medium'");
    usage_error(&["space", "sample", "--max-backbone-macs", "100M"], "smallest has 237.22M");
    usage_error(&["space", "sample", "--max-backbone-macs", "3X"], "invalid count '3X'");
    usage_error(&["space", "show", "--width-mult", "-1"], "width multiplier must be positive");
    usage_error(&["space", "stats", "--arch", "21202112331300313132", "--input", "0"], "positive pixel count");
    usage_error(&["net", "check", "--device", "tpu"], "expected cpu, cuda, cuda:N or auto");
    usage_error(&["net", "check", "--threads", "0"], "--threads");
    usage_error(&["frobnicate"], "unrecognized subcommand");
}

#[test]
fn net_check_agrees_with_closed_form() {
    let v = json(&[
        "net",
        "check",
        "--space",
        "small",
        "--width-mult",
        "0.5",
        "--input",
        "96x128",
        "--batch",
        "2",
        "--backward",
        "--repeat",
        "1",
        "--device",
        "cpu",
        "--threads",
        "1",
        "--json",
    ]);
    assert_eq!(v["analytic"], v["measured"]);
    assert_eq!(v["features"][3], serde_json::json!([2, 320, 3, 4]));
    assert!(v["images_per_second"].as_f64().unwrap() > 0.0);
}
