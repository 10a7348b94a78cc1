//! Boxes, their overlaps and their regression coding — in one place.
//!
//! # Coordinate convention
//! A box is `(x1, y1, x2, y2)` in continuous pixel coordinates of the image the network sees
//! (after resizing): `(0, 0)` is the top-left *corner* of the top-left pixel, x grows to the
//! right and y downwards, and a box's width is `x2 − x1` (no "+1": the torchvision /
//! detectron2 convention, not maskrcnn_benchmark's legacy one). COCO's `[x, y, w, h]` is the
//! same frame. Tensors of boxes are `[N, 4]`, `Kind::Float`.

use tch::Tensor;

/// A set of `N` boxes, `[N, 4]` in `(x1, y1, x2, y2)`.
#[derive(Debug)]
pub struct Boxes(pub Tensor);

impl Boxes {
    /// From `[N, 4]` `(x, y, w, h)` (COCO).
    pub fn from_xywh(t: &Tensor) -> Boxes {
        let xy = t.narrow(1, 0, 2);
        let wh = t.narrow(1, 2, 2);
        Boxes(Tensor::cat(&[&xy, &(&xy + &wh)], 1))
    }

    /// To `[N, 4]` `(x, y, w, h)`.
    pub fn to_xywh(&self) -> Tensor {
        let xy = self.0.narrow(1, 0, 2);
        Tensor::cat(&[&xy, &(self.0.narrow(1, 2, 2) - &xy)], 1)
    }

    /// Number of boxes.
    pub fn len(&self) -> i64 {
        self.0.size()[0]
    }

    /// `true` when there are no boxes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Areas `[N]` (`(x2 − x1)·(y2 − y1)`, zero for degenerate boxes).
    pub fn area(&self) -> Tensor {
        area(&self.0)
    }

    /// Boxes clipped to an image of `height × width`.
    pub fn clip(&self, height: i64, width: i64) -> Boxes {
        Boxes(clip(&self.0, height, width))
    }
}

/// Areas of `[..., 4]` boxes, `[...]`.
pub fn area(b: &Tensor) -> Tensor {
    let w = (b.select(-1, 2) - b.select(-1, 0)).clamp_min(0.0);
    let h = (b.select(-1, 3) - b.select(-1, 1)).clamp_min(0.0);
    w * h
}

/// `[..., 4]` boxes clipped to `[0, width] × [0, height]`.
pub fn clip(b: &Tensor, height: i64, width: i64) -> Tensor {
    let x = b.select(-1, 0).clamp(0.0, width as f64);
    let y = b.select(-1, 1).clamp(0.0, height as f64);
    let x2 = b.select(-1, 2).clamp(0.0, width as f64);
    let y2 = b.select(-1, 3).clamp(0.0, height as f64);
    Tensor::stack(&[x, y, x2, y2], -1)
}

/// `[N, K, 4]` boxes of `N` images clipped to each image's size: `sizes` `[N, 2]` float holds
/// `(height, width)` per image.
pub fn clip_each(b: &Tensor, sizes: &Tensor) -> Tensor {
    let h = sizes.select(1, 0).unsqueeze(1);
    let w = sizes.select(1, 1).unsqueeze(1);
    let c = |i: i64, max: &Tensor| b.select(-1, i).clamp_min(0.0).clamp_max_tensor(max);
    Tensor::stack(&[c(0, &w), c(1, &h), c(2, &w), c(3, &h)], -1)
}

/// Per-image sizes `[N, 2]` float (`(height, width)`) on `device`: one upload.
pub fn sizes_tensor(sizes: &[(i64, i64)], device: tch::Device) -> Tensor {
    let v: Vec<f32> = sizes.iter().flat_map(|&(h, w)| [h as f32, w as f32]).collect();
    detnas_device::host::upload(&v, &[sizes.len() as i64, 2], device, "detect.boxes.sizes")
}

/// Whether each of `[..., 4]` boxes is wider and taller than 1e-3 pixels, `[...]`: the final
/// detections' rule, after clipping, before NMS (torchvision `roi_heads.py`
/// `remove_small_boxes`): a box decoded outside the image clips to zero width or height and
/// is dropped.
pub fn strictly_nonempty(b: &Tensor) -> Tensor {
    let w = b.select(-1, 2) - b.select(-1, 0);
    let h = b.select(-1, 3) - b.select(-1, 1);
    w.gt(1e-3).logical_and(&h.gt(1e-3))
}

