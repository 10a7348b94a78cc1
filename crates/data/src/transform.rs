//! Classification transforms, done in one resampling pass per image.
//!
//! Train: RandomResizedCrop (torchvision's algorithm: 10 tries of area ∈ `scale`, log-uniform
//! aspect ∈ `ratio`, else a centre crop), horizontal flip (p = 0.5), colour jitter
//! (brightness, contrast, saturation, each a factor uniform in `[1 − j, 1 + j]`, applied in
//! that order). Eval: resize the short side to `resize`, centre crop `crop`.
//! Resampling is bilinear with half-pixel centres (no antialiasing).
//! Output is CHW RGB `f32` in 0–255; the [`InputConvention`] is applied on the device, after
//! the batch is uploaded ([`Pixels`]: as bytes when no value needs a fraction).

use detnas_space::rng::{below, unit};
use image::RgbImage;
use rand::RngCore;
use serde::{Deserialize, Serialize};

/// How pixels are presented to the network.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum InputConvention {
    /// The official DetNAS/SPOS convention: BGR channel order, values 0–255, no normalisation.
    #[default]
    OfficialBgr,
    /// RGB, `(x / 255 − mean) / std`.
    RgbNormalized {
        /// Per-channel mean (of x / 255).
        mean: [f32; 3],
        /// Per-channel standard deviation.
        std: [f32; 3],
    },
}

impl InputConvention {
    /// Applies the convention to CHW RGB 0–255 values in place, on the host (what the device
    /// computes; for tests and tools): BGR channel order, or `(x / 255 − mean) / std`.
    pub fn present(&self, out: &mut [f32], plane: usize) {
        present(out, plane, *self);
    }
}

/// A batch's pixels, CHW RGB in 0–255, before the [`InputConvention`]: bytes when every value
/// is a whole number in 0–255 (the images were not resampled, only copied, mirrored or padded),
/// else floats. Bytes take a quarter of the memory and of the upload.
#[derive(Clone, Debug, PartialEq)]
pub enum Pixels {
    /// Whole values 0–255, one byte each (uploaded as bytes).
    U8(Vec<u8>),
    /// Values with fractions.
    F32(Vec<f32>),
}

impl Pixels {
    /// Bytes when `v` allows them, else `v`.
    pub fn from_f32(v: Vec<f32>) -> Pixels {
        if v.iter().all(|&x| (0.0..=255.0).contains(&x) && x.fract() == 0.0) {
            Pixels::U8(v.iter().map(|&x| x as u8).collect())
        } else {
            Pixels::F32(v)
        }
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        match self {
            Pixels::U8(v) => v.len(),
            Pixels::F32(v) => v.len(),
        }
    }

    /// `true` without values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The values as floats.
    pub fn to_f32(&self) -> Vec<f32> {
        match self {
            Pixels::U8(v) => v.iter().map(|&x| f32::from(x)).collect(),
            Pixels::F32(v) => v.clone(),
        }
    }
}

/// A classification transform.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum ClsTransform {
    /// Training: RandomResizedCrop, flip, colour jitter.
    Train {
        /// Output side, pixels.
        size: u32,
        /// Crop area as a fraction of the image (default 0.08..1).
        scale: (f64, f64),
        /// Crop aspect ratio range (default 3/4..4/3).
        ratio: (f64, f64),
        /// Random horizontal flip (p = 0.5).
        flip: bool,
        /// Colour-jitter strength (0 disables).
        jitter: f32,
    },
    /// Evaluation: resize the short side, centre crop.
    Eval {
        /// Short side after resizing.
        resize: u32,
        /// Centre-crop side.
        crop: u32,
    },
}

impl ClsTransform {
    /// The standard training transform at `size`.
    pub fn train(size: u32) -> ClsTransform {
        ClsTransform::Train { size, scale: (0.08, 1.0), ratio: (0.75, 4.0 / 3.0), flip: true, jitter: 0.4 }
    }

    /// Output side in pixels.
    pub fn output_size(&self) -> u32 {
        match self {
            ClsTransform::Train { size, .. } => *size,
            ClsTransform::Eval { crop, .. } => *crop,
        }
    }

