//! Detection transforms: resize (short side to `min_size`, long side at most `max_size`,
//! maskrcnn_benchmark's rule), optional horizontal flip (p = 0.5, boxes too), and batch
//! collation padded to a multiple of `divisibility` (32). Resampling is the classification
//! transforms' bilinear kernel (half-pixel centres); output is CHW `f32` in the chosen [`InputConvention`].

use super::DetImage;
use crate::InputConvention;
use crate::transform::{Pixels, resample};
use detnas_space::rng::{below, unit};
use image::RgbImage;
use rand::RngCore;
use serde::{Deserialize, Serialize};

/// Detection resizing (short side drawn from `min_size`, long side bounded by `max_size`), horizontal flip and padding.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetTransform {
    /// Short side after resizing; several values: one drawn per image (multi-scale training).
    pub min_size: Vec<u32>,
    /// Upper bound of the long side.
    pub max_size: u32,
    /// Horizontal flip with probability 0.5.
    pub flip: bool,
}

/// One transformed image with its training targets (crowd regions left out).
#[derive(Clone, Debug, PartialEq)]
pub struct DetSample {
    /// CHW RGB in 0–255, `3 · height · width`.
    pub data: Vec<f32>,
    /// Height after resizing, pixels.
    pub height: u32,
    /// Width after resizing, pixels.
    pub width: u32,
    /// `(sx, sy)`: resized = original × scale (per axis).
    pub scale: (f32, f32),
    /// Whether the image was flipped horizontally.
    pub flipped: bool,
    /// `(x1, y1, x2, y2)` in resized coordinates.
    pub boxes: Vec<[f32; 4]>,
    /// Box labels (the category's index, from 0).
    pub labels: Vec<i64>,
}

/// The resized size `(width, height)` of a `w × h` image.
pub fn resized_size(w: u32, h: u32, min_size: u32, max_size: u32) -> (u32, u32) {
    let (short, long) = (w.min(h) as f64, w.max(h) as f64);
    let mut s = min_size as f64 / short;
    if long * s > max_size as f64 {
        s = max_size as f64 / long;
    }
    (((w as f64 * s).round() as u32).max(1), ((h as f64 * s).round() as u32).max(1))
}

impl DetTransform {
    /// Transforms image `img` with annotation `ann`.
    pub fn apply<R: RngCore + ?Sized>(&self, img: &RgbImage, ann: &DetImage, rng: &mut R) -> DetSample {
        let min = self.min_size[below(rng, self.min_size.len() as u64) as usize];
        let flipped = self.flip && unit(rng) < 0.5;
        let (w, h) = resized_size(img.width(), img.height(), min, self.max_size);
        let (sx, sy) = (w as f32 / img.width() as f32, h as f32 / img.height() as f32);
        let mut data = vec![0f32; 3 * (w * h) as usize];
        let full = [0.0, 0.0, img.width() as f64, img.height() as f64];
        resample(img, full, (w as usize, h as usize), flipped, &mut data);
        let (mut boxes, mut labels) = (Vec::new(), Vec::new());
        for o in ann.objects.iter().filter(|o| !o.crowd) {
            let [x1, y1, x2, y2] = o.bbox;
            let (x1, x2) = (x1 * sx, x2 * sx);
            let (x1, x2) = if flipped { (w as f32 - x2, w as f32 - x1) } else { (x1, x2) };
            boxes.push([x1, y1 * sy, x2, y2 * sy]);
            labels.push(o.label as i64);
        }
        DetSample { data, height: h, width: w, scale: (sx, sy), flipped, boxes, labels }
    }
}

/// A padded batch: `images` is `[n, 3, height, width]` (zeros outside each image), RGB 0–255
/// before `convention`.
#[derive(Clone, Debug)]
pub struct DetBatch {
    /// The padded images, `N·3·H·W` values.
    pub images: Pixels,
    /// How the network expects the pixels (applied on the device).
    pub convention: InputConvention,
    /// Padded height, pixels.
    pub height: u32,
    /// Padded width, pixels.
    pub width: u32,
    /// Each image's sizes, scale, boxes and labels.
    pub samples: Vec<DetSample>,
    /// Dataset indices, in batch order.
    pub indices: Vec<usize>,
}

