//! `detnas predict`: detections of one path on image files, as COCO results and as pictures.
//!
//! ```text
//! OUT/detections.json      COCO results: [{image_id, category_id, bbox [x, y, w, h], score}]
//! OUT/images.json          the images: [{id, file_name, width, height}] (ids of --gt, else 1..n)
//! OUT/categories.json      the detector's classes: [{id, name}]
//! OUT/<name>.det.svg       the image with labelled boxes (class, score) and a legend
//! ```

use crate::Failure;
use crate::runtime::RuntimeArgs;
use anyhow::Context;
use clap::Args;
use detnas_data::decode_image;
use detnas_data::det::transform::DetTransform;
use detnas_data::det::transform::collate;
use detnas_detect::evaluate::batch_inputs;
use detnas_pipeline::pictures::{Drawn, detections_svg};
use detnas_space::rng::seeded;
use detnas_train::finetune::OpenedDetector;
use std::path::PathBuf;

#[derive(Args)]
pub struct PredictArgs {
    /// A fine-tuning checkpoint (step-N folder) or run folder.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// The path (architecture) to run; required for a supernet checkpoint.
    #[arg(long)]
    pub arch: Option<String>,
    /// Images: JPEG, PNG, TIFF, BMP or WebP (EXIF orientation applied, as in training).
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    /// Output folder: detections.json (COCO results), images.json, categories.json and
    /// IMAGE.det.svg per image.
    #[arg(long, default_value = "predictions")]
    pub out: PathBuf,
    /// Boxes drawn (and written) from this score on.
    #[arg(long, default_value_t = detnas_pipeline::pictures::SCORE_THRESHOLD)]
    pub score_threshold: f64,
    /// A COCO instances file whose images these are: results carry its image ids (matched by
    /// file name), so `detnas eval coco --gt GT --dt OUT/detections.json` scores them.
    #[arg(long)]
    pub gt: Option<PathBuf>,
    /// A supernet path's BN statistics are recomputed on this many training images first, as
    /// `eval det` does (default: the checkpoint's `eval.recalibrate_images`); 0 keeps the
    /// supernet's running averages (scores then differ from `eval det`). Not used for a
    /// fixed-architecture checkpoint, whose BN was trained for its one path.
    #[arg(long)]
    pub recalibrate_bn: Option<usize>,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

/// Output names: `<stem>.det.svg`, or `<parent>-<stem>` … when two inputs share a stem, and
/// a number when that is still ambiguous.
fn picture_names(paths: &[PathBuf]) -> Vec<String> {
    let stem = |p: &PathBuf| p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "image".into());
    let count = |names: &[String], n: &String| names.iter().filter(|m| *m == n).count();
    let plain: Vec<String> = paths.iter().map(stem).collect();
    let with_parent: Vec<String> = paths
        .iter()
        .zip(&plain)
        .map(|(p, s)| {
            if count(&plain, s) > 1 {
                let parent = p.parent().and_then(|d| d.file_name()).map(|d| d.to_string_lossy().into_owned());
                parent.map_or_else(|| s.clone(), |d| format!("{d}-{s}"))
            } else {
                s.clone()
            }
        })
        .collect();
    with_parent
        .iter()
        .enumerate()
        .map(|(i, n)| if count(&with_parent, n) > 1 { format!("{:04}-{n}", i + 1) } else { n.clone() })
        .map(|n| format!("{n}.det.svg"))
        .collect()
}

pub fn run(a: PredictArgs) -> Result<(), Failure> {
    let device = a.runtime.init()?;
    let opened = OpenedDetector::open(&a.checkpoint, device)?;
    let arch = opened.path_of(a.arch.as_deref())?;
    if let Some(arch) = &arch {
        let n = a.recalibrate_bn.unwrap_or(opened.config.eval.recalibrate_images(false));
        if n == 0 {
            tracing::warn!(
                "BN statistics not recomputed for path {arch}: the supernet's running averages are used, so scores differ from eval det"
            );
        } else {
            let splits = opened.splits().inspect_err(|_| {
                tracing::warn!(
                    "path {arch} of a supernet needs its BN statistics recomputed on the training data, which cannot be read (--recalibrate-bn 0 skips this, at some accuracy)"
                )
            })?;
            opened.recalibrate(
                &splits,
                Some(arch),
                n,
                &opened.config.eval_settings(),
                opened.config.eval.bn_mode.into(),
                device,
            )?;
            tracing::info!("BN statistics of path {arch} recomputed on {n} training images");
        }
    }
    let OpenedDetector { config: cfg, state, detector: det, .. } = opened;
    let ids: Vec<u64> = match &a.gt {
        None => (1..=a.images.len() as u64).collect(),
        Some(gt) => image_ids_from(gt, &a.images)?,
    };
    let t = DetTransform { min_size: vec![cfg.data.test_min_size], max_size: cfg.data.max_size, flip: false };
    // Pictures go to a staging folder as they are drawn (memory stays flat over any number of
    // images) and move into OUT only when every image has succeeded: a bad image leaves no
    // partial output.
    let created = !a.out.exists();
    std::fs::create_dir_all(&a.out).with_context(|| format!("cannot create {}", a.out.display()))?;
    let staging = a.out.join(".predict-partial");
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).with_context(|| format!("cannot create {}", staging.display()))?;
    let result = predict_into(&a, &staging, device, &cfg, &state, &det, arch.as_ref(), &t, &ids);
    let finished = result.and_then(|(all, images)| {
        for e in std::fs::read_dir(&staging).with_context(|| format!("cannot read {}", staging.display()))? {
            let e = e?;
            let to = a.out.join(e.file_name());
            std::fs::rename(e.path(), &to).with_context(|| format!("cannot write {}", to.display()))?;
        }
        let categories: Vec<serde_json::Value> =
            state.task.categories.iter().map(|c| serde_json::json!({"id": c.id, "name": c.name})).collect();
        for (name, value) in [("images.json", images), ("categories.json", categories), ("detections.json", all)] {
            let out = a.out.join(name);
            detnas_runtime::fsx::write_json_atomic(&out, &value)
                .with_context(|| format!("cannot write {}", out.display()))?;
        }
        println!("wrote {} (COCO results), images.json, categories.json", a.out.join("detections.json").display());
        Ok(())
    });
    let _ = std::fs::remove_dir_all(&staging);
    if finished.is_err() && created {
        let _ = std::fs::remove_dir(&a.out);
    }
    finished.map_err(Failure::from)
}

