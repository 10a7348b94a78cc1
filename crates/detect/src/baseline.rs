//! The trivial detector a trained one must beat: a fixed grid of boxes at the training set's
//! median box size, every class at every cell, all with the same score. It looks at no pixel,
//! so a detector that does not score above it on the same split has learnt nothing usable.

use crate::DetectError;
use crate::evaluate::coco_eval;
use crate::metrics::{CocoDetection, CocoStats};
use detnas_data::det::DetDataset;
use serde::{Deserialize, Serialize};

/// At most this many cells per image (COCO scores the 100 best detections of each image
/// and class; the grid's spacing grows beyond it).
pub const MAX_CELLS: usize = 100;

/// The grid's box: the median width and height of the training boxes, pixels.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct GridBaseline {
    /// Box width, pixels.
    pub width: f64,
    /// Box height, pixels.
    pub height: f64,
}

/// The median of `v` (the mean of the two middle values for an even count).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { 0.5 * (v[n / 2 - 1] + v[n / 2]) }
}

impl GridBaseline {
    /// The grid of `train`: the median width and height of its boxes (crowd regions
    /// excluded); none without boxes.
    pub fn fit(train: &DetDataset) -> Option<GridBaseline> {
        let (w, h): (Vec<f64>, Vec<f64>) = train
            .images
            .iter()
            .flat_map(|i| i.objects.iter().filter(|o| !o.crowd))
            .map(|o| (f64::from(o.bbox[2] - o.bbox[0]), f64::from(o.bbox[3] - o.bbox[1])))
            .unzip();
        (!w.is_empty()).then(|| GridBaseline { width: median(w), height: median(h) })
    }

    /// The cells of an image of `width × height` pixels, `[x1, y1, x2, y2]`: boxes of the
    /// grid's size, centred on a regular grid of at most [`MAX_CELLS`] points covering the
    /// image, clipped to it.
    pub fn cells(&self, width: f64, height: f64) -> Vec<[f64; 4]> {
        let (bw, bh) = (self.width.max(1.0), self.height.max(1.0));
        let mut cols = (width / bw).ceil().max(1.0) as usize;
        let mut rows = (height / bh).ceil().max(1.0) as usize;
        while cols * rows > MAX_CELLS {
            if cols >= rows { cols -= 1 } else { rows -= 1 }
        }
        let mut out = Vec::with_capacity(cols * rows);
        for r in 0..rows {
            for c in 0..cols {
                let cx = width * (c as f64 + 0.5) / cols as f64;
                let cy = height * (r as f64 + 0.5) / rows as f64;
                let x1 = (cx - bw / 2.0).max(0.0);
                let y1 = (cy - bh / 2.0).max(0.0);
                out.push([x1, y1, (cx + bw / 2.0).min(width), (cy + bh / 2.0).min(height)]);
            }
        }
        out
    }

    /// The grid's detections on every image of `data` (COCO records, score 0.5).
    pub fn detections(&self, data: &DetDataset) -> Vec<CocoDetection> {
        let mut out = Vec::new();
        for image in &data.images {
            for [x1, y1, x2, y2] in self.cells(f64::from(image.width), f64::from(image.height)) {
                for c in &data.categories {
                    out.push(CocoDetection {
                        image_id: image.id,
                        category_id: c.id,
                        bbox: [x1, y1, x2 - x1, y2 - y1],
                        score: 0.5,
                    });
                }
            }
        }
        out
    }

    /// The grid's COCO box stats on `data`.
    ///
    /// # Errors
    /// As [`coco_eval`].
    pub fn score(&self, data: &DetDataset) -> Result<CocoStats, DetectError> {
        Ok(coco_eval(data, &self.detections(data))?.stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use detnas_data::det::{Category, DetImage, DropReport, Object};

    fn set(images: Vec<(u32, u32, Vec<[f32; 4]>)>) -> DetDataset {
        DetDataset {
            images: images
                .into_iter()
                .enumerate()
                .map(|(i, (w, h, boxes))| DetImage {
                    id: i as u64 + 1,
                    file: format!("{i}.png").into(),
                    width: w,
                    height: h,
                    objects: boxes
                        .into_iter()
                        .map(|b| Object {
                            bbox: b,
                            label: 0,
                            crowd: false,
                            difficult: false,
                            area: (b[2] - b[0]) * (b[3] - b[1]),
                        })
                        .collect(),
                })
                .collect(),
            categories: vec![Category { id: 1, name: "Tree".into() }],
            report: DropReport::default(),
            source: "test".into(),
        }
    }

    #[test]
    fn the_grid_has_the_median_box_and_covers_the_image() {
        let train = set(vec![(100, 100, vec![[0.0, 0.0, 10.0, 20.0], [5.0, 5.0, 35.0, 25.0], [0.0, 0.0, 20.0, 40.0]])]);
        let g = GridBaseline::fit(&train).unwrap();
        assert_eq!((g.width, g.height), (20.0, 20.0));
        let cells = g.cells(100.0, 60.0);
        assert_eq!(cells.len(), 5 * 3);
        assert_eq!(cells[0], [0.0, 0.0, 20.0, 20.0]);
        assert_eq!(cells[14], [80.0, 40.0, 100.0, 60.0]);
        // A huge image: at most MAX_CELLS cells, still of the median size.
        let big = g.cells(4000.0, 3000.0);
        assert!(big.len() <= MAX_CELLS && big.len() >= 90, "{}", big.len());
        assert!(big.iter().all(|c| (c[2] - c[0] - 20.0).abs() < 1e-9 && (c[3] - c[1] - 20.0).abs() < 1e-9));
        assert!(GridBaseline::fit(&set(vec![(10, 10, vec![])])).is_none());
    }

    /// Objects that sit on the grid's cells are found (AP 1); objects between cells are not.
    #[test]
    fn objects_on_the_grid_score_ap_one_and_off_it_zero() {
        let g = GridBaseline { width: 20.0, height: 20.0 };
        let cell = |x: f32, y: f32| [x, y, x + 20.0, y + 20.0];
        let on = set(vec![(40, 40, vec![cell(0.0, 0.0), cell(20.0, 0.0), cell(0.0, 20.0), cell(20.0, 20.0)])]);
        let stats = g.score(&on).unwrap();
        assert!((stats.ap50() - 1.0).abs() < 1e-9, "{stats:?}");
        let off = set(vec![(40, 40, vec![[8.0, 8.0, 14.0, 14.0]])]);
        assert_eq!(g.score(&off).unwrap().ap50(), 0.0);
    }
}
