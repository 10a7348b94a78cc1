//! RoIAlign (Mask R-CNN; maskrcnn_benchmark's `ROIAlign` with `aligned = False`) built on
//! libtorch's differentiable `grid_sampler_2d`, and the multi-level pooler of FPN.
//!
//! Bin `(i, j)` of a RoI `(x1, y1, x2, y2)` (image pixels; `× spatial_scale` on the feature
//! map, RoI sides at least 1) averages `sr × sr` bilinear samples at
//! `y = y1 + (i + (iy + ½)/sr)·h/PH`, `x = x1 + (j + (ix + ½)/sr)·w/PW`, where feature value
//! `(r, c)` sits at integer coordinates. As in the reference kernel a sample with
//! `y < −1`, `y > H`, `x < −1` or `x > W` contributes 0, and other samples are clamped to
//! `[0, H−1] × [0, W−1]` before interpolation; gradients flow to the features (not to the
//! boxes).

use tch::{Kind, Tensor};

/// RoIAlign of `rois` `[K, 5]` (`batch index, x1, y1, x2, y2`) on `input` `[N, C, H, W]`.
///
/// # Shapes
/// `→ [K, C, output.0, output.1]`, in the order of `rois`.
pub fn roi_align(input: &Tensor, rois: &Tensor, output: (i64, i64), spatial_scale: f64, sampling_ratio: i64) -> Tensor {
    let (ph, pw) = output;
    let sr = sampling_ratio.max(1);
    let s = input.size();
    let (c, h, w) = (s[1], s[2], s[3]);
    let k = rois.size()[0];
    let dev = input.device();
    if k == 0 {
        return Tensor::zeros([0, c, ph, pw], (input.kind(), dev));
    }
    if dev == tch::Device::Cpu && !input.requires_grad() {
        match input.kind() {
            Kind::Float => return direct::<f32>(input, rois, output, spatial_scale, sr),
            Kind::Double => return direct::<f64>(input, rois, output, spatial_scale, sr),
            _ => {}
        }
    }
    // Sample positions in f64 (exact for f64 features, harmless for f32 ones).
    let rois = rois.to_kind(Kind::Double);
    let batch_idx: Vec<i64> = Vec::<i64>::try_from(rois.select(1, 0).to_kind(Kind::Int64).to_device(tch::Device::Cpu))
        .expect("rois on a readable device");
    let mut order: Vec<i64> = Vec::with_capacity(k as usize);
    let mut pieces = Vec::new();
    let mut images: Vec<i64> = batch_idx.clone();
    images.sort_unstable();
    images.dedup();
    for b in images {
        let idx: Vec<i64> = (0..k).filter(|&i| batch_idx[i as usize] == b).collect();
        let sel = rois.index_select(0, &Tensor::from_slice(&idx).to_device(dev));
        order.extend(&idx);
        pieces.push(align_one(&input.get(b).unsqueeze(0), &sel, (ph, pw), spatial_scale, sr, (c, h, w)));
    }
    in_original_order(&pieces, &order)
}

/// Element types of the direct kernel.
trait Sample: Copy + Send + Sync + tch::kind::Element + std::ops::AddAssign + std::ops::Mul<Output = Self> {
    fn of(v: f64) -> Self;
}
impl Sample for f32 {
    fn of(v: f64) -> Self {
        v as f32
    }
}
impl Sample for f64 {
    fn of(v: f64) -> Self {
        v
    }
}

/// The bilinear taps of one sample along one axis: `(low, high, weight of low, weight of
/// high)`, or `None` outside `[−1, size]` (the reference kernel's rule).
fn taps(mut v: f64, size: i64) -> Option<(usize, usize, f64, f64)> {
    if v < -1.0 || v > size as f64 {
        return None;
    }
    v = v.max(0.0);
    let mut lo = v.floor() as i64;
    let hi;
    if lo >= size - 1 {
        lo = size - 1;
        hi = size - 1;
        v = lo as f64;
    } else {
        hi = lo + 1;
    }
    let l = v - lo as f64;
    Some((lo as usize, hi as usize, 1.0 - l, l))
}

