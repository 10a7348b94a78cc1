//! Detection data: COCO instances JSON, Pascal VOC XML, the YOLO layout, the built-in synthetic detection set
//! (written as PNG + COCO JSON and read back through the COCO reader), transforms and a
//! deterministic loader.
//!
//! Boxes are `(x1, y1, x2, y2)` in continuous pixel coordinates of the original image
//! (COCO `[x, y, w, h]` → `(x, y, x + w, y + h)`; VOC's 1-based inclusive pixel indices →
//! `(xmin − 1, ymin − 1, xmax, ymax)`). Labels are contiguous `0..K` in the order of the
//! dataset's category ids; [`DetDataset::categories`] maps them back.

pub mod check;
pub mod coco;
pub mod loader;
pub mod synth;
pub mod transform;
pub mod voc;
pub mod yolo;

use crate::DataError;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// A category: the dataset's id and name. Its position in [`DetDataset::categories`] is the
/// contiguous label.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Category {
    /// Category id (COCO's `category_id`).
    pub id: u64,
    /// Category name.
    pub name: String,
}

/// One annotated object.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Object {
    /// `(x1, y1, x2, y2)`, clipped to the image.
    pub bbox: [f32; 4],
    /// Contiguous label.
    pub label: usize,
    /// COCO `iscrowd`: a region that is neither a target nor a false positive.
    pub crowd: bool,
    /// VOC `difficult`: ignored by VOC evaluation.
    pub difficult: bool,
    /// Area used by COCO evaluation for the size classes (the file's `area`, else w·h).
    pub area: f32,
}

/// One image and its objects.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DetImage {
    /// The dataset's image id (COCO `id`; VOC: position in the image set).
    pub id: u64,
    /// The image file.
    pub file: PathBuf,
    /// Width, pixels (as annotated, checked against the file).
    pub width: u32,
    /// Height, pixels.
    pub height: u32,
    /// Its annotated objects.
    pub objects: Vec<Object>,
}

/// What was dropped or repaired while reading annotations.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DropReport {
    /// Boxes with non-positive width or height (dropped).
    pub degenerate: usize,
    /// Boxes entirely outside their image (dropped).
    pub outside: usize,
    /// Boxes partly outside their image (clipped, kept).
    pub clipped: usize,
    /// Images whose annotation gave no size: read from the image header.
    #[serde(default)]
    pub sizes_from_header: usize,
    /// Images whose annotated size differs from the image's, replaced by the image's
    /// (`data.size_mismatch = "use-image"`).
    #[serde(default)]
    pub sizes_replaced: usize,
    /// A few examples, `file: record: why`.
    pub examples: Vec<String>,
}

impl DropReport {
    /// `true` when nothing was dropped, clipped or re-sized.
    pub fn is_clean(&self) -> bool {
        self.degenerate + self.outside + self.clipped + self.sizes_from_header + self.sizes_replaced == 0
    }

    /// Adds `other`'s counts and examples.
    pub fn merge(&mut self, other: &DropReport) {
        self.degenerate += other.degenerate;
        self.outside += other.outside;
        self.clipped += other.clipped;
        self.sizes_from_header += other.sizes_from_header;
        self.sizes_replaced += other.sizes_replaced;
        for e in &other.examples {
            self.note(e.clone());
        }
    }

    pub(crate) fn note(&mut self, example: String) {
        if self.examples.len() < 5 {
            self.examples.push(example);
        }
    }
}

impl std::fmt::Display for DropReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} boxes dropped (non-positive size), {} dropped (outside the image), {} clipped to the image",
            self.degenerate, self.outside, self.clipped
        )?;
        if self.sizes_from_header > 0 {
            write!(f, ", {} image sizes read from the image (none annotated)", self.sizes_from_header)?;
        }
        if self.sizes_replaced > 0 {
            write!(f, ", {} annotated image sizes replaced by the image's", self.sizes_replaced)?;
        }
        if !self.examples.is_empty() {
            write!(f, "; e.g. {}", self.examples.join("; "))?;
        }
        Ok(())
    }
}

/// A box coordinate type: `f32` or `f64`.
pub trait Coord:
    Copy
    + PartialOrd
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
{
    /// Zero of the type.
    const ZERO: Self;
    /// The larger of two values.
    fn max(self, other: Self) -> Self;
    /// The smaller of two values.
    fn min(self, other: Self) -> Self;
}

