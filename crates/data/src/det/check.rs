//! What a detection split holds and what is wrong with it (`detnas data check`, and the
//! summary fine-tuning logs at its start).

use super::{DetDataset, DropReport};
use serde::Serialize;

/// Boxes per class.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ClassCount {
    /// Category name.
    pub class: String,
    /// Its boxes.
    pub boxes: usize,
}

/// The spread of image sizes, pixels (displayed frame).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct SizeStats {
    /// Smallest image width, pixels.
    pub width_min: u32,
    /// Median image width, pixels.
    pub width_median: u32,
    /// Largest image width, pixels.
    pub width_max: u32,
    /// Smallest image height, pixels.
    pub height_min: u32,
    /// Median image height, pixels.
    pub height_median: u32,
    /// Largest image height, pixels.
    pub height_max: u32,
    /// Distinct `(width, height)` pairs.
    pub distinct: usize,
    /// The most frequent `(width, height)` and its count.
    pub most_common: (u32, u32, usize),
}

/// One split's summary.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SplitSummary {
    /// `train`, `search-val`, `test`.
    pub split: String,
    /// Where the split comes from (file or folder).
    pub source: String,
    /// Images in the split.
    pub images: usize,
    /// Boxes kept (crowd regions included).
    pub boxes: usize,
    /// Crowd regions among them (COCO `iscrowd`).
    pub crowd: usize,
    /// Boxes per category.
    pub per_class: Vec<ClassCount>,
    /// Images without a (non-crowd) box.
    pub without_boxes: usize,
    /// Images without boxes that fine-tuning leaves out (`data.keep_empty = false`).
    pub empty_dropped: usize,
    /// Boxes dropped or clipped while reading, and sizes read from images.
    pub report: DropReport,
    /// Image sizes.
    pub sizes: SizeStats,
    /// Every problem found, one line each naming the file.
    pub errors: Vec<String>,
}

impl SplitSummary {
    /// Summarises `d` as split `split`.
    pub fn of(split: &str, d: &DetDataset) -> SplitSummary {
        let mut per_class: Vec<ClassCount> =
            d.categories.iter().map(|c| ClassCount { class: c.name.clone(), boxes: 0 }).collect();
        let (mut boxes, mut crowd, mut without) = (0, 0, 0);
        for im in &d.images {
            boxes += im.objects.len();
            crowd += im.objects.iter().filter(|o| o.crowd).count();
            if im.objects.iter().all(|o| o.crowd) {
                without += 1;
            }
            for o in &im.objects {
                if let Some(c) = per_class.get_mut(o.label) {
                    c.boxes += 1;
                }
            }
        }
        SplitSummary {
            split: split.into(),
            source: d.source.clone(),
            images: d.len(),
            boxes,
            crowd,
            per_class,
            without_boxes: without,
            empty_dropped: 0,
            report: d.report.clone(),
            sizes: size_stats(d),
            errors: Vec::new(),
        }
    }
}

fn size_stats(d: &DetDataset) -> SizeStats {
    if d.images.is_empty() {
        return SizeStats::default();
    }
    let mut w: Vec<u32> = d.images.iter().map(|i| i.width).collect();
    let mut h: Vec<u32> = d.images.iter().map(|i| i.height).collect();
    w.sort_unstable();
    h.sort_unstable();
    let mut pairs = std::collections::BTreeMap::<(u32, u32), usize>::new();
    for i in &d.images {
        *pairs.entry((i.width, i.height)).or_default() += 1;
    }
    let (&(mw, mh), &mc) = pairs.iter().max_by_key(|(k, c)| (**c, std::cmp::Reverse(**k))).expect("non-empty");
    SizeStats {
        width_min: w[0],
        width_median: w[w.len() / 2],
        width_max: w[w.len() - 1],
        height_min: h[0],
        height_median: h[h.len() / 2],
        height_max: h[h.len() - 1],
        distinct: pairs.len(),
        most_common: (mw, mh, mc),
    }
}

/// Decodes every image of `d` in parallel (strictly, as training does); returns one line per
/// image that fails, naming the file.
pub fn decode_all(d: &DetDataset) -> Vec<String> {
    use rayon::prelude::*;
    let mut errors: Vec<(usize, String)> =
        (0..d.len()).into_par_iter().filter_map(|i| d.load(i).err().map(|e| (i, e.to_string()))).collect();
    errors.sort();
    errors.into_iter().map(|(_, e)| e).collect()
}

impl std::fmt::Display for SplitSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{} ({})", self.split, self.source)?;
        write!(f, "  {} images, {} boxes", self.images, self.boxes)?;
        if self.crowd > 0 {
            write!(f, " ({} crowd regions)", self.crowd)?;
        }
        writeln!(f)?;
        let n = self.per_class.len();
        let classes: Vec<String> = self.per_class.iter().map(|c| format!("{} {}", c.class, c.boxes)).collect();
        writeln!(f, "  {n} {}: {}", if n == 1 { "class" } else { "classes" }, classes.join(", "))?;
        write!(f, "  images without boxes: {}", self.without_boxes)?;
        if self.empty_dropped > 0 {
            write!(f, " (left out of training; data.keep_empty = true trains on them as background)")?;
        }
        writeln!(f)?;
        let r = &self.report;
        writeln!(
            f,
            "  boxes dropped: {} (non-positive size), {} (outside the image); clipped to the image: {}",
            r.degenerate, r.outside, r.clipped
        )?;
        if r.sizes_from_header + r.sizes_replaced > 0 {
            writeln!(
                f,
                "  image sizes read from the image: {} (none annotated), {} (annotation differed, data.size_mismatch = \"use-image\")",
                r.sizes_from_header, r.sizes_replaced
            )?;
        }
        for e in &r.examples {
            writeln!(f, "    e.g. {e}")?;
        }
        let s = &self.sizes;
        writeln!(
            f,
            "  image sizes: width {}–{} (median {}), height {}–{} (median {}); {} distinct, most common {}×{} ({} images)",
            s.width_min,
            s.width_max,
            s.width_median,
            s.height_min,
            s.height_max,
            s.height_median,
            s.distinct,
            s.most_common.0,
            s.most_common.1,
            s.most_common.2
        )?;
        if self.errors.is_empty() {
            write!(f, "  errors: none")
        } else {
            write!(f, "  errors: {}", self.errors.len())?;
            for e in &self.errors {
                write!(f, "\n    {e}")?;
            }
            Ok(())
        }
    }
}
