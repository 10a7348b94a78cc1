//! Detection end to end: synthetic data, `finetune` of both detectors with bit-exact resume
//! after SIGKILL, `eval det`, `predict`, and `eval coco` against the pycocotools fixtures.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use crate::{engine, ok};

fn dir(name: &str) -> PathBuf {
    crate::temp_dir("det", name)
}

/// A tiny config: 5-block demo-like space at 64×64, a few iterations.
fn tiny(head: &str, data: &Path) -> String {
    format!(
        r#"
seed = 5
[model]
space = "{space}"
[detector]
fpn_channels = 16
[detector.head]
{head}
[data]
min_size = [64, 56]
max_size = 64
test_min_size = 64
search_val_images = 6
[data.source]
kind = "synthetic"
folder = "{data}"
train = {{ images = 30, width = 64, height = 64, classes = 3, seed = 1 }}
test = {{ images = 8, width = 64, height = 64, classes = 3, seed = 2 }}
[schedule]
iterations = 6
batch = 4
lr = 0.01
lr_schedule = "step"
milestones = [4]
warmup_iters = 2
weight_decay = 1e-4
clip_grad_norm = 5.0
[runtime]
device = "cpu"
threads = 1
checkpoint_every = 2
keep = 10
log_every = 1
[eval]
recalibrate_images = 8
batch = 4
final_paths = 1
"#,
        space = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/demo/space.toml").display(),
        data = data.display(),
    )
}

const RETINA: &str =
    "kind = \"retinanet\"\nnum_convs = 1\nscore_threshold = 0.0\nanchor_sizes = [16.0, 32.0, 64.0, 128.0, 256.0]";
const FPN: &str = "kind = \"faster-rcnn\"\nrpn = { anchor_sizes = [16.0, 32.0, 64.0, 128.0, 256.0], pre_nms_top_n_train = 200, post_nms_top_n_train = 100, pre_nms_top_n_test = 100, post_nms_top_n_test = 50 }\nroi = { conv_dim = 8, fc_dim = 32, batch_per_image = 32 }";

fn finetune(cfg: &Path, out: &Path, fault: Option<&str>) -> Output {
    engine(&["finetune", "--no-progress", "--config", cfg.to_str().unwrap(), "--out", out.to_str().unwrap()], fault)
}

fn same_weights(a: &Path, b: &Path) {
    for f in ["model.safetensors", "optimizer.safetensors"] {
        assert!(std::fs::read(a.join(f)).unwrap() == std::fs::read(b.join(f)).unwrap(), "{f} differs: {a:?} vs {b:?}");
    }
}