impl Coord for f32 {
    const ZERO: f32 = 0.0;
    fn max(self, other: f32) -> f32 {
        f32::max(self, other)
    }
    fn min(self, other: f32) -> f32 {
        f32::min(self, other)
    }
}

impl Coord for f64 {
    const ZERO: f64 = 0.0;
    fn max(self, other: f64) -> f64 {
        f64::max(self, other)
    }
    fn min(self, other: f64) -> f64 {
        f64::min(self, other)
    }
}

/// Intersection over union of two `(x1, y1, x2, y2)` boxes in continuous coordinates (width
/// `x2 − x1`, no `+1`; a box with a negative side has area 0); 0 when the union is empty.
pub fn iou<T: Coord>(a: &[T; 4], b: &[T; 4]) -> T {
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(T::ZERO);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(T::ZERO);
    let inter = iw * ih;
    let area = |r: &[T; 4]| (r[2] - r[0]).max(T::ZERO) * (r[3] - r[1]).max(T::ZERO);
    let union = area(a) + area(b) - inter;
    if union > T::ZERO { inter / union } else { T::ZERO }
}

/// Checks and clips one box against a `width × height` image. `None`: dropped (counted).
pub(crate) fn sanitise(
    b: [f64; 4],
    width: u32,
    height: u32,
    report: &mut DropReport,
    what: impl FnOnce() -> String,
) -> Option<[f32; 4]> {
    let [x1, y1, x2, y2] = b;
    if !(x2 > x1 && y2 > y1) || b.iter().any(|v| !v.is_finite()) {
        report.degenerate += 1;
        report.note(format!("{}: non-positive size", what()));
        return None;
    }
    let (w, h) = (width as f64, height as f64);
    if x2 <= 0.0 || y2 <= 0.0 || x1 >= w || y1 >= h {
        report.outside += 1;
        report.note(format!("{}: outside the {width}×{height} image", what()));
        return None;
    }
    let c = [x1.max(0.0), y1.max(0.0), x2.min(w), y2.min(h)];
    // Overshoots below 0.01 px are rounding (normalised YOLO coordinates, float exports):
    // clipped but not counted.
    if c.iter().zip(&b).any(|(c, b)| (c - b).abs() >= 0.01) {
        report.clipped += 1;
    }
    Some(c.map(|v| v as f32))
}

/// What to do when an annotation's image size differs from the image's own
/// (`data.size_mismatch`). Sizes are compared in the displayed frame (after EXIF
/// orientation).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SizeMismatch {
    /// Refuse the dataset, naming each file and both sizes (default).
    #[default]
    Error,
    /// Use the image's size; the boxes keep their pixel coordinates and are clipped to it.
    UseImage,
}

impl SizeMismatch {
    /// Whether this is the default (`error`).
    pub fn is_default(&self) -> bool {
        *self == SizeMismatch::Error
    }
}

/// A detection dataset held in memory (annotations only; images are decoded on demand).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DetDataset {
    /// The images, in id order of the source.
    pub images: Vec<DetImage>,
    /// The categories, in label order (an object's `label` is its category's index).
    pub categories: Vec<Category>,
    /// What reading dropped or repaired (shown by `detnas data check`).
    pub report: DropReport,
    /// Where it came from (for messages and fingerprints).
    pub source: String,
}

