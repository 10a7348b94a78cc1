//! The whole detector's files (`detector.safetensors`, the Python scripts, the ONNX graphs,
//! `reference.safetensors`) and the latency measured at export.

use crate::PipelineError;
use detnas_space::{Arch, SearchSpace};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// Python files written beside the weights: the detector, and COCO results on image files.
const PYTHON: [(&str, &str); 3] = [
    ("model.py", include_str!("../../export/model.py")),
    ("predict_torch.py", include_str!("../../export/predict_torch.py")),
    ("predict_onnx.py", include_str!("../../export/predict_onnx.py")),
];

/// The whole detector of fixed-architecture fine-tuning checkpoint `ckpt` (`all`: its
/// variables): `detector.safetensors` (every variable, and `num_batches_tracked` = 0 for each
/// BN, as PyTorch's state dicts hold), `model.py`, `predict_torch.py` and
/// `reference.safetensors`, detnas's own
/// outputs on the first two test images (`model.py check` compares against them). Returns
/// the number of reference images (0 when the test split cannot be read: then there is no
/// reference, and a warning says so).
///
/// # Errors
/// [`PipelineError::Config`] when a file cannot be written; as
/// [`detnas_train::finetune::OpenedDetector::open`] and the detector's forward.
pub(super) fn write_detector(
    ckpt: &Path,
    (space, arch): (&SearchSpace, &Arch),
    all: &[(String, Tensor)],
    (cfg, classes): (&detnas_train::FinetuneConfig, i64),
    options: &Options,
    out: &Path,
) -> Result<DetectorFiles, PipelineError> {
    let mut state: Vec<(String, Tensor)> = Vec::with_capacity(all.len());
    for (k, v) in all {
        if let Some(bn) = k.strip_suffix(".running_var") {
            state.push((format!("{bn}.num_batches_tracked"), Tensor::from(0i64)));
        }
        state.push((k.clone(), v.shallow_clone()));
    }
    write_safetensors(&state, &out.join("detector.safetensors"))?;
    let vars: BTreeMap<String, Tensor> = all.iter().map(|(k, v)| (k.clone(), v.shallow_clone())).collect();
    let (detector, box_head) =
        crate::onnx::detector_graphs(space, arch, &cfg.detector, classes, &vars, options.onnx_nms)?;
    for (name, bytes) in [("detector.onnx", Some(detector)), ("box_head.onnx", box_head)] {
        let p = out.join(name);
        match bytes {
            Some(b) => std::fs::write(&p, b).map_err(|e| PipelineError::io(&p, e))?,
            None => {
                let _ = std::fs::remove_file(&p);
            }
        }
    }
    for (name, text) in PYTHON {
        let p = out.join(name);
        std::fs::write(&p, text).map_err(|e| PipelineError::io(&p, e))?;
    }
    let opened = detnas_train::finetune::OpenedDetector::open(ckpt, tch::Device::Cpu)?;
    let test = match opened.splits() {
        Ok(s) => s.test,
        Err(e) => {
            tracing::warn!("no reference outputs for model.py check: the test split cannot be read ({e})");
            let _ = std::fs::remove_file(out.join("reference.safetensors"));
            return Ok(DetectorFiles { reference_images: 0, latency: Vec::new() });
        }
    };
    let detnas_train::finetune::EvaluationBatch { images, input: x, sizes } = opened.evaluation_batch(&test, 2)?;
    let mut named: Vec<(String, Tensor)> = Vec::new();
    for (i, img) in images.iter().enumerate() {
        let (w, h) = (img.width() as i64, img.height() as i64);
        named.push((format!("image.{i}"), Tensor::from_slice(img.as_raw()).view([h, w, 3])));
    }
    let n = images.len();
    let det = &opened.detector;
    named.extend(det.trace(&x, &sizes, None).map_err(detnas_train::TrainError::from)?);
    for (i, d) in det.detect(&x, &sizes, None).map_err(detnas_train::TrainError::from)?.into_iter().enumerate() {
        let boxes: Vec<f32> = d.boxes.iter().flatten().copied().collect();
        named.push((format!("boxes.{i}"), Tensor::from_slice(&boxes).view([-1, 4])));
        named.push((format!("scores.{i}"), Tensor::from_slice(&d.scores)));
        named.push((format!("labels.{i}"), Tensor::from_slice(&d.labels)));
    }
    let flat: Vec<i64> = sizes.iter().flat_map(|&(h, w)| [h, w]).collect();
    named.push(("sizes".into(), Tensor::from_slice(&flat).view([-1, 2])));
    named.push(("input".into(), x));
    write_safetensors(&named, &out.join("reference.safetensors"))?;
    let mut latency = Vec::new();
    if n > 0 {
        let one = opened.evaluation_batch(&test, 1)?;
        let (mut x, mut sizes) = (one.input, one.sizes);
        if let Some([h, w]) = options.input {
            let d = i64::from(cfg.data.divisibility.max(1));
            let resized =
                x.narrow(2, 0, sizes[0].0).narrow(3, 0, sizes[0].1).upsample_bilinear2d([h, w], false, None, None);
            x = Tensor::zeros([1, 3, (h + d - 1) / d * d, (w + d - 1) / d * d], (Kind::Float, tch::Device::Cpu));
            x.narrow(2, 0, h).narrow(3, 0, w).copy_(&resized);
            sizes = vec![(h, w)];
        }
        let mut times = Vec::with_capacity(LATENCY_REPS + 1);
        for _ in 0..=LATENCY_REPS {
            let t = std::time::Instant::now();
            det.detect(&x, &sizes, None).map_err(detnas_train::TrainError::from)?;
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        times.remove(0);
        times.sort_by(f64::total_cmp);
        let size = x.size();
        latency.push(Latency {
            runtime: format!("detnas (libtorch {})", detnas_device::machine().libtorch),
            device: "cpu".into(),
            threads: tch::get_num_threads() as usize,
            precision: "fp32".into(),
            batch: 1,
            input: [size[2], size[3]],
            nms: true,
            median_ms: times[times.len() / 2],
            reps: LATENCY_REPS,
        });
    }
    Ok(DetectorFiles { reference_images: n, latency })
}

/// What the export writes beyond the defaults, and how it measures latency.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// A Python with torch and onnxruntime: PyTorch eager's and ONNX Runtime's latency are
    /// measured too, with the exported scripts (`model.py bench`, `predict_onnx.py bench`).
    pub python: Option<PathBuf>,
    /// The network input `[height, width]`, pixels, of the measurement (the first test image
    /// resized to it, then padded to the divisibility); default: that image as evaluation
    /// prepares it.
    pub input: Option<[i64; 2]>,
    /// Decoding, clipping and NMS inside `detector.onnx` too (`crate::onnx`'s
    /// `postprocess`); default: the raw head outputs only.
    pub onnx_nms: bool,
}

