//! The built-in synthetic detection set: several procedurally drawn shapes per image (the
//! classification set's shape family, [`Shape`]) at scales from small to large, allowed to
//! overlap (IoU ≤ `max_overlap` between any two boxes), on textured, cluttered backgrounds.
//! Image `i` is a pure function of `(seed, i)`. [`SyntheticDetConfig::write`] stores the
//! set as PNG files plus a COCO instances JSON, which is then read like any COCO set.

use super::coco;
use super::{Category, DetDataset, iou};
use crate::shapes::{Placement, Shape, background, object_colour, uniform};
use crate::{DataError, mix_seed};
use detnas_space::rng::{below, seeded};
use image::RgbImage;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::io::ErrorKind;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// Parameters of a synthetic detection split.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyntheticDetConfig {
    /// Number of images. Required.
    pub images: usize,
    /// Image width, pixels. Default 128.
    pub width: u32,
    /// Image height, pixels. Default 128.
    pub height: u32,
    /// Number of classes (1..=10: the first shapes of [`Shape::ALL`]). Default 6.
    pub classes: usize,
    /// Generator seed; use different seeds for the training and test splits. Required.
    pub seed: u64,
    /// Objects per image, inclusive range. Default (1, 5).
    pub objects: (usize, usize),
    /// Object radius as a fraction of the image's shorter side, drawn log-uniformly.
    /// Default (0.05, 0.3).
    pub radius: (f64, f64),
    /// Largest IoU allowed between two objects' boxes. Default 0.3.
    pub max_overlap: f64,
    /// Clutter line segments per image. Default 6.
    pub clutter: usize,
}

/// The defaults; `images` and `seed` are required (0 here).
impl Default for SyntheticDetConfig {
    fn default() -> SyntheticDetConfig {
        SyntheticDetConfig {
            images: 0,
            width: 128,
            height: 128,
            classes: 6,
            seed: 0,
            objects: (1, 5),
            radius: (0.05, 0.3),
            max_overlap: 0.3,
            clutter: 6,
        }
    }
}

/// One drawn object: box `(x1, y1, x2, y2)` and label.
pub type SynthObject = ([f64; 4], usize);

impl SyntheticDetConfig {
    /// Checks the parameters.
    ///
    /// # Errors
    /// [`DataError::Invalid`] when `classes` is not in 1..=10, a side is below 16, the objects
    /// range is empty, the radius range is not within (0, 0.5] or `images` is 0.
    pub fn check(&self) -> Result<(), DataError> {
        let bad = |m: String| Err(DataError::Invalid(format!("synthetic detection set: {m}")));
        if !(1..=Shape::ALL.len()).contains(&self.classes) {
            return bad(format!("classes must be 1..=10, got {}", self.classes));
        }
        if self.width < 16 || self.height < 16 {
            return bad("images must be at least 16×16".into());
        }
        if self.objects.0 > self.objects.1 || self.objects.1 == 0 {
            return bad(format!("objects range {:?} is empty", self.objects));
        }
        if !(self.radius.0 > 0.0 && self.radius.0 <= self.radius.1 && self.radius.1 <= 0.5) {
            return bad(format!("radius range {:?} must satisfy 0 < lo ≤ hi ≤ 0.5", self.radius));
        }
        if self.images == 0 {
            return bad("images must be positive".into());
        }
        Ok(())
    }

    /// The set's categories (the first `classes` shapes, ids from 1).
    pub fn categories(&self) -> Vec<Category> {
        Shape::ALL[..self.classes]
            .iter()
            .enumerate()
            .map(|(i, s)| Category { id: i as u64 + 1, name: s.name().into() })
            .collect()
    }

    /// Renders image `i` and its objects.
    pub fn render(&self, i: usize) -> (RgbImage, Vec<SynthObject>) {
        let mut rng = seeded(mix_seed(self.seed, &[crate::streams::SYNTHETIC_DET_IMAGE, i as u64]));
        let (w, h) = (self.width as f64, self.height as f64);
        let (mut img, _) = background(&mut rng, self.width, self.height, self.clutter);
        let n = self.objects.0 + below(&mut rng, (self.objects.1 - self.objects.0 + 1) as u64) as usize;
        let short = w.min(h);
        let mut objs: Vec<SynthObject> = Vec::new();
        for _ in 0..n {
            // A few tries to respect the overlap limit; an object that finds no place is skipped.
            for _ in 0..20 {
                let label = below(&mut rng, self.classes as u64) as usize;
                let r = (uniform(&mut rng, self.radius.0.ln(), self.radius.1.ln())).exp() * short;
                let p = Placement {
                    shape: Shape::ALL[label],
                    cx: uniform(&mut rng, r * 0.7, w - r * 0.7),
                    cy: uniform(&mut rng, r * 0.7, h - r * 0.7),
                    radius: r,
                    angle: uniform(&mut rng, -std::f64::consts::PI, std::f64::consts::PI),
                    colour: object_colour(&mut rng),
                };
                let Some(b) = p.bounds(self.width, self.height) else { continue };
                if (b[2] - b[0]) < 2.0 || (b[3] - b[1]) < 2.0 || objs.iter().any(|(o, _)| iou(o, &b) > self.max_overlap)
                {
                    continue;
                }
                p.draw(&mut img);
                objs.push((b, label));
                break;
            }
        }
        (img, objs)
    }

