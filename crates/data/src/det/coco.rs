//! COCO instances JSON (`images`, `annotations` with `bbox: [x, y, w, h]`, `iscrowd`,
//! `area`, `categories`).
//!
//! Category ids are mapped to contiguous labels in increasing id order. Images without
//! annotations are kept (they matter for evaluation). Bad boxes are dropped or clipped and
//! counted ([`super::DropReport`]); an annotation naming an unknown image or category, a
//! duplicate image id, or malformed JSON is an error naming the file and the record.

use super::{Category, DetDataset, DetImage, DropReport, Object, sanitise};
use crate::DataError;
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;

fn bad(path: &Path, what: String) -> DataError {
    DataError::Invalid(format!("{}: {what}", path.display()))
}

fn field<'a>(rec: &'a Value, key: &str, path: &Path, what: &str) -> Result<&'a Value, DataError> {
    rec.get(key).ok_or_else(|| bad(path, format!("{what} has no '{key}'")))
}

fn uint(v: &Value, path: &Path, what: &str) -> Result<u64, DataError> {
    v.as_u64()
        .or_else(|| v.as_f64().filter(|f| f.fract() == 0.0 && *f >= 0.0).map(|f| f as u64))
        .ok_or_else(|| bad(path, format!("{what} is not a non-negative integer: {v}")))
}

/// Reads `annotations` (COCO JSON); image files are `images_dir/file_name`.
///
/// # Errors
/// [`DataError::Io`] when `annotations` cannot be read; [`DataError::Invalid`] for malformed
/// JSON and as [`parse`].
pub fn load(annotations: &Path, images_dir: &Path) -> Result<DetDataset, DataError> {
    let text =
        std::fs::read_to_string(annotations).map_err(|e| DataError::Io { path: annotations.into(), source: e })?;
    let doc: Value = serde_json::from_str(&text).map_err(|e| bad(annotations, format!("malformed JSON: {e}")))?;
    parse(&doc, annotations, images_dir)
}

