//! `detnas predict`: detections of one path on image files, as JSON and as pictures.

use crate::Failure;
use crate::runtime::RuntimeArgs;
use anyhow::Context;
use clap::Args;
use detnas_data::decode_image;
use detnas_data::det::transform::DetTransform;
use detnas_data::det::transform::collate;
use detnas_detect::evaluate::batch_inputs;
use detnas_space::rng::seeded;
use detnas_train::finetune::OpenedDetector;
use image::{Rgb, RgbImage};
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
    /// Output folder: detections.json and IMAGE.det.png per image.
    #[arg(long, default_value = "predictions")]
    pub out: PathBuf,
    /// Boxes drawn (and written) from this score on.
    #[arg(long, default_value_t = 0.3)]
    pub score_threshold: f64,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

const PALETTE: [[u8; 3]; 10] = [
    [230, 25, 75],
    [60, 180, 75],
    [255, 225, 25],
    [0, 130, 200],
    [245, 130, 48],
    [145, 30, 180],
    [70, 240, 240],
    [240, 50, 230],
    [210, 245, 60],
    [250, 190, 212],
];

fn draw_box(img: &mut RgbImage, b: [f64; 4], colour: [u8; 3]) {
    let (w, h) = (img.width() as i64, img.height() as i64);
    let clamp = |v: f64, hi: i64| (v.round() as i64).clamp(0, hi - 1);
    let (x1, y1, x2, y2) = (clamp(b[0], w), clamp(b[1], h), clamp(b[2] - 1.0, w), clamp(b[3] - 1.0, h));
    for t in 0..2 {
        for x in x1..=x2 {
            for y in [(y1 + t).min(y2), (y2 - t).max(y1)] {
                img.put_pixel(x as u32, y as u32, Rgb(colour));
            }
        }
        for y in y1..=y2 {
            for x in [(x1 + t).min(x2), (x2 - t).max(x1)] {
                img.put_pixel(x as u32, y as u32, Rgb(colour));
            }
        }
    }
}

pub fn run(a: PredictArgs) -> Result<(), Failure> {
    let device = a.runtime.init()?;
    let OpenedDetector { config: cfg, state, detector: det, .. } = OpenedDetector::open(&a.checkpoint, device)?;
    let arch = match (&a.arch, &cfg.model.arch) {
        (_, Some(_)) => None,
        (Some(s), None) => Some(state.space.parse_arch(s).map_err(crate::usage)?),
        (None, None) => return Err(crate::usage(anyhow::anyhow!("--arch is required for a supernet checkpoint"))),
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
    let result = predict_into(&a, &staging, device, &cfg, &state, &det, arch.as_ref(), &t);
    let finished = result.and_then(|all| {
        for e in std::fs::read_dir(&staging).with_context(|| format!("cannot read {}", staging.display()))? {
            let e = e?;
            let to = a.out.join(e.file_name());
            std::fs::rename(e.path(), &to).with_context(|| format!("cannot write {}", to.display()))?;
        }
        let out = a.out.join("detections.json");
        detnas_runtime::fsx::write_atomic(&out, serde_json::to_string_pretty(&all).expect("serialisable").as_bytes())
            .with_context(|| format!("cannot write {}", out.display()))?;
        println!("wrote {}", out.display());
        Ok(())
    });
    let _ = std::fs::remove_dir_all(&staging);
    if finished.is_err() && created {
        let _ = std::fs::remove_dir(&a.out);
    }
    finished.map_err(Failure::from)
}

/// Runs every image, writing its picture into `staging`; returns the detections of all.
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
) -> anyhow::Result<Vec<serde_json::Value>> {
    let mut all = Vec::new();
    for path in &a.images {
        let img = decode_image(path)?;
        let ann = detnas_data::det::DetImage {
            id: 0,
            file: path.clone(),
            width: img.width(),
            height: img.height(),
            objects: vec![],
        };
        let sample = t.apply(&img, &ann, &mut seeded(0), cfg.data.convention);
        let (sx, sy) = (sample.scale.0 as f64, sample.scale.1 as f64);
        let batch = collate(vec![sample], vec![0], cfg.data.divisibility);
        let (x, sizes, _) = batch_inputs(&batch, device);
        let d = det.detect(&x, &sizes, arch).map_err(|e| anyhow::anyhow!("{e}"))?.remove(0);
        let boxes = detnas_detect::boxes::rows_of(&d.boxes);
        let scores = Vec::<f32>::try_from(d.scores.to_device(tch::Device::Cpu)).map_err(anyhow::Error::from)?;
        let labels = Vec::<i64>::try_from(d.labels.to_device(tch::Device::Cpu)).map_err(anyhow::Error::from)?;
        let mut drawn = img.clone();
        let mut dets = Vec::new();
        for ((b, s), l) in boxes.iter().zip(scores).zip(labels) {
            if (s as f64) < a.score_threshold {
                continue;
            }
            let bb = [b[0] as f64 / sx, b[1] as f64 / sy, b[2] as f64 / sx, b[3] as f64 / sy];
            draw_box(&mut drawn, bb, PALETTE[l as usize % PALETTE.len()]);
            let cat = usize::try_from(l)
                .ok()
                .and_then(|l| state.task.categories.get(l))
                .ok_or_else(|| anyhow::anyhow!("label {l} is outside the checkpoint's categories"))?;
            dets.push(serde_json::json!({
                "bbox": [bb[0], bb[1], bb[2] - bb[0], bb[3] - bb[1]], "score": s,
                "category_id": cat.id, "category": cat.name,
            }));
        }
        let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "image".into());
        let name = format!("{stem}.det.png");
        let staged = staging.join(&name);
        drawn.save(&staged).with_context(|| format!("cannot write {}", staged.display()))?;
        println!(
            "{}: {} detections ≥ {} → {}",
            path.display(),
            dets.len(),
            a.score_threshold,
            a.out.join(&name).display()
        );
        all.push(serde_json::json!({"image": path, "detections": dets}));
    }
    Ok(all)
}