    /// Writes `dir/images/NNNNNN.png` and `dir/annotations.json` (COCO), then reads them back
    /// through the COCO reader. A finished set (its JSON present) is not rewritten.
    ///
    /// The set is rendered into a private sibling folder (`.NAME.partial-…`) and renamed to
    /// `dir` in one step, so a crash never leaves a set that looks complete, and processes that
    /// write the same set at once (the ranks of a job on one machine or on a shared file system)
    /// never read each other's partial files: the first rename wins, the others discard their
    /// copy and read the winner's, which is identical (image `i` is a function of the config).
    ///
    /// # Errors
    /// As [`SyntheticDetConfig::check`] and [`coco::load`]; [`DataError::Io`] when a folder or the
    /// JSON cannot be written, [`DataError::Decode`] when an image cannot be;
    /// [`DataError::Invalid`] when `dir` holds a set with other parameters, or is a non-empty
    /// folder without `annotations.json`.
    ///
    /// # Panics
    /// Never: the configuration always serialises.
    pub fn write(&self, dir: &Path) -> Result<DetDataset, DataError> {
        self.check()?;
        let ann_path = dir.join("annotations.json");
        let img_dir = dir.join("images");
        if !ann_path.exists() {
            self.publish(dir)?;
        }
        let ds = coco::load(&ann_path, &img_dir)?;
        let want = serde_json::to_value(self).expect("serialisable");
        let text =
            std::fs::read_to_string(&ann_path).map_err(|source| DataError::Io { path: ann_path.clone(), source })?;
        let doc: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        if doc["info"]["config"] != want {
            return Err(DataError::Invalid(format!(
                "{} holds a synthetic set with other parameters; remove it or choose another folder",
                ann_path.display()
            )));
        }
        Ok(ds)
    }

    /// Removes the set in `dir` when it was written with other parameters (a run folder's own
    /// set, taken over by a corrected start that made no checkpoint); returns whether it did.
    /// The folder is first renamed aside in one step, so no reader sees a half-removed set.
    ///
    /// # Errors
    /// [`DataError::Io`] when the set cannot be renamed or removed.
    ///
    /// # Panics
    /// Never: the configuration always serialises.
    pub fn remove_other(&self, dir: &Path) -> Result<bool, DataError> {
        let ann_path = dir.join("annotations.json");
        let Ok(text) = std::fs::read_to_string(&ann_path) else { return Ok(false) };
        let doc: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        if doc["info"]["config"] == serde_json::to_value(self).expect("serialisable") {
            return Ok(false);
        }
        let name = dir.file_name().map_or_else(|| "set".into(), |n| n.to_string_lossy().into_owned());
        let aside = dir.with_file_name(format!(".{name}.replaced-{}", std::process::id()));
        std::fs::rename(dir, &aside).map_err(|source| DataError::Io { path: dir.to_path_buf(), source })?;
        std::fs::remove_dir_all(&aside).map_err(|source| DataError::Io { path: aside, source })?;
        Ok(true)
    }

