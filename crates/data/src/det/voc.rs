//! Pascal VOC: `Annotations/<id>.xml` (size, objects with `name`, `difficult`, `bndbox`) and
//! `ImageSets/Main/<set>.txt`; images `JPEGImages/<id>.jpg`.
//!
//! VOC boxes are 1-based inclusive pixel indices; they become continuous coordinates
//! `(xmin − 1, ymin − 1, xmax, ymax)`. Class names map to labels in the order of a class
//! list ([`build`]): the configured one, else the sorted names of the training annotations;
//! an unknown class name is an error naming file and object.

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
    /// Class name.
    pub name: String,
    /// VOC's `difficult` flag (ignored by the VOC metric).
    pub difficult: bool,
    /// `xmin, ymin, xmax, ymax` as in the file.
    pub bndbox: [f64; 4],
}

/// One parsed annotation file.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct VocAnnotation {
    /// Image file name.
    pub filename: String,
    /// Width, pixels.
    pub width: u32,
    /// Height, pixels.
    pub height: u32,
    /// Its objects.
    pub objects: Vec<VocObject>,
}

/// Parses one VOC XML document (`path` only for messages).
///
/// # Errors
/// [`DataError::Invalid`] naming the file: malformed or unbalanced XML, no `<annotation>`
/// root (an empty or cut file), a nested or unnamed
/// object, an incomplete `<bndbox>`, or a value that is not a number. A missing or zero
/// `<size>` gives width and height 0 (the caller reads the image header).
pub fn parse_xml(xml: &str, path: &Path) -> Result<VocAnnotation, DataError> {
    let bad = |m: String| DataError::Invalid(format!("{}: {m}", path.display()));
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut stack: Vec<String> = Vec::new();
    let mut ann = VocAnnotation::default();
    let mut obj: Option<(VocObject, [bool; 4])> = None;
    let mut seen_size = [false; 2];
    let mut closed_root = false;
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
                if name == "annotation" && stack.is_empty() {
                    closed_root = true;
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
    if !closed_root {
        return Err(bad("no <annotation> element (empty or cut file)".into()));
    }
    if !(seen_size[0] && seen_size[1]) {
        ann.width = 0;
        ann.height = 0;
    }
    Ok(ann)
}

/// One image set of a VOC root, parsed: each annotation with its file and image.
#[derive(Clone, Debug)]
pub struct VocSet {
    /// The image-set list (for messages).
    pub list: std::path::PathBuf,
    /// `(annotation file, image file, annotation)` in list order.
    pub entries: Vec<(std::path::PathBuf, std::path::PathBuf, VocAnnotation)>,
}

impl VocSet {
    /// The class names used by the objects, sorted and deduplicated.
    pub fn class_names(&self) -> std::collections::BTreeSet<String> {
        self.entries.iter().flat_map(|(_, _, a)| a.objects.iter().map(|o| o.name.clone())).collect()
    }
}

/// Reads and parses the image set `set` (e.g. `trainval`) of a VOC root (`VOC2007/`).
///
/// The image of `Annotations/<id>.xml` is `JPEGImages/<filename>` when the XML names an
/// existing file, else the first existing `JPEGImages/<id>.<ext>` for the readable
/// extensions ([`crate::IMAGE_EXTENSIONS`]). An annotation without a positive `<size>` takes
/// the size from the image's header (after EXIF orientation), counted in the dataset's
/// [`DropReport::sizes_from_header`].
///
/// # Errors
/// [`DataError::Io`] when the image-set list or an annotation file cannot be read;
/// [`DataError::Invalid`] as [`parse_xml`], or naming the annotation when its image is not
/// found; [`DataError::Decode`] when a size must be read from an unreadable image header.
pub fn read(root: &Path, set: &str) -> Result<VocSet, DataError> {
    let list = root.join("ImageSets/Main").join(format!("{set}.txt"));
    let ids = std::fs::read_to_string(&list).map_err(|e| DataError::Io { path: list.clone(), source: e })?;
    let mut entries = Vec::new();
    for id in ids.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let id = id.split_whitespace().next().unwrap_or(id);
        let xml_path = root.join("Annotations").join(format!("{id}.xml"));
        let xml =
            std::fs::read_to_string(&xml_path).map_err(|e| DataError::Io { path: xml_path.clone(), source: e })?;
        let ann = parse_xml(&xml, &xml_path)?;
        let dir = root.join("JPEGImages");
        let named = (!ann.filename.is_empty()).then(|| dir.join(&ann.filename)).filter(|p| p.is_file());
        let file = named
            .or_else(|| crate::IMAGE_EXTENSIONS.iter().map(|e| dir.join(format!("{id}.{e}"))).find(|p| p.is_file()))
            .ok_or_else(|| {
                DataError::Invalid(format!(
                    "{}: no image for it: neither JPEGImages/{} nor JPEGImages/{id}.<{}> exists",
                    xml_path.display(),
                    if ann.filename.is_empty() { "<filename>" } else { &ann.filename },
                    crate::IMAGE_EXTENSIONS.join("|")
                ))
            })?;
        entries.push((xml_path, file, ann));
    }
    Ok(VocSet { list, entries })
}

