//! RoIAlign (Mask R-CNN; maskrcnn_benchmark's `ROIAlign` with `aligned = False`) and the
//! multi-level pooler of FPN.
//!
//! Bin `(i, j)` of a RoI `(x1, y1, x2, y2)` (image pixels; `× spatial_scale` on the feature
//! map, RoI sides at least 1) averages `sr × sr` bilinear samples at
//! `y = y1 + (i + (iy + ½)/sr)·h/PH`, `x = x1 + (j + (ix + ½)/sr)·w/PW`, where feature value
//! `(r, c)` sits at integer coordinates. As in the reference kernel a sample with
//! `y < −1`, `y > H`, `x < −1` or `x > W` contributes 0, and other samples are clamped to
//! `[0, H−1] × [0, W−1]` before interpolation; gradients flow to the features (not to the
//! boxes).
//!
//! Two implementations of the same function:
//! * [`gather_align`] — tensor operators on the features' device, one pass over every RoI of
//!   every image and pyramid level (each RoI reads its level's rows of one channels-last table
//!   of all levels), differentiable (the backward of a gather is an index-add), with no host
//!   round-trip and a fixed number of operators whatever the batch;
//! * a direct kernel on host memory (rayon, one RoI per task) for inference and BN
//!   recalibration on the CPU, where it is faster.

use detnas_device::host;
use tch::{Kind, Tensor};

/// RoIAlign of `rois` `[K, 5]` (`batch index, x1, y1, x2, y2`) on `input` `[N, C, H, W]`.
///
/// # Shapes
/// `→ [K, C, output.0, output.1]`, in the order of `rois`.
///
/// # Errors
/// A libtorch error reading the features (host kernel).
pub fn roi_align(
    input: &Tensor,
    rois: &Tensor,
    output: (i64, i64),
    spatial_scale: f64,
    sampling_ratio: i64,
) -> Result<Tensor, tch::TchError> {
    let sr = sampling_ratio.max(1);
    let s = input.size();
    if rois.size()[0] == 0 {
        return Ok(Tensor::zeros([0, s[1], output.0, output.1], (input.kind(), input.device())));
    }
    if let Some(out) = host_kernel(input, rois, output, spatial_scale, sr)? {
        return Ok(out);
    }
    let level = Tensor::zeros([rois.size()[0]], (Kind::Int64, rois.device()));
    Ok(gather_align(&[input.shallow_clone()], &[spatial_scale], rois, &level, output, sr))
}

/// The direct kernel's result when it applies (host kernels, features without gradient).
fn host_kernel(
    input: &Tensor,
    rois: &Tensor,
    output: (i64, i64),
    scale: f64,
    sr: i64,
) -> Result<Option<Tensor>, tch::TchError> {
    if !detnas_device::settings::host_kernels(input.device()) || input.requires_grad() {
        return Ok(None);
    }
    Ok(match input.kind() {
        Kind::Float => Some(direct::<f32>(input, rois, output, scale, sr)?),
        Kind::Double => Some(direct::<f64>(input, rois, output, scale, sr)?),
        _ => None,
    })
}

