//! Detection evaluation of one path of a detector: BN recalibration on training images,
//! inference on an evaluation split, COCO box AP (pycocotools-exact, [`crate::metrics`]) and
//! Pascal VOC mAP. Used after fine-tuning, by every search candidate (DetNAS
//! arXiv:1903.10979 §3.3: each candidate's BN statistics are recomputed before it is scored)
//! and by `detnas eval det`.
//!
//! Inputs are read through the test transform ([`DetEvalSettings`]): decoded, resized, padded
//! and batched on every pass ([`DetInputs::Read`]), or prepared once and kept in memory
//! ([`DetInputs::prepare_all`]) when a search scores many candidates on the same images. Both
//! give the same batches, hence the same statistics and detections.

use crate::metrics::{
    ClassScore, CocoDetection, CocoEvaluation, CocoStats, GtDataset, VocDet, VocGt, coco_evaluation, coco_from_dataset,
    voc_eval,
};
use crate::{DetectError, Detector, Target};
use detnas_data::det::DetDataset;
use detnas_data::det::loader::{DetLoader, DetLoaderConfig};
use detnas_data::det::transform::{DetBatch, DetTransform};
use detnas_data::{InputConvention, Pixels, Position, StreamConfig};
use detnas_nn::{BnMode, Recalibration};
use detnas_space::Arch;
use detnas_space::rng::{seeded, shuffle};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;
use tch::{Device, Tensor};

/// How evaluation images are presented to the detector.
#[derive(Clone, Debug, PartialEq)]
pub struct DetEvalSettings {
    /// Short side after resizing, pixels (reference: 800).
    pub min_size: u32,
    /// Upper bound of the long side, pixels (reference: 1333).
    pub max_size: u32,
    /// How the network expects the pixels.
    pub convention: InputConvention,
    /// Batches are padded to a multiple of this, pixels (32).
    pub divisibility: u32,
    /// Images per batch.
    pub batch: usize,
    /// Batches prepared ahead by the loader.
    pub prefetch: usize,
}

impl DetEvalSettings {
    /// One pass over `data` in order, test transform.
    ///
    /// # Errors
    /// [`DetectError::Data`] for an empty dataset or a zero batch size.
    pub fn loader(&self, data: Arc<DetDataset>) -> Result<DetLoader, DetectError> {
        Ok(DetLoader::new(
            data,
            DetLoaderConfig {
                stream: StreamConfig::single_pass(self.batch, self.prefetch),
                transform: DetTransform { min_size: vec![self.min_size], max_size: self.max_size, flip: false },
                convention: self.convention,
                divisibility: self.divisibility,
            },
            Position::default(),
        )?)
    }

    /// Bytes that `data`'s prepared batches take at most: every image at the largest size,
    /// padded to the divisibility, 3 float channels.
    fn prepared_bytes(&self, data: &DetDataset) -> u64 {
        let d = self.divisibility.max(1) as u64;
        let side = (self.max_size as u64).div_ceil(d) * d;
        data.len() as u64 * 3 * side * side * 4
    }
}

/// Tensors of a batch on `device`: images `[N, 3, H, W]` (one upload, non-blocking on CUDA),
/// the unpadded `(height, width)` of each image, and its targets on the host (network-input
/// coordinates; each target's sampler seed is its dataset index, which a trainer replaces by a
/// per-step seed; [`crate::target::Targets::new`] uploads them).
pub fn batch_inputs(b: &DetBatch, device: Device) -> (Tensor, Vec<(i64, i64)>, Vec<Target>) {
    let n = b.samples.len() as i64;
    let x = images_tensor(&b.images, [n, 3, b.height as i64, b.width as i64], b.convention, device);
    let sizes = b.samples.iter().map(|s| (s.height as i64, s.width as i64)).collect();
    let targets = b
        .samples
        .iter()
        .zip(&b.indices)
        .map(|(s, &i)| Target { boxes: s.boxes.clone(), labels: s.labels.clone(), seed: i as u64 })
        .collect();
    (x, sizes, targets)
}