/// Builds the dataset of a parsed image set: labels are positions in `classes`; an object
/// whose class is not among them is an error naming the file, the object and `origin` (where
/// the class list came from, for the message).
///
/// # Errors
/// [`DataError::Invalid`] for an unknown class; [`DataError::Decode`] / [`DataError::Io`]
/// when a missing `<size>` cannot be read from the image header.
pub fn build(set: &VocSet, classes: &[String], origin: &str) -> Result<DetDataset, DataError> {
    let categories: Vec<Category> =
        classes.iter().enumerate().map(|(i, n)| Category { id: i as u64 + 1, name: n.clone() }).collect();
    let mut report = DropReport::default();
    let mut images = Vec::new();
    for (k, (xml_path, file, ann)) in set.entries.iter().enumerate() {
        let (width, height) = if ann.width > 0 && ann.height > 0 {
            (ann.width, ann.height)
        } else {
            let wh = crate::image_size(file)?;
            report.sizes_from_header += 1;
            report.note(format!("{}: no <size>: {}×{} read from {}", xml_path.display(), wh.0, wh.1, file.display()));
            wh
        };
        let mut objects = Vec::new();
        for (j, o) in ann.objects.iter().enumerate() {
            let label = classes.iter().position(|c| *c == o.name).ok_or_else(|| {
                DataError::Invalid(format!(
                    "{}: object {j}: class '{}' is not among {origin} [{}]",
                    xml_path.display(),
                    o.name,
                    classes.join(", ")
                ))
            })?;
            let [x1, y1, x2, y2] = o.bndbox;
            let b = [x1 - 1.0, y1 - 1.0, x2, y2];
            if let Some(bbox) =
                sanitise(b, width, height, &mut report, || format!("{}: object {j}", xml_path.display()))
            {
                let area = (bbox[2] - bbox[0]) * (bbox[3] - bbox[1]);
                objects.push(Object { bbox, label, crowd: false, difficult: o.difficult, area });
            }
        }
        images.push(DetImage { id: k as u64 + 1, file: file.clone(), width, height, objects });
    }
    Ok(DetDataset { images, categories, report, source: set.list.display().to_string() })
}

/// Reads the image set `set` of a VOC root with the class list `classes` ([`read`] then
/// [`build`]).
///
/// # Errors
/// As [`read`] and [`build`].
pub fn load(root: &Path, set: &str, classes: &[&str]) -> Result<DetDataset, DataError> {
    let classes: Vec<String> = classes.iter().map(|c| c.to_string()).collect();
    build(&read(root, set)?, &classes, "the given classes")
}