    /// Renders the set into a staging folder next to `dir` and renames it to `dir`.
    fn publish(&self, dir: &Path) -> Result<(), DataError> {
        static STAGING: AtomicU64 = AtomicU64::new(0);
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| DataError::Io { path, source }
        };
        let ann_path = dir.join("annotations.json");
        if dir.read_dir().is_ok_and(|mut d| d.next().is_some()) && !ann_path.exists() {
            return Err(DataError::Invalid(format!(
                "{} is not empty but holds no annotations.json (an interrupted write?); remove it or choose a new folder",
                dir.display()
            )));
        }
        let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let name = dir.file_name().map_or_else(|| "set".into(), |n| n.to_string_lossy().into_owned());
        let prefix = format!(".{name}.partial-");
        remove_stale_partials(parent, &prefix);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let staging =
            parent.join(format!("{prefix}{}-{nanos}-{}", std::process::id(), STAGING.fetch_add(1, Ordering::Relaxed)));
        let img_dir = staging.join("images");
        std::fs::create_dir_all(&img_dir).map_err(io(&img_dir))?;
        let renamed = self.render_into(&staging).map(|()| std::fs::rename(&staging, dir));
        let lost = match renamed {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) if matches!(e.kind(), ErrorKind::DirectoryNotEmpty | ErrorKind::AlreadyExists) => e,
            Ok(Err(e)) => {
                let _ = std::fs::remove_dir_all(&staging);
                return Err(io(dir)(e));
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&staging);
                return Err(e);
            }
        };
        // Another process published the set first. On a shared file system its JSON can take
        // a moment to become visible here.
        let _ = std::fs::remove_dir_all(&staging);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            if ann_path.exists() {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        Err(io(dir)(lost))
    }

    /// Renders every image and the COCO JSON into `dir` (whose `images/` exists).
    fn render_into(&self, dir: &Path) -> Result<(), DataError> {
        let img_dir = dir.join("images");
        let objects: Vec<Vec<SynthObject>> = (0..self.images)
            .into_par_iter()
            .map(|i| {
                let (img, objs) = self.render(i);
                let p = img_dir.join(format!("{i:06}.png"));
                // Fast deflate: the set is written once per run and read many times.
                let err = |e: String| DataError::Decode { path: p.clone(), message: e };
                let f = std::io::BufWriter::new(std::fs::File::create(&p).map_err(|e| err(e.to_string()))?);
                let enc = image::codecs::png::PngEncoder::new_with_quality(
                    f,
                    image::codecs::png::CompressionType::Fast,
                    image::codecs::png::FilterType::Sub,
                );
                img.write_with_encoder(enc).map_err(|e| err(e.to_string()))?;
                Ok(objs)
            })
            .collect::<Result<_, DataError>>()?;
        let mut anns = Vec::new();
        for (i, objs) in objects.iter().enumerate() {
            for (b, label) in objs {
                anns.push(serde_json::json!({
                    "id": anns.len() + 1, "image_id": i + 1, "category_id": label + 1,
                    "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
                    "area": (b[2] - b[0]) * (b[3] - b[1]), "iscrowd": 0,
                }));
            }
        }
        let doc = serde_json::json!({
            "info": {"description": "detnas synthetic detection set", "config": self},
            "images": (0..self.images).map(|i| serde_json::json!({
                "id": i + 1, "file_name": format!("{i:06}.png"), "width": self.width, "height": self.height,
            })).collect::<Vec<_>>(),
            "annotations": anns,
            "categories": self.categories().iter().map(|c| serde_json::json!({"id": c.id, "name": c.name})).collect::<Vec<_>>(),
        });
        let ann_path = dir.join("annotations.json");
        std::fs::write(&ann_path, serde_json::to_vec(&doc).expect("serialisable"))
            .map_err(|source| DataError::Io { path: ann_path.clone(), source })
    }
}

