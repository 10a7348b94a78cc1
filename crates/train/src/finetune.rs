//! Path-wise fine-tuning of the supernet as a detector's backbone (reference §5; DetNAS
//! step 2), and detection evaluation of one path after BN recalibration.
//!
//! Each iteration samples a uniform path and updates only its variables plus the shared
//! FPN and heads ([`PathSgd`] over [`PathIndex::vars`]); BN runs in training mode everywhere
//! (never frozen). Checkpoints and resume follow pre-training: atomic, verified, and
//! bit-exact on the CPU (the path stream position, the loader position and libtorch's
//! generator — used by the RoI samplers — are all restored or re-seeded per step).

use crate::checkpoint::{self, write_atomic};
use crate::det_config::{DetSource, FinetuneConfig};
use crate::pretrain::{code_version, interrupted, read_checkpoint_meta, signal_flags};
use crate::progress::{MetricsLog, bar};
use crate::{PathSgd, TrainError, fault};
use detnas_data::det::loader::{DetLoader, DetLoaderConfig};
use detnas_data::det::transform::{DetBatch, DetTransform};
use detnas_data::det::{DetDataset, coco, voc};
use detnas_data::{Position, mix_seed};
use detnas_detect::eval::{CocoDetection, coco_stats};
use detnas_detect::{Detector, Target};
use detnas_nn::{BnMode, PathIndex, Recalibration};
use detnas_space::rng::{ChaCha8Rng, seeded};
use detnas_space::{Arch, PathSampler, SearchSpace};
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use tch::{Device, Kind, Tensor, nn};

const PATH_STREAM: u64 = 0x9A7C;
const STEP_STREAM: u64 = 0xD210;
const EVAL_STREAM: u64 = 0xE7A2;
const INIT_STREAM: u64 = 0x1418;
const SPLIT_STREAM: u64 = 0x5B11;

/// Checkpoint state besides tensors.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FinetuneState {
    pub format: u32,
    pub step: u64,
    pub loader: Position,
    pub path_rng_word_pos: String,
    pub config_hash: String,
    pub seed: u64,
    pub code_version: String,
    pub data_fingerprint: String,
    pub space: SearchSpace,
    pub categories: Vec<detnas_data::det::Category>,
    /// Image ids of the search-validation split carved from the training set: never
    /// fine-tuned on; the search checks it uses exactly these.
    pub search_val_ids: Vec<u64>,
    pub skipped_samples: u64,
}

/// The splits of a fine-tuning run.
#[derive(Debug)]
pub struct DetSplits {
    /// Training images (search-validation images and images without targets removed).
    pub train: Arc<DetDataset>,
    /// Carved from the training set for the architecture search.
    pub search_val: Arc<DetDataset>,
    /// The test split.
    pub test: Arc<DetDataset>,
}

/// Opens the data of `cfg`; `run_dir` anchors a synthetic set's relative folder.
pub fn open_splits(cfg: &FinetuneConfig, run_dir: &Path) -> Result<DetSplits, TrainError> {
    let (full, test) = match &cfg.data.source {
        DetSource::Synthetic { train, test, folder } => {
            let base = if folder.is_relative() { run_dir.join(folder) } else { folder.clone() };
            (train.write(&base.join("train"))?, test.write(&base.join("test"))?)
        }
        DetSource::Coco { train_json, train_images, test_json, test_images } => {
            (coco::load(train_json, train_images)?, coco::load(test_json, test_images)?)
        }
        DetSource::Voc { train_roots, train_set, test_root, test_set } => {
            let mut all: Option<DetDataset> = None;
            for r in train_roots {
                let d = voc::load(r, train_set, &voc::VOC_CLASSES)?;
                all = Some(match all {
                    None => d,
                    Some(mut a) => {
                        let offset = a.images.len() as u64;
                        a.images.extend(d.images.into_iter().map(|mut i| {
                            i.id += offset;
                            i
                        }));
                        a
                    }
                });
            }
            let all = all.ok_or_else(|| TrainError::Config("data.source.train_roots is empty".into()))?;
            (all, voc::load(test_root, test_set, &voc::VOC_CLASSES)?)
        }
    };
    if full.categories != test.categories {
        return Err(TrainError::Config("the training and test sets have different categories".into()));
    }
    for (what, d) in [("training", &full), ("test", &test)] {
        if !d.report.is_clean() {
            tracing::warn!("{what} annotations ({}): {}", d.source, d.report);
        }
    }
    let (rest, carved) = if cfg.data.search_val_images > 0 {
        full.carve(cfg.data.search_val_images, mix_seed(cfg.seed, &[SPLIT_STREAM]))?
    } else {
        ((0..full.len()).collect(), Vec::new())
    };
    let with_targets: Vec<usize> =
        rest.into_iter().filter(|&i| full.images[i].objects.iter().any(|o| !o.crowd)).collect();
    if with_targets.is_empty() {
        return Err(TrainError::Config(format!("{} has no image with a non-crowd object to train on", full.source)));
    }
    Ok(DetSplits {
        train: Arc::new(full.subset(&with_targets)),
        search_val: Arc::new(full.subset(&carved)),
        test: Arc::new(test),
    })
}