/// RoIAlign without autograd on the CPU: the reference kernel itself, on a channels-last
/// copy of the features, one RoI per task (rayon), channels innermost. Used for inference and
/// BN recalibration; training (features that need gradients) takes the `grid_sampler_2d`
/// path. Output `[K, C, PH, PW]` with channels-last strides.
fn direct<T: Sample>(input: &Tensor, rois: &Tensor, output: (i64, i64), scale: f64, sr: i64) -> Tensor {
    use rayon::prelude::*;
    let (ph, pw) = (output.0 as usize, output.1 as usize);
    let s = input.size();
    let (c, h, w) = (s[1] as usize, s[2], s[3]);
    let nhwc = input.permute([0, 2, 3, 1]).contiguous();
    let data: Vec<T> = Vec::<T>::try_from(nhwc.reshape([-1])).expect("CPU features");
    let r: Vec<f64> = Vec::<f64>::try_from(rois.to_kind(Kind::Double).contiguous().reshape([-1])).expect("CPU rois");
    let k = r.len() / 5;
    let per_roi = ph * pw * c;
    let mut out = vec![T::of(0.0); k * per_roi];
    let inv = 1.0 / (sr * sr) as f64;
    out.par_chunks_mut(per_roi.max(1)).enumerate().for_each(|(i, o)| {
        let b = r[i * 5] as usize;
        let (x1, y1) = (r[i * 5 + 1] * scale, r[i * 5 + 2] * scale);
        let rw = (r[i * 5 + 3] * scale - x1).max(1.0);
        let rh = (r[i * 5 + 4] * scale - y1).max(1.0);
        let (bh, bw) = (rh / ph as f64, rw / pw as f64);
        let img = &data[b * (h * w) as usize * c..(b + 1) * (h * w) as usize * c];
        let at = |y: usize, x: usize| &img[(y * w as usize + x) * c..(y * w as usize + x + 1) * c];
        for i in 0..ph {
            for j in 0..pw {
                let acc = &mut o[(i * pw + j) * c..(i * pw + j + 1) * c];
                for iy in 0..sr {
                    let Some((y0, y1_, hy, ly)) = taps(y1 + i as f64 * bh + (iy as f64 + 0.5) * bh / sr as f64, h)
                    else {
                        continue;
                    };
                    for ix in 0..sr {
                        let Some((x0, x1_, hx, lx)) = taps(x1 + j as f64 * bw + (ix as f64 + 0.5) * bw / sr as f64, w)
                        else {
                            continue;
                        };
                        let wts = [hy * hx * inv, hy * lx * inv, ly * hx * inv, ly * lx * inv].map(T::of);
                        let taps4 = [at(y0, x0), at(y0, x1_), at(y1_, x0), at(y1_, x1_)];
                        for (t, wt) in taps4.iter().zip(wts) {
                            for (a, &v) in acc.iter_mut().zip(t.iter()) {
                                *a += wt * v;
                            }
                        }
                    }
                }
            }
        }
    });
    Tensor::from_slice(&out).reshape([k as i64, ph as i64, pw as i64, c as i64]).permute([0, 3, 1, 2])
}

/// Concatenates `pieces`, whose rows are the original rows `order` (a permutation), and puts
/// the rows back in original order.
fn in_original_order(pieces: &[Tensor], order: &[i64]) -> Tensor {
    let out = Tensor::cat(pieces, 0);
    let mut inverse = vec![0i64; order.len()];
    for (pos, &i) in order.iter().enumerate() {
        inverse[i as usize] = pos as i64;
    }
    out.index_select(0, &Tensor::from_slice(&inverse).to_device(out.device()))
}

/// Sample coordinates `[R, P·sr]` along one axis, and their validity mask.
fn sample_axis(start: &Tensor, len: &Tensor, bins: i64, sr: i64, size: i64) -> (Tensor, Tensor) {
    let dev = start.device();
    let offs: Vec<f64> = (0..bins * sr).map(|t| ((t / sr) as f64) + ((t % sr) as f64 + 0.5) / sr as f64).collect();
    let offs = Tensor::from_slice(&offs).to_device(dev).unsqueeze(0);
    let pos = start.unsqueeze(1) + offs * (len / bins as f64).unsqueeze(1);
    let valid = pos.ge(-1.0).logical_and(&pos.le(size as f64));
    (pos.clamp(0.0, (size - 1).max(0) as f64), valid)
}