/// RoIAlign of `rois` `[K, 5]` on pyramid `features` (`[N, C, H_l, W_l]`, one per level, the
/// same `C`) with `scales[l]` each: RoI `k` is pooled from level `level[k]` (`[K]` i64, on the
/// device). One pass: the levels are laid out as one channels-last table `[Σ N·H_l·W_l, C]`,
/// each sample's four bilinear taps are gathered from its RoI's level and image, weighted and
/// averaged. Positions are computed in f64.
///
/// # Shapes
/// `→ [K, C, output.0, output.1]`, in the order of `rois`.
///
/// # Panics
/// Never: the four bilinear taps are always summed.
pub fn gather_align(
    features: &[Tensor],
    scales: &[f64],
    rois: &Tensor,
    level: &Tensor,
    output: (i64, i64),
    sr: i64,
) -> Tensor {
    let (ph, pw) = output;
    let c = features[0].size()[1];
    let k = rois.size()[0];
    let device = rois.device();
    let kind = features[0].kind();
    if k == 0 {
        return Tensor::zeros([0, c, ph, pw], (kind, device));
    }
    let tables: Vec<Tensor> = features.iter().map(|f| f.permute([0, 2, 3, 1]).reshape([-1, c])).collect();
    let table = if tables.len() == 1 { tables[0].shallow_clone() } else { Tensor::cat(&tables, 0) };
    // Per level: first row, height, width, scale.
    let mut consts = Vec::with_capacity(4 * features.len());
    let mut offset = 0i64;
    for (f, &scale) in features.iter().zip(scales) {
        let s = f.size();
        consts.extend([offset as f64, s[2] as f64, s[3] as f64, scale]);
        offset += s[0] * s[2] * s[3];
    }
    let consts = host::upload(&consts, &[features.len() as i64, 4], device, "detect.roi_align.levels");
    let per = consts.index_select(0, level);
    let (first, h, w, scale) = (per.select(1, 0), per.select(1, 1), per.select(1, 2), per.select(1, 3));
    let r = rois.to_kind(Kind::Double);
    let img = r.select(1, 0);
    let x1 = r.select(1, 1) * &scale;
    let y1 = r.select(1, 2) * &scale;
    let rw = (r.select(1, 3) * &scale - &x1).clamp_min(1.0);
    let rh = (r.select(1, 4) * &scale - &y1).clamp_min(1.0);
    let (y0, y1t, wy0, wy1) = axis_taps(&y1, &rh, ph, sr, &h);
    let (x0, x1t, wx0, wx1) = axis_taps(&x1, &rw, pw, sr, &w);
    let base = (first + img * &h * &w).to_kind(Kind::Int64).view([k, 1, 1]);
    let wl = w.to_kind(Kind::Int64).view([k, 1, 1]);
    let mut out: Option<Tensor> = None;
    for (yi, wy) in [(&y0, &wy0), (&y1t, &wy1)] {
        for (xi, wx) in [(&x0, &wx0), (&x1t, &wx1)] {
            let idx = &base + yi.unsqueeze(2) * &wl + xi.unsqueeze(1);
            let weight = (wy.unsqueeze(2) * wx.unsqueeze(1)).to_kind(kind).unsqueeze(3);
            let taps = table.index_select(0, &idx.reshape([-1])).view([k, ph * sr, pw * sr, c]) * weight;
            out = Some(match out {
                Some(o) => o + taps,
                None => taps,
            });
        }
    }
    let out = out.expect("four taps").view([k, ph, sr, pw, sr, c]).sum_dim_intlist(&[2i64, 4][..], false, kind);
    (out / (sr * sr) as f64).permute([0, 3, 1, 2])
}