/// Whether each of `[..., 4]` boxes has width and height of at least `min_size`, `[...]`.
pub fn nonempty_mask(b: &Tensor, min_size: f64) -> Tensor {
    let w = b.select(-1, 2) - b.select(-1, 0);
    let h = b.select(-1, 3) - b.select(-1, 1);
    w.ge(min_size).logical_and(&h.ge(min_size))
}

/// Pairwise IoU `[..., N, M]` of `[..., N, 4]` and `[..., M, 4]` boxes (leading dimensions
/// broadcast; 0 where both areas are 0).
pub fn pairwise_iou(a: &Tensor, b: &Tensor) -> Tensor {
    let area_a = area(a).unsqueeze(-1);
    let area_b = area(b).unsqueeze(-2);
    let lt = a.narrow(-1, 0, 2).unsqueeze(-2).maximum(&b.narrow(-1, 0, 2).unsqueeze(-3));
    let rb = a.narrow(-1, 2, 2).unsqueeze(-2).minimum(&b.narrow(-1, 2, 2).unsqueeze(-3));
    let wh = (rb - lt).clamp_min(0.0);
    let inter = wh.select(-1, 0) * wh.select(-1, 1);
    let union = area_a + area_b - &inter;
    inter / union.clamp_min(1e-12)
}

/// Box regression coding (R-CNN parametrisation, as torchvision / maskrcnn_benchmark's
/// `BoxCoder`): for a reference box of centre `(x, y)` and size `(w, h)` and a target box
/// `(x*, y*, w*, h*)`, `d = (wx·(x*−x)/w, wy·(y*−y)/h, ww·ln(w*/w), wh·ln(h*/h))`.
/// Decoding clamps `dw, dh` at `ln(1000/16)` so boxes cannot explode.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BoxCoder {
    /// `(wx, wy, ww, wh)`: `(1, 1, 1, 1)` for RPN and RetinaNet, `(10, 10, 5, 5)` for the
    /// Fast R-CNN box head.
    pub weights: [f64; 4],
    /// Upper bound of the decoded `dw`, `dh` (`ln(1000/16)`).
    pub clip: f64,
}

impl BoxCoder {
    /// A coder with `(wx, wy, ww, wh)` weights (RetinaNet and the RPN: 1; the box head: 10, 10, 5, 5).
    pub fn new(weights: [f64; 4]) -> BoxCoder {
        BoxCoder { weights, clip: (1000.0f64 / 16.0).ln() }
    }

    /// Deltas `[..., 4]` that turn `reference` `[..., 4]` into `target` `[..., 4]`.
    pub fn encode(&self, reference: &Tensor, target: &Tensor) -> Tensor {
        let [wx, wy, ww, wh] = self.weights;
        let (rx, ry, rw, rh) = centres(reference);
        let (tx, ty, tw, th) = centres(target);
        let dx = (tx - &rx) / &rw * wx;
        let dy = (ty - &ry) / &rh * wy;
        let dw = (tw / rw).log() * ww;
        let dh = (th / rh).log() * wh;
        Tensor::stack(&[dx, dy, dw, dh], -1)
    }

    /// Boxes `[..., 4k]` from deltas `[..., 4k]` (k boxes per reference, e.g. one per class)
    /// applied to `reference` `[..., 4]`.
    pub fn decode(&self, deltas: &Tensor, reference: &Tensor) -> Tensor {
        let [wx, wy, ww, wh] = self.weights;
        let reference = reference.to_kind(deltas.kind());
        let (rx, ry, rw, rh) = centres(&reference);
        let lead: Vec<i64> = deltas.size()[..deltas.dim() - 1].to_vec();
        let mut shape = lead.clone();
        shape.extend([-1, 4]);
        let d = deltas.reshape(shape.as_slice());
        let dx = d.select(-1, 0) / wx;
        let dy = d.select(-1, 1) / wy;
        let dw = (d.select(-1, 2) / ww).clamp_max(self.clip);
        let dh = (d.select(-1, 3) / wh).clamp_max(self.clip);
        let (rx, ry, rw, rh) = (rx.unsqueeze(-1), ry.unsqueeze(-1), rw.unsqueeze(-1), rh.unsqueeze(-1));
        let cx = dx * &rw + rx;
        let cy = dy * &rh + ry;
        let w = dw.exp() * rw;
        let h = dh.exp() * rh;
        let out = Tensor::stack(&[&cx - &w * 0.5, &cy - &h * 0.5, &cx + &w * 0.5, &cy + &h * 0.5], -1);
        let mut back = lead;
        back.push(-1);
        out.reshape(back.as_slice())
    }
}

