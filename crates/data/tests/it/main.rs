//! detnas-data integration tests: strict decoding, dataset errors, loader determinism, and
//! malformed annotation files (`fuzz`).

mod formats;
mod fuzz;
mod layouts;

use detnas_data::synth::{SyntheticCls, SyntheticClsConfig};
use detnas_data::{
    Batch, ClsDataset, ClsLoader, ClsTransform, DataError, IdxDataset, ImageFolder, InputConvention, Loaded,
    LoaderConfig, Position, StreamConfig, decode_image,
};
use image::{Rgb, RgbImage};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("detnas-data-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn picture(seed: u8) -> RgbImage {
    RgbImage::from_fn(24, 20, |x, y| Rgb([x as u8 * 9, y as u8 * 11, seed.wrapping_mul(37)]))
}

/// Large enough that a cut lands in the entropy-coded scan (the lenient decoder then
/// "succeeds" with a grey remainder).
fn photo(seed: u32) -> RgbImage {
    RgbImage::from_fn(200, 150, |x, y| Rgb([(x * 9 % 256) as u8, (y * 11 % 256) as u8, ((x * y + seed) % 251) as u8]))
}

fn write_jpeg(path: &Path, img: &RgbImage) {
    img.save_with_format(path, image::ImageFormat::Jpeg).unwrap();
}

fn truncate(path: &Path, keep: f64) {
    let bytes = std::fs::read(path).unwrap();
    std::fs::write(path, &bytes[..(bytes.len() as f64 * keep) as usize]).unwrap();
}

#[test]
fn strict_decoding_rejects_broken_files_by_name() {
    let d = tmp("decode");
    let good_jpg = d.join("good.jpg");
    write_jpeg(&good_jpg, &picture(1));
    assert_eq!(decode_image(&good_jpg).unwrap().dimensions(), (24, 20));
    let good_png = d.join("good.png");
    picture(2).save(&good_png).unwrap();
    assert_eq!(decode_image(&good_png).unwrap(), picture(2));

    let cut_jpg = d.join("cut.jpg");
    write_jpeg(&cut_jpg, &photo(3));
    truncate(&cut_jpg, 0.7);
    // The image crate alone accepts this file; strict decoding must not.
    assert!(image::open(&cut_jpg).is_ok(), "precondition: the lenient decoder accepts a truncated JPEG");
    let cut_png = d.join("cut.png");
    picture(4).save(&cut_png).unwrap();
    truncate(&cut_png, 0.6);
    let empty = d.join("empty.jpg");
    std::fs::write(&empty, b"").unwrap();
    let text = d.join("notes.png");
    std::fs::write(&text, b"this is not an image").unwrap();
    for (p, needle) in [
        (&cut_jpg, "truncated JPEG"),
        (&cut_png, ""),
        (&empty, "empty file"),
        (&text, "not an image of a known format"),
    ] {
        let e = decode_image(p).unwrap_err();
        assert!(matches!(e, DataError::Decode { .. }), "{e}");
        let msg = e.to_string();
        assert!(msg.contains(&p.display().to_string()) && msg.contains(needle), "{msg}");
    }
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn image_folder_lists_classes_and_rejects_bad_layouts() {
    let d = tmp("folder");
    for (class, n) in [("cat", 3), ("dog", 2)] {
        std::fs::create_dir_all(d.join(class)).unwrap();
        for i in 0..n {
            picture(i).save(d.join(class).join(format!("{i}.png"))).unwrap();
        }
    }
    std::fs::write(d.join("dog").join("README.txt"), "ignored").unwrap();
    let f = ImageFolder::open(&d, None).unwrap();
    assert_eq!(f.classes(), ["cat", "dog"]);
    assert_eq!(f.len(), 5);
    assert_eq!((0..5).map(|i| f.label(i)).collect::<Vec<_>>(), vec![0, 0, 0, 1, 1]);
    // An imposed mapping (as saved in a checkpoint) keeps label ids.
    let g = ImageFolder::open(&d, Some(&["ant".to_string(), "cat".into(), "dog".into()])).unwrap();
    assert_eq!(g.label(4), 2);
    let e = ImageFolder::open(&d, Some(&["cat".to_string()])).unwrap_err().to_string();
    assert!(e.contains("'dog'"), "{e}");

    std::fs::create_dir_all(d.join("empty")).unwrap();
    let e = ImageFolder::open(&d, None).unwrap_err();
    assert!(matches!(e, DataError::EmptyClass(ref p) if p.ends_with("empty")), "{e}");
    let flat = tmp("flat");
    std::fs::write(flat.join("x.png"), b"").unwrap();
    assert!(matches!(ImageFolder::open(&flat, None), Err(DataError::NoClasses(_))));
    assert!(matches!(ImageFolder::open(&flat.join("missing"), None), Err(DataError::BadRoot(_))));
    std::fs::remove_dir_all(&d).unwrap();
    std::fs::remove_dir_all(&flat).unwrap();
}

fn idx_bytes(dims: &[u32], payload: &[u8]) -> Vec<u8> {
    let mut b = vec![0, 0, 8, dims.len() as u8];
    for d in dims {
        b.extend_from_slice(&d.to_be_bytes());
    }
    b.extend_from_slice(payload);
    b
}

#[test]
fn idx_raw_and_gzip() {
    let d = tmp("idx");
    let pixels: Vec<u8> = (0..3 * 4 * 5).map(|v| v as u8).collect();
    std::fs::write(d.join("img"), idx_bytes(&[3, 4, 5], &pixels)).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&idx_bytes(&[3], &[2, 0, 1])).unwrap();
    std::fs::write(d.join("lab.gz"), gz.finish().unwrap()).unwrap();
    let ds = IdxDataset::open(&d.join("img"), &d.join("lab.gz")).unwrap();
    assert_eq!((ds.len(), ds.classes().len(), ds.label(0)), (3, 3, 2));
    let img = ds.load(1).unwrap();
    assert_eq!(img.dimensions(), (5, 4));
    assert_eq!(img.get_pixel(2, 1).0, [27, 27, 27]); // 20 + 1*5 + 2
    // Malformed: count mismatch, truncated payload, wrong type.
    std::fs::write(d.join("lab2"), idx_bytes(&[2], &[0, 1])).unwrap();
    assert!(
        IdxDataset::open(&d.join("img"), &d.join("lab2")).unwrap_err().to_string().contains("2 labels for 3 images")
    );
    std::fs::write(d.join("short"), idx_bytes(&[3, 4, 5], &pixels[..10])).unwrap();
    assert!(IdxDataset::open(&d.join("short"), &d.join("lab.gz")).unwrap_err().to_string().contains("payload"));
    let mut bad = idx_bytes(&[3], &[0, 1, 2]);
    bad[2] = 0x0D;
    std::fs::write(d.join("float"), bad).unwrap();
    assert!(IdxDataset::open(&d.join("img"), &d.join("float")).unwrap_err().to_string().contains("element type"));
    std::fs::remove_dir_all(&d).unwrap();
}