#[test]
fn both_detectors_train_resume_exactly_evaluate_and_predict() {
    let d = dir("ft");
    let data = d.join("data");
    for (name, head) in [("retina", RETINA), ("fpn", FPN)] {
        let cfg = d.join(format!("{name}.toml"));
        std::fs::write(&cfg, tiny(head, &data)).unwrap();
        let reference = d.join(format!("{name}-ref"));
        let out = ok(&finetune(&cfg, &reference, None));
        assert!(out.contains("AP50") && out.contains("finetune done: 6 steps"), "{out}");
        let summary: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(reference.join("summary.json")).unwrap()).unwrap();
        assert_eq!(summary["paths"][0]["stats"].as_array().unwrap().len(), 12);
        // The carved search split is recorded and disjoint from training.
        let state: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(reference.join("checkpoints/step-00000006/state.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(state["search_val_ids"].as_array().unwrap().len(), 6);

        // SIGKILL after step 3 (checkpoint 2 survives), resume: identical weights at step 6.
        let run = d.join(format!("{name}-killed"));
        let o = finetune(&cfg, &run, Some("kill_after_step:3"));
        assert_eq!(o.status.signal(), Some(9), "{:?} {}", o.status, String::from_utf8_lossy(&o.stderr));
        let o = finetune(&cfg, &run, None);
        assert!(String::from_utf8_lossy(&o.stderr).contains("resuming from"));
        ok(&o);
        same_weights(&reference.join("checkpoints/step-00000006"), &run.join("checkpoints/step-00000006"));

        // eval det on the search split, with the detections written out and re-scored by eval coco.
        let arch = summary["paths"][0]["arch"].as_str().unwrap().to_string();
        let dt = d.join(format!("{name}-dt.json"));
        let o = engine(
            &[
                "eval",
                "det",
                "--checkpoint",
                reference.to_str().unwrap(),
                "--arch",
                &arch,
                "--data",
                "search-val",
                "--recalibrate-bn",
                "8",
                "--threads",
                "1",
                "--json",
                "--dt-out",
                dt.to_str().unwrap(),
            ],
            None,
        );
        let v: serde_json::Value = serde_json::from_str(ok(&o).trim()).unwrap();
        assert_eq!(v["images"], 6);
        assert_eq!(v["stats"].as_array().unwrap().len(), 12);
        // A supernet checkpoint needs a path.
        let o = engine(&["eval", "det", "--checkpoint", reference.to_str().unwrap()], None);
        assert_eq!(o.status.code(), Some(2));

        // eval det defaults to the run's own scoring (eval.recalibrate_images = 8, its batch):
        // the summary's score again, to the bit.
        let o = engine(
            &["eval", "det", "--checkpoint", reference.to_str().unwrap(), "--arch", &arch, "--threads", "1", "--json"],
            None,
        );
        let want: serde_json::Value = serde_json::from_str(ok(&o).trim()).unwrap();
        assert_eq!(want["recalibrate_bn"], 8);
        assert_eq!(want["stats"], summary["paths"][0]["stats"], "eval det vs summary.json");
        // predict writes COCO results that eval coco scores like eval det (same path, same BN
        // recalibration on 8 training images), and a labelled picture per image.
        let gt = data.join("test/annotations.json");
        let mut images: Vec<String> = std::fs::read_dir(data.join("test/images"))
            .unwrap()
            .map(|e| e.unwrap().path().display().to_string())
            .collect();
        images.sort();
        let pred = d.join(format!("{name}-pred"));
        let mut args = vec![
            "predict",
            "--checkpoint",
            reference.to_str().unwrap(),
            "--arch",
            &arch,
            "--out",
            pred.to_str().unwrap(),
            "--score-threshold",
            "0.0",
            "--recalibrate-bn",
            "8",
            "--threads",
            "1",
            "--gt",
            gt.to_str().unwrap(),
        ];
        args.extend(images.iter().map(String::as_str));
        ok(&engine(&args, None));
        let o = engine(
            &[
                "eval",
                "coco",
                "--gt",
                gt.to_str().unwrap(),
                "--dt",
                pred.join("detections.json").to_str().unwrap(),
                "--json",
            ],
            None,
        );
        let got: serde_json::Value = serde_json::from_str(ok(&o).trim()).unwrap();
        let results: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(pred.join("detections.json")).unwrap()).unwrap();
        assert!(results.as_array().unwrap().len() > 10, "precondition: detections to compare");
        for (g, w) in got["stats"].as_array().unwrap().iter().zip(want["stats"].as_array().unwrap()) {
            assert!((g.as_f64().unwrap() - w.as_f64().unwrap()).abs() < 1e-4, "predict {got} vs eval det {want}");
        }
        let svgs: Vec<String> = images
            .iter()
            .map(|i| {
                let stem = std::path::Path::new(i).file_stem().unwrap().to_string_lossy().into_owned();
                std::fs::read_to_string(pred.join(format!("{stem}.det.svg"))).unwrap()
            })
            .collect();
        assert!(svgs.iter().all(|s| s.starts_with("<svg") && s.contains("data:image/png;base64,")));
        let labelled: usize = svgs.iter().map(|s| s.matches("<text").count()).sum();
        assert!(labelled > 0, "no labelled box in any picture");
        // No degenerate box (clipped to zero width or height) among the detections, even at
        // score threshold 0; every label's background lies inside its picture.
        for r in results.as_array().unwrap() {
            let b = r["bbox"].as_array().unwrap();
            assert!(b[2].as_f64().unwrap() > 0.0 && b[3].as_f64().unwrap() > 0.0, "degenerate box {r}");
        }
        for svg in &svgs {
            let attr = |tag: &str, name: &str| -> f64 {
                let at = tag.find(&format!(" {name}=\"")).unwrap() + name.len() + 3;
                tag[at..].split('"').next().unwrap().parse().unwrap()
            };
            let head = svg.split('>').next().unwrap();
            let (w, h) = (attr(head, "width"), attr(head, "height"));
            for tag in svg.split("<rect").skip(1).filter(|t| t.contains("fill=\"rgb(")) {
                let (x, y, tw, th) = (attr(tag, "x"), attr(tag, "y"), attr(tag, "width"), attr(tag, "height"));
                assert!(x >= 0.0 && y >= 0.0 && x + tw <= w + 0.1 && y + th <= h + 0.1, "label outside {w}×{h}: {tag}");
            }
        }
        // Two inputs with the same file name get two pictures.
        let other = d.join(format!("{name}-other"));
        std::fs::create_dir_all(&other).unwrap();
        std::fs::copy(&images[0], other.join("000000.png")).unwrap();
        let pred2 = d.join(format!("{name}-pred2"));
        ok(&engine(
            &[
                "predict",
                "--checkpoint",
                reference.to_str().unwrap(),
                "--arch",
                &arch,
                "--out",
                pred2.to_str().unwrap(),
                "--recalibrate-bn",
                "0",
                "--threads",
                "1",
                &images[0],
                other.join("000000.png").to_str().unwrap(),
            ],
            None,
        ));
        let pictures = std::fs::read_dir(&pred2)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "svg"))
            .count();
        assert_eq!(pictures, 2);
    }
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn eval_coco_json_matches_the_pycocotools_fixture() {
    let fx = Path::new(env!("CARGO_MANIFEST_DIR")).join("../detect/tests/fixtures/coco_parity");
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fx.join("expected.json")).unwrap()).unwrap();
    for case in ["crowd", "many_dets", "undefined"] {
        let o = engine(
            &[
                "eval",
                "coco",
                "--gt",
                fx.join(format!("{case}.gt.json")).to_str().unwrap(),
                "--dt",
                fx.join(format!("{case}.dt.json")).to_str().unwrap(),
                "--json",
            ],
            None,
        );
        let v: serde_json::Value = serde_json::from_str(ok(&o).trim()).unwrap();
        let got: Vec<f64> = v["stats"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        let want: Vec<f64> =
            expected["cases"][case]["stats"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        assert_eq!(got.len(), 12);
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() <= 1e-9, "{case}: {got:?} vs {want:?}");
        }
    }
    // A malformed ground truth is a data error naming the file.
    let d = dir("badgt");
    let bad = d.join("gt.json");
    std::fs::write(&bad, "{\"images\": [").unwrap();
    let o = engine(&["eval", "coco", "--gt", bad.to_str().unwrap(), "--dt", bad.to_str().unwrap()], None);
    assert_eq!(o.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&o.stderr).contains("gt.json"));
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn data_synth_writes_a_coco_set_and_bad_annotations_are_reported() {
    let d = dir("synth");
    let out = d.join("set");
    let o = ok(&engine(
        &["data", "synth", "--out", out.to_str().unwrap(), "--images", "5", "--size", "48", "--classes", "3"],
        None,
    ));
    assert!(o.contains("wrote 5 images"), "{o}");
    assert_eq!(std::fs::read_dir(out.join("images")).unwrap().count(), 5);
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("annotations.json")).unwrap()).unwrap();
    assert_eq!(doc["categories"].as_array().unwrap().len(), 3);
    assert!(!doc["annotations"].as_array().unwrap().is_empty());
    std::fs::remove_dir_all(&d).unwrap();
}