impl DetDataset {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.images.len()
    }

    /// Whether there is no image.
    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }

    /// Decodes image `i` (strict: a truncated file is an error naming it).
    ///
    /// # Errors
    /// As [`crate::decode_image`]; [`DataError::Invalid`] when the image's size differs from its
    /// annotation.
    pub fn load(&self, i: usize) -> Result<image::RgbImage, DataError> {
        let img = crate::decode_image(&self.images[i].file)?;
        let d = &self.images[i];
        if img.width() != d.width || img.height() != d.height {
            return Err(DataError::Invalid(format!(
                "{}: the image is {}×{} (after EXIF orientation) but its annotation says {}×{}",
                d.file.display(),
                img.width(),
                img.height(),
                d.width,
                d.height
            )));
        }
        Ok(img)
    }

    /// Every image's `(width, height)` from its header (after EXIF orientation), read in
    /// parallel; no pixel data is decoded.
    pub fn header_sizes(&self) -> Vec<Result<(u32, u32), DataError>> {
        use rayon::prelude::*;
        self.images.par_iter().map(|i| crate::image_size(&i.file)).collect()
    }

    /// Checks the annotated sizes against `sizes` (from [`DetDataset::header_sizes`]).
    /// Under [`SizeMismatch::UseImage`] a differing size is replaced by the image's and the
    /// image's boxes are clipped to it (counted in the report).
    ///
    /// # Errors
    /// Every problem, one line each naming the file: an unreadable image header, and under
    /// [`SizeMismatch::Error`] a size mismatch with both sizes.
    pub fn reconcile_sizes(
        &mut self,
        sizes: &[Result<(u32, u32), DataError>],
        policy: SizeMismatch,
    ) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        for (im, size) in self.images.iter_mut().zip(sizes) {
            let (w, h) = match size {
                Ok(s) => *s,
                Err(e) => {
                    problems.push(e.to_string());
                    continue;
                }
            };
            if (w, h) == (im.width, im.height) {
                continue;
            }
            match policy {
                SizeMismatch::Error => problems.push(format!(
                    "{}: the image is {w}×{h} (after EXIF orientation) but its annotation says {}×{} \
                     (data.size_mismatch = \"use-image\" uses the image's size)",
                    im.file.display(),
                    im.width,
                    im.height
                )),
                SizeMismatch::UseImage => {
                    self.report.sizes_replaced += 1;
                    self.report.note(format!(
                        "{}: annotated {}×{}, the image is {w}×{h}: the image's size used",
                        im.file.display(),
                        im.width,
                        im.height
                    ));
                    let file = im.file.display().to_string();
                    let objects = std::mem::take(&mut im.objects);
                    for (j, o) in objects.into_iter().enumerate() {
                        let b = o.bbox.map(f64::from);
                        if let Some(bbox) = sanitise(b, w, h, &mut self.report, || format!("{file}: object {j}")) {
                            let area = if bbox == o.bbox { o.area } else { (bbox[2] - bbox[0]) * (bbox[3] - bbox[1]) };
                            im.objects.push(Object { bbox, area, ..o });
                        }
                    }
                    (im.width, im.height) = (w, h);
                }
            }
        }
        if problems.is_empty() { Ok(()) } else { Err(problems) }
    }

    /// The categories no image has a (non-crowd) box of: a detector cannot learn them.
    pub fn categories_without_boxes(&self) -> Vec<&Category> {
        let mut boxes = vec![0usize; self.categories.len()];
        for o in self.images.iter().flat_map(|i| &i.objects).filter(|o| !o.crowd) {
            if let Some(b) = boxes.get_mut(o.label) {
                *b += 1;
            }
        }
        self.categories.iter().zip(boxes).filter(|(_, n)| *n == 0).map(|(c, _)| c).collect()
    }

    /// The images at `indices`, same categories.
    pub fn subset(&self, indices: &[usize]) -> DetDataset {
        DetDataset {
            images: indices.iter().map(|&i| self.images[i].clone()).collect(),
            categories: self.categories.clone(),
            report: self.report.clone(),
            source: format!("{} (subset of {})", self.source, indices.len()),
        }
    }

    /// Splits off `n` images chosen by `seed`: returns `(rest, carved)` index lists, each
    /// sorted. The images are ranked by a hash of `seed` and their file name (not their
    /// folder, not their position), so the same images give the same carve in any layout
    /// (COCO, VOC, YOLO) and any order.
    ///
    /// # Errors
    /// [`DataError::Invalid`] when `n` is not below the number of images.
    pub fn carve(&self, n: usize, seed: u64) -> Result<(Vec<usize>, Vec<usize>), DataError> {
        use sha2::{Digest, Sha256};
        if n >= self.len() {
            return Err(DataError::Invalid(format!(
                "cannot carve {n} images from {} with {} images (nothing would be left)",
                self.source,
                self.len()
            )));
        }
        let stream = crate::mix_seed(seed, &[crate::streams::SEARCH_VAL_CARVE]);
        let rank = |i: usize| {
            let name = self.images[i].file.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
            let digest = Sha256::new().chain_update(stream.to_le_bytes()).chain_update(name.as_bytes()).finalize();
            // The digest's first 8 bytes, little-endian.
            let key = digest.iter().take(8).rev().fold(0u64, |k, &b| (k << 8) | u64::from(b));
            (key, name, i)
        };
        let mut order: Vec<(u64, String, usize)> = (0..self.len()).map(rank).collect();
        order.sort_unstable();
        let mut carved: Vec<usize> = order[..n].iter().map(|r| r.2).collect();
        let mut rest: Vec<usize> = order[n..].iter().map(|r| r.2).collect();
        carved.sort_unstable();
        rest.sort_unstable();
        Ok((rest, carved))
    }

    /// A fingerprint of the annotations (ids, files, sizes, boxes).
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for c in &self.categories {
            h.update(format!("{}:{};", c.id, c.name));
        }
        for i in &self.images {
            h.update(format!("{}|{}|{}x{}|", i.id, i.file.display(), i.width, i.height));
            for o in &i.objects {
                h.update(format!("{:?}{}{}{};", o.bbox, o.label, o.crowd, o.difficult));
            }
        }
        format!("{:x}", h.finalize())
    }

    /// The ground truth as a COCO instances document (original ids, boxes after clipping,
    /// `area` and `iscrowd` as read) — what COCO evaluation compares against.
    pub fn to_coco_json(&self) -> serde_json::Value {
        let mut anns = Vec::new();
        let mut next = 1u64;
        for im in &self.images {
            for o in &im.objects {
                let [x1, y1, x2, y2] = o.bbox.map(f64::from);
                anns.push(serde_json::json!({
                    "id": next, "image_id": im.id, "category_id": self.categories[o.label].id,
                    "bbox": [x1, y1, x2 - x1, y2 - y1], "area": o.area as f64, "iscrowd": u8::from(o.crowd),
                }));
                next += 1;
            }
        }
        serde_json::json!({
            "images": self.images.iter().map(|i| serde_json::json!({
                "id": i.id, "file_name": i.file.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default(),
                "width": i.width, "height": i.height,
            })).collect::<Vec<_>>(),
            "annotations": anns,
            "categories": self.categories.iter().map(|c| serde_json::json!({"id": c.id, "name": c.name})).collect::<Vec<_>>(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories_without_boxes_are_named() {
        let cat = |id: u64, name: &str| Category { id, name: name.into() };
        let obj = |label: usize, crowd: bool| Object {
            bbox: [0.0, 0.0, 4.0, 4.0],
            label,
            crowd,
            difficult: false,
            area: 16.0,
        };
        let image = |objects: Vec<Object>| DetImage { id: 1, file: "a.png".into(), width: 8, height: 8, objects };
        let d = DetDataset {
            images: vec![image(vec![obj(0, false), obj(2, true)]), image(vec![obj(0, false)])],
            categories: vec![cat(1, "Tree"), cat(2, "Shrub"), cat(3, "Rock")],
            report: DropReport::default(),
            source: "test".into(),
        };
        // Shrub has no box; Rock only a crowd region.
        let names: Vec<&str> = d.categories_without_boxes().iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["Shrub", "Rock"]);
        assert!(d.subset(&[0]).categories_without_boxes().len() == 2);
    }

    /// The carve follows the file names: the same images in another folder and order give
    /// the same carved names; another seed gives another carve.
    #[test]
    fn the_carve_is_the_same_in_any_layout_and_order() {
        let set = |folder: &str, names: &[String]| DetDataset {
            images: names
                .iter()
                .enumerate()
                .map(|(i, n)| DetImage {
                    id: i as u64,
                    file: std::path::Path::new(folder).join(n),
                    width: 8,
                    height: 8,
                    objects: Vec::new(),
                })
                .collect(),
            categories: Vec::new(),
            report: DropReport::default(),
            source: folder.into(),
        };
        let names: Vec<String> = (0..40).map(|i| format!("{i:06}.jpg")).collect();
        let mut reversed = names.clone();
        reversed.reverse();
        let carved_names = |d: &DetDataset, seed: u64| {
            let (rest, carved) = d.carve(10, seed).unwrap();
            assert_eq!(rest.len() + carved.len(), d.len());
            let mut v: Vec<String> =
                carved.iter().map(|&i| d.images[i].file.file_name().unwrap().to_string_lossy().into_owned()).collect();
            v.sort();
            v
        };
        let voc = carved_names(&set("VOC2007/JPEGImages", &names), 3);
        assert_eq!(voc.len(), 10);
        assert_eq!(voc, carved_names(&set("images/train", &reversed), 3), "YOLO folder, reversed order");
        assert_ne!(voc, carved_names(&set("VOC2007/JPEGImages", &names), 4), "another seed");
        assert!(set("x", &names).carve(40, 3).is_err(), "nothing would be left");
    }
}
