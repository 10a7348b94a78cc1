//! A user's own detection data: a VOC set with its own class names, checked by `detnas data
//! check` and fine-tuned on; each problem a user meets is named with its file.

use crate::{demo_space, engine, ok, temp_dir};
use std::path::Path;

/// A VOC tree from `detnas data synth`: images 0..12 train, 12..16 test; labels renamed to
/// `Tree`/`Bush`; image 2 without boxes.
fn voc_from_synth(d: &Path) -> std::path::PathBuf {
    let syn = d.join("syn");
    ok(&engine(
        &[
            "data",
            "synth",
            "--out",
            syn.to_str().unwrap(),
            "--images",
            "16",
            "--size",
            "64",
            "--classes",
            "2",
            "--seed",
            "3",
        ],
        None,
    ));
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(syn.join("annotations.json")).unwrap()).unwrap();
    let root = d.join("voc");
    for sub in ["Annotations", "JPEGImages", "ImageSets/Main"] {
        std::fs::create_dir_all(root.join(sub)).unwrap();
    }
    let names = ["Tree", "Bush"];
    let mut ids = Vec::new();
    for (k, im) in doc["images"].as_array().unwrap().iter().enumerate() {
        let id = format!("tile{k:02}");
        let file = im["file_name"].as_str().unwrap();
        std::fs::copy(syn.join("images").join(file), root.join("JPEGImages").join(format!("{id}.png"))).unwrap();
        let mut xml =
            format!("<annotation><filename>{id}.png</filename><size><width>64</width><height>64</height></size>");
        for a in doc["annotations"].as_array().unwrap().iter().filter(|a| a["image_id"] == im["id"] && k != 2) {
            let b: Vec<f64> = a["bbox"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
            let name = names[(a["category_id"].as_u64().unwrap() - 1) as usize];
            xml += &format!(
                "<object><name>{name}</name><bndbox><xmin>{}</xmin><ymin>{}</ymin><xmax>{}</xmax><ymax>{}</ymax></bndbox></object>",
                b[0] + 1.0,
                b[1] + 1.0,
                b[0] + b[2],
                b[1] + b[3]
            );
        }
        std::fs::write(root.join("Annotations").join(format!("{id}.xml")), xml + "</annotation>").unwrap();
        ids.push(id);
    }
    std::fs::write(root.join("ImageSets/Main/train.txt"), ids[..12].join("\n")).unwrap();
    std::fs::write(root.join("ImageSets/Main/test.txt"), ids[12..].join("\n")).unwrap();
    root
}

fn config(root: &Path) -> String {
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
[data.source]
kind = "voc"
train_roots = ["{root}"]
train_set = "train"
test_root = "{root}"
test_set = "test"
[schedule]
iterations = 4
batch = 4
lr = 0.01
[runtime]
device = "cpu"
threads = 1
checkpoint_every = 4
log_every = 2
[eval]
recalibrate_images = 4
batch = 4
final_paths = 1
"#,
        space = demo_space(),
        root = root.display()
    )
}

fn check(cfg: &Path, extra: &[&str]) -> (i32, serde_json::Value, String) {
    let mut args = vec!["data", "check", "--json", "--config", cfg.to_str().unwrap()];
    args.extend(extra);
    let o = engine(&args, None);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let json = serde_json::from_str(out.lines().last().unwrap_or("null")).unwrap_or(serde_json::Value::Null);
    (o.status.code().unwrap(), json, String::from_utf8_lossy(&o.stderr).into_owned())
}