/// Repetitions of a latency measurement, after one warm-up.
pub(super) const LATENCY_REPS: usize = 10;

/// What [`write_detector`] wrote: reference images, and the latencies measured.
pub(super) struct DetectorFiles {
    pub(super) reference_images: usize,
    pub(super) latency: Vec<Latency>,
}

/// One latency measurement of the exported detector: the whole detection of one image
/// (backbone to NMS), the median of `reps` runs after a warm-up. `model.py bench` prints the
/// same fields.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Latency {
    /// What ran it, with its version.
    pub runtime: String,
    /// `cpu` or `cuda`.
    pub device: String,
    /// Intra-op threads.
    pub threads: usize,
    /// `fp32`.
    pub precision: String,
    /// Images per run.
    pub batch: usize,
    /// The network input `[height, width]`, pixels (after resizing and padding).
    pub input: [i64; 2],
    /// Whether decoding and NMS are included.
    pub nms: bool,
    /// Median, milliseconds.
    pub median_ms: f64,
    /// Runs measured.
    pub reps: usize,
}

/// The latency a script of the export prints (`PYTHON DIR/SCRIPT bench …`: `model.py`,
/// PyTorch eager; `predict_onnx.py`, ONNX Runtime), each runtime with its own thread count.
pub(super) fn python_latency(python: &Path, dir: &Path, args: &[&str]) -> Result<Latency, PipelineError> {
    let o = std::process::Command::new(python)
        .arg(dir.join(args[0]))
        .args(&args[1..])
        .output()
        .map_err(|e| PipelineError::Config(format!("--python {}: {e}", python.display())))?;
    if !o.status.success() {
        return Err(PipelineError::Config(format!(
            "--python {}: {} bench failed: {}",
            python.display(),
            args[0],
            String::from_utf8_lossy(&o.stderr).lines().last().unwrap_or_default()
        )));
    }
    serde_json::from_slice(&o.stdout).map_err(|e| {
        PipelineError::Config(format!("--python {}: {} bench printed no result ({e})", python.display(), args[0]))
    })
}

fn write_safetensors(named: &[(String, Tensor)], p: &Path) -> Result<(), PipelineError> {
    let contiguous: Vec<(&str, Tensor)> = named.iter().map(|(k, v)| (k.as_str(), v.contiguous())).collect();
    let refs: Vec<(&str, &Tensor)> = contiguous.iter().map(|(k, v)| (*k, v)).collect();
    Tensor::write_safetensors(&refs, p).map_err(|e| PipelineError::Config(format!("{}: {e}", p.display())))
}

/// The README's latency rows, measured at export on this machine.
pub(super) fn latency_table(rows: &[Latency]) -> String {
    if rows.is_empty() {
        return "Latency: not measured (no test image could be read).".into();
    }
    let m = detnas_device::machine();
    let mut t = format!(
        "Latency measured at export on {} ({} cores), the whole detection of one test image \
         (median of {LATENCY_REPS} runs after a warm-up):\n\n\
         | runtime | device | threads | precision | batch | input (h×w) | decoding + NMS | median (ms) |\n\
         |---|---|---|---|---|---|---|---|\n",
        m.cpu, m.cores
    );
    for r in rows {
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} | {}×{} | {} | {:.2} |",
            r.runtime,
            r.device,
            r.threads,
            r.precision,
            r.batch,
            r.input[0],
            r.input[1],
            if r.nms { "included" } else { "not included" },
            r.median_ms
        );
    }
    if rows.len() == 1 {
        t.push_str(
            "\nPyTorch eager: `python model.py bench .`; ONNX Runtime: `python predict_onnx.py bench` (or \
             `detnas export … --python PYTHON`, a Python with torch and onnxruntime).\n",
        );
    }
    t
}
