//! Anchor grids (torchvision's `AnchorGenerator` layout, detectron2's default offset 0).
//!
//! Level `l` with stride `s` and feature size `H × W` gets `H·W·A` anchors ordered
//! location-major (`y`, then `x`), anchor-minor; anchor `a` of location `(y, x)` is the base
//! anchor `a` centred at `(x·s, y·s)`. Base anchors enumerate aspect ratios (outer) and sizes
//! (inner); ratio `r` is height/width, so a size-`S` anchor is `S/√r` wide and `S·√r` tall.
//! This ordering matches a head output `[N, A·K, H, W]` permuted to `[N, H·W·A, K]`.
//!
//! [`AnchorGrids`] keeps the grids on the device: the base anchors are uploaded once per
//! level and device, and the grids of the last [`GRID_CACHE`] feature-map shapes are kept, so
//! a repeated shape costs nothing and a new one a few device operators (no upload).

use std::sync::Mutex;
use tch::{Device, Kind, Tensor};

/// Anchor settings for a pyramid.
#[derive(Clone, Debug, PartialEq)]
pub struct AnchorGenerator {
    /// Anchor sizes (√area, pixels) per level.
    pub sizes: Vec<Vec<f64>>,
    /// Aspect ratios (height / width), shared by all levels.
    pub ratios: Vec<f64>,
    /// Stride of each level in pixels.
    pub strides: Vec<i64>,
}

impl AnchorGenerator {
    /// RetinaNet: sizes `base·2^(i/3)` for `i = 0, 1, 2` on each level (3 scales × 3 ratios).
    pub fn retinanet(base_sizes: &[f64], strides: &[i64], scales_per_octave: usize, ratios: &[f64]) -> Self {
        let sizes = base_sizes
            .iter()
            .map(|&b| (0..scales_per_octave).map(|i| b * 2f64.powf(i as f64 / scales_per_octave as f64)).collect())
            .collect();
        AnchorGenerator { sizes, ratios: ratios.to_vec(), strides: strides.to_vec() }
    }

    /// Anchors per location on level `l`.
    pub fn per_location(&self, l: usize) -> i64 {
        (self.sizes[l].len() * self.ratios.len()) as i64
    }

    /// The base anchors of level `l`, `[A, 4]` on the CPU, centred at the origin.
    pub fn base(&self, l: usize) -> Tensor {
        crate::boxes::tensor_of(&self.base_rows(l))
    }

    fn base_rows(&self, l: usize) -> Vec<[f32; 4]> {
        let mut rows = Vec::new();
        for &r in &self.ratios {
            let hr = r.sqrt();
            let wr = 1.0 / hr;
            for &s in &self.sizes[l] {
                let (w, h) = (wr * s, hr * s);
                rows.push([(-w / 2.0) as f32, (-h / 2.0) as f32, (w / 2.0) as f32, (h / 2.0) as f32]);
            }
        }
        rows
    }

    /// Anchors `[H·W·A, 4]` of each level for feature sizes `(H, W)` (uploads the base
    /// anchors; [`AnchorGrids`] keeps them).
    pub fn grid(&self, sizes: &[(i64, i64)], device: Device) -> Vec<Tensor> {
        let bases: Vec<Tensor> = (0..sizes.len()).map(|l| self.base(l).to_device(device)).collect();
        self.grid_from(sizes, &bases)
    }

    fn grid_from(&self, sizes: &[(i64, i64)], bases: &[Tensor]) -> Vec<Tensor> {
        sizes
            .iter()
            .enumerate()
            .map(|(l, &(h, w))| {
                let device = bases[l].device();
                let s = self.strides[l] as f64;
                let xs = Tensor::arange(w, (Kind::Float, device)) * s;
                let ys = Tensor::arange(h, (Kind::Float, device)) * s;
                let grid = Tensor::meshgrid_indexing(&[&ys, &xs], "ij");
                let (y, x) = (grid[0].reshape([-1]), grid[1].reshape([-1]));
                let shifts = Tensor::stack(&[&x, &y, &x, &y], 1);
                (shifts.unsqueeze(1) + bases[l].unsqueeze(0)).reshape([-1, 4])
            })
            .collect()
    }
}

/// Feature-map shapes whose grids [`AnchorGrids`] keeps.
pub const GRID_CACHE: usize = 8;

/// Grids `[H·W·A, 4]` per level of one device and set of feature sizes.
type CachedGrids = (Device, Vec<(i64, i64)>, Vec<Tensor>);

/// The anchors of a head, kept on the device.
#[derive(Debug)]
pub struct AnchorGrids {
    generator: AnchorGenerator,
    /// Base anchors per device (one `[A_l, 4]` per level).
    bases: Mutex<Vec<(Device, Vec<Tensor>)>>,
    /// The grids of the most recent shapes, newest first.
    grids: Mutex<Vec<CachedGrids>>,
}