/// Builds the detector of a config (supernet backbone unless `model.arch` fixes a child).
pub fn build_detector(
    cfg: &FinetuneConfig,
    space: &SearchSpace,
    classes: usize,
    device: Device,
) -> Result<(nn::VarStore, Detector, Option<Arch>), TrainError> {
    let vs = nn::VarStore::new(device);
    let fixed = cfg.model.arch.as_deref().map(|a| space.parse_arch(a)).transpose()?;
    let det = cfg
        .detector
        .build(&vs.root(), space, fixed.as_ref(), classes as i64)
        .map_err(|e| TrainError::Config(e.to_string()))?;
    Ok((vs, det, fixed))
}

/// Copies a pre-trained classification supernet's backbone (stem, blocks, their BN
/// statistics) into `backbone.*` of `vs`; the classification head is not used. With a child
/// backbone, only the child's path is copied.
pub fn load_pretrained(
    vs: &nn::VarStore,
    ckpt: &Path,
    space: &SearchSpace,
    arch: Option<&Arch>,
) -> Result<usize, TrainError> {
    let (_, path) = checkpoint::resolve(ckpt)?;
    let (_, state) = read_checkpoint_meta(&path)?;
    if &state.space != space {
        return Err(TrainError::Checkpoint {
            path: path.clone(),
            message: "the pre-trained supernet's search space differs from model.space".into(),
        });
    }
    let saved: BTreeMap<String, Tensor> = Tensor::read_safetensors(path.join("model.safetensors"))
        .map_err(|e| TrainError::Checkpoint { path: path.clone(), message: format!("model.safetensors: {e}") })?
        .into_iter()
        .collect();
    let vars = vs.variables();
    let mut copied = 0;
    tch::no_grad(|| -> Result<(), TrainError> {
        for (name, var) in &vars {
            let Some(rest) = name.strip_prefix("backbone.") else { continue };
            let src_name = match arch {
                Some(a) => detnas_nn::net::supernet_name(rest, a)?,
                None => rest.to_string(),
            };
            let src = saved.get(&src_name).ok_or_else(|| TrainError::Checkpoint {
                path: path.clone(),
                message: format!("has no '{src_name}' for backbone variable '{name}'"),
            })?;
            if src.size() != var.size() {
                return Err(TrainError::Checkpoint {
                    path: path.clone(),
                    message: format!("'{src_name}' has shape {:?}, '{name}' needs {:?}", src.size(), var.size()),
                });
            }
            var.shallow_clone().copy_(src);
            copied += 1;
        }
        Ok(())
    })?;
    Ok(copied)
}

/// Tensors of a batch: images `[N, 3, H, W]`, unpadded sizes, targets.
pub fn batch_inputs(b: &DetBatch, device: Device) -> (Tensor, Vec<(i64, i64)>, Vec<Target>) {
    let n = b.samples.len() as i64;
    let x = Tensor::from_slice(&b.images).reshape([n, 3, b.height as i64, b.width as i64]).to_device(device);
    let sizes = b.samples.iter().map(|s| (s.height as i64, s.width as i64)).collect();
    let targets = b
        .samples
        .iter()
        .map(|s| Target {
            boxes: detnas_detect::boxes::tensor_of(&s.boxes).to_device(device),
            labels: Tensor::from_slice(&s.labels).to_device(device),
        })
        .collect();
    (x, sizes, targets)
}