/// Network inputs `shape` (`[N, 3, H, W]`) on `device` from a batch's pixels (CHW RGB 0–255): one
/// upload (non-blocking on CUDA; bytes when the batch is bytes), then `convention` on the device:
/// BGR channel order, or `(x / 255 − mean) / std` per channel — the same float operations as
/// [`InputConvention::present`] on the host, so the same values.
pub fn images_tensor(images: &Pixels, shape: [i64; 4], convention: InputConvention, device: Device) -> Tensor {
    let x = match images {
        Pixels::U8(v) => detnas_device::host::upload(v, &shape, device, "images").to_kind(tch::Kind::Float),
        Pixels::F32(v) => detnas_device::host::upload(v, &shape, device, "images"),
    };
    match convention {
        InputConvention::OfficialBgr => x.flip([1]),
        InputConvention::RgbNormalized { mean, std } => {
            let planes: Vec<Tensor> = (0..3)
                .map(|c| (x.narrow(1, c, 1) / 255.0 - f64::from(mean[c as usize])) / f64::from(std[c as usize]))
                .collect();
            Tensor::cat(&planes, 1)
        }
    }
}

/// The first `n` images of a permutation of `train` seeded by `seed`: a recalibration set.
pub fn recalibration_subset(train: &DetDataset, n: usize, seed: u64) -> DetDataset {
    let mut order: Vec<usize> = (0..train.len()).collect();
    shuffle(&mut seeded(seed), &mut order);
    order.truncate(n.min(train.len()));
    train.subset(&order)
}

/// The images of an evaluation as model inputs: read on every pass, or prepared once.
#[derive(Clone, Debug)]
pub enum DetInputs {
    /// Read and transform on every pass.
    Read(Arc<DetDataset>),
    /// Decoded and transformed once, held in memory.
    Prepared {
        /// The images.
        data: Arc<DetDataset>,
        /// Their batches.
        batches: Arc<Vec<DetBatch>>,
    },
}

impl DetInputs {
    /// Prepares every set of `sets` (one pass of the test loader each) when together they
    /// take at most `budget_bytes`; otherwise all are read on every pass.
    ///
    /// # Errors
    /// [`DetectError::Data`] when a set cannot be read.
    pub fn prepare_all(
        sets: &[Arc<DetDataset>],
        settings: &DetEvalSettings,
        budget_bytes: u64,
    ) -> Result<Vec<DetInputs>, DetectError> {
        let total: u64 = sets.iter().map(|d| settings.prepared_bytes(d)).sum();
        if total > budget_bytes {
            return Ok(sets.iter().map(|d| DetInputs::Read(d.clone())).collect());
        }
        sets.iter()
            .map(|data| {
                let mut batches = Vec::new();
                let mut loader = settings.loader(data.clone())?;
                while let Some(b) = loader.next_batch() {
                    let mut batch = b?.batch;
                    // Only the padded batch is fed to the model; drop the per-sample copies.
                    for s in &mut batch.samples {
                        s.data = Vec::new();
                    }
                    batches.push(batch);
                }
                Ok(DetInputs::Prepared { data: data.clone(), batches: Arc::new(batches) })
            })
            .collect()
    }

    /// The dataset the inputs come from.
    pub fn data(&self) -> &Arc<DetDataset> {
        match self {
            DetInputs::Read(data) | DetInputs::Prepared { data, .. } => data,
        }
    }

    /// Whether the batches are held in memory.
    pub fn is_prepared(&self) -> bool {
        matches!(self, DetInputs::Prepared { .. })
    }

    fn for_each(
        &self,
        settings: &DetEvalSettings,
        mut f: impl FnMut(&DetBatch) -> Result<(), DetectError>,
    ) -> Result<(), DetectError> {
        match self {
            DetInputs::Read(data) => {
                let mut loader = settings.loader(data.clone())?;
                while let Some(b) = loader.next_batch() {
                    f(&b?.batch)?;
                }
            }
            DetInputs::Prepared { batches, .. } => {
                for b in batches.iter() {
                    f(b)?;
                }
            }
        }
        Ok(())
    }
}