/// Removes staging folders (`prefix…` in `parent`) that nothing has written to for an hour:
/// left by a process killed while it rendered. A writer adds an image every few milliseconds,
/// so a live one is never that old.
fn remove_stale_partials(parent: &Path, prefix: &str) {
    let Ok(entries) = parent.read_dir() else { return };
    let hour = std::time::Duration::from_secs(3600);
    let idle =
        |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).is_ok_and(|t| t.elapsed().is_ok_and(|e| e > hour));
    for e in entries.flatten() {
        let p = e.path();
        if e.file_name().to_string_lossy().starts_with(prefix) && idle(&p) && idle(&p.join("images")) {
            let _ = std::fs::remove_dir_all(&p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> SyntheticDetConfig {
        SyntheticDetConfig {
            images: 12,
            width: 96,
            height: 64,
            classes: 4,
            seed: 3,
            objects: (2, 6),
            radius: (0.05, 0.4),
            max_overlap: 0.3,
            clutter: 4,
        }
    }

    #[test]
    fn renders_deterministically_with_varied_scales() {
        let c = cfg();
        let (a, oa) = c.render(5);
        let (b, ob) = c.render(5);
        assert_eq!(a, b);
        assert_eq!(oa, ob);
        let mut sides = Vec::new();
        for i in 0..40 {
            let (_, objs) = c.render(i);
            assert!(!objs.is_empty());
            for (x, (b, l)) in objs.iter().enumerate() {
                assert!(*l < 4 && b[0] >= 0.0 && b[1] >= 0.0 && b[2] <= 96.0 && b[3] <= 64.0);
                for (o, _) in &objs[x + 1..] {
                    assert!(iou(b, o) <= 0.3);
                }
                sides.push(((b[2] - b[0]) * (b[3] - b[1])).sqrt());
            }
        }
        let (lo, hi) = sides.iter().fold((f64::MAX, 0f64), |(l, h), &s| (l.min(s), h.max(s)));
        assert!(lo < 8.0 && hi > 30.0, "scales {lo}..{hi}");
    }

    #[test]
    fn writes_png_and_coco_json_read_back() {
        let dir = std::env::temp_dir().join(format!("detnas-synthdet-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let c = cfg();
        let ds = c.write(&dir).unwrap();
        assert_eq!(ds.len(), 12);
        assert!(ds.report.is_clean(), "{}", ds.report);
        let (img, objs) = c.render(3);
        assert_eq!(ds.load(3).unwrap(), img);
        let got: Vec<[f32; 4]> = ds.images[3].objects.iter().map(|o| o.bbox).collect();
        let want: Vec<[f32; 4]> = objs.iter().map(|(b, _)| b.map(|v| v as f32)).collect();
        assert_eq!(got, want);
        // A second write reuses the set; other parameters are refused.
        assert_eq!(c.write(&dir).unwrap(), ds);
        let e = SyntheticDetConfig { seed: 4, ..c }.write(&dir).unwrap_err().to_string();
        assert!(e.contains("other parameters"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_set_with_other_parameters_is_removed_only_when_asked() {
        let d = std::env::temp_dir().join(format!("detnas-synth-other-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let set = d.join("train");
        let first = cfg();
        first.write(&set).unwrap();
        assert!(!first.remove_other(&set).unwrap(), "the same parameters are kept");
        assert!(set.join("annotations.json").is_file());
        let other = SyntheticDetConfig { images: 5, ..cfg() };
        assert!(other.write(&set).is_err(), "precondition: refused without the takeover");
        assert!(other.remove_other(&set).unwrap());
        assert!(!set.exists());
        assert_eq!(other.write(&set).unwrap().len(), 5);
        let left: Vec<_> = std::fs::read_dir(&d).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, vec![std::ffi::OsString::from("train")], "nothing aside is left");
        std::fs::remove_dir_all(&d).unwrap();
    }
    #[test]
    fn concurrent_writers_of_one_set_all_read_the_same_complete_set() {
        // The ranks of a job on one machine each call `write` on the same folder at once.
        let parent = std::env::temp_dir().join(format!("detnas-synthdet-race-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&parent);
        let dir = parent.join("train");
        let c = cfg();
        let start = std::sync::Barrier::new(6);
        let sets: Vec<DetDataset> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..6)
                .map(|_| {
                    s.spawn(|| {
                        start.wait();
                        c.write(&dir)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap().unwrap()).collect()
        });
        assert!(sets.iter().all(|d| *d == sets[0] && d.len() == 12));
        assert_eq!(sets[0].load(7).unwrap(), c.render(7).0);
        let left = || -> Vec<String> {
            let mut v: Vec<String> =
                std::fs::read_dir(&parent).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
            v.sort();
            v
        };
        assert_eq!(left(), ["train"], "staging folders left behind");
        // The loser's path, deterministically: a second publish finds the set in place.
        c.publish(&dir).unwrap();
        assert_eq!(left(), ["train"]);

        // An empty folder is written into; a staging folder idle for an hour (a writer killed
        // while rendering) is removed, a fresh one (a live writer) is kept.
        let empty = parent.join("empty");
        std::fs::create_dir_all(&empty).unwrap();
        let stale = parent.join(".empty.partial-1-2-3");
        let live = parent.join(".empty.partial-4-5-6");
        for p in [&stale, &live] {
            std::fs::create_dir_all(p.join("images")).unwrap();
        }
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
        for p in [stale.join("images"), stale.clone()] {
            std::fs::File::open(&p).unwrap().set_modified(old).unwrap();
        }
        assert_eq!(c.write(&empty).unwrap().len(), 12);
        assert_eq!(left(), [".empty.partial-4-5-6", "empty", "train"]);
        std::fs::remove_dir_all(&live).unwrap();

        // A folder with files but no JSON (a write interrupted by an older version) is refused.
        let broken = parent.join("broken");
        std::fs::create_dir_all(broken.join("images")).unwrap();
        std::fs::write(broken.join("images/000000.png"), b"partial").unwrap();
        let e = c.write(&broken).unwrap_err().to_string();
        assert!(e.contains("broken") && e.contains("no annotations.json"), "{e}");
        std::fs::remove_dir_all(&parent).ok();
    }
}
