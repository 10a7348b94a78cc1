//! The YOLO layout (Ultralytics): a dataset YAML and one label file per image.
//!
//! ```yaml
//! path: .            # dataset root; relative to the YAML file's folder (default: that folder)
//! train: images/train  # relative to `path`: a folder of images (searched recursively), a
//! val: images/val      # .txt file listing images (relative lines: to the .txt's folder),
//! test: images/test    # or a list of these
//! names: [tree, bush]  # or {0: tree, 1: bush}
//! ```
//!
//! The label file of `…/images/…/x.jpg` is `…/labels/…/x.txt` (the last `images` folder of the
//! path replaced by `labels`; next to the image when there is none). Each line is
//! `class cx cy w h`, normalised to the image's width and height; a line of `class x1 y1 x2
//! y2 … xn yn` (a segmentation polygon) gives the polygon's bounding box. A missing or empty
//! label file is an image without objects. Boxes go through the same checks as the other
//! readers (degenerate or outside: dropped and counted; partly outside: clipped). Image sizes
//! come from the image headers (after EXIF orientation). Category ids are the class indices
//! (0-based, as in the label files), labels are the same indices.

use super::{Category, DetDataset, DetImage, DropReport, Object, sanitise};
use crate::DataError;
use std::path::{Path, PathBuf};
use yaml_rust2::{Yaml, YamlLoader};

/// A parsed dataset YAML.
#[derive(Clone, Debug, PartialEq)]
pub struct YoloSpec {
    /// The YAML file (for messages).
    pub yaml: PathBuf,
    /// The dataset root (`path`, resolved).
    pub root: PathBuf,
    /// The class names, by index.
    pub names: Vec<String>,
    /// The splits named in the file (`train`, `val`, `test`, …): their sources, resolved.
    pub splits: Vec<(String, Vec<PathBuf>)>,
}

fn bad(path: &Path, m: String) -> DataError {
    DataError::Invalid(format!("{}: {m}", path.display()))
}

/// Reads a dataset YAML.
///
/// # Errors
/// [`DataError::Io`] when it cannot be read; [`DataError::Invalid`] naming the file for
/// malformed YAML, no `names`, a name list with gaps or non-string names, or a split that is
/// neither a path nor a list of paths.
pub fn read_spec(yaml: &Path) -> Result<YoloSpec, DataError> {
    let text = std::fs::read_to_string(yaml).map_err(|e| DataError::Io { path: yaml.into(), source: e })?;
    let docs = YamlLoader::load_from_str(&text).map_err(|e| bad(yaml, format!("malformed YAML: {e}")))?;
    let doc = docs.first().ok_or_else(|| bad(yaml, "empty YAML document".into()))?;
    let hash = doc.as_hash().ok_or_else(|| bad(yaml, "not a mapping of keys (path, train, val, names)".into()))?;
    let base = yaml.parent().unwrap_or(Path::new("."));
    let root = match &doc["path"] {
        Yaml::String(p) => {
            let p = PathBuf::from(p);
            if p.is_absolute() { p } else { base.join(p) }
        }
        Yaml::Null | Yaml::BadValue => base.to_path_buf(),
        other => return Err(bad(yaml, format!("'path' is not a path: {other:?}"))),
    };
    let names: Vec<String> = match &doc["names"] {
        Yaml::Array(a) => a
            .iter()
            .enumerate()
            .map(|(i, n)| scalar(n).ok_or_else(|| bad(yaml, format!("names[{i}] is not a name"))))
            .collect::<Result<_, _>>()?,
        Yaml::Hash(h) => {
            let mut v: Vec<(i64, String)> = Vec::new();
            for (k, n) in h {
                let k = k.as_i64().ok_or_else(|| bad(yaml, format!("names: key {k:?} is not a class index")))?;
                let n = scalar(n).ok_or_else(|| bad(yaml, format!("names[{k}] is not a name")))?;
                v.push((k, n));
            }
            v.sort();
            for (i, (k, _)) in v.iter().enumerate() {
                if *k != i as i64 {
                    return Err(bad(yaml, format!("names: class indices must be 0..{} without gaps", v.len())));
                }
            }
            v.into_iter().map(|(_, n)| n).collect()
        }
        _ => return Err(bad(yaml, "no 'names' (the class names, a list or {index: name})".into())),
    };
    if names.is_empty() {
        return Err(bad(yaml, "'names' is empty".into()));
    }
    let mut splits = Vec::new();
    for (k, v) in hash {
        let Some(key) = k.as_str() else { continue };
        // Keys that are not splits (Ultralytics' own: class count, download script).
        if matches!(key, "path" | "names" | "nc" | "download") {
            continue;
        }
        let sources: Vec<PathBuf> = match v {
            Yaml::String(s) => vec![root.join(s)],
            Yaml::Array(a) => a
                .iter()
                .map(|s| {
                    s.as_str().map(|s| root.join(s)).ok_or_else(|| bad(yaml, format!("'{key}': {s:?} is not a path")))
                })
                .collect::<Result<_, _>>()?,
            Yaml::Null => continue,
            other => return Err(bad(yaml, format!("'{key}' is neither a path nor a list of paths: {other:?}"))),
        };
        splits.push((key.to_string(), sources));
    }
    Ok(YoloSpec { yaml: yaml.to_path_buf(), root, names, splits })
}