#[test]
fn data_check_and_fine_tuning_on_a_voc_set_with_its_own_classes() {
    let d = temp_dir("data", "voc");
    let root = voc_from_synth(&d);
    let cfg = d.join("ft.toml");
    std::fs::write(&cfg, config(&root)).unwrap();

    // Usable: classes are the annotations' sorted names; the empty image is counted.
    let (code, j, err) = check(&cfg, &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(j["ok"], true);
    let train = &j["splits"][0];
    let classes: Vec<&str> =
        train["per_class"].as_array().unwrap().iter().map(|c| c["class"].as_str().unwrap()).collect();
    assert_eq!(classes, ["Bush", "Tree"]);
    assert_eq!(
        (train["images"].as_u64(), train["without_boxes"].as_u64(), train["empty_dropped"].as_u64()),
        (Some(12), Some(1), Some(1))
    );
    let boxes: u64 = train["per_class"].as_array().unwrap().iter().map(|c| c["boxes"].as_u64().unwrap()).sum();
    assert_eq!(Some(boxes), train["boxes"].as_u64());

    // An image that cannot be decoded: exit 3, named.
    let png = root.join("JPEGImages/tile05.png");
    let bytes = std::fs::read(&png).unwrap();
    std::fs::write(&png, &bytes[..bytes.len() / 2]).unwrap();
    let (code, j, _) = check(&cfg, &[]);
    assert_eq!((code, &j["ok"]), (3, &serde_json::json!(false)));
    let errors = j["splits"][0]["errors"].as_array().unwrap();
    assert!(errors.len() == 1 && errors[0].as_str().unwrap().contains("tile05.png"), "{errors:?}");
    std::fs::write(&png, &bytes).unwrap();

    // A size that differs from the image: an error with both sizes, unless use-image.
    let xml = root.join("Annotations/tile04.xml");
    let text = std::fs::read_to_string(&xml).unwrap();
    std::fs::write(&xml, text.replace("<width>64</width>", "<width>128</width>")).unwrap();
    let (code, _, err) = check(&cfg, &[]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("tile04.png: the image is 64×64") && err.contains("says 128×64"), "{err}");
    let (code, j, err) = check(&cfg, &["--set", "data.size_mismatch=use-image"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(j["splits"][0]["report"]["sizes_replaced"], 1);
    std::fs::write(&xml, &text).unwrap();

    // A test object of a class the training set lacks: named with file and object.
    let xml = root.join("Annotations/tile13.xml");
    let text = std::fs::read_to_string(&xml).unwrap();
    assert!(text.contains("<name>"), "precondition: test image 13 has objects");
    let first = if text.contains("<name>Tree</name>") { "Tree" } else { "Bush" };
    std::fs::write(&xml, text.replacen(&format!("<name>{first}</name>"), "<name>Shrub</name>", 1)).unwrap();
    let (code, _, err) = check(&cfg, &[]);
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("tile13.xml: object")
            && err.contains("class 'Shrub' is not among the training set's classes [Bush, Tree]"),
        "{err}"
    );
    std::fs::write(&xml, &text).unwrap();

    // Fine-tuning logs the classes and the summary; with stderr not a terminal, progress
    // comes as plain log lines (no colour codes).
    let ft = d.join("ft");
    let o = engine(&["finetune", "--config", cfg.to_str().unwrap(), "--out", ft.to_str().unwrap()], None);
    let log = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{log}");
    assert!(log.contains("2 classes: Bush, Tree"), "{log}");
    assert!(log.contains("images without boxes: 1 (left out of training"), "{log}");
    assert!(log.contains("finetune 4/4 (100%)") && !log.contains('\u{1b}'), "{log}");
    assert!(log.contains("data: decoded all 15 images") && log.contains("no errors"), "{log}");

    // Re-running the finished run reports it and leaves its summary as it was; the run's own
    // config.toml (absolute paths) names the same run from another folder.
    let summary = std::fs::read(ft.join("summary.json")).unwrap();
    let first = String::from_utf8_lossy(&o.stdout).into_owned();
    let own = ft.join("config.toml");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_detnas-engine"))
        .args(["finetune", "--config", own.to_str().unwrap(), "--out", ft.to_str().unwrap()])
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success() && log.contains("already finished"), "{log}");
    assert_eq!(std::fs::read(ft.join("summary.json")).unwrap(), summary);
    let again = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(again.lines().last(), first.lines().last(), "the same report");

    // A start that fails on its data does not block the corrected command.
    let ft2 = d.join("ft2");
    let (c, o2) = (cfg.to_str().unwrap(), ft2.to_str().unwrap());
    let o =
        engine(&["finetune", "--no-progress", "--config", c, "--out", o2, "--set", "data.search_val_images=500"], None);
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(e.contains("data.search_val_images = 500: cannot carve 500 images"), "{e}");
    let o = engine(&["finetune", "--no-progress", "--config", c, "--out", o2], None);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::remove_dir_all(&d).unwrap();
}