fn metrics(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Device kernels (what CUDA runs) on the CPU: FPN Faster R-CNN fine-tuning makes one host read
/// per step and trains the same weights as host kernels; a box head with more slots than
/// candidates makes every device step inexact, each reruns on host kernels (BN statistics and
/// gradients put back first), and the weights are again the host kernels'. Phase timing goes
/// into the metrics.
#[test]
fn device_kernels_train_like_host_kernels_with_one_read_per_step() {
    let d = dir("kernels");
    let data = d.join("data");
    let run = |name: &str, head: &str, kernels: &str| {
        let cfg = d.join(format!("{name}.toml"));
        std::fs::write(&cfg, tiny(head, &data).replace("iterations = 6", "iterations = 3")).unwrap();
        let out = d.join(format!("{name}-{kernels}"));
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_detnas-engine"));
        c.args(["finetune", "--no-progress", "--config", cfg.to_str().unwrap(), "--out", out.to_str().unwrap()])
            .env("DETNAS_KERNELS", kernels)
            .env("DETNAS_PHASE_TIMING", "1");
        ok(&c.output().unwrap());
        out
    };
    let filled = FPN;
    let starved = FPN.replace("batch_per_image = 32", "batch_per_image = 512");
    for (name, head, reruns) in [("filled", filled.to_string(), 0.0), ("starved", starved, 1.0)] {
        let host = run(name, &head, "host");
        let device = run(name, &head, "device");
        same_weights(&host.join("checkpoints/step-00000003"), &device.join("checkpoints/step-00000003"));
        for m in metrics(&device) {
            // A rerun step reads twice: the device attempt's read and the host kernels' one.
            assert_eq!(m["host_reads_per_step"], 1.0 + reruns, "{name}: {m}");
            assert_eq!(m["host_kernel_reads_per_step"], 2.0 * reruns, "{name}: {m}");
            assert_eq!(m.get("host_reruns").and_then(|v| v.as_f64()).unwrap_or(0.0), reruns, "{name}: {m}");
            for phase in ["backbone", "fpn", "proposals", "roi_pool", "backward", "optimizer"] {
                assert!(m["phases"][phase].as_f64().is_some_and(|s| s > 0.0), "{name}: {phase} in {m}");
            }
        }
        for m in metrics(&host) {
            assert_eq!(m["host_reads_per_step"], 1.0, "{name}: {m}");
        }
    }
}

/// `detnas bench`'s protocol on a detection training step: first use and steady state, phase
/// times, one host read per step (the engine's), and, for inference, detections per image.
#[test]
fn bench_reports_first_use_steady_state_phases_and_reads() {
    let cfg = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/demo");
    let line = |item: &str| -> serde_json::Value {
        let o = engine(&["bench", item, "--reps", "2", "--threads", "1", "--configs", cfg.to_str().unwrap()], None);
        serde_json::from_str(ok(&o).lines().last().unwrap()).unwrap()
    };
    let t = line("det-train-fpn-demo");
    for k in ["first_seconds", "warm_seconds"] {
        assert!(t[k].as_f64().is_some_and(|s| s > 0.0), "{k}: {t}");
    }
    assert_eq!(t["host_reads_per_step"], 1.0, "{t}");
    for p in ["backbone", "fpn", "proposals", "roi_pool", "roi_head", "losses", "backward", "optimizer"] {
        assert!(t["phases"][p].as_f64().is_some_and(|s| s > 0.0), "{p}: {t}");
    }
    let i = line("det-infer-retinanet-demo");
    assert_eq!(i["detections_per_image"], 100.0, "{i}");
    assert_eq!(i["host_reads_per_step"], 1.0, "{i}");
}

/// A fixed architecture keeps its own BN statistics by default (eval.recalibrate_images
/// unset), after training and in `eval det`, which gives the summary's score again; asking
/// for recalibration changes it.
#[test]
fn a_fixed_architecture_keeps_its_statistics_and_eval_det_reproduces_its_score() {
    let d = dir("fixed");
    let data = d.join("data");
    let cfg = d.join("fixed.toml");
    let text =
        tiny(RETINA, &data).replace("recalibrate_images = 8\n", "").replace("[model]\n", "[model]\narch = \"01230\"\n");
    assert!(!text.contains("recalibrate_images") && text.contains("arch = \"01230\""), "{text}");
    std::fs::write(&cfg, text).unwrap();
    let run = d.join("run");
    ok(&finetune(&cfg, &run, None));
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    let path = &summary["paths"][0];
    assert_eq!(path["bn_layers_recalibrated"], 0, "{summary}");
    let eval = |extra: &[&str]| -> serde_json::Value {
        let mut args = vec!["eval", "det", "--checkpoint", run.to_str().unwrap(), "--threads", "1", "--json"];
        args.extend(extra);
        serde_json::from_str(ok(&engine(&args, None)).trim()).unwrap()
    };
    let kept = eval(&[]);
    assert_eq!(kept["recalibrate_bn"], 0);
    assert_eq!(kept["stats"], path["stats"], "eval det vs summary.json");
    let recalibrated = eval(&["--recalibrate-bn", "8"]);
    assert_eq!(recalibrated["recalibrate_bn"], 8);
    assert_ne!(recalibrated["stats"], path["stats"], "recalibration on 8 images changed nothing");
    std::fs::remove_dir_all(&d).unwrap();
}

/// `detnas export` of a fine-tuning run of a fixed architecture, for both detectors: the
/// exported `model.py` (PyTorch, importing only torch) and `detector.onnx` (+ `box_head.onnx`)
/// under ONNX Runtime compute what detnas computes at every level on test images (`model.py
/// check`, `predict_onnx.py check`: prepared input, pyramid or raw outputs, proposals, head
/// outputs, detections; 1e-4), `predict_torch.py`'s and `predict_onnx.py`'s COCO results on the
/// test split score, through `detnas eval coco`, the AP of detnas's own evaluation (1e-3), and
/// the latency of all three runtimes is measured at the size asked.
#[test]
fn exported_detectors_compute_in_pytorch_what_detnas_computes() {
    // The third: SPOS's channel shuffle (the stride-1 blocks' other split), which has no
    // official names and is exported without them.
    for (name, head, spos) in
        [("retinanet", RETINA, false), ("faster-rcnn", FPN, false), ("retinanet-spos", RETINA, true)]
    {
        let d = dir(&format!("export-{name}"));
        let cfg = d.join("fixed.toml");
        let mut text = tiny(head, &d.join("data")).replace("[model]\n", "[model]\narch = \"01230\"\n");
        if spos {
            let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/demo/space.toml");
            let space = d.join("space-spos.toml");
            let body =
                std::fs::read_to_string(&demo).unwrap().replace("name = \"demo-tiny\"", "name = \"demo-tiny-spos\"");
            std::fs::write(&space, format!("{body}shuffle = \"even-odd\"\n")).unwrap();
            text = text.replace(&demo.display().to_string(), &space.display().to_string());
            assert!(text.contains("space-spos.toml"), "{text}");
        }
        std::fs::write(&cfg, text).unwrap();
        let run = d.join("run");
        ok(&finetune(&cfg, &run, None));
        let ex = d.join("export");
        let python = std::env::var("DETNAS_EXPORT_PYTHON").unwrap_or_default();
        let (src, out) = (run.to_str().unwrap(), ex.to_str().unwrap());
        ok(&engine(&["export", src, "--out", out, "--python", &python, "--input", "96x128"], None));
        // Latency measured at export by detnas and by PyTorch eager, in arch.json and the README.
        let info: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(ex.join("arch.json")).unwrap()).unwrap();
        let latency = info["latency"].as_array().unwrap();
        assert_eq!(latency.len(), 3, "{info}");
        let at = serde_json::json!([96, 128]);
        assert!(latency.iter().all(|l| l["median_ms"].as_f64().unwrap() > 0.0 && l["input"] == at), "{info}");
        let readme = std::fs::read_to_string(ex.join("README.md")).unwrap();
        assert_eq!(
            ex.join("backbone.safetensors").is_file(),
            !spos,
            "{name}: official names only for DetNAS's shuffle"
        );
        assert_eq!(readme.contains("No backbone under the official names"), spos, "{readme}");
        for runtime in ["| detnas (libtorch 2.", " eager | cpu |", "| ONNX Runtime 1."] {
            assert!(readme.contains(runtime), "{runtime}: {readme}");
        }
        for script in
            [vec![ex.join("model.py"), "check".into(), ex.clone()], vec![ex.join("predict_onnx.py"), "check".into()]]
        {
            let args: Vec<&str> = script.iter().map(|p| p.to_str().unwrap()).collect();
            let r: serde_json::Value = serde_json::from_str(crate::export_python(&args).trim()).unwrap();
            assert!(r["max_relative_difference"].as_f64().unwrap() < 1e-4, "{name} {args:?}: {r}");
            assert!(r["outputs"].as_object().unwrap().len() >= 10, "{name}: {r}");
            eprintln!("{name}: {} check {r}", script[0].file_name().unwrap().to_string_lossy());
        }

        let gt = run.join("test/gt.json");
        let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&gt).unwrap()).unwrap();
        let images: Vec<&str> =
            doc["images"].as_array().unwrap().iter().map(|i| i["file_name"].as_str().unwrap()).collect();
        let summary: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
        let want = summary["paths"][0]["stats"][0].as_f64().unwrap();
        for script in ["predict_torch.py", "predict_onnx.py"] {
            let dt = d.join(format!("{script}.json"));
            let mut args = vec![ex.join(script).to_str().unwrap().to_string()];
            args.extend(images.iter().map(|s| s.to_string()));
            args.extend(
                ["--out", dt.to_str().unwrap(), "--gt", gt.to_str().unwrap(), "--threads", "1"].map(String::from),
            );
            crate::export_python(&args.iter().map(String::as_str).collect::<Vec<_>>());
            let coco = ["eval", "coco", "--gt", gt.to_str().unwrap(), "--dt", dt.to_str().unwrap(), "--json"];
            let scored: serde_json::Value = serde_json::from_str(ok(&engine(&coco, None)).trim()).unwrap();
            let got = scored["stats"][0].as_f64().unwrap();
            assert!(want > 0.0 && (got - want).abs() <= 1e-3, "{name}: AP of {script} {got} vs detnas {want}");
            eprintln!("{name}: AP of {script} {got}, of detnas {want}");
        }
        if !spos {
            // --onnx-nms: the graph's own detections equal detnas's, and so does their AP.
            let ex = d.join("export-nms");
            ok(&engine(&["export", src, "--out", ex.to_str().unwrap(), "--onnx-nms"], None));
            let script = ex.join("predict_onnx.py");
            let r: serde_json::Value =
                serde_json::from_str(crate::export_python(&[script.to_str().unwrap(), "check"]).trim()).unwrap();
            let rows = r["outputs"].as_object().unwrap();
            assert!(
                rows["scores (graph)"].as_f64().unwrap() < 1e-4 && rows["boxes (graph)"].as_f64().unwrap() < 1e-4,
                "{name}: {r}"
            );
            assert!(
                !rows.contains_key("labels (graph)") && r["max_relative_difference"].as_f64().unwrap() < 1e-4,
                "{name}: {r}"
            );
            eprintln!("{name}: predict_onnx.py check with --onnx-nms {r}");
            let info: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(ex.join("arch.json")).unwrap()).unwrap();
            assert_eq!(info["onnx"]["nms_in_graph"], true, "{info}");
            assert!(std::fs::read_to_string(ex.join("README.md")).unwrap().contains("Exported with `--onnx-nms`"));
            let dt = d.join("graph-nms.json");
            let mut args = vec![script.to_str().unwrap().to_string()];
            args.extend(images.iter().map(|s| s.to_string()));
            args.extend(["--out", dt.to_str().unwrap(), "--gt", gt.to_str().unwrap()].map(String::from));
            crate::export_python(&args.iter().map(String::as_str).collect::<Vec<_>>());
            let coco = ["eval", "coco", "--gt", gt.to_str().unwrap(), "--dt", dt.to_str().unwrap(), "--json"];
            let scored: serde_json::Value = serde_json::from_str(ok(&engine(&coco, None)).trim()).unwrap();
            let got = scored["stats"][0].as_f64().unwrap();
            assert!((got - want).abs() <= 1e-3, "{name}: AP with the graph's NMS {got} vs detnas {want}");
            eprintln!("{name}: AP with the graph's NMS {got}, of detnas {want}");
        }
        std::fs::remove_dir_all(&d).unwrap();
    }
}