/// Resets and recomputes every BN statistic (backbone, FPN, heads) of path `arch` (`None`: a
/// child network) on `images`, in training mode without gradients. Returns the number of BN
/// layers recalibrated. With device kernels, whether every batch ran exactly as host kernels
/// would is read once at the end; if not, the recalibration runs again with host kernels.
///
/// # Errors
/// A data error reading the images, or a model error.
pub fn recalibrate(
    det: &Detector,
    arch: Option<&Arch>,
    images: &DetInputs,
    settings: &DetEvalSettings,
    mode: BnMode,
    device: Device,
) -> Result<usize, DetectError> {
    let session = Recalibration::begin(mode);
    let mut exact = Tensor::ones([], (tch::Kind::Bool, device));
    images.for_each(settings, |b| {
        let (x, sizes, _) = batch_inputs(b, device);
        exact = exact.logical_and(&det.forward_for_bn_stats(&x, &sizes, arch)?);
        Ok(())
    })?;
    if detnas_device::host::scalar(&exact, "detect.recalibrate.exact")? < 0.5 {
        drop(session);
        return detnas_device::settings::with_kernels(detnas_device::Kernels::Host, || {
            recalibrate(det, arch, images, settings, mode, device)
        });
    }
    Ok(session.finish())
}

/// Runs path `arch` on `inputs` and returns COCO results: original image coordinates
/// (`[x, y, w, h]`), dataset image and category ids.
///
/// # Errors
/// A data error reading the images, or a model error.
pub fn detect(
    det: &Detector,
    arch: Option<&Arch>,
    inputs: &DetInputs,
    settings: &DetEvalSettings,
    device: Device,
) -> Result<Vec<CocoDetection>, DetectError> {
    let data = inputs.data();
    if det.classes() as usize != data.categories.len() {
        return Err(DetectError::Config(format!(
            "the detector has {} classes, {} has {} categories",
            det.classes(),
            data.source,
            data.categories.len()
        )));
    }
    let mut out = Vec::new();
    inputs.for_each(settings, |b| {
        let (x, sizes, _) = batch_inputs(b, device);
        let dets = det.detect(&x, &sizes, arch)?;
        for ((d, s), &i) in dets.iter().zip(&b.samples).zip(&b.indices) {
            for ((bx, &sc), &l) in d.boxes.iter().zip(&d.scores).zip(&d.labels) {
                let (sx, sy) = (s.scale.0 as f64, s.scale.1 as f64);
                let [x1, y1, x2, y2] = bx.map(f64::from);
                let category = usize::try_from(l).ok().and_then(|l| data.categories.get(l)).ok_or_else(|| {
                    DetectError::Eval(format!("label {l} is outside the {} categories", data.categories.len()))
                })?;
                out.push(CocoDetection {
                    image_id: data.images[i].id,
                    category_id: category.id,
                    bbox: [x1 / sx, y1 / sy, (x2 - x1) / sx, (y2 - y1) / sy],
                    score: sc as f64,
                });
            }
        }
        Ok(())
    })?;
    Ok(out)
}

/// COCO box evaluation (stats and per class) of detections against a dataset's ground truth.
///
/// # Errors
/// [`DetectError::Eval`] when the ground truth or a detection record is rejected.
pub fn coco_eval(data: &DetDataset, dets: &[CocoDetection]) -> Result<CocoEvaluation, DetectError> {
    let gt: GtDataset = serde_json::from_value(data.to_coco_json())
        .map_err(|e| DetectError::Eval(format!("ground truth of {}: {e}", data.source)))?;
    coco_evaluation(coco_from_dataset(gt), dets)
}