    /// Transforms `img` into `out` (`3 · s · s` values, CHW RGB 0–255). `rng` drives the random
    /// parts.
    ///
    /// # Panics
    /// When `out` does not hold `3 · s · s` values.
    pub fn apply<R: RngCore + ?Sized>(&self, img: &RgbImage, rng: &mut R, out: &mut [f32]) {
        let (w, h) = (img.width() as f64, img.height() as f64);
        let s = self.output_size() as usize;
        assert_eq!(out.len(), 3 * s * s, "output buffer size");
        let (crop, flip, jitter) = match *self {
            ClsTransform::Train { scale, ratio, flip, jitter, .. } => {
                let c = random_resized_crop(w, h, scale, ratio, rng);
                let f = flip && below(rng, 2) == 1;
                let j = if jitter > 0.0 {
                    Some([0, 1, 2].map(|_| 1.0 + jitter * (2.0 * unit(rng) as f32 - 1.0)))
                } else {
                    None
                };
                (c, f, j)
            }
            ClsTransform::Eval { resize, crop } => {
                let scale = resize as f64 / w.min(h);
                let side = crop as f64 / scale;
                ([(w - side) / 2.0, (h - side) / 2.0, side, side], false, None)
            }
        };
        resample(img, crop, (s, s), flip, out);
        if let Some([b, c, sat]) = jitter {
            colour_jitter(out, s * s, b, c, sat);
        }
    }
}

/// torchvision's RandomResizedCrop parameters: `[x, y, w, h]` in source pixels.
fn random_resized_crop<R: RngCore + ?Sized>(
    w: f64,
    h: f64,
    scale: (f64, f64),
    ratio: (f64, f64),
    rng: &mut R,
) -> [f64; 4] {
    let area = w * h;
    let (lr0, lr1) = (ratio.0.ln(), ratio.1.ln());
    for _ in 0..10 {
        let target = area * (scale.0 + (scale.1 - scale.0) * unit(rng));
        let aspect = (lr0 + (lr1 - lr0) * unit(rng)).exp();
        let cw = (target * aspect).sqrt().round();
        let ch = (target / aspect).sqrt().round();
        if cw > 0.0 && ch > 0.0 && cw <= w && ch <= h {
            let x = below(rng, (w - cw) as u64 + 1) as f64;
            let y = below(rng, (h - ch) as u64 + 1) as f64;
            return [x, y, cw, ch];
        }
    }
    // Fallback: centre crop at the closest allowed aspect ratio.
    let in_ratio = w / h;
    let (cw, ch) = if in_ratio < ratio.0 {
        (w, (w / ratio.0).round())
    } else if in_ratio > ratio.1 {
        ((h * ratio.1).round(), h)
    } else {
        (w, h)
    };
    [((w - cw) / 2.0).floor(), ((h - ch) / 2.0).floor(), cw, ch]
}

/// Bilinear resampling of source box `[x, y, bw, bh]` to `s × s`, CHW RGB in 0–255.
/// Bilinear resampling (half-pixel centres, no antialiasing) of the region `[x0, y0, w, h]`
/// of `img` to `out_w × out_h`, optionally mirrored, into CHW `out`.
pub(crate) fn resample(
    img: &RgbImage,
    [x0, y0, bw, bh]: [f64; 4],
    (out_w, out_h): (usize, usize),
    flip: bool,
    out: &mut [f32],
) {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let raw = img.as_raw();
    let plane = out_w * out_h;
    let axis = |o: usize, start: f64, len: f64, n_out: usize, n: usize| {
        let src = (start + (o as f64 + 0.5) * len / n_out as f64 - 0.5).clamp(0.0, (n - 1) as f64);
        let i0 = src.floor() as usize;
        let i1 = (i0 + 1).min(n - 1);
        (i0, i1, (src - i0 as f64) as f32)
    };
    let xs: Vec<_> = (0..out_w).map(|o| axis(o, x0, bw, out_w, w)).collect();
    for oy in 0..out_h {
        let (y0i, y1i, fy) = axis(oy, y0, bh, out_h, h);
        for ox in 0..out_w {
            let (x0i, x1i, fx) = xs[if flip { out_w - 1 - ox } else { ox }];
            for c in 0..3 {
                let p = |yy: usize, xx: usize| raw[(yy * w + xx) * 3 + c] as f32;
                let top = p(y0i, x0i) * (1.0 - fx) + p(y0i, x1i) * fx;
                let bot = p(y1i, x0i) * (1.0 - fx) + p(y1i, x1i) * fx;
                out[c * plane + oy * out_w + ox] = top * (1.0 - fy) + bot * fy;
            }
        }
    }
}

fn colour_jitter(out: &mut [f32], plane: usize, brightness: f32, contrast: f32, saturation: f32) {
    let clamp = |v: f32| v.clamp(0.0, 255.0);
    for v in out.iter_mut() {
        *v = clamp(*v * brightness);
    }
    let grey = |o: &[f32], i: usize| 0.299 * o[i] + 0.587 * o[plane + i] + 0.114 * o[2 * plane + i];
    let mean = (0..plane).map(|i| grey(out, i)).sum::<f32>() / plane as f32;
    for v in out.iter_mut() {
        *v = clamp((*v - mean) * contrast + mean);
    }
    for i in 0..plane {
        let g = grey(out, i);
        for c in 0..3 {
            out[c * plane + i] = clamp((out[c * plane + i] - g) * saturation + g);
        }
    }
}