/// Options of one invocation.
#[derive(Clone, Debug, Default)]
pub struct FinetuneOptions {
    pub resume_from: Option<PathBuf>,
    pub allow_mismatch: bool,
    pub progress: bool,
}

/// Detection score of one path.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DetScore {
    pub arch: String,
    /// COCO box stats (AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs, ARm, ARl).
    pub stats: [f64; 12],
    pub images: usize,
    pub detections: usize,
    pub bn_layers_recalibrated: usize,
    pub recalibration_seconds: f64,
    pub evaluation_seconds: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FinetuneSummary {
    pub steps: u64,
    pub resumed_from_step: Option<u64>,
    pub seconds: f64,
    pub images_per_second: f64,
    pub final_loss: f64,
    pub skipped_samples: u64,
    pub paths: Vec<DetScore>,
    pub config_hash: String,
    pub code_version: String,
    pub checkpoint: PathBuf,
}

/// The test-time transform of a config.
pub fn test_transform(cfg: &FinetuneConfig) -> DetTransform {
    DetTransform { min_size: vec![cfg.data.test_min_size], max_size: cfg.data.max_size, flip: false }
}

/// One pass over `data` in order, test transform, batches of `batch`.
pub fn finite_loader(data: Arc<DetDataset>, cfg: &FinetuneConfig, batch: usize) -> Result<DetLoader, TrainError> {
    Ok(DetLoader::new(
        data,
        DetLoaderConfig {
            batch,
            seed: 0,
            shuffle: false,
            drop_last: false,
            epochs: Some(1),
            prefetch: cfg.runtime.prefetch,
            transform: test_transform(cfg),
            convention: cfg.data.convention,
            divisibility: cfg.data.divisibility,
        },
        Position::default(),
    )?)
}

/// The recalibration images: the first `n` of a permutation of the training split seeded
/// by the run's seed.
pub fn recalibration_images(cfg: &FinetuneConfig, train: &DetDataset, n: usize) -> DetDataset {
    let mut order: Vec<usize> = (0..train.len()).collect();
    detnas_space::rng::shuffle(&mut seeded(mix_seed(cfg.seed, &[EVAL_STREAM, 1])), &mut order);
    order.truncate(n.min(train.len()));
    train.subset(&order)
}

/// Resets and recomputes every BN statistic (backbone, FPN, heads) of path `arch` on
/// `images`, in training mode without gradients. Returns the number of BN layers.
pub fn recalibrate(
    det: &Detector,
    arch: Option<&Arch>,
    images: Arc<DetDataset>,
    cfg: &FinetuneConfig,
    mode: BnMode,
    device: Device,
) -> Result<usize, TrainError> {
    recalibrate_inputs(det, arch, &DetInputs::Read(images), cfg, mode, device)
}

/// [`recalibrate`] on evaluation inputs, read or prepared.
pub fn recalibrate_inputs(
    det: &Detector,
    arch: Option<&Arch>,
    images: &DetInputs,
    cfg: &FinetuneConfig,
    mode: BnMode,
    device: Device,
) -> Result<usize, TrainError> {
    let session = Recalibration::begin(mode);
    images.for_each(cfg, |b| {
        let (x, sizes, _) = batch_inputs(b, device);
        det.observe(&x, &sizes, arch).map_err(|e| TrainError::Config(e.to_string()))
    })?;
    Ok(session.finish())
}

/// The images of an evaluation as model inputs: read (decoded, test-transformed, batched)
/// on every pass, or prepared once and kept in memory — the search scores every candidate
/// on the same images, so it prepares them when they fit (see [`DetInputs::prepare_all`]).
/// Both give the same batches, hence the same statistics and detections.
#[derive(Clone, Debug)]
pub enum DetInputs {
    Read(Arc<DetDataset>),
    Prepared { data: Arc<DetDataset>, batches: Arc<Vec<DetBatch>> },
}

impl DetInputs {
    /// Bytes that `data`'s prepared batches take at most: every image at the test
    /// transform's largest size, padded to the divisibility, 3 float channels.
    fn prepared_bytes(data: &DetDataset, cfg: &FinetuneConfig) -> u64 {
        let d = cfg.data.divisibility.max(1) as u64;
        let side = (cfg.data.max_size as u64).div_ceil(d) * d;
        data.len() as u64 * 3 * side * side * 4
    }

