//! `detnas export SRC --out DIR [--arch A]`: a child detector for PyTorch users and for
//! `detnas predict`. `SRC` is one of ([`Source::resolve`]):
//!
//! * a pipeline run: its retrained found architecture;
//! * a retraining folder (`RUN/retrain-NAME`) or a fine-tuning run of a fixed architecture;
//! * a supernet fine-tuning folder (`RUN/finetune` or a `detnas finetune` run): the path `A`,
//!   or the run's found architecture, with the weights it inherits from the supernet;
//! * a detection search folder (`RUN/search`): its found architecture (or `A`) on the
//!   supernet it searched, likewise.
//!
//! The last two are not retrained: their BN statistics are recomputed for the path on the
//! fine-tuning's training images (as the search scored it), and `arch.json` and the README say
//! "not retrained".
//!
//! ```text
//! DIR/arch.json                    architecture, space, classes, detector and input settings,
//!                                  MACs, params, provenance, latency
//! DIR/detector.safetensors         the whole child detector (backbone, FPN, head), detnas names
//! DIR/model.py                     self-contained PyTorch definition, pre- and post-processing
//! DIR/predict_torch.py             COCO results on image files with model.py
//! DIR/detector.onnx                the network to its raw head outputs ([`crate::onnx`]);
//!                                  with `--onnx-nms` also its detections
//! DIR/box_head.onnx                Faster R-CNN's box head on pooled RoI features
//! DIR/predict_onnx.py              COCO results on image files with ONNX Runtime
//! DIR/reference.safetensors        detnas's outputs on two test images (the scripts' `check`)
//! DIR/backbone.safetensors         the child backbone under the official names ([`official`])
//! DIR/name-mapping.tsv             detnas name → official name, one per line
//! DIR/detector/                    the child's detection checkpoint, for predict and eval det
//! DIR/README.md                    how to use each file, the classes, the latency measured
//! ```
//!
//! Submodules: [`source`] (what a folder holds, the scored child checkpoint), [`detector`]
//! (the whole detector's files, latency) and [`official`] (the backbone under the official
//! names).

mod detector;
mod official;
mod source;

pub use detector::{Latency, Options};
pub use official::{NameMapping, official_name, to_official};
pub use source::{SOURCE_KINDS, Source, Weights, scored_checkpoint};

use crate::PipelineError;
use detector::{DetectorFiles, LATENCY_REPS, latency_table, python_latency, write_detector};
use detnas_space::{Arch, SearchSpace};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::Tensor;

/// Exports what `src` holds (module docs) into `out`, with the latency measured as `measure`
/// says.
///
/// # Errors
/// As [`Source::resolve`], [`scored_checkpoint`] and [`export_checkpoint`].
pub fn export(src: &Path, arch: Option<&str>, options: &Options, out: &Path) -> Result<PathBuf, PipelineError> {
    let source = Source::resolve(src, arch)?;
    // A failed export into a new folder leaves no folder behind.
    let created = !out.exists();
    let staging = out.join(".child");
    let _ = std::fs::remove_dir_all(&staging);
    let result = scored_checkpoint(&source, &staging).and_then(|(ckpt, images)| {
        let weights = Weights {
            retrained: source.retrained,
            supernet: (!source.retrained).then(|| source.checkpoint.clone()),
            bn_recalibration_images: images,
        };
        export_checkpoint(&ckpt, &source.space, &source.arch, source.best.as_ref(), Some(&weights), options, out)
    });
    let _ = std::fs::remove_dir_all(&staging);
    if result.is_err() && created {
        let _ = std::fs::remove_dir_all(out);
    }
    result
}

