//! Multi-process runs on this CPU: ranks spawned on 127.0.0.1 with torchrun's environment
//! (Gloo, one thread each), and torchrun itself from the libtorch venv.
//!
//! Tolerances: a data-parallel step sums per-rank partial gradients and statistics where one
//! process sums over the whole batch, so the two agree to float32 rounding of those sums,
//! and training then amplifies rounding as it amplifies any change of summation order:
//! see [`equivalent`] for the bounds, set against a one-process run on 2 threads. Choices no
//! step sampled never move: they are bit-identical. A resumed multi-process run is
//! bit-identical to the uninterrupted one.

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use tch::Tensor;

use crate::{engine, ok, temp_dir};

/// A free TCP port on 127.0.0.1.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts `world` ranks of the engine with torchrun's environment (no agent store: rank 0
/// serves it), one thread each; `fault[r]` is rank r's `DETNAS_FAULT`.
fn spawn(world: usize, args: &[&str], fault: &[Option<&str>]) -> Vec<Child> {
    let port = free_port();
    (0..world)
        .map(|r| {
            let mut c = Command::new(env!("CARGO_BIN_EXE_detnas-engine"));
            c.args(args)
                .env("RANK", r.to_string())
                .env("WORLD_SIZE", world.to_string())
                .env("LOCAL_RANK", r.to_string())
                .env("LOCAL_WORLD_SIZE", world.to_string())
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", port.to_string())
                .env("OMP_NUM_THREADS", "1")
                .env_remove("DETNAS_FAULT")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            if let Some(Some(f)) = fault.get(r) {
                c.env("DETNAS_FAULT", f);
            }
            c.spawn().unwrap()
        })
        .collect()
}

/// Waits for every rank, at most `limit`; a rank still running then is killed and the test
/// fails (a hang).
fn wait_all(children: Vec<Child>, limit: Duration) -> Vec<Output> {
    let start = Instant::now();
    children
        .into_iter()
        .map(|mut c| {
            loop {
                if c.try_wait().unwrap().is_some() {
                    break;
                }
                if start.elapsed() > limit {
                    let _ = c.kill();
                    panic!("a rank did not finish within {limit:?}: a hang");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let mut stdout = Vec::new();
            let mut stderr = Vec::new();
            c.stdout.take().unwrap().read_to_end(&mut stdout).unwrap();
            c.stderr.take().unwrap().read_to_end(&mut stderr).unwrap();
            Output { status: c.wait().unwrap(), stdout, stderr }
        })
        .collect()
}

fn ranks(world: usize, args: &[&str], fault: &[Option<&str>]) -> Vec<Output> {
    wait_all(spawn(world, args, fault), Duration::from_secs(300))
}

/// Asserts that every rank succeeded; otherwise shows every failed rank's error output.
fn all_ok(outs: &[Output]) {
    let failed: Vec<String> = outs
        .iter()
        .enumerate()
        .filter(|(_, o)| !o.status.success())
        .map(|(r, o)| format!("rank {r}: {:?}\n{}", o.status, String::from_utf8_lossy(&o.stderr)))
        .collect();
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

/// `(step, loss)` from `metrics.jsonl`.
fn losses(run: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap())
        })
        .collect()
}

