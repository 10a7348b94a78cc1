//! Classification evaluation of one supernet path, after recomputing its BN statistics.

use crate::TrainError;
use crate::config::PretrainConfig;
use crate::loss::topk_hits;
use detnas_data::{ClsDataset, ClsLoader, ClsTransform, InputConvention, LoaderConfig, Position, StreamConfig, Subset};
use detnas_nn::{BnMode, Recalibration, Supernet};
use detnas_space::Arch;
use detnas_space::rng::{seeded, shuffle};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// A shared, thread-safe dataset.
pub type SharedDataset = Arc<dyn ClsDataset>;

/// How images are presented for recalibration and evaluation.
#[derive(Clone, Debug)]
pub struct ClsEvalSettings {
    /// Resize and centre crop.
    pub transform: ClsTransform,
    /// How the network expects the pixels.
    pub convention: InputConvention,
    /// Images per batch.
    pub batch: usize,
    /// Batches prepared ahead.
    pub prefetch: usize,
}

impl ClsEvalSettings {
    /// The evaluation presentation of a pre-training config: its test transform, `eval.batch`,
    /// `runtime.prefetch`.
    pub fn of(cfg: &PretrainConfig) -> ClsEvalSettings {
        ClsEvalSettings {
            transform: ClsTransform::Eval { resize: cfg.data.eval_resize, crop: cfg.data.input_size },
            convention: cfg.data.convention,
            batch: cfg.eval.batch,
            prefetch: cfg.runtime.prefetch,
        }
    }
}

/// Top-k accuracies of a path.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClsScore {
    /// The path scored.
    pub arch: String,
    /// Top-1 accuracy, 0–1.
    pub top1: f64,
    /// Top-5 accuracy, 0–1.
    pub top5: f64,
    /// Images scored.
    pub images: usize,
    /// BN layers recalibrated first (0: statistics kept).
    pub bn_layers_recalibrated: usize,
    /// BN recalibration time, seconds.
    pub recalibration_seconds: f64,
    /// Evaluation time, seconds.
    pub evaluation_seconds: f64,
}

/// A finite, unshuffled loader over `data`.
///
/// # Errors
/// [`TrainError::Data`] when `data` is empty or `d.batch` is zero.
pub fn finite_loader(data: Arc<dyn ClsDataset>, d: &ClsEvalSettings) -> Result<ClsLoader, TrainError> {
    let cfg = LoaderConfig {
        stream: StreamConfig::single_pass(d.batch, d.prefetch),
        transform: d.transform.clone(),
        convention: d.convention,
    };
    Ok(ClsLoader::new(data, cfg, Position::default())?)
}

/// Moves a loader batch to `device` as `([n, 3, s, s] f32, [n] i64)`.
pub fn batch_tensors(b: &detnas_data::Batch, device: Device) -> (Tensor, Tensor) {
    let n = b.len() as i64;
    let (side, images) = (b.size as i64, &b.images);
    let x = detnas_detect::evaluate::images_tensor(images, [n, 3, side, side], b.convention, device);
    let y = detnas_device::host::upload(&b.labels, &[n], device, "train.labels");
    (x, y)
}

/// Autocast of the networks' forwards under the process's precision (none for fp32; see
/// [`detnas_device::autocast::enter`] for `training`).
///
/// # Errors
/// [`TrainError::Config`] when libtorch refuses it.
pub fn autocast(device: Device, training: bool) -> Result<Option<detnas_device::autocast::Autocast>, TrainError> {
    detnas_device::autocast::for_setting(device, training).map_err(|e| TrainError::Config(e.to_string()))
}

/// The first `n` images of a seeded permutation of `train`: the recalibration set.
pub fn recalibration_subset(train: Arc<dyn ClsDataset>, n: usize, seed: u64) -> Subset {
    let mut order: Vec<usize> = (0..train.len()).collect();
    shuffle(&mut seeded(seed), &mut order);
    order.truncate(n.min(train.len()));
    Subset::new(train, order)
}

/// Recomputes the BN statistics of `arch` on `images` (train mode, no gradients): every BN
/// of the path, including the classification head's last conv (dropout comes after it).
///
/// # Errors
/// [`TrainError::Data`] when `images` is empty, the batch size is zero or no image loads;
/// [`TrainError::Nn`] when `arch` does not fit the supernet's space.
pub fn recalibrate(
    net: &Supernet,
    arch: &Arch,
    images: Arc<dyn ClsDataset>,
    d: &ClsEvalSettings,
    mode: BnMode,
    device: Device,
) -> Result<usize, TrainError> {
    let mut loader = finite_loader(images, d)?;
    let session = Recalibration::begin(mode);
    let _amp = autocast(device, false)?;
    while let Some(b) = loader.next_batch() {
        let (x, _) = batch_tensors(&b?.batch, device);
        let _ = tch::no_grad(|| net.forward_t(&x, arch, true))?;
    }
    Ok(session.finish())
}

/// Top-1 / top-5 of `arch` on `val` (eval mode), after recalibrating on `recal` when given.
///
/// # Errors
/// As [`recalibrate`], for the recalibration and the validation images.
pub fn evaluate_path(
    net: &Supernet,
    arch: &Arch,
    recal: Option<(Arc<dyn ClsDataset>, BnMode)>,
    val: Arc<dyn ClsDataset>,
    d: &ClsEvalSettings,
    device: Device,
) -> Result<ClsScore, TrainError> {
    let t0 = Instant::now();
    let bn_layers = match recal {
        Some((images, mode)) => recalibrate(net, arch, images, d, mode, device)?,
        None => 0,
    };
    let t1 = Instant::now();
    let mut loader = finite_loader(val, d)?;
    let mut n = 0usize;
    // Hits stay on the device until the end: one host read per evaluation.
    let mut hits = Tensor::zeros([2], (Kind::Double, device));
    while let Some(b) = loader.next_batch() {
        let b = b?.batch;
        let (x, y) = batch_tensors(&b, device);
        let logits = {
            let _amp = autocast(device, false)?;
            tch::no_grad(|| net.forward_t(&x, arch, false))?.to_kind(Kind::Float)
        };
        hits += Tensor::stack(&[topk_hits(&logits, &y, 1), topk_hits(&logits, &y, 5)], 0);
        n += b.len();
    }
    let hits: Vec<f64> = detnas_device::host::read(&hits, "train.evaluate_path")?;
    let (c1, c5) = (hits[0], hits[1]);
    Ok(ClsScore {
        arch: arch.to_string(),
        top1: c1 / n.max(1) as f64,
        top5: c5 / n.max(1) as f64,
        images: n,
        bn_layers_recalibrated: bn_layers,
        recalibration_seconds: (t1 - t0).as_secs_f64(),
        evaluation_seconds: t1.elapsed().as_secs_f64(),
    })
}
