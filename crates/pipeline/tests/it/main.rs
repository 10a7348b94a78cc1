//! Export round trip: the exported official-name weights loaded back into a fresh child give
//! identical outputs, and the official DetNAS backbone definition in PyTorch (test tooling,
//! tests/official/check_official.py) loads them strictly and gives the same outputs to 1e-4.

use detnas_nn::{ChildNet, ChildNetConfig};
use detnas_space::{Arch, SearchSpace};
use std::collections::BTreeMap;
use std::path::PathBuf;
use tch::{Device, Kind, Tensor, nn};

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("detnas-export-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn child(space: &SearchSpace, arch: &Arch, p: &nn::Path) -> ChildNet {
    ChildNetConfig { space: space.clone(), arch: arch.clone(), classes: None }.build(p).unwrap()
}

/// In both memory layouts (`runtime.memory_format`): the export's numbers do not depend on it.
#[test]
fn exported_weights_round_trip_and_load_into_the_official_definition_channels_last() {
    detnas_device::settings::with_memory_format(detnas_device::MemoryFormat::ChannelsLast, || round_trip("rt-cl"));
}

#[test]
fn exported_weights_round_trip_and_load_into_the_official_definition_nchw() {
    detnas_device::settings::with_memory_format(detnas_device::MemoryFormat::Nchw, || round_trip("rt-nchw"));
}

fn round_trip(name: &str) {
    tch::manual_seed(7);
    let d = dir(name);
    // Every choice at stride 2 and stride 1, non-square input.
    let space = SearchSpace::small().scaled(0.5).unwrap();
    let arch: Arch = "30123210012301233210".parse().unwrap();
    let vs = nn::VarStore::new(Device::Cpu);
    let net = child(&space, &arch, &(vs.root() / "backbone"));
    // Random BN statistics and affine parameters: eval-mode outputs depend on all of them.
    tch::no_grad(|| {
        for (name, mut v) in vs.variables() {
            if name.ends_with("running_var") {
                v.copy_(&(Tensor::rand_like(&v) + 0.5));
            } else if name.ends_with("running_mean") || name.ends_with("bn.bias") {
                v.copy_(&(Tensor::randn_like(&v) * 0.1));
            } else if name.ends_with("bn.weight") {
                v.copy_(&(Tensor::rand_like(&v) + 0.5));
            }
        }
    });
    let ckpt = d.join("step-00000001");
    std::fs::create_dir_all(&ckpt).unwrap();
    vs.save(ckpt.join("model.safetensors")).unwrap();
    let out = d.join("export");
    detnas_pipeline::export::export_checkpoint(&ckpt, &space, &arch, None, None, &Default::default(), &out).unwrap();

    let x = Tensor::randn([2, 3, 96, 128], (Kind::Float, Device::Cpu)) * 50.0 + 100.0;
    let want = tch::no_grad(|| net.features_t(&x, false));

    // Back into a fresh child through the mapping file.
    let official: BTreeMap<String, Tensor> =
        Tensor::read_safetensors(out.join("backbone.safetensors")).unwrap().into_iter().collect();
    let mapping = std::fs::read_to_string(out.join("name-mapping.tsv")).unwrap();
    let mut fresh_vs = nn::VarStore::new(Device::Cpu);
    let fresh = child(&space, &arch, &fresh_vs.root());
    let vars = fresh_vs.variables();
    assert_eq!(mapping.lines().count(), vars.len());
    tch::no_grad(|| {
        for line in mapping.lines() {
            let (ours, theirs) = line.split_once('\t').unwrap();
            vars[ours].shallow_clone().copy_(&official[theirs]);
        }
    });
    fresh_vs.freeze();
    let got = tch::no_grad(|| fresh.features_t(&x, false));
    for (a, b) in got.iter().zip(&want) {
        assert_eq!(f64::try_from((a - b).abs().max()).unwrap(), 0.0);
    }
    let bns = official.keys().filter(|k| k.ends_with("num_batches_tracked")).count();
    assert_eq!(bns, official.keys().filter(|k| k.ends_with("running_var")).count());

    // The official definition in PyTorch.
    let io = d.join("io.safetensors");
    let named: Vec<(String, Tensor)> = std::iter::once(("input".to_string(), x.shallow_clone()))
        .chain(want.iter().enumerate().map(|(i, t)| (format!("c{}", i + 2), t.contiguous())))
        .collect();
    let refs: Vec<(&str, &Tensor)> = named.iter().map(|(k, v)| (k.as_str(), v)).collect();
    Tensor::write_safetensors(&refs, &io).unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/official/check_official.py");
    let o = std::process::Command::new("python3")
        .arg(&script)
        .arg(&out)
        .arg(&io)
        .output()
        .expect("python3 with torch (the project's venv: source scripts/env.sh)");
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "official definition: {stdout}\n{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert!(r["max_relative_difference"].as_f64().unwrap() < 1e-4, "{r}");
    assert_eq!(r["keys"].as_u64().unwrap() as usize, official.len(), "strict load: same key count");
    std::fs::remove_dir_all(&d).unwrap();
}

/// Every pipeline preset loads with its stage configs, and those load too.
#[test]
fn pipeline_presets_load() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../configs");
    let mut n = 0;
    for sub in ["demo", "own-data", "coco", "voc"] {
        for e in std::fs::read_dir(root.join(sub)).unwrap().flatten() {
            let p = e.path();
            if !p.file_name().unwrap().to_string_lossy().starts_with("pipeline") {
                continue;
            }
            let cfg = detnas_pipeline::PipelineConfig::load(&p, &[]).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            detnas_train::PretrainConfig::load(Some(&cfg.pretrain.config), &cfg.pretrain.set).unwrap();
            detnas_train::FinetuneConfig::load(&cfg.finetune.config, &cfg.finetune.set).unwrap();
            detnas_search::SearchConfig::load(&cfg.search.config, &cfg.search.set).unwrap();
            if sub == "coco" || sub == "voc" {
                assert_eq!(cfg.retrain.mode, detnas_pipeline::config::RetrainMode::Scratch, "{}", p.display());
            }
            n += 1;
        }
    }
    assert_eq!(n, 6);
}

/// The README's demo table is the committed run's: `docs/demo/final.json` and
/// `docs/demo/baseline-grid.json`, copied from one demo run's `report/final.json` and
/// `baseline-grid/stage.json` (with its figures, `docs/demo/*.svg`).
#[test]
fn the_readme_demo_table_is_the_committed_run() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let read = |p: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(root.join(p)).unwrap()).unwrap()
    };
    let rows = read("docs/demo/final.json");
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 4);
    for r in rows {
        let label = match r["label"].as_str().unwrap() {
            "found" => "found (DetNAS search)",
            "random" => "random",
            "clsnas" => "ClsNAS",
            _ => "zero-cost (entropy search)",
        };
        let s: Vec<f64> = r["stats"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        let row = format!(
            "| {label} | `{}` | {:.3} | {:.3} | {:.3} | {} |",
            r["arch"].as_str().unwrap(),
            s[0],
            s[1],
            s[2],
            detnas_space::format_count(r["backbone_macs"].as_u64().unwrap())
        );
        assert!(readme.contains(&row), "the README lacks {row}");
    }
    let grid = read("docs/demo/baseline-grid.json");
    let g: Vec<f64> = grid["test"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    let row = format!("| grid (no training) | — | {:.3} | {:.3} | {:.3} | — |", g[0], g[1], g[2]);
    assert!(readme.contains(&row), "the README lacks {row}");
}
