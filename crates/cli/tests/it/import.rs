//! `detnas import spos` against the official network: the SinglePathOneShot supernet restated
//! in PyTorch with the official module names (`bench/reference/spos_supernet.py`, random
//! weights and running statistics) writes its state dict and the logits of one path; the
//! imported checkpoint gives the same logits to 1e-5.

use super::{engine, ok, temp_dir};
use detnas_space::Arch;
use std::collections::BTreeMap;
use std::path::Path;
use tch::{Device, Tensor};

#[test]
fn imported_spos_supernet_gives_the_official_logits() {
    let d = temp_dir("import", "spos");
    // Every choice at stride 2 and at stride 1.
    let arch = "01230123012301230123";
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/reference/spos_supernet.py");
    let o = std::process::Command::new("python3")
        .arg(&script)
        .arg(&d)
        .arg(arch)
        .output()
        .expect("python3 with torch (the project's venv: source scripts/env.sh)");
    assert!(o.status.success(), "reference: {}", String::from_utf8_lossy(&o.stderr));
    let weights = d.join("supernet.safetensors");
    let run = d.join("run");
    let printed =
        ok(&engine(&["import", "spos", "--weights", weights.to_str().unwrap(), "--out", run.to_str().unwrap()], None));
    assert!(printed.contains("space small-spos"), "{printed}");

    let mut opened = detnas_train::pretrain::OpenedSupernet::open(&run, Device::Cpu).unwrap();
    assert_eq!(opened.state.space.name, "small-spos");
    assert_eq!(opened.state.task.classes.len(), 1000);
    let arch: Arch = arch.parse().unwrap();
    let logits = |opened: &detnas_train::pretrain::OpenedSupernet, x: &Tensor| {
        // In the reference's layout (NCHW).
        detnas_device::settings::with_memory_format(detnas_device::MemoryFormat::Nchw, || {
            tch::no_grad(|| opened.net.forward_t(x, &arch, false))
        })
        .unwrap()
    };
    let read =
        |f: &str| -> BTreeMap<String, Tensor> { Tensor::read_safetensors(d.join(f)).unwrap().into_iter().collect() };
    let max = |t: Tensor| f64::try_from(t.abs().max()).unwrap();
    // float32, as imported: within float32 summation-order differences over 20 blocks.
    let io = read("io.safetensors");
    let (got, want) = (logits(&opened, &io["input"]), &io["logits"]);
    let scale = max(want.shallow_clone());
    assert!(scale > 1e-3, "precondition: logits of some size ({scale})");
    let diff32 = max(&got - want);
    assert!(diff32 <= 1e-4 * scale, "float32: max |Δ| {diff32} against max |logit| {scale}");
    // float64, both sides: the same function to 1e-5 (and far below).
    opened.vs.double();
    let io = read("io64.safetensors");
    let diff64 = max(&logits(&opened, &io["input"]) - &io["logits"]);
    assert!(diff64 <= 1e-5 * scale, "float64: max |Δ| {diff64} against max |logit| {scale}");
    assert!(diff64 < 1e-9, "float64: max |Δ| {diff64}");
    eprintln!("import spos: max |Δ| float32 {diff32:e}, float64 {diff64:e}; max |logit| {scale}");

    // Fine-tuning starts from it (`model.pretrained`, space small-spos); another space is
    // refused.
    let cfg = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/demo/finetune-retinanet.toml");
    let finetune = |space: &str, out: &str| {
        let sets = [
            format!("model.space=\"{space}\""),
            format!("model.pretrained={:?}", run.display().to_string()),
            "schedule.iterations=2".into(),
            "schedule.batch=2".into(),
            "schedule.milestones=[1, 2]".into(),
            "schedule.warmup_iters=1".into(),
            "data.source.train.images=20".into(),
            "data.source.test.images=4".into(),
            "data.search_val_images=0".into(),
            "eval.recalibrate_images=4".into(),
            "eval.batch=2".into(),
        ];
        let out = d.join(out).display().to_string();
        let mut args: Vec<&str> = vec!["finetune", "--no-progress", "--config", cfg.to_str().unwrap(), "--out", &out];
        for s in &sets {
            args.extend(["--set", s]);
        }
        engine(&args, None)
    };
    let o = finetune("small-spos", "ft");
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && e.contains("backbone initialised from"), "{e}");
    let o = finetune("small", "ft-small");
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && e.contains("search space differs"), "{e}");

    // A file that lacks a tensor, or holds another network's: refused, naming what.
    let mut dict: Vec<(String, Tensor)> = Tensor::read_safetensors(&weights).unwrap();
    dict.retain(|(k, _)| k != "module.features.7.2.branch_main.3.weight");
    let refs: Vec<(&str, &Tensor)> = dict.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let partial = d.join("partial.safetensors");
    Tensor::write_safetensors(&refs, &partial).unwrap();
    let o = engine(
        &["import", "spos", "--weights", partial.to_str().unwrap(), "--out", d.join("p").to_str().unwrap()],
        None,
    );
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(5), "{e}");
    assert!(e.contains("features.7.2.branch_main.3.weight") && e.contains("partial.safetensors"), "{e}");
    std::fs::remove_dir_all(&d).unwrap();
}