fn scalar(y: &Yaml) -> Option<String> {
    match y {
        Yaml::String(s) => Some(s.clone()),
        Yaml::Integer(i) => Some(i.to_string()),
        Yaml::Real(r) => Some(r.clone()),
        Yaml::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The label file of an image (see the module).
pub fn label_path(image: &Path) -> PathBuf {
    let comps: Vec<_> = image.components().collect();
    let pos = comps.iter().rposition(|c| c.as_os_str() == "images");
    let mut p: PathBuf = comps
        .iter()
        .enumerate()
        .map(|(i, c)| if Some(i) == pos { std::ffi::OsStr::new("labels") } else { c.as_os_str() })
        .collect();
    p.set_extension("txt");
    p
}

fn list_images(source: &Path, spec: &YoloSpec, split: &str) -> Result<Vec<PathBuf>, DataError> {
    if source.is_dir() {
        let mut out = Vec::new();
        let mut stack = vec![source.to_path_buf()];
        while let Some(d) = stack.pop() {
            let rd = std::fs::read_dir(&d).map_err(|e| DataError::Io { path: d.clone(), source: e })?;
            for e in rd {
                let p = e.map_err(|e| DataError::Io { path: d.clone(), source: e })?.path();
                if p.is_dir() {
                    stack.push(p);
                } else if crate::is_image_file(&p) {
                    out.push(p);
                }
            }
        }
        out.sort();
        Ok(out)
    } else if source.extension().is_some_and(|e| e == "txt") && source.is_file() {
        let text = std::fs::read_to_string(source).map_err(|e| DataError::Io { path: source.into(), source: e })?;
        let dir = source.parent().unwrap_or(Path::new("."));
        Ok(text.lines().map(str::trim).filter(|l| !l.is_empty()).map(|l| dir.join(l)).collect())
    } else {
        Err(bad(
            &spec.yaml,
            format!("split '{split}': {} is neither a folder of images nor a .txt list", source.display()),
        ))
    }
}

/// Loads the split `split` (a key of the YAML, e.g. `train` or `val`).
///
/// # Errors
/// [`DataError::Invalid`] naming the YAML for a split it lacks, a source that does not exist,
/// or a split without images; naming the label file and line for a malformed line (not 5
/// numbers or an odd polygon, a class index outside `names`, a value that is not finite);
/// [`DataError::Decode`] / [`DataError::Io`] for an image whose header cannot be read.
pub fn load(spec: &YoloSpec, split: &str) -> Result<DetDataset, DataError> {
    let sources = spec.splits.iter().find(|(k, _)| k == split).map(|(_, s)| s).ok_or_else(|| {
        let have: Vec<&str> = spec.splits.iter().map(|(k, _)| k.as_str()).collect();
        bad(&spec.yaml, format!("no split '{split}' (it has: {})", have.join(", ")))
    })?;
    let mut files = Vec::new();
    for s in sources {
        files.extend(list_images(s, spec, split)?);
    }
    if files.is_empty() {
        return Err(bad(&spec.yaml, format!("split '{split}' has no images (JPEG, PNG, TIFF, BMP or WebP)")));
    }
    let sizes: Vec<Result<(u32, u32), DataError>> = {
        use rayon::prelude::*;
        files.par_iter().map(|f| crate::image_size(f)).collect()
    };
    let categories: Vec<Category> =
        spec.names.iter().enumerate().map(|(i, n)| Category { id: i as u64, name: n.clone() }).collect();
    let mut report = DropReport::default();
    let mut images = Vec::with_capacity(files.len());
    for (k, (file, size)) in files.into_iter().zip(sizes).enumerate() {
        let (width, height) = size?;
        let label = label_path(&file);
        let text = match std::fs::read_to_string(&label) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(DataError::Io { path: label, source: e }),
        };
        let mut objects = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let here = || format!("{}: line {}", label.display(), n + 1);
            let fail = |m: &str| DataError::Invalid(format!("{}: {m}: '{line}'", here()));
            let vals: Vec<f64> = line
                .split_whitespace()
                .map(|t| t.parse::<f64>().ok().filter(|v| v.is_finite()))
                .collect::<Option<_>>()
                .ok_or_else(|| fail("not all values are numbers"))?;
            let class = vals[0];
            if class.fract() != 0.0 || class < 0.0 || class as usize >= spec.names.len() {
                return Err(fail(&format!("class {class} is not an index of names (0..{})", spec.names.len())));
            }
            let (w, h) = (width as f64, height as f64);
            let b = match vals.len() {
                5 => {
                    let (cx, cy, bw, bh) = (vals[1], vals[2], vals[3], vals[4]);
                    [(cx - bw / 2.0) * w, (cy - bh / 2.0) * h, (cx + bw / 2.0) * w, (cy + bh / 2.0) * h]
                }
                n if n >= 7 && n % 2 == 1 => {
                    let xs = vals[1..].iter().step_by(2);
                    let ys = vals[2..].iter().step_by(2);
                    let (x1, x2) = xs.fold((f64::MAX, f64::MIN), |(a, b), &x| (a.min(x), b.max(x)));
                    let (y1, y2) = ys.fold((f64::MAX, f64::MIN), |(a, b), &y| (a.min(y), b.max(y)));
                    [x1 * w, y1 * h, x2 * w, y2 * h]
                }
                n => {
                    return Err(fail(&format!(
                        "{n} values: expected 5 (class cx cy w h) or a polygon (class x1 y1 … xn yn)"
                    )));
                }
            };
            if let Some(bbox) = sanitise(b, width, height, &mut report, here) {
                let area = (bbox[2] - bbox[0]) * (bbox[3] - bbox[1]);
                objects.push(Object { bbox, label: class as usize, crowd: false, difficult: false, area });
            }
        }
        images.push(DetImage { id: k as u64 + 1, file, width, height, objects });
    }
    Ok(DetDataset { images, categories, report, source: format!("{} ({split})", spec.yaml.display()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_paths_replace_the_last_images_folder() {
        assert_eq!(label_path(Path::new("/d/images/train/a.jpg")), PathBuf::from("/d/labels/train/a.txt"));
        assert_eq!(label_path(Path::new("/images/x/images/val/b.png")), PathBuf::from("/images/x/labels/val/b.txt"));
        assert_eq!(label_path(Path::new("/d/pics/c.tif")), PathBuf::from("/d/pics/c.txt"));
    }
}