fn centres(b: &Tensor) -> (Tensor, Tensor, Tensor, Tensor) {
    let w = b.select(-1, 2) - b.select(-1, 0);
    let h = b.select(-1, 3) - b.select(-1, 1);
    let x = b.select(-1, 0) + &w * 0.5;
    let y = b.select(-1, 1) + &h * 0.5;
    (x, y, w, h)
}

/// A `[N, 4]` float tensor on the CPU from box rows.
pub fn tensor_of(rows: &[[f32; 4]]) -> Tensor {
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    detnas_device::host::upload(&flat, &[rows.len() as i64, 4], tch::Device::Cpu, "detect.boxes.tensor_of")
}

/// Box rows of a `[N, 4]` tensor (one host read).
///
/// # Errors
/// A libtorch error from the copy.
pub fn rows_of(t: &Tensor) -> Result<Vec<[f32; 4]>, tch::TchError> {
    let v: Vec<f32> = detnas_device::host::read(t, "detect.boxes.rows_of")?;
    Ok(v.chunks_exact(4).map(|c| [c[0], c[1], c[2], c[3]]).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iou_hand_computed() {
        let a = tensor_of(&[[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 15.0, 15.0]]);
        let b = tensor_of(&[[0.0, 0.0, 10.0, 10.0], [5.0, 0.0, 15.0, 10.0], [20.0, 20.0, 30.0, 30.0]]);
        let iou = Vec::<f32>::try_from(pairwise_iou(&a, &b).reshape([-1])).unwrap();
        let want = [1.0, 50.0 / 150.0, 0.0, 25.0 / 175.0, 50.0 / 150.0, 0.0];
        for (g, w) in iou.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{iou:?}");
        }
    }

    #[test]
    fn xywh_round_trip_and_clip() {
        let t = tensor_of(&[[1.0, 2.0, 3.0, 4.0]]);
        let b = Boxes::from_xywh(&t);
        assert_eq!(rows_of(&b.0).unwrap(), vec![[1.0, 2.0, 4.0, 6.0]]);
        assert_eq!(rows_of(&b.to_xywh()).unwrap(), vec![[1.0, 2.0, 3.0, 4.0]]);
        let c = Boxes(tensor_of(&[[-5.0, 2.0, 40.0, 60.0]])).clip(50, 30);
        assert_eq!(rows_of(&c.0).unwrap(), vec![[0.0, 2.0, 30.0, 50.0]]);
        assert_eq!(f32::try_from(c.area()).unwrap(), 30.0 * 48.0);
    }

    #[test]
    fn coder_round_trip_and_known_value() {
        let coder = BoxCoder::new([10.0, 10.0, 5.0, 5.0]);
        let r = tensor_of(&[[0.0, 0.0, 10.0, 20.0], [3.0, 4.0, 50.0, 9.0]]);
        let t = tensor_of(&[[1.0, 2.0, 11.0, 22.0], [10.0, 1.0, 20.0, 30.0]]);
        let d = coder.encode(&r, &t);
        // First pair: centres (5, 10) → (6, 12), sizes equal: d = (10·1/10, 10·2/20, 0, 0).
        let d0 = Vec::<f32>::try_from(d.get(0)).unwrap();
        assert!((d0[0] - 1.0).abs() < 1e-6 && (d0[1] - 1.0).abs() < 1e-6 && d0[2].abs() < 1e-6);
        let back = rows_of(&coder.decode(&d, &r)).unwrap();
        for (g, w) in back.iter().flatten().zip(rows_of(&t).unwrap().iter().flatten()) {
            assert!((g - w).abs() < 1e-4, "{back:?}");
        }
    }

    #[test]
    fn decode_clamps_huge_deltas() {
        let coder = BoxCoder::new([1.0; 4]);
        let r = tensor_of(&[[0.0, 0.0, 16.0, 16.0]]);
        let d = Tensor::from_slice(&[0.0f32, 0.0, 100.0, 100.0]).reshape([1, 4]);
        let b = rows_of(&coder.decode(&d, &r)).unwrap()[0];
        assert!((b[2] - b[0] - 1000.0).abs() < 0.1, "{b:?}");
    }
}
