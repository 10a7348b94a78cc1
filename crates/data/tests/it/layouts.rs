//! The YOLO and VOC readers against the COCO reader on the same objects: a synthetic set is
//! written as COCO (PNG + JSON), converted here to the YOLO layout and to VOC XML, and each
//! reader must give the COCO reader's boxes and labels (YOLO: to 1e-3 px, its coordinates
//! are normalised; VOC: exactly, through its 1-based pixel convention). Then the errors each
//! layout must name: a malformed label line, a class outside `names`, a missing split.

use detnas_data::det::synth::SyntheticDetConfig;
use detnas_data::det::{DetDataset, voc, yolo};
use std::fmt::Write;
use std::path::{Path, PathBuf};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("detnas-layouts-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn coco_twin(d: &Path) -> DetDataset {
    let cfg = SyntheticDetConfig {
        images: 10,
        width: 72,
        height: 56,
        classes: 3,
        seed: 4,
        objects: (0, 4),
        radius: (0.1, 0.5),
        max_overlap: 0.3,
        clutter: 2,
    };
    cfg.write(&d.join("coco")).unwrap()
}

/// Writes `coco` as a YOLO layout (all images in `train`, the last 3 also in `val`); the
/// label of image 0 is left out and image 1's is an empty file.
fn write_yolo(coco: &DetDataset, root: &Path) -> PathBuf {
    for split in ["train", "val"] {
        std::fs::create_dir_all(root.join("images").join(split)).unwrap();
        std::fs::create_dir_all(root.join("labels").join(split)).unwrap();
    }
    for (k, im) in coco.images.iter().enumerate() {
        let name = im.file.file_name().unwrap().to_string_lossy().into_owned();
        let stem = im.file.file_stem().unwrap().to_string_lossy().into_owned();
        let mut text = String::new();
        let (w, h) = (im.width as f64, im.height as f64);
        for o in &im.objects {
            let [x1, y1, x2, y2] = o.bbox.map(f64::from);
            let _ = writeln!(
                text,
                "{} {:.9} {:.9} {:.9} {:.9}",
                o.label,
                (x1 + x2) / 2.0 / w,
                (y1 + y2) / 2.0 / h,
                (x2 - x1) / w,
                (y2 - y1) / h
            );
        }
        let splits: &[&str] = if k >= coco.len() - 3 { &["train", "val"] } else { &["train"] };
        for split in splits {
            std::fs::copy(&im.file, root.join("images").join(split).join(&name)).unwrap();
            if k != 0 {
                std::fs::write(
                    root.join("labels").join(split).join(format!("{stem}.txt")),
                    if k == 1 { "" } else { &text },
                )
                .unwrap();
            }
        }
    }
    let names: Vec<String> = coco.categories.iter().map(|c| format!("  {}: {}", c.id - 1, c.name)).collect();
    let yaml = root.join("data.yaml");
    std::fs::write(&yaml, format!("path: .\ntrain: images/train\nval: images/val\nnames:\n{}\n", names.join("\n")))
        .unwrap();
    yaml
}

