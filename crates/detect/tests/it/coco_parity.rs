//! COCO box evaluation through hotcoco equals pycocotools 2.0.11 (the fixture's
//! `make_fixtures.py` produced both the cases and `expected.json`) to 1e-9 on every stat and on
//! every category's AP and AR100.

use detnas_detect::metrics::{CocoDetection, coco_evaluation, coco_evaluation_files};
use std::path::PathBuf;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/coco_parity")
}

#[test]
fn every_case_matches_pycocotools() {
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir().join("expected.json")).unwrap()).unwrap();
    let cases = expected["cases"].as_object().unwrap();
    assert!(cases.len() >= 8, "fixture cases missing");
    for (name, case) in cases {
        let want: Vec<f64> = case["stats"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        let gt = dir().join(format!("{name}.gt.json"));
        let dt = dir().join(format!("{name}.dt.json"));
        let got = coco_evaluation_files(&gt, &dt).unwrap();
        for (i, (g, w)) in got.stats.0.iter().zip(&want).enumerate() {
            assert!((g - w).abs() <= 1e-9, "{name} stat {i}: hotcoco {g} vs pycocotools {w}");
        }
        // Each category's AP and AR100, against pycocotools' accumulated arrays.
        let classes = case["per_class"].as_object().unwrap();
        assert_eq!(got.classes.len(), classes.len(), "{name}: categories");
        for c in &got.classes {
            let w = &classes[&c.category_id.to_string()];
            let (ap, ar) = (w[0].as_f64().unwrap(), w[1].as_f64().unwrap());
            assert!((c.ap - ap).abs() <= 1e-9, "{name} class {}: AP {} vs pycocotools {ap}", c.category_id, c.ap);
            assert!(
                (c.ar100 - ar).abs() <= 1e-9,
                "{name} class {}: AR100 {} vs pycocotools {ar}",
                c.category_id,
                c.ar100
            );
            assert_eq!(c.name, format!("cat{}", c.category_id));
        }
        // The in-memory path (what `eval det` uses) agrees with the file path.
        let dets: Vec<CocoDetection> = serde_json::from_str(&std::fs::read_to_string(&dt).unwrap()).unwrap();
        let coco = hotcoco::COCO::new(&gt).unwrap();
        let mem = coco_evaluation(coco, &dets).unwrap();
        assert_eq!(mem, got, "{name}: in-memory evaluation differs");
    }
}

/// Results on an image id the ground truth lacks are refused, as pycocotools refuses them
/// (`loadRes`: "Results do not correspond to current coco set"), naming the ids.
#[test]
fn results_on_unknown_images_are_refused() {
    let gt = dir().join("basic.gt.json");
    let mut dets: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(dir().join("basic.dt.json")).unwrap()).unwrap();
    let mut extra = dets[0].clone();
    extra["image_id"] = serde_json::json!(987654);
    dets.push(extra);
    let dt = std::env::temp_dir().join(format!("detnas-unknown-ids-{}.json", std::process::id()));
    std::fs::write(&dt, serde_json::to_string(&dets).unwrap()).unwrap();
    let e = coco_evaluation_files(&gt, &dt).unwrap_err().to_string();
    std::fs::remove_file(&dt).ok();
    assert!(e.contains("1 image id that") && e.contains("987654"), "{e}");
}
