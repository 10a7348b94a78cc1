//! Pascal VOC: `Annotations/<id>.xml` (size, objects with `name`, `difficult`, `bndbox`) and
//! `ImageSets/Main/<set>.txt`; images `JPEGImages/<id>.jpg`.
//!
//! VOC boxes are 1-based inclusive pixel indices; they become continuous coordinates
//! `(xmin − 1, ymin − 1, xmax, ymax)`. Class names map to labels in the order given (the 20
//! VOC classes by default); an unknown class name is an error naming file and object.

use super::{Category, DetDataset, DetImage, DropReport, Object, sanitise};
use crate::DataError;
use quick_xml::events::Event;
use std::path::Path;

/// The 20 Pascal VOC classes, in the customary order.
pub const VOC_CLASSES: [&str; 20] = [
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
];

/// One object as written in the XML.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct VocObject {
    pub name: String,
    pub difficult: bool,
    /// `xmin, ymin, xmax, ymax` as in the file.
    pub bndbox: [f64; 4],
}

/// One parsed annotation file.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct VocAnnotation {
    pub filename: String,
    pub width: u32,
    pub height: u32,
    pub objects: Vec<VocObject>,
}

/// Parses one VOC XML document (`path` only for messages).
///
/// # Errors
/// [`DataError::Invalid`] naming the file: malformed or unbalanced XML, a nested or unnamed
/// object, an incomplete `<bndbox>`, a value that is not a number, or no positive size.
pub fn parse_xml(xml: &str, path: &Path) -> Result<VocAnnotation, DataError> {
    let bad = |m: String| DataError::Invalid(format!("{}: {m}", path.display()));
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut stack: Vec<String> = Vec::new();
    let mut ann = VocAnnotation::default();
    let mut obj: Option<(VocObject, [bool; 4])> = None;
    let mut seen_size = [false; 2];
    loop {
        match reader.read_event() {
            Err(e) => return Err(bad(format!("malformed XML at byte {}: {e}", reader.buffer_position()))),
            Ok(Event::Eof) => break,
            Ok(Event::Start(e)) => {
                let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
                if name == "object" {
                    if obj.is_some() {
                        return Err(bad(format!("<object> inside object {}", ann.objects.len())));
                    }
                    obj = Some((VocObject::default(), [false; 4]));
                }
                stack.push(name);
            }
            Ok(Event::End(e)) => {
                let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
                if stack.pop().as_deref() != Some(name.as_str()) {
                    return Err(bad(format!("unbalanced tag </{name}>")));
                }
                if name == "object" {
                    let (o, seen) = obj.take().ok_or_else(|| bad("</object> without <object>".into()))?;
                    let k = ann.objects.len();
                    if o.name.is_empty() {
                        return Err(bad(format!("object {k} has no <name>")));
                    }
                    if seen.iter().any(|s| !s) {
                        return Err(bad(format!("object {k} ({}) has an incomplete <bndbox>", o.name)));
                    }
                    ann.objects.push(o);
                }
            }
            Ok(Event::Text(t)) => {
                let text = String::from_utf8_lossy(t.as_ref()).trim().to_string();
                if text.is_empty() {
                    continue;
                }
                let tag = stack.last().map(String::as_str).unwrap_or("");
                let parent = stack.len().checked_sub(2).map(|i| stack[i].as_str()).unwrap_or("");
                let num = |what: &str| -> Result<f64, DataError> {
                    text.parse::<f64>()
                        .ok()
                        .filter(|v| v.is_finite())
                        .ok_or_else(|| bad(format!("<{what}> is not a number: '{text}'")))
                };
                let side = |what: &str| -> Result<u32, DataError> {
                    let v = num(what)?;
                    if v.fract() == 0.0 && (0.0..=u32::MAX as f64).contains(&v) {
                        Ok(v as u32)
                    } else {
                        Err(bad(format!("<{what}> is not an image size: '{text}'")))
                    }
                };
                match (parent, tag, obj.as_mut()) {
                    ("annotation", "filename", _) => ann.filename = text.clone(),
                    ("size", "width", _) => {
                        ann.width = side("width")?;
                        seen_size[0] = true;
                    }
                    ("size", "height", _) => {
                        ann.height = side("height")?;
                        seen_size[1] = true;
                    }
                    ("object", "name", Some((o, _))) => o.name = text.clone(),
                    ("object", "difficult", Some((o, _))) => o.difficult = num("difficult")? != 0.0,
                    ("bndbox", t, Some((o, seen))) => {
                        let i = match t {
                            "xmin" => 0,
                            "ymin" => 1,
                            "xmax" => 2,
                            "ymax" => 3,
                            _ => continue,
                        };
                        o.bndbox[i] = num(t)?;
                        seen[i] = true;
                    }
                    _ => {}
                }
            }
            Ok(_) => {}
        }
    }
    if !stack.is_empty() {
        return Err(bad(format!("unclosed <{}>", stack.join("><"))));
    }
    if !(seen_size[0] && seen_size[1]) || ann.width == 0 || ann.height == 0 {
        return Err(bad("no positive <size><width>/<height>".into()));
    }
    Ok(ann)
}