/// The model tensors of a run's latest checkpoint.
fn weights(run: &Path) -> Vec<(String, Tensor)> {
    let latest = std::fs::read_to_string(run.join("checkpoints/LATEST")).unwrap();
    let mut v =
        Tensor::read_safetensors(run.join("checkpoints").join(latest.trim()).join("model.safetensors")).unwrap();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Largest absolute difference of two tensors.
fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

/// Two ranks train what one process trains, compared against a float-order control.
///
/// On these synthetic images (flat-coloured shapes, batch-norm over a few samples) float32
/// training is sensitive to the order of its sums: the same process with 2 threads instead
/// of 1 drifts from it by about 1e-6 for the first steps, then by 1e-3 or more within
/// 10 steps, even at a learning rate of 1e-5. No data-parallel run can be closer to the
/// single process than that. So each step's loss must agree within
/// `1e-5·|loss| + 10 × (the largest control drift so far)`, plus 5 % once the control has
/// drifted: exactly to rounding while the control is at rounding (the first steps, where a
/// wrong reduction, shard or normaliser shows at once), and within what float order and the
/// discrete choices it flips (proposals, sampled RoIs) explain later. Likewise each weight tensor after
/// 20 steps: `1e-5·max|w| + 10 × the control's difference`. Choices no step sampled never
/// move: bit-identical (`require_untouched`: the run leaves some choice unsampled). Every rank
/// trains the path the one process trains.
fn equivalent(single: &Path, two: &Path, control: &Path, require_untouched: bool) {
    let (a, b, c) = (losses(single), losses(two), losses(control));
    assert_eq!(a.len(), b.len());
    assert_eq!(a.len(), c.len());
    let mut drift: f64 = 0.0;
    let mut strict_steps = 0;
    for (((s1, l1), (s2, l2)), (_, l3)) in a.iter().zip(&b).zip(&c) {
        assert_eq!(s1, s2);
        drift = drift.max((l3 - l1).abs());
        if drift <= 1e-5 * l1.abs() {
            strict_steps += 1;
        }
        // Once the control has left rounding, discrete decisions (the RPN's top-k and NMS,
        // which proposals the RoI head samples) can flip on one run and not the other.
        let flips = if drift > 1e-5 * l1.abs() { 0.05 * l1.abs() } else { 0.0 };
        let tol = 1e-5 * l1.abs() + 10.0 * drift + flips;
        assert!(
            (l1 - l2).abs() <= tol,
            "step {s1}: one process {l1}, two ranks {l2} (tolerance {tol:.2e}; 2-thread control {l3})"
        );
    }
    assert!(strict_steps >= 2, "the control drifted at once: the comparison would be vacuous");
    assert_eq!(crate::logged_archs(single), crate::logged_archs(two), "every rank trains the path one process trains");
    // A strictly fair step logs its paths comma-separated.
    let sampled: Vec<Vec<u8>> = crate::logged_archs(single)
        .iter()
        .flat_map(|group| group.split(',').map(|a| a.bytes().map(|c| c - b'0').collect()).collect::<Vec<_>>())
        .collect();
    let (wa, wb, wc) = (weights(single), weights(two), weights(control));
    assert_eq!(wa.len(), wb.len());
    let mut untouched = 0;
    for (((na, ta), (nb, tb)), (_, tc)) in wa.iter().zip(&wb).zip(&wc) {
        assert_eq!(na, nb);
        let choice = detnas_nn::path::parse_choice_var(na);
        if let Some((block, c)) = choice
            && !sampled.iter().any(|a| a.get(block) == Some(&c))
        {
            assert!(ta.equal(tb), "{na}: a choice no step sampled moved");
            untouched += 1;
            continue;
        }
        if ta.numel() == 0 {
            continue;
        }
        let tol = 1e-5 * ta.abs().max().double_value(&[]) + 10.0 * max_diff(tc, ta);
        let d = max_diff(tb, ta);
        assert!(d <= tol, "{na}: differs by {d:.3e} (tolerance {tol:.3e})");
    }
    if require_untouched {
        assert!(untouched > 0, "the test needs some never-sampled choices to mean something");
    }
}

/// Trains `cfg` for its 20 steps as one process, as two ranks, and as one process on 2
/// threads (the float-order control); learning rate 1e-4.
fn train_three(kind: &str, cfg: &Path, d: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let single = d.join("single");
    let two = d.join("two");
    let control = d.join("control");
    let common = [
        "--no-progress",
        "--set",
        "runtime.log_every=1",
        "--set",
        "runtime.checkpoint_every=10",
        "--set",
        "runtime.sync_bn=true",
        "--set",
        "schedule.lr=1e-4",
    ];
    let args = |out: &Path| -> Vec<String> {
        [kind, "--config", cfg.to_str().unwrap(), "--out", out.to_str().unwrap()]
            .iter()
            .chain(common.iter())
            .map(|s| s.to_string())
            .collect()
    };
    let a = args(&single);
    ok(&engine(&a.iter().map(String::as_str).collect::<Vec<_>>(), None));
    let mut c = args(&control);
    c.extend(["--set".into(), "runtime.threads=2".into()]);
    ok(&engine(&c.iter().map(String::as_str).collect::<Vec<_>>(), None));
    let b = args(&two);
    all_ok(&ranks(2, &b.iter().map(String::as_str).collect::<Vec<_>>(), &[]));
    (single, two, control)
}

#[test]
fn dist_check_on_two_ranks() {
    let outs = ranks(2, &["dist", "check", "--device", "cpu", "--timeout", "60", "--elements", "10000"], &[]);
    all_ok(&outs);
    for (r, o) in outs.iter().enumerate() {
        let v: serde_json::Value = serde_json::from_str(String::from_utf8_lossy(&o.stdout).trim()).unwrap();
        assert_eq!((v["rank"].as_u64(), v["world"].as_u64(), v["ok"].as_bool()), (Some(r as u64), Some(2), Some(true)));
        // SyncBN equals one BN over the concatenated batch; shards recalibrate to the
        // statistics of all images (float32 rounding).
        assert!(v["sync_bn_max_relative_difference"].as_f64().unwrap() < 1e-5, "{v}");
        assert!(v["recalibration_max_relative_difference"].as_f64().unwrap() < 1e-6, "{v}");
    }
}

#[test]
fn pretraining_on_two_ranks_equals_one_process() {
    let d = temp_dir("dist", "pretrain");
    let cfg = d.join("pretrain.toml");
    std::fs::write(&cfg, crate::tiny_pretrain(20)).unwrap();
    let (single, two, control) = train_three("pretrain", &cfg, &d);
    equivalent(&single, &two, &control, true);
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(two.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["world_size"], 2);
    std::fs::remove_dir_all(&d).ok();
}

fn finetune_config(d: &Path, head: &str) -> PathBuf {
    let mut text = crate::tiny_finetune(&d.join("data"), 0).replace("iterations = 40", "iterations = 20");
    if head == "fpn" {
        text = text.replace(
            "[detector.head]\nkind = \"retinanet\"\nnum_convs = 1\nanchor_sizes = [16.0, 32.0, 64.0, 128.0, 256.0]",
            "[detector.head]\nkind = \"faster-rcnn\"\n[detector.head.rpn]\nanchor_sizes = [16.0, 32.0, 64.0, 128.0, 256.0]\n\
             post_nms_top_n_train = 64\npost_nms_top_n_test = 32\n[detector.head.roi]\nconv_dim = 8\nfc_dim = 16\nbatch_per_image = 32",
        );
        assert!(text.contains("faster-rcnn"));
    }
    let p = d.join(format!("{head}.toml"));
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn fair_sampling_after_a_warm_start_on_two_ranks_equals_one_process() {
    // The warm start's alignment (after step 2) and strict fairness (per-path gradients
    // summed, then one update over the union of the paths) make the same collectives on every
    // rank.
    let d = temp_dir("dist", "fair");
    let cfg = d.join("pretrain.toml");
    let text = format!("{}\n[sampling]\nkind = \"fair\"\nwarm_start_steps = 2\n", crate::tiny_pretrain(16));
    std::fs::write(&cfg, text).unwrap();
    let (single, two, control) = train_three("pretrain", &cfg, &d);
    equivalent(&single, &two, &control, false);
    // The first fair step (its paths' forward on the aligned weights) agrees to rounding, even
    // where the 2-thread control has already drifted further.
    let ((s1, l1), (_, l2)) = (losses(&single)[2], losses(&two)[2]);
    assert_eq!(s1, 3);
    assert!((l1 - l2).abs() <= 1e-5 * l1.abs(), "first fair step: one process {l1}, two ranks {l2}");
    let archs = crate::logged_archs(&two);
    assert_eq!(archs.len(), 16);
    assert!(archs[..2].iter().all(|a| a.bytes().all(|c| c == b'0')), "{archs:?}");
    for group in &archs[2..] {
        let paths: Vec<&[u8]> = group.split(',').map(str::as_bytes).collect();
        assert_eq!(paths.len(), 4, "{group}");
        for block in 0..paths[0].len() {
            let mut choices: Vec<u8> = paths.iter().map(|p| p[block]).collect();
            choices.sort();
            assert_eq!(choices, b"0123", "block {block} of {group}");
        }
    }
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn retinanet_fine_tuning_on_two_ranks_equals_one_process() {
    let d = temp_dir("dist", "retinanet");
    let cfg = finetune_config(&d, "retinanet");
    let (single, two, control) = train_three("finetune", &cfg, &d);
    equivalent(&single, &two, &control, false);
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn fpn_fine_tuning_on_two_ranks_equals_one_process() {
    let d = temp_dir("dist", "fpn");
    let cfg = finetune_config(&d, "fpn");
    let (single, two, control) = train_three("finetune", &cfg, &d);
    equivalent(&single, &two, &control, false);
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn a_killed_rank_fails_the_job_fast_and_a_killed_job_resumes_exactly() {
    let d = temp_dir("dist", "kill");
    let cfg = finetune_config(&d, "retinanet");
    let args = |out: &Path| -> Vec<String> {
        ["finetune", "--no-progress", "--config", cfg.to_str().unwrap(), "--out", out.to_str().unwrap()]
            .iter()
            .map(|s| s.to_string())
            .chain([
                "--set".into(),
                "runtime.checkpoint_every=5".into(),
                "--set".into(),
                "runtime.dist_timeout_s=120".into(),
            ])
            .collect()
    };
    let reference = d.join("reference");
    let a = args(&reference);
    all_ok(&ranks(2, &a.iter().map(String::as_str).collect::<Vec<_>>(), &[]));

    // Rank 1 dies after step 7: rank 0 fails at its next collective, well before the
    // 120-second timeout, and says which rank it is and what failed.
    let killed = d.join("killed");
    let k = args(&killed);
    let started = Instant::now();
    let outs = ranks(2, &k.iter().map(String::as_str).collect::<Vec<_>>(), &[None, Some("kill_after_step:7")]);
    assert_eq!(outs[1].status.signal(), Some(9));
    assert!(!outs[0].status.success());
    let err = String::from_utf8_lossy(&outs[0].stderr);
    assert!(err.contains("error: distributed: rank 0 of 2"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(60), "the failure took {:?}", started.elapsed());

    // Re-running the same command resumes both ranks from step 5 and ends bit-identical.
    all_ok(&ranks(2, &k.iter().map(String::as_str).collect::<Vec<_>>(), &[]));
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(killed.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["resumed_from_step"], 5);
    for ((na, ta), (_, tb)) in weights(&reference).iter().zip(&weights(&killed)) {
        assert!(ta.equal(tb), "{na} differs after the resume");
    }

    // Resuming with another number of processes is refused (named checkpoint: a plain re-run
    // of the finished run would only report its summary).
    let latest = std::fs::read_to_string(killed.join("checkpoints/LATEST")).unwrap();
    let from = killed.join("checkpoints").join(latest.trim());
    let mut k1: Vec<String> = k.clone();
    k1.extend(["--resume-from".to_string(), from.display().to_string()]);
    let o = engine(&k1.iter().map(String::as_str).collect::<Vec<_>>(), None);
    assert_eq!(o.status.code(), Some(5), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("was written by 2 process(es); this run has 1"));
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn torchrun_launches_the_engine() {
    // torchrun from the libtorch venv (scripts/env.sh puts it on PATH), as the README runs it.
    let Ok(torchrun) = which("torchrun") else { panic!("torchrun is not on PATH (source scripts/env.sh)") };
    let out = Command::new(torchrun)
        .args(["--standalone", "--nproc-per-node=2", "--no-python", env!("CARGO_BIN_EXE_detnas-engine")])
        .args(["dist", "check", "--device", "cpu", "--timeout", "60", "--elements", "10000"])
        .env_remove("RANK")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l.split_once(']').map_or(l, |(_, r)| r).trim()).ok())
        .collect();
    assert_eq!(lines.len(), 2, "{}", String::from_utf8_lossy(&out.stdout));
    assert!(lines.iter().all(|v| v["ok"] == true && v["launcher"] == "Torchrun"));
}

fn which(name: &str) -> Result<PathBuf, ()> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or(())
}

#[test]
fn a_search_on_two_ranks_equals_one_process_and_survives_a_dead_rank() {
    let d = temp_dir("dist", "search");
    let ft = crate::finetuned(&d, &crate::tiny_finetune(&d.join("data"), 6));
    let cfg = d.join("search.toml");
    std::fs::write(
        &cfg,
        format!(
            "seed = 4\n[supernet]\ncheckpoint = \"{}\"\nfitness = \"det\"\n[strategy]\npopulation = 6\ntop_k = 2\n\
             generations = 2\nmutations = 2\ncrossovers = 2\n[eval]\nrecalibrate_images = 8\nbatch = 4\n\
             [runtime]\ndevice = \"cpu\"\nthreads = 1\ndist_timeout_s = 10\n",
            ft.display()
        ),
    )
    .unwrap();
    let run = |out: &Path| -> Vec<String> {
        ["search", "--no-progress", "--config", cfg.to_str().unwrap(), "--out", out.to_str().unwrap()]
            .iter()
            .map(|s| s.to_string())
            .collect()
    };
    let single = d.join("single");
    let mut one = run(&single);
    one.extend(["--workers".into(), "1".into()]);
    ok(&engine(&one.iter().map(String::as_str).collect::<Vec<_>>(), None));
    let want = crate::ledger_scores(&single);
    assert_eq!(want.len(), 12);

    // Two ranks: every candidate once, the same scores (the same evaluator on another
    // process: equal to 1e-6), the same result on both ranks.
    let two = d.join("two");
    let r = run(&two);
    let outs = ranks(2, &r.iter().map(String::as_str).collect::<Vec<_>>(), &[]);
    all_ok(&outs);
    let got = crate::ledger_scores(&two);
    assert_eq!(got.len(), want.len(), "each candidate exactly once");
    for ((a, fa), (b, fb)) in want.iter().zip(&got) {
        assert_eq!(a, b);
        assert!((fa - fb).abs() <= 1e-6, "{a}: {fa} vs {fb}");
    }
    let best =
        |o: &Output| String::from_utf8_lossy(&o.stdout).lines().find(|l| l.starts_with("best ")).map(str::to_string);
    assert!(best(&outs[0]).is_some(), "rank 0 reports the search's result");
    assert!(outs[1].stdout.is_empty(), "rank 1 leaves the report to rank 0");

    // Rank 1 dies after its first candidate: rank 0 hands that candidate out again after the
    // lease (10 s) and finishes the search with the same scores.
    let dead = d.join("dead");
    let r = run(&dead);
    let outs = ranks(2, &r.iter().map(String::as_str).collect::<Vec<_>>(), &[None, Some("kill_after_candidate:1")]);
    assert_eq!(outs[1].status.signal(), Some(9));
    assert!(outs[0].status.success(), "{}", String::from_utf8_lossy(&outs[0].stderr));
    assert!(String::from_utf8_lossy(&outs[0].stderr).contains("handing it out again"));
    let got = crate::ledger_scores(&dead);
    assert_eq!(got.len(), want.len());
    for ((a, fa), (b, fb)) in want.iter().zip(&got) {
        assert_eq!(a, b);
        assert!((fa - fb).abs() <= 1e-6, "{a}: {fa} vs {fb}");
    }
    std::fs::remove_dir_all(&d).ok();
}

/// `detnas run` on 2 ranks: every stage runs distributed (training summaries say 2
/// processes, the search's ledger is complete), rank 0 alone writes the records and the
/// report, and rank 1 prints nothing of the results.
#[test]
fn the_pipeline_runs_every_stage_on_two_ranks() {
    let d = temp_dir("dist", "pipeline");
    let cfg = crate::pipeline::write_configs(&d);
    let out = d.join("run");
    let outs =
        ranks(2, &["run", "--no-progress", "--config", cfg.to_str().unwrap(), "--out", out.to_str().unwrap()], &[]);
    all_ok(&outs);
    let printed = String::from_utf8_lossy(&outs[0].stdout);
    assert!(printed.contains("found architecture") && printed.contains("report:"), "{printed}");
    assert!(outs[1].stdout.is_empty(), "rank 1 printed: {}", String::from_utf8_lossy(&outs[1].stdout));
    for stage in ["pretrain", "finetune", "search", "search-cls", "retrain-found", "retrain-random", "retrain-clsnas"] {
        assert!(out.join(stage).join("stage.json").is_file(), "{stage}");
    }
    for summary in ["pretrain/summary.json", "finetune/summary.json", "retrain-found/det/summary.json"] {
        let s: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join(summary)).unwrap()).unwrap();
        assert_eq!(s["world_size"], 2, "{summary}");
        assert!(s["collective_seconds"].as_f64().unwrap() > 0.0, "{summary}");
    }
    let ledger = std::fs::read_to_string(out.join("search/ledger.jsonl")).unwrap();
    assert_eq!(ledger.lines().count(), 8, "population 4 × 2 generations, each scored once");
    assert!(out.join("report/report.html").is_file());
    std::fs::remove_dir_all(&d).ok();
}