/// Exports a fixed-architecture detection checkpoint `ckpt`; `weights` says where they come
/// from (none: retrained, BN statistics as trained).
///
/// # Errors
/// [`PipelineError::Config`] for a bare backbone checkpoint of a space whose channel shuffle is
/// not DetNAS's (`small-spos`: the official definition would compute another function, so
/// there are no official names, and a detector's export leaves them out), when
/// `model.safetensors` cannot be read or has no backbone, or `backbone.safetensors` cannot be
/// written, and as [`to_official`]; [`PipelineError::Io`]
/// when `out` or another file cannot be written or the checkpoint cannot be copied.
pub fn export_checkpoint(
    ckpt: &Path,
    space: &SearchSpace,
    arch: &Arch,
    best: Option<&detnas_search::BestArch>,
    weights: Option<&Weights>,
    options: &Options,
    out: &Path,
) -> Result<PathBuf, PipelineError> {
    // A fine-tuning checkpoint (not a bare set of backbone weights): the whole detector too.
    let meta = detnas_train::finetune::read_meta(ckpt).ok();
    let official_names = space.shuffle.is_detnas();
    if !official_names && meta.is_none() {
        return Err(PipelineError::Config(format!(
            "space {}: its channel shuffle ({:?}) is not DetNAS's, so its weights would not compute the same \
             function in the official DetNAS definition",
            space.name, space.shuffle
        )));
    }
    std::fs::create_dir_all(out).map_err(|e| PipelineError::io(out, e))?;
    let model = ckpt.join("model.safetensors");
    let all =
        Tensor::read_safetensors(&model).map_err(|e| PipelineError::Config(format!("{}: {e}", model.display())))?;
    let mut files = match &meta {
        Some((cfg, st)) => {
            let classes = st.task.categories.len() as i64;
            Some(write_detector(ckpt, (space, arch), &all, (cfg, classes), options, out)?)
        }
        None => None,
    };
    let backbone: BTreeMap<String, Tensor> =
        all.into_iter().filter_map(|(k, v)| k.strip_prefix("backbone.").map(|r| (r.to_string(), v))).collect();
    if backbone.is_empty() {
        return Err(PipelineError::Config(format!("{} has no backbone variables", model.display())));
    }
    for name in ["backbone.safetensors", "name-mapping.tsv"] {
        let _ = std::fs::remove_file(out.join(name));
    }
    if official_names {
        let (official, mapping) = to_official(space, arch, &backbone)?;
        let refs: Vec<(&str, &Tensor)> = official.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let p = out.join("backbone.safetensors");
        Tensor::write_safetensors(&refs, &p).map_err(|e| PipelineError::Config(format!("{}: {e}", p.display())))?;
        let tsv: String = mapping.iter().map(|(a, b)| format!("{a}\t{b}\n")).collect();
        std::fs::write(out.join("name-mapping.tsv"), tsv).map_err(|e| PipelineError::io(out, e))?;
    }
    // The detection checkpoint, copied file by file (its manifest stays valid).
    let det = out.join("detector");
    let _ = std::fs::remove_dir_all(&det);
    let step_dir = det.join(ckpt.file_name().unwrap_or_default());
    std::fs::create_dir_all(&step_dir).map_err(|e| PipelineError::io(&step_dir, e))?;
    for e in std::fs::read_dir(ckpt).map_err(|e| PipelineError::io(ckpt, e))?.flatten() {
        std::fs::copy(e.path(), step_dir.join(e.file_name())).map_err(|err| PipelineError::io(e.path(), err))?;
    }
    let cost = detnas_space::cost(space, arch, &detnas_space::CostModel::default());
    // The detector's classes (label order), from the checkpoint's state.
    let classes: Vec<serde_json::Value> = meta
        .as_ref()
        .map(|(_, st)| st.task.categories.iter().map(|c| serde_json::json!({"id": c.id, "name": c.name})).collect())
        .unwrap_or_default();
    let input = meta.as_ref().map(|(cfg, _)| {
        serde_json::json!({
            "min_size": cfg.data.test_min_size, "max_size": cfg.data.max_size,
            "divisibility": cfg.data.divisibility, "convention": cfg.data.convention,
        })
    });
    let mut info = serde_json::json!({
        "arch": arch.to_string(), "choices": arch.ids(), "space": space, "classes": classes,
        "backbone_macs_224": cost.backbone_macs, "backbone_params": cost.backbone_params,
        "stage_out_channels": std::iter::once(space.stem).chain(space.widths.iter().copied()).collect::<Vec<u64>>(),
        "stage_repeats": space.depths, "search": best,
        "retrained": weights.is_none_or(|w| w.retrained), "weights": weights,
        "detector": meta.as_ref().map(|(cfg, _)| &cfg.detector), "input": input,
        "latency": files.as_ref().map(|f| &f.latency),
        "onnx": files.as_ref().map(|_| serde_json::json!({"opset": crate::onnx::OPSET, "nms_in_graph": options.onnx_nms})),
    });
    detnas_runtime::fsx::write_json_atomic(&out.join("arch.json"), &info)?;
    // PyTorch eager's and ONNX Runtime's latency, with the files just written (they read
    // arch.json).
    if let (Some(py), Some(f)) = (&options.python, files.as_mut().filter(|f| f.reference_images > 0)) {
        let (dir, reps) = (out.to_string_lossy().into_owned(), LATENCY_REPS.to_string());
        let size: Vec<String> = options.input.iter().flatten().map(i64::to_string).collect();
        let size: Vec<&str> = size.iter().map(String::as_str).collect();
        f.latency.push(python_latency(py, out, &[&["model.py", "bench", &dir, &reps][..], &size].concat())?);
        f.latency.push(python_latency(py, out, &[&["predict_onnx.py", "bench", &reps][..], &size].concat())?);
        info["latency"] = serde_json::json!(f.latency);
        detnas_runtime::fsx::write_json_atomic(&out.join("arch.json"), &info)?;
    }
    let provenance = match weights {
        Some(Weights { supernet: Some(s), bn_recalibration_images: n, .. }) => format!(
            "**Not retrained**: the weights are path `{arch}` of the supernet fine-tuning checkpoint `{}`, \
             with BN statistics recomputed for the path on {n} training images, as the search scored it. \
             Retrain it (`detnas run` does) before judging or deploying its accuracy.",
            s.display()
        ),
        Some(Weights { bn_recalibration_images: n, .. }) if *n > 0 => format!(
            "Retrained: this child was trained alone; its BN statistics were recomputed on {n} training images, \
             as its evaluation does."
        ),
        _ => "Retrained: this child was trained alone.".to_string(),
    };
    let opset = crate::onnx::OPSET;
    let outputs = match meta.as_ref().map(|(cfg, _)| &cfg.detector.head) {
        Some(detnas_detect::HeadConfig::FasterRcnn(_)) => {
            "`rpn_obj.{l}` `[N, H·W·A]` (objectness logits) and `rpn_reg.{l}` `[N, H·W·A, 4]` (box deltas) for \
             P2–P6, and the levels `p2`–`p5`; `box_head.onnx` maps RoIAlign-pooled features `[R, C, P, P]` to \
             `roi_cls` `[R, K+1]` (logits) and `roi_reg` `[R, 4(K+1)]` (deltas)"
        }
        _ => "`cls.{l}` `[N, H·W·A, K]` (class logits) and `reg.{l}` `[N, H·W·A, 4]` (box deltas) for P3–P7",
    };
    let detector = match &files {
        None => String::new(),
        Some(DetectorFiles { reference_images: n, latency }) => format!(
            r#"
## PyTorch: the whole detector

`model.py` (imports only torch) builds this detector, backbone, FPN and head, from
`arch.json` and loads `detector.safetensors` with `strict=True`; it resizes, pads and
normalises images and decodes, clips and suppresses boxes as detnas does:

```python
import model
det = model.load(".")                    # this folder
out = det.predict([image])               # uint8 [H, W, 3] RGB tensors or PIL images
boxes, scores, labels = out[0]           # boxes x1 y1 x2 y2 in the image's pixels
names = [c["name"] for c in det.classes] # label l is names[l]
```

Classes (label: dataset id, name): {}.

`python predict_torch.py IMAGE… --out detections.json [--gt GT.json]` writes COCO results
(torch and Pillow); with `--gt`, image ids are those of the same file names in `GT.json`, so
`detnas eval coco --gt GT.json --dt detections.json` or pycocotools scores them.

## ONNX

`detector.onnx` (opset {opset}, written by detnas; BN folded into the convs; dynamic batch,
height and width) takes the prepared images `[N, 3, H, W]` and gives the raw head outputs
per pyramid level: {outputs}. `python predict_onnx.py IMAGE… --out detections.json
[--gt GT.json]` (onnxruntime, numpy and Pillow) prepares the images and decodes, clips and
suppresses boxes as detnas does; `python predict_onnx.py check` compares the graphs' outputs
and its detections with detnas's own.
{}
{}

{}
"#,
            classes
                .iter()
                .enumerate()
                .map(|(l, c)| format!("{l}: {} {}", c["id"], c["name"].as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(", "),
            if options.onnx_nms {
                "\nExported with `--onnx-nms`: the graph also decodes, clips and suppresses the boxes as \
                 detnas does (ONNX `NonMaxSuppression`; for Faster R-CNN the proposals and `RoiAlign` too). \
                 It takes `image_sizes` `[N, 2]` (float: each image's height and width after resizing, \
                 before padding) beside `images`, and gives `num_detections` `[N]` (int64), \
                 `detection_boxes` `[N, D, 4]` (x1, y1, x2, y2 in network-input pixels), \
                 `detection_scores` `[N, D]` and `detection_classes` `[N, D]` (int64 labels), by \
                 descending score (TensorRT `EfficientNMS`'s layout; rows past `num_detections` are \
                 zero, class -1). `predict_onnx.py` uses them, and its `check` compares them with \
                 detnas's detections too.\n"
            } else {
                ""
            },
            if *n > 0 {
                format!(
                    "`python model.py check .` compares every output of `model.py` (prepared input, pyramid, \
                     head outputs, detections) with detnas's own on {n} test images (`reference.safetensors`) \
                     and prints the largest relative difference."
                )
            } else {
                "No reference outputs were written (the test split could not be read at export).".to_string()
            },
            latency_table(latency)
        ),
    };
    let ids = arch.ids();
    let official = if official_names {
        format!(
            r#"## PyTorch: the backbone under the official names

`backbone.safetensors` holds the state dict of the official `ShuffleNetV2DetNAS` backbone
(megvii-model/DetNAS, `maskrcnn_benchmark/modeling/backbone/detnasnet.py`) built with
`architecture = {ids:?}`, `stage_repeats = {depths:?}` and
`stage_out_channels = [-1, {stem}, {widths_list}]` (channel shuffle method 1):

```python
import torch
from safetensors.torch import load_file          # pip install safetensors
model = ShuffleNetV2DetNAS(cfg)                   # the official definition, fixed architecture
model.load_state_dict(load_file("backbone.safetensors"))
model.eval()
c2, c3, c4, c5 = model(images)                     # images: [N, 3, H, W], BGR 0-255 as in training
```

`name-mapping.tsv` lists every detnas name with its official name."#,
            depths = space.depths,
            stem = space.stem,
            widths_list = space.widths.iter().map(|w| w.to_string()).collect::<Vec<_>>().join(", "),
        )
    } else {
        format!(
            "## No backbone under the official names\n\nSpace `{}` uses SPOS's channel shuffle ({:?}), so the \
             official DetNAS definition would compute another function with these weights; `model.py` builds \
             this one.",
            space.name, space.shuffle
        )
    };
    let readme = format!(
        r#"# Exported DetNAS detector `{arch}`

{provenance}
{detector}
Space `{space}`: stem {stem}, stage widths {widths:?}, depths {depths:?}; choices per block
(0 = shufflenet_3x3, 1 = shufflenet_5x5, 2 = shufflenet_7x7, 3 = xception_3x3):
`{ids:?}`. Backbone: {macs} MACs at 224×224, {params} parameters. `detector.safetensors`
holds the whole detector (backbone, FPN, head) under detnas's names.

{official}

## detnas

```sh
detnas predict --checkpoint detector IMAGE.png [--out predictions]
```
"#,
        space = space.name,
        stem = space.stem,
        widths = space.widths,
        depths = space.depths,
        macs = detnas_space::format_count(cost.backbone_macs),
        params = detnas_space::format_count(cost.backbone_params),
    );
    std::fs::write(out.join("README.md"), readme).map_err(|e| PipelineError::io(out, e))?;
    Ok(out.to_path_buf())
}