impl AnchorGrids {
    /// Grids of `generator`'s anchors, built per device and feature shape on first use.
    pub fn new(generator: AnchorGenerator) -> AnchorGrids {
        AnchorGrids { generator, bases: Mutex::new(Vec::new()), grids: Mutex::new(Vec::new()) }
    }

    /// The settings.
    pub fn generator(&self) -> &AnchorGenerator {
        &self.generator
    }

    /// Anchors `[H·W·A, 4]` of each level for feature sizes `(H, W)` on `device`.
    pub fn grids(&self, sizes: &[(i64, i64)], device: Device) -> Vec<Tensor> {
        let mut cache = self.grids.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(i) = cache.iter().position(|(d, s, _)| *d == device && s == sizes) {
            let hit = cache.remove(i);
            let out = hit.2.iter().map(Tensor::shallow_clone).collect();
            cache.insert(0, hit);
            return out;
        }
        let bases = self.bases(device, sizes.len());
        let grids = self.generator.grid_from(sizes, &bases);
        cache.insert(0, (device, sizes.to_vec(), grids.iter().map(Tensor::shallow_clone).collect()));
        cache.truncate(GRID_CACHE);
        grids
    }

    fn bases(&self, device: Device, levels: usize) -> Vec<Tensor> {
        let mut bases = self.bases.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((_, b)) = bases.iter().find(|(d, b)| *d == device && b.len() >= levels) {
            return b.iter().map(Tensor::shallow_clone).collect();
        }
        let b: Vec<Tensor> = (0..self.generator.sizes.len())
            .map(|l| {
                let rows: Vec<f32> = self.generator.base_rows(l).into_iter().flatten().collect();
                detnas_device::host::upload(&rows, &[rows.len() as i64 / 4, 4], device, "detect.anchors.base")
            })
            .collect();
        bases.push((device, b.iter().map(Tensor::shallow_clone).collect()));
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boxes::rows_of;

    #[test]
    fn base_anchors_have_requested_area_and_ratio() {
        let g = AnchorGenerator::retinanet(&[32.0], &[8], 3, &[0.5, 1.0, 2.0]);
        let base = rows_of(&g.base(0)).unwrap();
        assert_eq!(base.len(), 9);
        for (i, b) in base.iter().enumerate() {
            let (w, h) = ((b[2] - b[0]) as f64, (b[3] - b[1]) as f64);
            let ratio = [0.5, 1.0, 2.0][i / 3];
            let size = 32.0 * 2f64.powf((i % 3) as f64 / 3.0);
            assert!(((w * h).sqrt() - size).abs() < 1e-3, "{i}: {w}×{h}");
            assert!((h / w - ratio).abs() < 1e-4);
            assert!((b[0] + b[2]).abs() < 1e-5 && (b[1] + b[3]).abs() < 1e-5);
        }
    }

    #[test]
    fn grid_layout_is_location_major() {
        let g = AnchorGenerator { sizes: vec![vec![8.0, 16.0]], ratios: vec![1.0], strides: vec![4] };
        let a = rows_of(&g.grid(&[(2, 3)], Device::Cpu)[0]).unwrap();
        assert_eq!(a.len(), 2 * 3 * 2);
        // Location (y=0, x=1), anchor 1 (size 16) is centred at (4, 0).
        assert_eq!(a[3], [-4.0, -8.0, 12.0, 8.0]);
        // Location (y=1, x=0), anchor 0 (size 8) is centred at (0, 4).
        assert_eq!(a[6], [-4.0, 0.0, 4.0, 8.0]);
    }

    #[test]
    fn cached_grids_equal_fresh_ones_and_cost_no_upload() {
        let g = AnchorGenerator::retinanet(&[32.0, 64.0], &[8, 16], 3, &[0.5, 1.0, 2.0]);
        let cached = AnchorGrids::new(g.clone());
        let sizes = [(5, 7), (3, 4)];
        let first = cached.grids(&sizes, Device::Cpu);
        let (again, counts) = detnas_device::host::measure(|| cached.grids(&sizes, Device::Cpu));
        assert_eq!(counts.uploads, 0);
        let (other, counts) = detnas_device::host::measure(|| cached.grids(&[(2, 2), (1, 1)], Device::Cpu));
        assert_eq!(counts.uploads, 0, "a new shape reuses the base anchors");
        for (a, b) in first.iter().zip(g.grid(&sizes, Device::Cpu)).chain(again.iter().zip(g.grid(&sizes, Device::Cpu)))
        {
            assert!(a.equal(&b));
        }
        assert!(other[1].equal(&g.grid(&[(2, 2), (1, 1)], Device::Cpu)[1]));
    }
}