pub(crate) fn present(out: &mut [f32], plane: usize, conv: InputConvention) {
    match conv {
        InputConvention::OfficialBgr => {
            let (r, rest) = out.split_at_mut(plane);
            let b = &mut rest[plane..];
            r.swap_with_slice(b);
        }
        InputConvention::RgbNormalized { mean, std } => {
            for c in 0..3 {
                for v in &mut out[c * plane..(c + 1) * plane] {
                    *v = (*v / 255.0 - mean[c]) / std[c];
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use detnas_space::rng::seeded;
    use image::Rgb;

    fn gradient(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| Rgb([x as u8, y as u8, 7]))
    }

    #[test]
    fn eval_identity_when_sizes_match() {
        let img = gradient(8, 8);
        let mut out = vec![0.0; 3 * 64];
        ClsTransform::Eval { resize: 8, crop: 8 }.apply(&img, &mut seeded(0), &mut out);
        InputConvention::OfficialBgr.present(&mut out, 64);
        // BGR order: channel 0 is blue (7), channel 2 red (= x).
        assert!(out[..64].iter().all(|&v| v == 7.0));
        assert_eq!(out[128 + 3 * 8 + 5], 5.0);
        assert_eq!(out[64 + 3 * 8 + 5], 3.0);
    }

    #[test]
    fn eval_centre_crop_and_normalisation() {
        let img = gradient(20, 10); // short side 10 → resize 10 (scale 1), crop 6 from the centre
        let mut out = vec![0.0; 3 * 36];
        let conv = InputConvention::RgbNormalized { mean: [0.0; 3], std: [1.0 / 255.0; 3] };
        ClsTransform::Eval { resize: 10, crop: 6 }.apply(&img, &mut seeded(0), &mut out);
        assert!(matches!(Pixels::from_f32(out.clone()), Pixels::U8(_)), "a crop without resampling is bytes");
        conv.present(&mut out, 36);
        assert!((out[0] - 7.0).abs() < 1e-4, "{}", out[0]); // x starts at (20 - 6) / 2
        assert!((out[36] - 2.0).abs() < 1e-4, "{}", out[36]); // y starts at (10 - 6) / 2
    }

    #[test]
    fn pixels_are_bytes_only_when_exact() {
        assert_eq!(Pixels::from_f32(vec![0.0, 255.0, 7.0]), Pixels::U8(vec![0, 255, 7]));
        assert_eq!(Pixels::from_f32(vec![0.5, 1.0]), Pixels::F32(vec![0.5, 1.0]));
        assert_eq!(Pixels::from_f32(vec![256.0]), Pixels::F32(vec![256.0]));
        assert_eq!(Pixels::U8(vec![3, 4]).to_f32(), vec![3.0, 4.0]);
    }

    #[test]
    fn train_crops_stay_inside_and_follow_the_seed() {
        let mut rng = seeded(3);
        for _ in 0..500 {
            let [x, y, w, h] = random_resized_crop(64.0, 48.0, (0.08, 1.0), (0.75, 4.0 / 3.0), &mut rng);
            assert!(x >= 0.0 && y >= 0.0 && x + w <= 64.0 && y + h <= 48.0 && w > 0.0 && h > 0.0);
        }
        let img = gradient(40, 30);
        let t = ClsTransform::train(16);
        let run = |seed| {
            let mut out = vec![0.0; 3 * 256];
            t.apply(&img, &mut seeded(seed), &mut out);
            out
        };
        assert_eq!(run(5), run(5));
        assert_ne!(run(5), run(6));
        assert!(run(7).iter().all(|v| (0.0..=255.0).contains(v)));
    }

    #[test]
    fn flip_mirrors() {
        let img = gradient(8, 8);
        let t = ClsTransform::Train { size: 8, scale: (1.0, 1.0), ratio: (1.0, 1.0), flip: true, jitter: 0.0 };
        let mut seen = [false; 2];
        for seed in 0..20 {
            let mut out = vec![0.0; 192];
            t.apply(&img, &mut seeded(seed), &mut out);
            seen[usize::from(out[0] == 7.0)] = true; // red channel (RGB) at x = 0: 0 or 7
        }
        assert_eq!(seen, [true, true]);
    }
}