fn cfg(batch: usize, drop_last: bool, epochs: Option<u64>) -> LoaderConfig {
    LoaderConfig {
        stream: StreamConfig { batch, seed: 9, shuffle: true, drop_last, epochs, prefetch: 2, shard: None },
        transform: ClsTransform::train(16),
        convention: InputConvention::OfficialBgr,
    }
}

fn synth(n: usize) -> Arc<dyn ClsDataset> {
    Arc::new(
        SyntheticCls::new(SyntheticClsConfig {
            images: n,
            size: 24,
            classes: 10,
            seed: 1,
            clutter: 2,
            max_rotation_deg: 180.0,
        })
        .unwrap(),
    )
}

fn collect(loader: &mut ClsLoader, n: usize) -> Vec<Loaded<Batch>> {
    (0..n).map(|_| loader.next_batch().unwrap().unwrap()).collect()
}

#[test]
fn loader_is_deterministic_and_resumes_exactly() {
    let data = synth(50);
    let mut a = ClsLoader::new(data.clone(), cfg(8, true, None), Position::default()).unwrap();
    let first = collect(&mut a, 14); // 6 batches per epoch: crosses two epoch boundaries
    let mut b = ClsLoader::new(data.clone(), cfg(8, true, None), Position::default()).unwrap();
    let again = collect(&mut b, 14);
    for (x, y) in first.iter().zip(&again) {
        assert_eq!(
            (&x.batch.images, &x.batch.labels, &x.batch.indices, x.after),
            (&y.batch.images, &y.batch.labels, &y.batch.indices, y.after)
        );
    }
    // Each epoch covers 48 distinct samples, the 2 left over are dropped and reported.
    let epoch0: std::collections::BTreeSet<usize> = first[..6].iter().flat_map(|b| b.batch.indices.clone()).collect();
    assert_eq!(epoch0.len(), 48);
    let reports: Vec<_> = first.iter().flat_map(|b| b.epoch_reports.clone()).collect();
    assert_eq!(reports.len(), 2);
    assert!(reports.iter().all(|r| r.dropped_tail == 2 && r.skipped.is_empty()));
    assert_ne!(first[0].batch.indices, first[6].batch.indices, "epochs are reshuffled");
    // Resume after batch 4 (mid-epoch) and after batch 6 (epoch boundary).
    for k in [4, 6, 9] {
        let mut r = ClsLoader::new(data.clone(), cfg(8, true, None), first[k - 1].after).unwrap();
        for (x, y) in collect(&mut r, 14 - k).iter().zip(&first[k..]) {
            assert_eq!(
                (&x.batch.images, &x.batch.indices),
                (&y.batch.images, &y.batch.indices),
                "resume after batch {k}"
            );
        }
    }
}