/// Writes `data` as Pascal VOC image set `set` under `root`: each image copied to
/// `JPEGImages/<set>_<n>.<ext>` (its own format), `Annotations/<set>_<n>.xml` with its size and
/// boxes (1-based: `xmin = x1 + 1`, `ymin = y1 + 1`, `xmax = x2`, `ymax = y2`, the inverse of
/// [`build`]'s reading; crowd regions as `difficult`), and the ids appended to
/// `ImageSets/Main/<set>.txt`. The class names are the categories' names.
///
/// # Errors
/// [`DataError::Write`] when a folder or file cannot be written; [`DataError::Io`] when an
/// image cannot be copied.
pub fn write(data: &DetDataset, root: &Path, set: &str) -> Result<(), DataError> {
    use std::fmt::Write as _;
    let write_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DataError::Write { path, source }
    };
    for sub in ["Annotations", "JPEGImages", "ImageSets/Main"] {
        std::fs::create_dir_all(root.join(sub)).map_err(write_err(&root.join(sub)))?;
    }
    let mut ids = String::new();
    for (n, im) in data.images.iter().enumerate() {
        let id = format!("{set}_{n:06}");
        let ext = im.file.extension().map_or_else(|| "jpg".to_string(), |e| e.to_string_lossy().into_owned());
        let file = format!("{id}.{ext}");
        std::fs::copy(&im.file, root.join("JPEGImages").join(&file))
            .map_err(|source| DataError::Io { path: im.file.clone(), source })?;
        let esc = |t: &str| quick_xml::escape::escape(t).into_owned();
        let mut xml = format!(
            "<annotation>\n  <folder>{}</folder>\n  <filename>{}</filename>\n  <size><width>{}</width><height>{}</height><depth>3</depth></size>\n",
            esc(&root.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default()),
            esc(&file),
            im.width,
            im.height
        );
        for o in &im.objects {
            let [x1, y1, x2, y2] = o.bbox;
            let _ = writeln!(
                xml,
                "  <object><name>{}</name><difficult>{}</difficult><bndbox><xmin>{}</xmin><ymin>{}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>",
                esc(&data.categories[o.label].name),
                u8::from(o.difficult || o.crowd),
                x1 + 1.0,
                y1 + 1.0
            );
        }
        xml.push_str("</annotation>\n");
        let xml_path = root.join("Annotations").join(format!("{id}.xml"));
        std::fs::write(&xml_path, xml).map_err(write_err(&xml_path))?;
        let _ = writeln!(ids, "{id}");
    }
    let list = root.join("ImageSets/Main").join(format!("{set}.txt"));
    // Written again (the same set): each id listed once.
    let mut text = std::fs::read_to_string(&list).unwrap_or_default();
    let listed: std::collections::HashSet<String> = text.lines().map(str::to_string).collect();
    for id in ids.lines().filter(|id| !listed.contains(*id)) {
        let _ = writeln!(text, "{id}");
    }
    std::fs::write(&list, text).map_err(write_err(&list))
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
        std::fs::create_dir_all(root.join("JPEGImages")).unwrap();
        std::fs::write(root.join("ImageSets/Main/test.txt"), "000005\n").unwrap();
        std::fs::write(root.join("Annotations/000005.xml"), XML).unwrap();
        let e = load(&root, "test", &VOC_CLASSES).unwrap_err().to_string();
        assert!(e.contains("000005.xml: no image for it"), "{e}");
        image::RgbImage::new(500, 375).save(root.join("JPEGImages/000005.png")).unwrap();
        let d = load(&root, "test", &VOC_CLASSES).unwrap();
        assert_eq!(d.images[0].file, root.join("JPEGImages/000005.png"), "found by id with another extension");
        assert_eq!(d.images[0].objects[0].bbox, [262.0, 210.0, 324.0, 339.0]);
        assert_eq!(d.images[0].objects[0].label, 8);
        assert!(d.images[0].objects[1].difficult);
        // Classes from the data: the sorted names; a missing <size> comes from the header.
        let no_size = XML.replace("<size><width>500</width><height>375</height><depth>3</depth></size>", "");
        std::fs::write(root.join("Annotations/000005.xml"), no_size.replacen("chair<", "Tree<", 1)).unwrap();
        let set = read(&root, "test").unwrap();
        let names: Vec<String> = set.class_names().into_iter().collect();
        assert_eq!(names, ["Tree", "chair"], "sorted by bytes");
        let d = build(&set, &names, "the training set's classes").unwrap();
        assert_eq!((d.images[0].width, d.images[0].height, d.report.sizes_from_header), (500, 375, 1));
        assert_eq!((d.images[0].objects[0].label, d.images[0].objects[1].label), (0, 1));
        std::fs::write(root.join("Annotations/000005.xml"), XML.replace("chair", "unicorn")).unwrap();
        let e = load(&root, "test", &VOC_CLASSES).unwrap_err().to_string();
        assert!(e.contains("000005.xml: object 0: class 'unicorn' is not among the given classes"), "{e}");
        std::fs::remove_dir_all(&root).ok();
    }
}