/// Reads the image set `set` (e.g. `trainval`) of a VOC root (`VOC2007/`).
///
/// # Errors
/// [`DataError::Io`] when the image-set list or an annotation file cannot be read;
/// [`DataError::Invalid`] as [`parse_xml`], or for an object of a class not in `classes`.
pub fn load(root: &Path, set: &str, classes: &[&str]) -> Result<DetDataset, DataError> {
    let list = root.join("ImageSets/Main").join(format!("{set}.txt"));
    let ids = std::fs::read_to_string(&list).map_err(|e| DataError::Io { path: list.clone(), source: e })?;
    let categories: Vec<Category> =
        classes.iter().enumerate().map(|(i, n)| Category { id: i as u64 + 1, name: n.to_string() }).collect();
    let mut report = DropReport::default();
    let mut images = Vec::new();
    for (k, id) in ids.lines().map(str::trim).filter(|l| !l.is_empty()).enumerate() {
        let id = id.split_whitespace().next().unwrap_or(id);
        let xml_path = root.join("Annotations").join(format!("{id}.xml"));
        let xml =
            std::fs::read_to_string(&xml_path).map_err(|e| DataError::Io { path: xml_path.clone(), source: e })?;
        let ann = parse_xml(&xml, &xml_path)?;
        let mut objects = Vec::new();
        for (j, o) in ann.objects.iter().enumerate() {
            let label = classes.iter().position(|c| *c == o.name).ok_or_else(|| {
                DataError::Invalid(format!("{}: object {j}: unknown class '{}'", xml_path.display(), o.name))
            })?;
            let [x1, y1, x2, y2] = o.bndbox;
            let b = [x1 - 1.0, y1 - 1.0, x2, y2];
            if let Some(bbox) =
                sanitise(b, ann.width, ann.height, &mut report, || format!("{}: object {j}", xml_path.display()))
            {
                let area = (bbox[2] - bbox[0]) * (bbox[3] - bbox[1]);
                objects.push(Object { bbox, label, crowd: false, difficult: o.difficult, area });
            }
        }
        images.push(DetImage {
            id: k as u64 + 1,
            file: root.join("JPEGImages").join(format!("{id}.jpg")),
            width: ann.width,
            height: ann.height,
            objects,
        });
    }
    Ok(DetDataset { images, categories, report, source: list.display().to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    const XML: &str = r#"<annotation><folder>VOC2007</folder><filename>000005.jpg</filename>
      <size><width>500</width><height>375</height><depth>3</depth></size>
      <object><name>chair</name><pose>Rear</pose><truncated>0</truncated><difficult>0</difficult>
        <bndbox><xmin>263</xmin><ymin>211</ymin><xmax>324</xmax><ymax>339</ymax></bndbox></object>
      <object><name>chair</name><difficult>1</difficult>
        <bndbox><xmin>5</xmin><ymin>244</ymin><xmax>67</xmax><ymax>374</ymax></bndbox></object>
    </annotation>"#;

    #[test]
    fn parses_objects_and_difficult() {
        let a = parse_xml(XML, Path::new("000005.xml")).unwrap();
        assert_eq!((a.width, a.height, a.filename.as_str()), (500, 375, "000005.jpg"));
        assert_eq!(a.objects.len(), 2);
        assert_eq!(a.objects[0].bndbox, [263.0, 211.0, 324.0, 339.0]);
        assert!(!a.objects[0].difficult && a.objects[1].difficult);
    }

    #[test]
    fn malformed_inputs_name_the_file() {
        let p = Path::new("bad.xml");
        for (xml, want) in [
            ("<annotation><size><width>5</width>", "bad.xml"),
            (
                "<annotation><size><width>5</width><height>5</height></size><object><bndbox><xmin>1</xmin></bndbox></object></annotation>",
                "has no <name>",
            ),
            (
                "<annotation><size><width>5</width><height>5</height></size><object><name>cat</name><bndbox><xmin>1</xmin></bndbox></object></annotation>",
                "incomplete <bndbox>",
            ),
            ("<annotation><size><width>x</width><height>5</height></size></annotation>", "<width> is not a number"),
            ("<annotation><object></annotation>", "bad.xml"),
        ] {
            let e = parse_xml(xml, p).unwrap_err().to_string();
            assert!(e.contains(want), "{xml}: {e}");
        }
    }

    #[test]
    fn loads_a_tiny_voc_tree() {
        let root = std::env::temp_dir().join(format!("detnas-voc-{}", std::process::id()));
        std::fs::create_dir_all(root.join("ImageSets/Main")).unwrap();
        std::fs::create_dir_all(root.join("Annotations")).unwrap();
        std::fs::write(root.join("ImageSets/Main/test.txt"), "000005\n").unwrap();
        std::fs::write(root.join("Annotations/000005.xml"), XML).unwrap();
        let d = load(&root, "test", &VOC_CLASSES).unwrap();
        assert_eq!(d.images[0].objects[0].bbox, [262.0, 210.0, 324.0, 339.0]);
        assert_eq!(d.images[0].objects[0].label, 8);
        assert!(d.images[0].objects[1].difficult);
        std::fs::write(root.join("Annotations/000005.xml"), XML.replace("chair", "unicorn")).unwrap();
        let e = load(&root, "test", &VOC_CLASSES).unwrap_err().to_string();
        assert!(e.contains("000005.xml") && e.contains("unknown class 'unicorn'"), "{e}");
        std::fs::remove_dir_all(&root).ok();
    }
}