/// A start that wrote its synthetic set into the run folder but made no checkpoint does not
/// block the corrected command: the set is written anew with the new parameters.
#[test]
fn a_failed_start_does_not_block_its_folder_with_its_synthetic_set() {
    let d = dir("takeover");
    let cfg = d.join("own-data.toml");
    let text = tiny(RETINA, Path::new("data")).replace("checkpoint_every = 2", "checkpoint_every = 3");
    std::fs::write(&cfg, text).unwrap();
    let run = d.join("run");
    // Numerical failure at step 1: the data is written, no checkpoint is made.
    let o = finetune(&cfg, &run, Some("nan_at_step:1"));
    assert_eq!(o.status.code(), Some(4), "{}", String::from_utf8_lossy(&o.stderr));
    let ann = run.join("data/train/annotations.json");
    assert!(ann.is_file() && !run.join("checkpoints/LATEST").exists());
    let images = |p: &Path| -> usize {
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
        v["images"].as_array().unwrap().len()
    };
    assert_eq!(images(&ann), 30);
    let again = |extra: &[&str]| {
        let mut args =
            vec!["finetune", "--no-progress", "--config", cfg.to_str().unwrap(), "--out", run.to_str().unwrap()];
        args.extend(extra);
        engine(&args, None)
    };
    // The corrected command, with other data parameters, takes the folder over.
    let o = again(&["--set", "data.source.train.images=40"]);
    ok(&o);
    assert!(String::from_utf8_lossy(&o.stderr).contains("writing it anew"));
    assert_eq!(images(&ann), 40);
    // Once the run holds a checkpoint, its set is never replaced: other parameters are refused.
    let o = again(&["--set", "data.source.train.images=50", "--allow-mismatch"]);
    assert_ne!(o.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&o.stderr).contains("other parameters"), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(images(&ann), 40);
    std::fs::remove_dir_all(&d).unwrap();
}