fn align_one(img: &Tensor, rois: &Tensor, out: (i64, i64), scale: f64, sr: i64, chw: (i64, i64, i64)) -> Tensor {
    let (ph, pw) = out;
    let (c, h, w) = chw;
    let r = rois.size()[0];
    let x1 = rois.select(1, 1) * scale;
    let y1 = rois.select(1, 2) * scale;
    let rw = (rois.select(1, 3) * scale - &x1).clamp_min(1.0);
    let rh = (rois.select(1, 4) * scale - &y1).clamp_min(1.0);
    let (ys, vy) = sample_axis(&y1, &rh, ph, sr, h);
    let (xs, vx) = sample_axis(&x1, &rw, pw, sr, w);
    // align_corners = true: −1 ↦ index 0, +1 ↦ index size−1.
    let norm = |v: &Tensor, size: i64| if size > 1 { v * (2.0 / (size - 1) as f64) - 1.0 } else { v * 0.0 };
    let gy = norm(&ys, h).unsqueeze(2).expand([r, ph * sr, pw * sr], false);
    let gx = norm(&xs, w).unsqueeze(1).expand([r, ph * sr, pw * sr], false);
    let grid = Tensor::stack(&[gx, gy], 3).reshape([1, r * ph * sr, pw * sr, 2]).to_kind(img.kind());
    // interpolation 0 = bilinear, padding 1 = border (the clamp above makes it exact).
    let sampled = img.grid_sampler_2d(&grid, 0, 1, true);
    let mask =
        (vy.unsqueeze(2).logical_and(&vx.unsqueeze(1))).to_kind(img.kind()).reshape([1, 1, r * ph * sr, pw * sr]);
    // Each bin's sr × sr samples are a contiguous sr × sr tile: average pooling takes their
    // mean (much faster than a strided mean over a 6-D view).
    (sampled * mask)
        .avg_pool2d([sr, sr], [sr, sr], [0, 0], false, true, None)
        .reshape([c, r, ph, pw])
        .permute([1, 0, 2, 3])
}

/// FPN level of each RoI: `⌊k0 + log2(√area / canonical)⌋` clamped to `[min, max]`
/// (FPN paper eq. 1; k0 = 4, canonical size 224).
pub fn map_levels(rois: &Tensor, k_min: i64, k_max: i64, canonical: f64, k0: f64) -> Tensor {
    let b = rois.narrow(1, 1, 4);
    let s = crate::boxes::area(&b).sqrt();
    ((s / canonical + 1e-6).log2() + k0).floor().clamp(k_min as f64, k_max as f64).to_kind(Kind::Int64) - k_min
}

/// RoIAlign over FPN levels `P_kmin..P_kmax`, each RoI on the level chosen by [`map_levels`].
#[derive(Clone, Debug, PartialEq)]
pub struct MultiScaleRoiAlign {
    pub output: (i64, i64),
    pub sampling_ratio: i64,
    /// Stride of each pooled level (4, 8, 16, 32 for P2–P5).
    pub strides: Vec<i64>,
}