/// Parses a COCO document (`path` is only used in messages).
///
/// # Errors
/// [`DataError::Invalid`] naming the record: no `categories` or `images` array, a missing or
/// ill-typed field, a duplicate id, a zero image size, or an unknown image or category id.
pub fn parse(doc: &Value, path: &Path, images_dir: &Path) -> Result<DetDataset, DataError> {
    let list = |key: &str| -> Result<&Vec<Value>, DataError> {
        doc.get(key).and_then(Value::as_array).ok_or_else(|| bad(path, format!("no '{key}' array")))
    };
    let mut categories: Vec<Category> = Vec::new();
    for (i, c) in list("categories")?.iter().enumerate() {
        let what = format!("categories[{i}]");
        let id = uint(field(c, "id", path, &what)?, path, &format!("{what}.id"))?;
        let name = c.get("name").and_then(Value::as_str).unwrap_or("").to_string();
        if categories.iter().any(|k| k.id == id) {
            return Err(bad(path, format!("{what}: duplicate category id {id}")));
        }
        categories.push(Category { id, name: if name.is_empty() { format!("class{id}") } else { name } });
    }
    categories.sort_by_key(|c| c.id);
    let label_of: HashMap<u64, usize> = categories.iter().enumerate().map(|(l, c)| (c.id, l)).collect();

    let mut images = Vec::new();
    let mut index: HashMap<u64, usize> = HashMap::new();
    for (i, im) in list("images")?.iter().enumerate() {
        let what = format!("images[{i}]");
        let id = uint(field(im, "id", path, &what)?, path, &format!("{what}.id"))?;
        let file = field(im, "file_name", path, &what)?
            .as_str()
            .ok_or_else(|| bad(path, format!("{what}.file_name is not a string")))?;
        let side = |key: &str| -> Result<u32, DataError> {
            let v = uint(field(im, key, path, &what)?, path, &format!("{what}.{key}"))?;
            u32::try_from(v).map_err(|_| bad(path, format!("{what}.{key} = {v} is not an image size")))
        };
        let (width, height) = (side("width")?, side("height")?);
        if width == 0 || height == 0 {
            return Err(bad(path, format!("{what} (id {id}): zero width or height")));
        }
        if index.insert(id, images.len()).is_some() {
            return Err(bad(path, format!("{what}: duplicate image id {id}")));
        }
        images.push(DetImage { id, file: images_dir.join(file), width, height, objects: Vec::new() });
    }

    let mut report = DropReport::default();
    for (i, a) in doc.get("annotations").and_then(Value::as_array).into_iter().flatten().enumerate() {
        let what = format!("annotations[{i}]");
        let image_id = uint(field(a, "image_id", path, &what)?, path, &format!("{what}.image_id"))?;
        let cat = uint(field(a, "category_id", path, &what)?, path, &format!("{what}.category_id"))?;
        let &k = index.get(&image_id).ok_or_else(|| bad(path, format!("{what}: unknown image id {image_id}")))?;
        let &label = label_of.get(&cat).ok_or_else(|| bad(path, format!("{what}: unknown category id {cat}")))?;
        let bbox = field(a, "bbox", path, &what)?
            .as_array()
            .filter(|b| b.len() == 4)
            .and_then(|b| b.iter().map(Value::as_f64).collect::<Option<Vec<f64>>>())
            .ok_or_else(|| bad(path, format!("{what}.bbox is not four numbers")))?;
        let crowd = a.get("iscrowd").and_then(Value::as_u64).unwrap_or(0) != 0;
        let im = &mut images[k];
        let (w, h) = (im.width, im.height);
        let b = [bbox[0], bbox[1], bbox[0] + bbox[2], bbox[1] + bbox[3]];
        let Some(bbox) = sanitise(b, w, h, &mut report, || format!("{}: {what}", path.display())) else {
            continue;
        };
        let area = a
            .get("area")
            .and_then(Value::as_f64)
            .map(|v| v as f32)
            .unwrap_or((bbox[2] - bbox[0]) * (bbox[3] - bbox[1]));
        im.objects.push(Object { bbox, label, crowd, difficult: false, area });
    }
    Ok(DetDataset { images, categories, report, source: path.display().to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc(anns: Value) -> Value {
        json!({
            "images": [{"id": 7, "file_name": "a.png", "width": 100, "height": 50},
                       {"id": 9, "file_name": "b.png", "width": 20, "height": 20}],
            "categories": [{"id": 5, "name": "five"}, {"id": 2, "name": "two"}],
            "annotations": anns,
        })
    }

    #[test]
    fn maps_categories_clips_and_drops() {
        let d = parse(
            &doc(json!([
                {"image_id": 7, "category_id": 5, "bbox": [10, 10, 20, 5], "area": 3.0},
                {"image_id": 7, "category_id": 2, "bbox": [90, 40, 20, 20], "iscrowd": 1},
                {"image_id": 7, "category_id": 2, "bbox": [10, 10, 0, 5]},
                {"image_id": 7, "category_id": 2, "bbox": [200, 10, 5, 5]},
            ])),
            Path::new("x.json"),
            Path::new("imgs"),
        )
        .unwrap();
        assert_eq!(d.categories.iter().map(|c| c.id).collect::<Vec<_>>(), vec![2, 5]);
        let objs = &d.images[0].objects;
        assert_eq!(objs.len(), 2);
        assert_eq!((objs[0].label, objs[0].bbox, objs[0].area), (1, [10.0, 10.0, 30.0, 15.0], 3.0));
        assert_eq!((objs[1].bbox, objs[1].crowd), ([90.0, 40.0, 100.0, 50.0], true));
        assert_eq!((d.report.degenerate, d.report.outside, d.report.clipped), (1, 1, 1));
        assert!(d.images[1].objects.is_empty(), "images without annotations are kept");
        assert_eq!(d.images[0].file, Path::new("imgs/a.png"));
        assert!(d.report.to_string().contains("1 boxes dropped (non-positive size)"));
    }

    #[test]
    fn errors_name_file_and_record() {
        let e = parse(
            &doc(json!([{"image_id": 8, "category_id": 5, "bbox": [1, 1, 2, 2]}])),
            Path::new("x.json"),
            Path::new("."),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("x.json") && e.contains("annotations[0]") && e.contains("unknown image id 8"), "{e}");
        let e = parse(
            &doc(json!([{"image_id": 7, "category_id": 3, "bbox": [1, 1, 2, 2]}])),
            Path::new("x.json"),
            Path::new("."),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("unknown category id 3"), "{e}");
        let e = parse(
            &doc(json!([{"image_id": 7, "category_id": 5, "bbox": [1, 1, 2]}])),
            Path::new("x.json"),
            Path::new("."),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("annotations[0].bbox is not four numbers"), "{e}");
        let dir = std::env::temp_dir().join(format!("detnas-coco-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("broken.json");
        std::fs::write(&f, "{\"images\": [").unwrap();
        let e = load(&f, &dir).unwrap_err().to_string();
        assert!(e.contains("broken.json") && e.contains("malformed JSON"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn coco_json_round_trip() {
        let d = parse(
            &doc(json!([{"image_id": 9, "category_id": 5, "bbox": [1.5, 2.0, 3.0, 4.0], "area": 99.0, "iscrowd": 1}])),
            Path::new("x.json"),
            Path::new("imgs"),
        )
        .unwrap();
        let back = parse(&d.to_coco_json(), Path::new("y.json"), Path::new("imgs")).unwrap();
        assert_eq!(back.images, d.images);
        assert_eq!(back.categories, d.categories);
    }
}