/// Along one axis of `K` RoIs starting at `start` `[K]` with length `len` `[K]` on maps of
/// `size` `[K]` (f64): the `bins · sr` sample positions' low and high taps `[K, bins·sr]` (i64)
/// and their weights (f64, 0 for samples outside `[−1, size]`), as the reference kernel's
/// bilinear interpolation.
fn axis_taps(start: &Tensor, len: &Tensor, bins: i64, sr: i64, size: &Tensor) -> (Tensor, Tensor, Tensor, Tensor) {
    let t = Tensor::arange(bins * sr, (Kind::Double, start.device()));
    let bin = (&t / sr as f64).floor();
    let offs = &bin + ((t - &bin * sr as f64) + 0.5) / sr as f64;
    let v = start.unsqueeze(1) + offs.unsqueeze(0) * (len / bins as f64).unsqueeze(1);
    let size = size.unsqueeze(1);
    let inside = v.ge(-1.0).logical_and(&v.le_tensor(&size));
    let v = v.clamp_min(0.0);
    let last = &size - 1.0;
    let lo = v.floor();
    let edge = lo.ge_tensor(&last);
    let lo = lo.where_self(&edge.logical_not(), &last);
    let hi = (&lo + 1.0).where_self(&edge.logical_not(), &last);
    let v = v.where_self(&edge.logical_not(), &lo);
    let l = (v - &lo) * inside.to_kind(Kind::Double);
    let hw = inside.to_kind(Kind::Double) - &l;
    (lo.to_kind(Kind::Int64), hi.to_kind(Kind::Int64), hw, l)
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

/// RoIAlign without autograd on host memory: the reference kernel itself, on a channels-last
/// copy of the features, one RoI per task (rayon), channels innermost. Used for inference and
/// BN recalibration on the CPU. Output `[K, C, PH, PW]` with channels-last strides.
fn direct<T: Sample>(
    input: &Tensor,
    rois: &Tensor,
    output: (i64, i64),
    scale: f64,
    sr: i64,
) -> Result<Tensor, tch::TchError> {
    let (ph, pw) = (output.0 as usize, output.1 as usize);
    let s = input.size();
    let (c, h, w) = (s[1] as usize, s[2], s[3]);
    // Channels-last features (the CPU's inference layout) are read in place, others copied once.
    let nhwc = input.permute([0, 2, 3, 1]);
    let r: Vec<f64> = host::read_for_host_kernel(rois, "detect.roi_align.direct")?;
    let out = host::with_slice_for_host_kernel(&nhwc, "detect.roi_align.direct", |data: &[T]| {
        kernel(data, &r, (c, h, w), (ph, pw), scale, sr)
    })?;
    let k = r.len() / 5;
    let shape = [k as i64, ph as i64, pw as i64, c as i64];
    Ok(host::upload(&out, &shape, input.device(), "detect.roi_align.direct").permute([0, 3, 1, 2]))
}

/// The direct kernel on NHWC `data` of `(c, h, w)` maps and RoIs `r` (5 per RoI): `[K, PH, PW, C]`.
fn kernel<T: Sample>(
    data: &[T],
    r: &[f64],
    (c, h, w): (usize, i64, i64),
    (ph, pw): (usize, usize),
    scale: f64,
    sr: i64,
) -> Vec<T> {
    use rayon::prelude::*;
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
    out
}

/// Concatenates `pieces`, whose rows are the original rows `order` (a permutation), and puts
/// the rows back in original order.
fn in_original_order(pieces: &[Tensor], order: &[i64]) -> Tensor {
    let out = Tensor::cat(pieces, 0);
    let mut inverse = vec![0i64; order.len()];
    for (pos, &i) in order.iter().enumerate() {
        inverse[i as usize] = pos as i64;
    }
    out.index_select(0, &host::upload(&inverse, &[inverse.len() as i64], out.device(), "detect.roi_align.order"))
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
    /// Output side `(height, width)` of each RoI.
    pub output: (i64, i64),
    /// Samples per output bin and axis (0: adaptive, as torchvision).
    pub sampling_ratio: i64,
    /// Stride of each pooled level (4, 8, 16, 32 for P2–P5).
    pub strides: Vec<i64>,
}

impl MultiScaleRoiAlign {
    /// Pools `rois` `[K, 5]` from `features` (one per stride) → `[K, C, out.0, out.1]`, each
    /// RoI from the level [`map_levels`] gives it.
    ///
    /// # Errors
    /// A libtorch error reading the levels or features (host kernel).
    pub fn pool(&self, features: &[Tensor], rois: &Tensor) -> Result<Tensor, tch::TchError> {
        let k_min = (self.strides[0] as f64).log2().round() as i64;
        let k_max = k_min + self.strides.len() as i64 - 1;
        let levels = map_levels(rois, k_min, k_max, 224.0, 4.0);
        let scales: Vec<f64> = self.strides.iter().map(|&s| 1.0 / s as f64).collect();
        let sr = self.sampling_ratio.max(1);
        let host = detnas_device::settings::host_kernels(rois.device()) && !features[0].requires_grad();
        if !host {
            return Ok(gather_align(features, &scales, rois, &levels, self.output, sr));
        }
        // The direct kernel, level by level (its inputs are read on the host anyway).
        let levels: Vec<i64> = host::read_for_host_kernel(&levels, "detect.roi_align.levels")?;
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
            let sel = rois.index_select(0, &host::upload(&idx, &[idx.len() as i64], dev, "detect.roi_align.levels"));
            pieces.push(roi_align(f, &sel, self.output, scales[l], sr)?);
            order.extend(idx);
        }
        if pieces.is_empty() {
            return Ok(Tensor::zeros([0, c, self.output.0, self.output.1], (features[0].kind(), dev)));
        }
        Ok(in_original_order(&pieces, &order))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use detnas_device::Kernels;
    use detnas_device::settings::with_kernels;
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
        let out = f32::try_from(roi_align(&x, &rois, (1, 1), 1.0, 2).unwrap()).unwrap();
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
        // Both kernels: the direct one (host kernels) and the one-pass gather (device kernels).
        for kernels in [Kernels::Host, Kernels::Device] {
            let got = with_kernels(kernels, || roi_align(&x, &rois, (ph, pw), scale, sr)).unwrap();
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
                            assert!(
                                (g - want).abs() < 1e-9,
                                "{kernels:?}: roi {k} ch {ch} bin ({i},{j}): {g} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn direct_kernel_equals_differentiable_path() {
        // The no-autograd kernel (CPU inference, recalibration) and the gather path (training,
        // device kernels) are the same function: f32 features, RoIs inside, across and outside
        // the borders, several images, channels-last and contiguous inputs.
        tch::manual_seed(4);
        let x = Tensor::randn([3, 5, 9, 11], (Kind::Float, Device::Cpu));
        let rois = Tensor::from_slice(&[
            0f32, 0.5, 1.0, 30.0, 20.0, 2.0, -10.0, -6.0, 8.0, 9.0, 1.0, 20.0, 14.0, 60.0, 50.0, 2.0, 7.0, 7.0, 7.5,
            7.2, 0.0, 3.3, 2.2, 40.1, 33.3,
        ])
        .reshape([5, 5]);
        let direct = with_kernels(Kernels::Host, || roi_align(&x, &rois, (3, 4), 0.25, 2)).unwrap();
        let cl = detnas_nn::layout::to_channels_last(&x);
        let direct_cl = with_kernels(Kernels::Host, || roi_align(&cl, &rois, (3, 4), 0.25, 2)).unwrap();
        let grad = roi_align(&x.set_requires_grad(true), &rois, (3, 4), 0.25, 2).unwrap().detach();
        let gather = with_kernels(Kernels::Device, || roi_align(&cl, &rois, (3, 4), 0.25, 2)).unwrap();
        assert_eq!(direct.size(), grad.size());
        for (name, other) in [("with gradient", &grad), ("device kernels", &gather)] {
            let d = f64::try_from((&direct - other).abs().max()).unwrap();
            assert!(d < 1e-6, "direct vs {name}: {d}");
        }
        assert_eq!(f64::try_from((&direct - &direct_cl).abs().max()).unwrap(), 0.0);
    }

    /// The multi-level pooler: one pass over all levels and images (device kernels) equals the
    /// level-by-level direct kernel, with no host transfer but the level constants' upload.
    #[test]
    fn pooler_kernels_agree_without_host_reads() {
        tch::manual_seed(6);
        let feats: Vec<Tensor> =
            [16i64, 8, 4, 2].iter().map(|&s| Tensor::randn([2, 3, s, s + 1], (Kind::Float, Device::Cpu))).collect();
        let rois = Tensor::from_slice(&[
            0f32, 2.0, 3.0, 20.0, 30.0, 1.0, 0.0, 0.0, 60.0, 60.0, 0.0, 10.0, 5.0, 14.0, 9.0, 1.0, -3.0, 4.0, 50.0,
            70.0, 1.0, 5.0, 5.0, 200.0, 180.0, 0.0, 30.0, 30.0, 31.0, 31.0, 0.0, -20.0, 10.0, 240.0, 260.0, 1.0, 8.0,
            -100.0, 500.0, 400.0,
        ])
        .reshape([8, 5]);
        let pooler = MultiScaleRoiAlign { output: (7, 7), sampling_ratio: 2, strides: vec![4, 8, 16, 32] };
        let host = with_kernels(Kernels::Host, || pooler.pool(&feats, &rois)).unwrap();
        let (dev, counts) =
            detnas_device::host::measure(|| with_kernels(Kernels::Device, || pooler.pool(&feats, &rois)).unwrap());
        assert_eq!((counts.reads, counts.kernel_reads, counts.uploads), (0, 0, 1), "{counts:?}");
        let d = f64::try_from((&host - &dev).abs().max()).unwrap();
        assert!(d < 1e-6, "{d}");
        let levels = Vec::<i64>::try_from(map_levels(&rois, 2, 5, 224.0, 4.0)).unwrap();
        let mut seen = levels.clone();
        seen.sort_unstable();
        seen.dedup();
        assert!(seen.len() >= 3, "the RoIs span levels: {levels:?}");
    }

    #[test]
    fn numerical_gradient() {
        // The differentiable path (the one-pass gather) against central differences of the
        // direct kernel, with host and with device kernels.
        for kernels in [Kernels::Host, Kernels::Device] {
            with_kernels(kernels, numerical_gradient_of_the_gather);
        }
    }

    fn numerical_gradient_of_the_gather() {
        tch::manual_seed(1);
        let x = Tensor::randn([1, 2, 5, 5], (Kind::Double, Device::Cpu)).set_requires_grad(true);
        let rois = Tensor::from_slice(&[0f64, 0.6, 0.9, 3.7, 4.2, 0.0, 1.1, 0.2, 2.9, 2.4]).reshape([2, 5]);
        let wts = Tensor::randn([2, 2, 2, 2], (Kind::Double, Device::Cpu));
        let f = |x: &Tensor| (roi_align(x, &rois, (2, 2), 1.0, 2).unwrap() * &wts).sum(Kind::Double);
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