/// `detnas import detnas`: the DetNAS ImageNet supernet, and a searched model (`--arch`),
/// restated in PyTorch with the official names (`bench/reference/detnas_supernet.py`, the
/// official DetNAS blocks of `crates/pipeline/tests/official/check_official.py`) give the
/// same logits after import.
#[test]
fn imported_detnas_networks_give_the_official_logits() {
    let d = temp_dir("import", "detnas");
    let arch_text = "30123012301230123012";
    let arch: Arch = arch_text.parse().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/reference/detnas_supernet.py");
    for fixed in [false, true] {
        let dir = d.join(if fixed { "searched" } else { "supernet" });
        std::fs::create_dir_all(&dir).unwrap();
        let mut cmd = std::process::Command::new("python3");
        cmd.arg(&script).arg(&dir).arg(arch_text);
        if fixed {
            cmd.arg("--fixed");
        }
        let o = cmd.output().expect("python3 with torch (the project's venv: source scripts/env.sh)");
        assert!(o.status.success(), "reference: {}", String::from_utf8_lossy(&o.stderr));
        let weights = dir.join("supernet.safetensors");
        let run = dir.join("run");
        let mut args = vec!["import", "detnas", "--weights", weights.to_str().unwrap(), "--out", run.to_str().unwrap()];
        if fixed {
            // A searched model needs its architecture.
            let o = engine(&args, None);
            let e = String::from_utf8_lossy(&o.stderr);
            assert!(!o.status.success() && e.contains("--arch"), "{e}");
            args.extend(["--arch", arch_text]);
        }
        let printed = ok(&engine(&args, None));
        assert!(printed.contains("(space small)"), "{printed}");
        let mut opened = detnas_train::pretrain::OpenedSupernet::open(&run, Device::Cpu).unwrap();
        assert_eq!(opened.state.space, detnas_space::SearchSpace::small());
        opened.vs.double();
        let io: BTreeMap<String, Tensor> =
            Tensor::read_safetensors(dir.join("io64.safetensors")).unwrap().into_iter().collect();
        let got = detnas_device::settings::with_memory_format(detnas_device::MemoryFormat::Nchw, || {
            tch::no_grad(|| opened.net.forward_t(&io["input"], &arch, false))
        })
        .unwrap();
        let scale = f64::try_from(io["logits"].abs().max()).unwrap();
        let diff = f64::try_from((&got - &io["logits"]).abs().max()).unwrap();
        assert!(scale > 1e-3, "precondition: logits of some size ({scale})");
        assert!(diff <= 1e-5 * scale && diff < 1e-9, "fixed {fixed}: float64 max |Δ| {diff} against {scale}");
        eprintln!("import detnas (searched model: {fixed}): max |Δ| float64 {diff:e}; max |logit| {scale}");
    }
    std::fs::remove_dir_all(&d).unwrap();
}