    /// Prepares every set of `sets` (one pass of the test loader each, batches of
    /// `cfg.eval.batch`) when together they take at most `budget_bytes`
    /// ([`DetInputs::prepared_bytes`]); otherwise all are read on every pass.
    pub fn prepare_all(
        sets: &[Arc<DetDataset>],
        cfg: &FinetuneConfig,
        budget_bytes: u64,
    ) -> Result<Vec<DetInputs>, TrainError> {
        let total: u64 = sets.iter().map(|d| Self::prepared_bytes(d, cfg)).sum();
        if total > budget_bytes {
            return Ok(sets.iter().map(|d| DetInputs::Read(d.clone())).collect());
        }
        sets.iter()
            .map(|data| {
                let mut batches = Vec::new();
                let mut loader = finite_loader(data.clone(), cfg, cfg.eval.batch)?;
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
        cfg: &FinetuneConfig,
        mut f: impl FnMut(&DetBatch) -> Result<(), TrainError>,
    ) -> Result<(), TrainError> {
        match self {
            DetInputs::Read(data) => {
                let mut loader = finite_loader(data.clone(), cfg, cfg.eval.batch)?;
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

/// Runs path `arch` on `data` and returns COCO results (original image coordinates and
/// category ids).
pub fn detect_all(
    det: &Detector,
    arch: Option<&Arch>,
    data: Arc<DetDataset>,
    cfg: &FinetuneConfig,
    device: Device,
) -> Result<Vec<CocoDetection>, TrainError> {
    detect_inputs(det, arch, &DetInputs::Read(data), cfg, device)
}

/// [`detect_all`] on evaluation inputs, read or prepared.
pub fn detect_inputs(
    det: &Detector,
    arch: Option<&Arch>,
    inputs: &DetInputs,
    cfg: &FinetuneConfig,
    device: Device,
) -> Result<Vec<CocoDetection>, TrainError> {
    let data = inputs.data();
    let mut out = Vec::new();
    inputs.for_each(cfg, |b| {
        let (x, sizes, _) = batch_inputs(b, device);
        let dets = det.detect(&x, &sizes, arch).map_err(|e| TrainError::Config(e.to_string()))?;
        for ((d, s), &i) in dets.iter().zip(&b.samples).zip(&b.indices) {
            let boxes = detnas_detect::boxes::rows_of(&d.boxes);
            let scores = Vec::<f32>::try_from(d.scores.to_device(Device::Cpu))?;
            let labels = Vec::<i64>::try_from(d.labels.to_device(Device::Cpu))?;
            for ((bx, sc), l) in boxes.iter().zip(scores).zip(labels) {
                let (sx, sy) = (s.scale.0 as f64, s.scale.1 as f64);
                let [x1, y1, x2, y2] = bx.map(f64::from);
                out.push(CocoDetection {
                    image_id: data.images[i].id,
                    category_id: data.categories[l as usize].id,
                    bbox: [x1 / sx, y1 / sy, (x2 - x1) / sx, (y2 - y1) / sy],
                    score: sc as f64,
                });
            }
        }
        Ok(())
    })?;
    Ok(out)
}

/// COCO stats of detections against a dataset's ground truth.
pub fn coco_eval(data: &DetDataset, dets: &[CocoDetection]) -> Result<[f64; 12], TrainError> {
    let gt: detnas_detect::eval::GtDataset = serde_json::from_value(data.to_coco_json())
        .map_err(|e| TrainError::Config(format!("ground truth of {}: {e}", data.source)))?;
    coco_stats(detnas_detect::eval::coco_from_dataset(gt), dets).map_err(|e| TrainError::Config(e.to_string()))
}

/// Pascal VOC mAP at IoU 0.5 with difficult objects ignored: `(area under the envelope
/// (VOC2010+), 11-point (VOC2007))`, averaged over classes that have ground truth.
pub fn voc_map(data: &DetDataset, dets: &[CocoDetection]) -> (f64, f64) {
    use detnas_detect::eval::{VocDet, VocGt, voc_eval};
    let image_of: std::collections::HashMap<u64, usize> =
        data.images.iter().enumerate().map(|(i, im)| (im.id, i)).collect();
    let label_of: std::collections::HashMap<u64, usize> =
        data.categories.iter().enumerate().map(|(l, c)| (c.id, l)).collect();
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

/// Box AP of path `arch` on `data` after BN recalibration on `recal` (when given).
pub fn evaluate_det(
    det: &Detector,
    arch: Option<&Arch>,
    recal: Option<(Arc<DetDataset>, BnMode)>,
    data: Arc<DetDataset>,
    cfg: &FinetuneConfig,
    device: Device,
) -> Result<DetScore, TrainError> {
    let recal = recal.map(|(images, mode)| (DetInputs::Read(images), mode));
    evaluate_det_inputs(det, arch, recal.as_ref().map(|(i, m)| (i, *m)), &DetInputs::Read(data), cfg, device)
}

/// [`evaluate_det`] on evaluation inputs, read or prepared.
pub fn evaluate_det_inputs(
    det: &Detector,
    arch: Option<&Arch>,
    recal: Option<(&DetInputs, BnMode)>,
    inputs: &DetInputs,
    cfg: &FinetuneConfig,
    device: Device,
) -> Result<DetScore, TrainError> {
    let data = inputs.data();
    let t0 = Instant::now();
    let layers = match recal {
        Some((images, mode)) => recalibrate_inputs(det, arch, images, cfg, mode, device)?,
        None => 0,
    };
    let t1 = Instant::now();
    let dets = detect_inputs(det, arch, inputs, cfg, device)?;
    let stats = coco_eval(data, &dets)?;
    Ok(DetScore {
        arch: arch.map(|a| a.to_string()).unwrap_or_default(),
        stats,
        images: data.len(),
        detections: dets.len(),
        bn_layers_recalibrated: layers,
        recalibration_seconds: (t1 - t0).as_secs_f64(),
        evaluation_seconds: t1.elapsed().as_secs_f64(),
    })
}

/// Reads the configuration and state of a fine-tuning checkpoint folder.
pub fn read_meta(path: &Path) -> Result<(FinetuneConfig, FinetuneState), TrainError> {
    let err = |m: String| TrainError::Checkpoint { path: path.to_path_buf(), message: m };
    let text = std::fs::read_to_string(path.join("config.toml")).map_err(|e| err(format!("config.toml: {e}")))?;
    let cfg: FinetuneConfig = toml::from_str(&text).map_err(|e| err(format!("config.toml: {e}")))?;
    let text = std::fs::read_to_string(path.join("state.json")).map_err(|e| err(format!("state.json: {e}")))?;
    let state: FinetuneState = serde_json::from_str(&text).map_err(|e| err(format!("state.json: {e}")))?;
    Ok((cfg, state))
}

/// The run folder of a checkpoint folder (`RUN/checkpoints/step-N`).
pub fn run_dir_of(ckpt: &Path) -> PathBuf {
    ckpt.parent().and_then(Path::parent).map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."))
}

/// Opens a fine-tuning checkpoint for evaluation: config, state, splits, detector with
/// weights loaded.
pub fn open_checkpoint(
    ckpt: &Path,
    device: Device,
) -> Result<(FinetuneConfig, FinetuneState, DetSplits, Detector, nn::VarStore), TrainError> {
    let (_, path) = checkpoint::resolve(ckpt)?;
    let (cfg, state) = read_meta(&path)?;
    let splits = open_splits(&cfg, &run_dir_of(&path))?;
    let (mut vs, det, _) = build_detector(&cfg, &state.space, state.categories.len(), device)?;
    vs.load(path.join("model.safetensors"))
        .map_err(|e| TrainError::Checkpoint { path: path.clone(), message: format!("model.safetensors: {e}") })?;
    Ok((cfg, state, splits, det, vs))
}

/// Opens a fine-tuning checkpoint for inference only (no dataset is read): config, state,
/// detector with weights loaded.
pub fn open_model(
    ckpt: &Path,
    device: Device,
) -> Result<(FinetuneConfig, FinetuneState, Detector, nn::VarStore), TrainError> {
    let (_, path) = checkpoint::resolve(ckpt)?;
    let (cfg, state) = read_meta(&path)?;
    let (mut vs, det, _) = build_detector(&cfg, &state.space, state.categories.len(), device)?;
    vs.load(path.join("model.safetensors"))
        .map_err(|e| TrainError::Checkpoint { path: path.clone(), message: format!("model.safetensors: {e}") })?;
    Ok((cfg, state, det, vs))
}

/// Global L2 norm clipping of the gradients of `vars` (those with a gradient).
fn clip_gradients<'a>(vars: impl Iterator<Item = &'a (String, Tensor)>, max_norm: f64) -> f64 {
    tch::no_grad(|| {
        let grads: Vec<Tensor> = vars.map(|(_, v)| v.grad()).filter(Tensor::defined).collect();
        if grads.is_empty() {
            return 0.0;
        }
        // One device synchronisation per step, not one per variable.
        let squares: Vec<Tensor> = grads.iter().map(|g| g.pow_tensor_scalar(2).sum(Kind::Double)).collect();
        let total = Tensor::stack(&squares, 0).sum(Kind::Double).double_value(&[]).sqrt();
        if total > max_norm {
            let f = max_norm / (total + 1e-6);
            for mut g in grads {
                g *= f;
            }
        }
        total
    })
}

/// Runs (or resumes) fine-tuning into `out`.
pub fn run(
    cfg: &FinetuneConfig,
    out: &Path,
    device: Device,
    opts: &FinetuneOptions,
) -> Result<FinetuneSummary, TrainError> {
    cfg.check()?;
    let space = cfg.space()?;
    let hash = cfg.result_hash();
    let hash_of = |text: &str| toml::from_str::<FinetuneConfig>(text).ok().map(|o| o.result_hash());
    checkpoint::claim_run_dir(out, &cfg.to_toml(), &hash, hash_of, opts.allow_mismatch)?;

    let splits = open_splits(cfg, out)?;
    let fingerprint = format!("{}+{}", splits.train.fingerprint(), splits.search_val.fingerprint());
    let categories = splits.train.categories.clone();
    tracing::info!(
        "fine-tuning on {} images ({} carved for the search, {} test images, {} classes)",
        splits.train.len(),
        splits.search_val.len(),
        splits.test.len(),
        categories.len()
    );
    let ckpt_dir = out.join("checkpoints");
    let resume = match &opts.resume_from {
        Some(p) => Some(checkpoint::resolve(p)?),
        None => checkpoint::latest(&ckpt_dir)?,
    };

    tch::manual_seed(mix_seed(cfg.seed, &[INIT_STREAM]) as i64);
    let (mut vs, det, fixed) = build_detector(cfg, &space, categories.len(), device)?;
    let index = PathIndex::new(&vs);
    let mut opt = PathSgd::new(cfg.schedule.momentum, cfg.schedule.weight_decay);
    let mut path_rng = seeded(mix_seed(cfg.seed, &[PATH_STREAM]));
    let (mut position, mut step, mut skipped, mut resumed_from) = (Position::default(), 0u64, 0u64, None);
    if let Some((s, path)) = &resume {
        let (_, state) = read_meta(path)?;
        let mismatch = |what: &str| TrainError::Checkpoint {
            path: path.clone(),
            message: format!("{what} differs from this run's; refusing to resume (use --allow-mismatch to override)"),
        };
        if state.space != space {
            return Err(mismatch("the search space"));
        }
        if (state.config_hash != hash || state.data_fingerprint != fingerprint) && !opts.allow_mismatch {
            return Err(mismatch(if state.config_hash != hash { "the configuration" } else { "the training data" }));
        }
        crate::pretrain::load_weights(path, &mut vs, Some(&mut opt))?;
        let pos: u128 = state.path_rng_word_pos.parse().map_err(|_| mismatch("path_rng_word_pos"))?;
        path_rng = ChaCha8Rng::seed_from_u64(mix_seed(cfg.seed, &[PATH_STREAM]));
        path_rng.set_word_pos(pos);
        position = state.loader;
        step = state.step;
        skipped = state.skipped_samples;
        resumed_from = Some(*s);
        tracing::info!("resuming from {} (step {step})", path.display());
    } else if let Some(p) = &cfg.model.pretrained {
        let n = load_pretrained(&vs, p, &space, fixed.as_ref())?;
        tracing::info!("backbone initialised from {} ({n} tensors)", p.display());
    } else {
        tracing::info!("backbone initialised from scratch");
    }

    let sampler = PathSampler::uniform(&space, None)?;
    let schedule = cfg.schedule.lr_schedule();
    let mut metrics = MetricsLog::open(&out.join("metrics.jsonl"), step)?;
    let loader_cfg = DetLoaderConfig {
        batch: cfg.schedule.batch,
        seed: mix_seed(cfg.seed, &[0xDA7B]),
        shuffle: true,
        drop_last: true,
        epochs: None,
        prefetch: cfg.runtime.prefetch,
        transform: DetTransform {
            min_size: cfg.data.min_size.clone(),
            max_size: cfg.data.max_size,
            flip: cfg.data.flip,
        },
        convention: cfg.data.convention,
        divisibility: cfg.data.divisibility,
    };
    let mut loader = DetLoader::new(splits.train.clone(), loader_cfg, position)?;
    signal_flags();
    let search_val_ids: Vec<u64> = splits.search_val.images.iter().map(|i| i.id).collect();

    let save = |step: u64, vs: &nn::VarStore, opt: &PathSgd, position: Position, rng: &ChaCha8Rng, skipped: u64| {
        let state = FinetuneState {
            format: checkpoint::FORMAT,
            step,
            loader: position,
            path_rng_word_pos: rng.get_word_pos().to_string(),
            config_hash: hash.clone(),
            seed: cfg.seed,
            code_version: code_version(),
            data_fingerprint: fingerprint.clone(),
            space: space.clone(),
            categories: categories.clone(),
            search_val_ids: search_val_ids.clone(),
            skipped_samples: skipped,
        };
        checkpoint::save_training(&ckpt_dir, step, cfg.runtime.keep, vs, opt, &state, &cfg.to_toml())
    };

    let total = cfg.schedule.iterations;
    let pb = bar(total, step, "finetune", opts.progress);
    let started = Instant::now();
    let start_step = step;
    let mut win: BTreeMap<&'static str, f64> = BTreeMap::new();
    let (mut win_n, mut win_images, mut win_start) = (0usize, 0usize, Instant::now());
    let mut last_loss = f64::NAN;
    let mut last_ckpt = resume.as_ref().map(|(_, p)| p.clone());
    while step < total {
        let arch = match &fixed {
            Some(a) => a.clone(),
            None => sampler.sample(&mut path_rng)?,
        };
        let lb = loader.next_batch().ok_or_else(|| TrainError::Config("the training stream ended".into()))??;
        for r in &lb.epoch_reports {
            skipped += r.skipped.len() as u64;
            if !r.skipped.is_empty() {
                let first: Vec<String> = r.skipped.iter().take(3).map(|(n, why)| format!("{n}: {why}")).collect();
                tracing::warn!(
                    "epoch {}: {} unreadable images skipped: {}",
                    r.epoch,
                    r.skipped.len(),
                    first.join("; ")
                );
            }
        }
        let (x, sizes, targets) = batch_inputs(&lb.batch, device);
        let lr = schedule.lr(step);
        tch::manual_seed(mix_seed(cfg.seed, &[STEP_STREAM, step]) as i64);
        let arch_ref = if fixed.is_some() { None } else { Some(&arch) };
        let losses = det.losses(&x, &sizes, &targets, arch_ref).map_err(|e| TrainError::Config(e.to_string()))?;
        let loss = losses.iter().map(|(_, l)| l.shallow_clone()).reduce(|a, b| a + b).expect("at least one loss");
        let mut loss_v = f64::try_from(&loss)?;
        if fault::nan_at(step + 1) {
            loss_v = f64::NAN;
        }
        if !loss_v.is_finite() {
            let images: Vec<String> =
                lb.batch.indices.iter().take(8).map(|&i| splits.train.images[i].file.display().to_string()).collect();
            return Err(TrainError::Numerical {
                step: step + 1,
                loss: loss_v,
                lr,
                arch: arch.to_string(),
                images: images.join(", "),
            });
        }
        loss.backward();
        if let Some(c) = cfg.schedule.clip_grad_norm {
            clip_gradients(index.vars(&arch), c);
        }
        opt.step(index.vars(&arch), lr);
        step += 1;
        position = lb.after;
        last_loss = loss_v;
        for (name, l) in &losses {
            *win.entry(name).or_default() += l.double_value(&[]);
        }
        win_n += 1;
        win_images += lb.batch.samples.len();

        let signal = interrupted();
        if step % cfg.runtime.log_every == 0 || step == total || signal.is_some() {
            let secs = win_start.elapsed().as_secs_f64();
            let mut rec = serde_json::json!({
                "step": step, "epoch": position.epoch, "lr": lr, "images_per_second": win_images as f64 / secs,
                "arch": arch.to_string(),
            });
            let mut sum = 0.0;
            for (k, v) in &win {
                rec[format!("loss_{k}")] = serde_json::json!(v / win_n as f64);
                sum += v / win_n as f64;
            }
            rec["loss"] = serde_json::json!(sum);
            metrics.write(&rec)?;
            pb.set_message(format!("loss {sum:.3} lr {lr:.4} {:.1} img/s", win_images as f64 / secs));
            (win, win_n, win_images, win_start) = (BTreeMap::new(), 0, 0, Instant::now());
        }
        pb.set_position(step);
        if step % cfg.runtime.checkpoint_every == 0 || step == total || signal.is_some() {
            metrics.sync()?;
            last_ckpt = Some(save(step, &vs, &opt, position, &path_rng, skipped)?);
        }
        fault::after_step(step);
        if let Some(signal) = signal {
            pb.abandon();
            return Err(TrainError::Interrupted { signal, step });
        }
    }
    pb.finish_and_clear();
    drop(loader);
    let seconds = started.elapsed().as_secs_f64();
    let trained = step - start_step;

    // A few random paths (or the fixed one) after BN recalibration, on the test split.
    // `eval.recalibrate_images = 0` keeps the statistics training left (a trained child).
    let recal = (cfg.eval.recalibrate_images > 0)
        .then(|| Arc::new(recalibration_images(cfg, &splits.train, cfg.eval.recalibrate_images)));
    let mut eval_rng = seeded(mix_seed(cfg.seed, &[EVAL_STREAM]));
    let mut scores = Vec::new();
    let n_paths = if fixed.is_some() { 1 } else { cfg.eval.final_paths };
    for _ in 0..n_paths {
        let arch = match &fixed {
            Some(a) => a.clone(),
            None => sampler.sample(&mut eval_rng)?,
        };
        let arch_ref = if fixed.is_some() { None } else { Some(&arch) };
        let mut s = evaluate_det(
            &det,
            arch_ref,
            recal.clone().map(|r| (r, cfg.eval.bn_mode.into())),
            splits.test.clone(),
            cfg,
            device,
        )?;
        s.arch = arch.to_string();
        scores.push(s);
    }
    let summary = FinetuneSummary {
        steps: step,
        resumed_from_step: resumed_from,
        seconds,
        images_per_second: trained as f64 * cfg.schedule.batch as f64 / seconds.max(1e-9),
        final_loss: last_loss,
        skipped_samples: skipped,
        paths: scores,
        config_hash: hash,
        code_version: code_version(),
        checkpoint: last_ckpt.unwrap_or_default(),
    };
    write_atomic(&out.join("summary.json"), serde_json::to_string_pretty(&summary).expect("serialisable").as_bytes())?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gradient_clipping_scales_to_the_global_norm() {
        let a = Tensor::from_slice(&[1f32, 1.0]).set_requires_grad(true);
        let b = Tensor::from_slice(&[1f32]).set_requires_grad(true);
        let none = Tensor::from_slice(&[1f32]).set_requires_grad(true);
        // Gradients (3, 0) and (4): global norm 5.
        ((&a * Tensor::from_slice(&[3f32, 0.0])).sum(Kind::Float) + (&b * 4.0).sum(Kind::Float)).backward();
        let vars =
            [("a".to_string(), a.shallow_clone()), ("b".to_string(), b.shallow_clone()), ("n".to_string(), none)];
        assert!((clip_gradients(vars.iter(), 10.0) - 5.0).abs() < 1e-6);
        assert_eq!(Vec::<f32>::try_from(a.grad()).unwrap(), vec![3.0, 0.0], "below the limit nothing changes");
        assert!((clip_gradients(vars.iter(), 1.0) - 5.0).abs() < 1e-6);
        let ga = Vec::<f32>::try_from(a.grad()).unwrap();
        let gb = Vec::<f32>::try_from(b.grad()).unwrap();
        assert!((ga[0] - 0.6).abs() < 1e-5 && (gb[0] - 0.8).abs() < 1e-5, "{ga:?} {gb:?}");
    }
}