#[test]
fn finite_loader_yields_the_tail_once() {
    let data = synth(21);
    let mut l = ClsLoader::new(
        data,
        {
            let mut c = cfg(8, false, Some(1));
            c.stream.shuffle = false;
            c
        },
        Position::default(),
    )
    .unwrap();
    let sizes: Vec<usize> = std::iter::from_fn(|| l.next_batch()).map(|b| b.unwrap().batch.len()).collect();
    assert_eq!(sizes, vec![8, 8, 5]);
}

#[test]
fn broken_files_are_skipped_counted_and_never_fed() {
    let d = tmp("skip");
    for (class, n) in [("a", 6), ("b", 6)] {
        std::fs::create_dir_all(d.join(class)).unwrap();
        for i in 0..n {
            write_jpeg(&d.join(class).join(format!("{i}.jpg")), &picture(i));
        }
    }
    truncate(&d.join("a").join("2.jpg"), 0.5);
    std::fs::write(d.join("b").join("5.jpg"), b"").unwrap();
    let folder = Arc::new(ImageFolder::open(&d, None).unwrap());
    let mut l = ClsLoader::new(folder.clone(), cfg(4, true, None), Position::default()).unwrap();
    let batches = collect(&mut l, 3);
    let fed: Vec<String> = batches[..2].iter().flat_map(|b| b.batch.indices.iter().map(|&i| folder.name(i))).collect();
    assert_eq!(fed.len(), 8);
    assert!(fed.iter().all(|n| !n.ends_with("a/2.jpg") && !n.ends_with("b/5.jpg")));
    assert_eq!(batches[2].after.epoch, 1, "the third batch belongs to the next epoch");
    // 10 good samples: two full batches, then the 2 left over are dropped; the epoch's report
    // rides on the first batch of the next epoch.
    let report: Vec<_> = batches.iter().flat_map(|b| b.epoch_reports.clone()).collect();
    assert_eq!(report.len(), 1);
    let skipped: Vec<&String> = report[0].skipped.iter().map(|(n, _)| n).collect();
    assert_eq!(skipped.len(), 2);
    assert!(skipped.iter().any(|n| n.ends_with("a/2.jpg")) && skipped.iter().any(|n| n.ends_with("b/5.jpg")));
    assert_eq!(report[0].dropped_tail, 2);
    // A folder where nothing decodes is an error, not an endless loop.
    let bad = tmp("allbad");
    std::fs::create_dir_all(bad.join("x")).unwrap();
    std::fs::write(bad.join("x").join("0.jpg"), b"nope").unwrap();
    let mut l =
        ClsLoader::new(Arc::new(ImageFolder::open(&bad, None).unwrap()), cfg(4, true, None), Position::default())
            .unwrap();
    let e = l.next_batch().unwrap().unwrap_err().to_string();
    assert!(e.contains("no sample of epoch 0") && e.contains("0.jpg"), "{e}");
    std::fs::remove_dir_all(&d).unwrap();
    std::fs::remove_dir_all(&bad).unwrap();
}

#[test]
fn synthetic_split_round_trips_through_image_folder() {
    let d = tmp("synthfolder");
    let s = SyntheticCls::new(SyntheticClsConfig {
        images: 30,
        size: 20,
        classes: 4,
        seed: 2,
        clutter: 1,
        max_rotation_deg: 180.0,
    })
    .unwrap();
    s.write_image_folder(&d).unwrap();
    let f = ImageFolder::open(&d, Some(s.classes())).unwrap();
    assert_eq!(f.len(), 30);
    for i in 0..f.len() {
        let name = f.name(i);
        let idx: usize = Path::new(&name).file_stem().unwrap().to_str().unwrap().parse().unwrap();
        assert_eq!(f.label(i), s.label(idx));
        assert_eq!(f.load(i).unwrap(), s.load(idx).unwrap(), "PNG is lossless");
    }
    std::fs::remove_dir_all(&d).unwrap();
}

/// Every batch row is exactly the transformed image of the sample it names, with its label.
#[test]
fn batches_hold_the_samples_they_name() {
    let data = synth(40);
    let c = LoaderConfig { transform: ClsTransform::Eval { resize: 24, crop: 24 }, ..cfg(8, true, None) };
    let mut l = ClsLoader::new(data.clone(), c.clone(), Position::default()).unwrap();
    for b in collect(&mut l, 5).into_iter().map(|l| l.batch) {
        let per = 3 * 24 * 24;
        for (k, &i) in b.indices.iter().enumerate() {
            assert_eq!(b.labels[k], data.label(i) as i64);
            let img = data.load(i).unwrap();
            let mut want = vec![0f32; per];
            c.transform.apply(&img, &mut detnas_space::rng::seeded(0), &mut want);
            // The eval crop of a 24×24 image copies it: bytes, exactly the image (RGB).
            let detnas_data::Pixels::U8(bytes) = &b.images else { panic!("an unresampled batch is bytes") };
            let got: Vec<f32> = bytes[k * per..(k + 1) * per].iter().map(|&v| f32::from(v)).collect();
            assert_eq!(got, want, "sample {i}");
            assert_eq!(want[0], img.get_pixel(0, 0).0[0] as f32);
            assert_eq!(b.convention, c.convention);
        }
    }
}