/// Pads samples to a common size, a multiple of `divisibility`; the network's pixel
/// `convention` is recorded.
pub fn collate(
    samples: Vec<DetSample>,
    indices: Vec<usize>,
    divisibility: u32,
    convention: InputConvention,
) -> DetBatch {
    let d = divisibility.max(1);
    let round = |v: u32| v.div_ceil(d) * d;
    let height = round(samples.iter().map(|s| s.height).max().unwrap_or(d));
    let width = round(samples.iter().map(|s| s.width).max().unwrap_or(d));
    let (hw, plane) = ((height * width) as usize, width as usize);
    let mut images = vec![0f32; samples.len() * 3 * hw];
    for (k, s) in samples.iter().enumerate() {
        let sp = (s.height * s.width) as usize;
        for c in 0..3 {
            for y in 0..s.height as usize {
                let src = &s.data[c * sp + y * s.width as usize..c * sp + (y + 1) * s.width as usize];
                let at = k * 3 * hw + c * hw + y * plane;
                images[at..at + s.width as usize].copy_from_slice(src);
            }
        }
    }
    DetBatch { images: Pixels::from_f32(images), convention, height, width, samples, indices }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::det::Object;
    use detnas_space::rng::seeded;
    use image::Rgb;

    fn ann(w: u32, h: u32) -> DetImage {
        let o = |b, crowd| Object { bbox: b, label: 1, crowd, difficult: false, area: 1.0 };
        DetImage {
            id: 1,
            file: "x".into(),
            width: w,
            height: h,
            objects: vec![o([10.0, 20.0, 30.0, 40.0], false), o([0.0, 0.0, 5.0, 5.0], true)],
        }
    }

    #[test]
    fn resize_rule() {
        assert_eq!(resized_size(640, 480, 800, 1333), (1067, 800));
        assert_eq!(resized_size(2000, 500, 800, 1333), (1333, 333));
        assert_eq!(resized_size(100, 100, 100, 100), (100, 100));
    }

    #[test]
    fn boxes_follow_resize_and_flip() {
        let img = RgbImage::from_fn(100, 50, |x, _| Rgb([x as u8, 0, 0]));
        let t = DetTransform { min_size: vec![100], max_size: 1000, flip: true };
        let mut seen = [false; 2];
        for seed in 0..20 {
            let s = t.apply(&img, &ann(100, 50), &mut seeded(seed));
            assert_eq!((s.width, s.height, s.scale), (200, 100, (2.0, 2.0)));
            assert_eq!(s.boxes.len(), 1, "crowd regions are not targets");
            let want = if s.flipped { [140.0, 40.0, 180.0, 80.0] } else { [20.0, 40.0, 60.0, 80.0] };
            assert_eq!(s.boxes[0], want);
            // Red is the first RGB plane; the left edge is dark unless flipped.
            let red0 = s.data[0];
            assert_eq!(red0 > 50.0, s.flipped);
            seen[usize::from(s.flipped)] = true;
        }
        assert!(seen[0] && seen[1]);
    }

    #[test]
    fn collate_pads_to_divisibility() {
        let mk = |w: u32, h: u32| DetSample {
            data: vec![1.0; (3 * w * h) as usize],
            height: h,
            width: w,
            scale: (1.0, 1.0),
            flipped: false,
            boxes: vec![],
            labels: vec![],
        };
        let b = collate(vec![mk(40, 20), mk(10, 33)], vec![0, 1], 32, InputConvention::OfficialBgr);
        let images = b.images.to_f32();
        assert_eq!((b.width, b.height), (64, 64));
        let at = |k: usize, c: usize, y: usize, x: usize| images[k * 3 * 64 * 64 + c * 64 * 64 + y * 64 + x];
        assert_eq!((at(0, 2, 19, 39), at(0, 2, 20, 39), at(0, 0, 0, 40)), (1.0, 0.0, 0.0));
        assert_eq!((at(1, 1, 32, 9), at(1, 1, 32, 10)), (1.0, 0.0));
    }
}