impl MultiScaleRoiAlign {
    /// Pools `rois` `[K, 5]` from `features` (one per stride) → `[K, C, out.0, out.1]`.
    pub fn pool(&self, features: &[Tensor], rois: &Tensor) -> Tensor {
        let k_min = (self.strides[0] as f64).log2().round() as i64;
        let k_max = k_min + self.strides.len() as i64 - 1;
        let levels = Vec::<i64>::try_from(map_levels(rois, k_min, k_max, 224.0, 4.0).to_device(tch::Device::Cpu))
            .expect("levels");
        let c = features[0].size()[1];
        let k = rois.size()[0];
        let dev = rois.device();
        let mut order = Vec::with_capacity(k as usize);
        let mut pieces = Vec::new();
        for (l, f) in features.iter().enumerate() {
            let idx: Vec<i64> = (0..k).filter(|&i| levels[i as usize] == l as i64).collect();
            if idx.is_empty() {
                continue;
            }
            let sel = rois.index_select(0, &Tensor::from_slice(&idx).to_device(dev));
            pieces.push(roi_align(f, &sel, self.output, 1.0 / self.strides[l] as f64, self.sampling_ratio));
            order.extend(idx);
        }
        if pieces.is_empty() {
            return Tensor::zeros([0, c, self.output.0, self.output.1], (features[0].kind(), dev));
        }
        in_original_order(&pieces, &order)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    /// Reference bilinear interpolation of the legacy kernel, for the hand-computed case.
    fn bilinear(f: &[f64], h: i64, w: i64, mut y: f64, mut x: f64) -> f64 {
        if y < -1.0 || y > h as f64 || x < -1.0 || x > w as f64 {
            return 0.0;
        }
        y = y.max(0.0);
        x = x.max(0.0);
        let (mut y0, mut x0) = (y.floor() as i64, x.floor() as i64);
        let (y1, x1);
        if y0 >= h - 1 {
            y0 = h - 1;
            y1 = h - 1;
            y = y0 as f64;
        } else {
            y1 = y0 + 1;
        }
        if x0 >= w - 1 {
            x0 = w - 1;
            x1 = w - 1;
            x = x0 as f64;
        } else {
            x1 = x0 + 1;
        }
        let (ly, lx) = (y - y0 as f64, x - x0 as f64);
        let at = |r: i64, c: i64| f[(r * w + c) as usize];
        (1.0 - ly) * (1.0 - lx) * at(y0, x0)
            + (1.0 - ly) * lx * at(y0, x1)
            + ly * (1.0 - lx) * at(y1, x0)
            + ly * lx * at(y1, x1)
    }

    #[test]
    fn hand_computed_bilinear() {
        // A 4×5 ramp f(r, c) = 10r + c: bilinear interpolation is exact inside, so a 1×1 bin
        // over RoI (1, 1)–(3, 2) with 2×2 samples averages the ramp at the sample points.
        let f: Vec<f32> = (0..20).map(|i| (10 * (i / 5) + i % 5) as f32).collect();
        let x = Tensor::from_slice(&f).reshape([1, 1, 4, 5]);
        let rois = Tensor::from_slice(&[0f32, 1.0, 1.0, 3.0, 2.0]).reshape([1, 5]);
        let out = f32::try_from(roi_align(&x, &rois, (1, 1), 1.0, 2)).unwrap();
        // Samples at x ∈ {1.5, 2.5}, y ∈ {1.25, 1.75}: mean = 10·1.5 + 2 = 17.
        assert!((out - 17.0).abs() < 1e-5, "{out}");
    }

    #[test]
    fn matches_reference_kernel_including_borders() {
        tch::manual_seed(0);
        let (h, w) = (6i64, 7i64);
        let x = Tensor::randn([2, 3, h, w], (Kind::Double, Device::Cpu));
        let rois = Tensor::from_slice(&[
            1f64, 0.3, 0.7, 4.2, 5.1, // inside
            0.0, -3.0, -2.5, 2.0, 1.0, // partly outside the top-left (samples below −1 are 0)
            1.0, 5.5, 4.0, 9.5, 8.0, // past the right/bottom edges
            0.0, 2.0, 2.0, 2.2, 2.1, // smaller than a pixel (side clamped to 1)
        ])
        .reshape([4, 5]);
        let (ph, pw, sr, scale) = (3i64, 2i64, 2i64, 0.8);
        let got = roi_align(&x, &rois, (ph, pw), scale, sr);
        assert_eq!(got.size(), vec![4, 3, ph, pw]);
        let r = Vec::<f64>::try_from(rois.reshape([-1])).unwrap();
        for k in 0..4usize {
            let b = r[k * 5] as i64;
            let (x1, y1) = (r[k * 5 + 1] * scale, r[k * 5 + 2] * scale);
            let rw = (r[k * 5 + 3] * scale - x1).max(1.0);
            let rh = (r[k * 5 + 4] * scale - y1).max(1.0);
            for ch in 0..3 {
                let f = Vec::<f64>::try_from(x.get(b).get(ch).reshape([-1])).unwrap();
                for i in 0..ph {
                    for j in 0..pw {
                        let mut acc = 0.0;
                        for iy in 0..sr {
                            for ix in 0..sr {
                                let y = y1 + (i as f64 + (iy as f64 + 0.5) / sr as f64) * rh / ph as f64;
                                let xx = x1 + (j as f64 + (ix as f64 + 0.5) / sr as f64) * rw / pw as f64;
                                acc += bilinear(&f, h, w, y, xx);
                            }
                        }
                        let want = acc / (sr * sr) as f64;
                        let g = got.get(k as i64).get(ch).get(i).get(j).double_value(&[]);
                        assert!((g - want).abs() < 1e-9, "roi {k} ch {ch} bin ({i},{j}): {g} vs {want}");
                    }
                }
            }
        }
    }

    #[test]
    fn direct_kernel_equals_differentiable_path() {
        // The no-autograd kernel (inference, recalibration) and the grid-sampler path
        // (training) are the same function: f32 features, RoIs inside, across and outside
        // the borders, several images, channels-last and contiguous inputs.
        tch::manual_seed(4);
        let x = Tensor::randn([3, 5, 9, 11], (Kind::Float, Device::Cpu));
        let rois = Tensor::from_slice(&[
            0f32, 0.5, 1.0, 30.0, 20.0, 2.0, -10.0, -6.0, 8.0, 9.0, 1.0, 20.0, 14.0, 60.0, 50.0, 2.0, 7.0, 7.0, 7.5,
            7.2, 0.0, 3.3, 2.2, 40.1, 33.3,
        ])
        .reshape([5, 5]);
        let direct = roi_align(&x, &rois, (3, 4), 0.25, 2);
        let cl = detnas_nn::layout::to_channels_last(&x);
        let direct_cl = roi_align(&cl, &rois, (3, 4), 0.25, 2);
        let grid = roi_align(&x.set_requires_grad(true), &rois, (3, 4), 0.25, 2).detach();
        assert_eq!(direct.size(), grid.size());
        let d = f64::try_from((&direct - &grid).abs().max()).unwrap();
        assert!(d < 1e-5, "direct vs grid: {d}");
        assert_eq!(f64::try_from((&direct - &direct_cl).abs().max()).unwrap(), 0.0);
    }

    #[test]
    fn numerical_gradient() {
        tch::manual_seed(1);
        let x = Tensor::randn([1, 2, 5, 5], (Kind::Double, Device::Cpu)).set_requires_grad(true);
        let rois = Tensor::from_slice(&[0f64, 0.6, 0.9, 3.7, 4.2, 0.0, 1.1, 0.2, 2.9, 2.4]).reshape([2, 5]);
        let wts = Tensor::randn([2, 2, 2, 2], (Kind::Double, Device::Cpu));
        let f = |x: &Tensor| (roi_align(x, &rois, (2, 2), 1.0, 2) * &wts).sum(Kind::Double);
        f(&x).backward();
        let analytic = Vec::<f64>::try_from(x.grad().reshape([-1])).unwrap();
        let base = x.detach();
        let eps = 1e-6;
        for i in 0..50 {
            let e = Tensor::zeros([50], (Kind::Double, Device::Cpu));
            let _ = e.get(i).fill_(eps);
            let e = e.reshape([1, 2, 5, 5]);
            let num = (f(&(&base + &e)).double_value(&[]) - f(&(&base - &e)).double_value(&[])) / (2.0 * eps);
            assert!((num - analytic[i as usize]).abs() < 1e-6, "element {i}: {num} vs {}", analytic[i as usize]);
        }
    }

    #[test]
    fn levels_by_size() {
        let rois =
            Tensor::from_slice(&[0f32, 0.0, 0.0, 224.0, 224.0, 0.0, 0.0, 0.0, 32.0, 32.0, 0.0, 0.0, 0.0, 900.0, 900.0])
                .reshape([3, 5]);
        assert_eq!(Vec::<i64>::try_from(map_levels(&rois, 2, 5, 224.0, 4.0)).unwrap(), vec![2, 0, 3]);
    }
}