/// Pascal VOC mAP at IoU 0.5 with difficult objects ignored: `(area under the envelope
/// (VOC2010+), 11-point (VOC2007))`, averaged over classes that have ground truth (NaN when
/// none has).
pub fn voc_map(data: &DetDataset, dets: &[CocoDetection]) -> (f64, f64) {
    let image_of: HashMap<u64, usize> = data.images.iter().enumerate().map(|(i, im)| (im.id, i)).collect();
    let label_of: HashMap<u64, usize> = data.categories.iter().enumerate().map(|(l, c)| (c.id, l)).collect();
    let gts: Vec<VocGt> = data
        .images
        .iter()
        .enumerate()
        .flat_map(|(i, im)| {
            im.objects.iter().filter(|o| !o.crowd).map(move |o| VocGt {
                image: i,
                class: o.label,
                bbox: o.bbox.map(f64::from),
                difficult: o.difficult,
            })
        })
        .collect();
    let vdets: Vec<VocDet> = dets
        .iter()
        .filter_map(|d| {
            let [x, y, w, h] = d.bbox;
            Some(VocDet {
                image: *image_of.get(&d.image_id)?,
                class: *label_of.get(&d.category_id)?,
                bbox: [x, y, x + w, y + h],
                score: d.score,
            })
        })
        .collect();
    let k = data.categories.len();
    let mean = |v: Vec<f64>| {
        let ok: Vec<f64> = v.into_iter().filter(|a| a.is_finite()).collect();
        if ok.is_empty() { f64::NAN } else { ok.iter().sum::<f64>() / ok.len() as f64 }
    };
    (mean(voc_eval(&gts, &vdets, k, 0.5, false)), mean(voc_eval(&gts, &vdets, k, 0.5, true)))
}

/// Detection score of one path.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DetScore {
    /// The path scored (or the fixed architecture).
    pub arch: String,
    /// COCO box stats (serialised as the 12 numbers: AP, AP50, AP75, APs, APm, APl, AR1,
    /// AR10, AR100, ARs, ARm, ARl).
    pub stats: CocoStats,
    /// AP and AR100 of every category (empty in records written before they were kept).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub per_class: Vec<ClassScore>,
    /// Images scored.
    pub images: usize,
    /// Detections kept (at most the head's `detections_per_image` per image).
    pub detections: usize,
    /// BN layers recalibrated first (0: statistics kept).
    pub bn_layers_recalibrated: usize,
    /// BN recalibration time, seconds.
    pub recalibration_seconds: f64,
    /// Evaluation time, seconds.
    pub evaluation_seconds: f64,
}

/// Box AP of path `arch` on `inputs`, after BN recalibration on `recal` when given, and the
/// detections it scored (COCO results form).
///
/// # Errors
/// A data error reading the images, a model error, or [`DetectError::Eval`] from COCO
/// evaluation.
pub fn evaluate(
    det: &Detector,
    arch: Option<&Arch>,
    recal: Option<(&DetInputs, BnMode)>,
    inputs: &DetInputs,
    settings: &DetEvalSettings,
    device: Device,
) -> Result<(DetScore, Vec<CocoDetection>), DetectError> {
    let data = inputs.data();
    let t0 = Instant::now();
    let layers = match recal {
        Some((images, mode)) => recalibrate(det, arch, images, settings, mode, device)?,
        None => 0,
    };
    let t1 = Instant::now();
    let dets = detect(det, arch, inputs, settings, device)?;
    let CocoEvaluation { stats, classes } = coco_eval(data, &dets)?;
    let score = DetScore {
        arch: arch.map(|a| a.to_string()).unwrap_or_default(),
        stats,
        per_class: classes,
        images: data.len(),
        detections: dets.len(),
        bn_layers_recalibrated: layers,
        recalibration_seconds: (t1 - t0).as_secs_f64(),
        evaluation_seconds: t1.elapsed().as_secs_f64(),
    };
    Ok((score, dets))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The device applies the input convention exactly as the host reference does, from bytes
    /// or floats, with one upload.
    #[test]
    fn network_inputs_equal_the_host_convention() {
        let raw: Vec<f32> = (0..2 * 3 * 4 * 5).map(|i| ((i * 37) % 256) as f32).collect();
        let shape = [2i64, 3, 4, 5];
        for conv in [
            InputConvention::OfficialBgr,
            InputConvention::RgbNormalized { mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] },
        ] {
            let mut want = raw.clone();
            for img in want.chunks_mut(60) {
                conv.present(img, 20);
            }
            for pixels in [Pixels::from_f32(raw.clone()), Pixels::F32(raw.clone())] {
                let (x, counts) = detnas_device::host::measure(|| images_tensor(&pixels, shape, conv, Device::Cpu));
                assert_eq!(counts.uploads, 1);
                assert_eq!(x.size(), shape.to_vec());
                let got = Vec::<f32>::try_from(x.reshape([-1])).unwrap();
                assert_eq!(got, want, "{conv:?} {}", matches!(pixels, Pixels::U8(_)));
            }
        }
    }
}