/// The image ids of `images` in the COCO instances file `gt`, matched by file name.
fn image_ids_from(gt: &std::path::Path, images: &[PathBuf]) -> anyhow::Result<Vec<u64>> {
    let text = std::fs::read_to_string(gt).with_context(|| format!("cannot read {}", gt.display()))?;
    let doc: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: malformed JSON", gt.display()))?;
    let by_name: std::collections::HashMap<String, u64> = doc["images"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|i| {
                    let f = i["file_name"].as_str()?;
                    let name = std::path::Path::new(f).file_name()?.to_string_lossy().into_owned();
                    Some((name, i["id"].as_u64()?))
                })
                .collect()
        })
        .unwrap_or_default();
    images
        .iter()
        .map(|p| {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            by_name
                .get(&name)
                .copied()
                .ok_or_else(|| anyhow::anyhow!("{}: no image named {name} in {}", p.display(), gt.display()))
        })
        .collect()
}

/// Runs every image, writing its picture into `staging`; returns the COCO results and the
/// image records.
#[allow(clippy::too_many_arguments)]
fn predict_into(
    a: &PredictArgs,
    staging: &std::path::Path,
    device: tch::Device,
    cfg: &detnas_train::det_config::FinetuneConfig,
    state: &detnas_train::finetune::TrainState,
    det: &detnas_detect::Detector,
    arch: Option<&detnas_space::Arch>,
    t: &DetTransform,
    ids: &[u64],
) -> anyhow::Result<(Vec<serde_json::Value>, Vec<serde_json::Value>)> {
    let mut all = Vec::new();
    let mut images = Vec::new();
    let names = picture_names(&a.images);
    for ((path, &image_id), name) in a.images.iter().zip(ids).zip(names) {
        let img = decode_image(path)?;
        let ann = detnas_data::det::DetImage {
            id: 0,
            file: path.clone(),
            width: img.width(),
            height: img.height(),
            objects: vec![],
        };
        let sample = t.apply(&img, &ann, &mut seeded(0));
        let (sx, sy) = (sample.scale.0 as f64, sample.scale.1 as f64);
        let batch = collate(vec![sample], vec![0], cfg.data.divisibility, cfg.data.convention);
        let (x, sizes, _) = batch_inputs(&batch, device);
        let d = det.detect(&x, &sizes, arch).map_err(|e| anyhow::anyhow!("{e}"))?.remove(0);
        let mut drawn = Vec::new();
        let mut dets = 0usize;
        for ((b, &s), &l) in d.boxes.iter().zip(&d.scores).zip(&d.labels) {
            if (s as f64) < a.score_threshold {
                continue;
            }
            let bb = [b[0] as f64 / sx, b[1] as f64 / sy, b[2] as f64 / sx, b[3] as f64 / sy];
            let cat = usize::try_from(l)
                .ok()
                .and_then(|l| state.task.categories.get(l))
                .ok_or_else(|| anyhow::anyhow!("label {l} is outside the checkpoint's categories"))?;
            drawn.push(Drawn { bbox: bb, class: cat.name.clone(), score: s, colour: l as usize });
            all.push(serde_json::json!({
                "image_id": image_id, "category_id": cat.id,
                "bbox": [bb[0], bb[1], bb[2] - bb[0], bb[3] - bb[1]], "score": s,
            }));
            dets += 1;
        }
        let staged = staging.join(&name);
        std::fs::write(
            &staged,
            detections_svg(&img, &drawn, &[]).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
        )
        .with_context(|| format!("cannot write {}", staged.display()))?;
        println!("{}: {dets} detections ≥ {} → {}", path.display(), a.score_threshold, a.out.join(&name).display());
        images.push(serde_json::json!({
            "id": image_id, "file_name": path, "width": img.width(), "height": img.height(),
        }));
    }
    Ok((all, images))
}