#[test]
fn yolo_reads_what_coco_reads() {
    let d = tmp("yolo");
    let coco = coco_twin(&d);
    assert!(coco.images.iter().filter(|i| !i.objects.is_empty()).count() >= 5, "precondition: objects to compare");
    let yaml = write_yolo(&coco, &d.join("yolo"));
    let spec = yolo::read_spec(&yaml).unwrap();
    let train = yolo::load(&spec, "train").unwrap();
    let names: Vec<&str> = train.categories.iter().map(|c| c.name.as_str()).collect();
    let want: Vec<&str> = coco.categories.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, want);
    assert_eq!(train.len(), coco.len());
    // Listed sorted by file name, as the COCO writer names them in order.
    for (k, (y, c)) in train.images.iter().zip(&coco.images).enumerate() {
        assert_eq!(y.file.file_name(), c.file.file_name());
        assert_eq!((y.width, y.height), (c.width, c.height), "sizes come from the headers");
        let want = if k <= 1 { &[][..] } else { &c.objects[..] };
        assert_eq!(y.objects.len(), want.len(), "image {k}");
        for (a, b) in y.objects.iter().zip(want) {
            assert_eq!(a.label, b.label);
            for (p, q) in a.bbox.iter().zip(&b.bbox) {
                assert!((p - q).abs() <= 1e-3, "image {k}: {:?} vs {:?}", a.bbox, b.bbox);
            }
        }
    }
    assert!(train.report.is_clean(), "{}", train.report);
    assert_eq!(yolo::load(&spec, "val").unwrap().len(), 3);
    let e = yolo::load(&spec, "test").unwrap_err().to_string();
    assert!(e.contains("data.yaml") && e.contains("no split 'test'") && e.contains("train, val"), "{e}");

    // A malformed line and a class outside `names` are errors naming the file and the line.
    let label =
        d.join("yolo/labels/train").join(format!("{}.txt", coco.images[2].file.file_stem().unwrap().to_string_lossy()));
    let good = std::fs::read_to_string(&label).unwrap();
    for (bad, needle) in [
        ("0 0.5 0.5 0.2\n", "4 values"),
        ("7 0.5 0.5 0.2 0.2\n", "class 7 is not an index"),
        ("0 0.5 x 0.2 0.2\n", "not all values are numbers"),
    ] {
        std::fs::write(&label, format!("{good}{bad}")).unwrap();
        let e = yolo::load(&spec, "train").unwrap_err().to_string();
        let line = good.lines().count() + 1;
        assert!(e.contains(&format!("{}: line {line}", label.display())) && e.contains(needle), "{e}");
    }
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn voc_reads_what_coco_reads_with_its_own_class_names() {
    let d = tmp("voc");
    let coco = coco_twin(&d);
    let root = d.join("voc");
    for sub in ["Annotations", "JPEGImages", "ImageSets/Main"] {
        std::fs::create_dir_all(root.join(sub)).unwrap();
    }
    let mut ids = Vec::new();
    for (k, im) in coco.images.iter().enumerate() {
        let id = format!("img{k:02}");
        std::fs::copy(&im.file, root.join("JPEGImages").join(format!("{id}.png"))).unwrap();
        // labelImg style; image 3 without <size> (read from the header).
        let size = if k == 3 {
            String::new()
        } else {
            format!("<size><width>{}</width><height>{}</height><depth>3</depth></size>", im.width, im.height)
        };
        let mut xml = format!("<annotation><filename>{id}.png</filename>{size}");
        for o in &im.objects {
            let [x1, y1, x2, y2] = o.bbox;
            let name = &coco.categories[o.label].name;
            let _ = write!(
                xml,
                "<object><name>My {name}</name><difficult>0</difficult><bndbox><xmin>{}</xmin><ymin>{}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>",
                x1 + 1.0,
                y1 + 1.0
            );
        }
        xml.push_str("</annotation>");
        std::fs::write(root.join("Annotations").join(format!("{id}.xml")), xml).unwrap();
        ids.push(id);
    }
    std::fs::write(root.join("ImageSets/Main/all.txt"), ids.join("\n")).unwrap();
    let set = voc::read(&root, "all").unwrap();
    let classes: Vec<String> = set.class_names().into_iter().collect();
    let mut want: Vec<String> = coco.categories.iter().map(|c| format!("My {}", c.name)).collect();
    want.sort();
    assert_eq!(classes, want, "classes: the sorted names of the annotations");
    let v = voc::build(&set, &classes, "the training set's classes").unwrap();
    assert_eq!(v.report.sizes_from_header, 1);
    for (a, b) in v.images.iter().zip(&coco.images) {
        assert_eq!((a.width, a.height), (b.width, b.height));
        assert_eq!(a.objects.len(), b.objects.len());
        for (p, q) in a.objects.iter().zip(&b.objects) {
            assert_eq!(p.bbox, q.bbox);
            assert_eq!(classes[p.label], format!("My {}", coco.categories[q.label].name));
        }
    }
    std::fs::remove_dir_all(&d).unwrap();
}

/// `voc::write` is the inverse of the VOC reader: the written set reads back with the COCO
/// twin's sizes, boxes and class names; writing it again lists each id once.
#[test]
fn voc_write_reads_back_as_written() {
    let d = tmp("voc-write");
    let coco = coco_twin(&d);
    let root = d.join("VOC");
    voc::write(&coco, &root, "trainval").unwrap();
    voc::write(&coco, &root, "trainval").unwrap();
    let listed = std::fs::read_to_string(root.join("ImageSets/Main/trainval.txt")).unwrap();
    assert_eq!(listed.lines().count(), coco.len());
    let names: Vec<String> = coco.categories.iter().map(|c| c.name.clone()).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let v = voc::load(&root, "trainval", &refs).unwrap();
    assert_eq!(v.len(), coco.len());
    for (a, b) in v.images.iter().zip(&coco.images) {
        assert_eq!((a.width, a.height), (b.width, b.height));
        let boxes = |d: &detnas_data::det::DetImage| d.objects.iter().map(|o| (o.bbox, o.label)).collect::<Vec<_>>();
        assert_eq!(boxes(a), boxes(b));
    }
    std::fs::remove_dir_all(&d).unwrap();
}
