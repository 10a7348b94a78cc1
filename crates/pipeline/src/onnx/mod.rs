//! ONNX graphs of a child detector, written from its variables (no Python): opset 17, every
//! BN folded into its conv, dynamic batch and image size, raw head outputs.
//!
//! * `detector.onnx`: `images` `[N, 3, H, W]` (prepared as detnas prepares them: resized,
//!   padded to the divisibility, input convention applied) → RetinaNet's `cls.{l}`
//!   `[N, H·W·A, K]` (logits) and `reg.{l}` `[N, H·W·A, 4]` (deltas) for P3–P7, or Faster
//!   R-CNN's `rpn_obj.{l}` `[N, H·W·A]`, `rpn_reg.{l}` `[N, H·W·A, 4]` for P2–P6 and the
//!   pyramid levels `p2`–`p5` the box head pools from;
//! * `box_head.onnx` (Faster R-CNN): pooled RoI features `[R, C, P, P]` → `roi_cls`
//!   `[R, K+1]` (logits), `roi_reg` `[R, 4(K+1)]` (deltas).
//!
//! With `--onnx-nms` ([`postprocess`]), `detector.onnx` also takes `image_sizes` `[N, 2]` and
//! gives the detections after decoding, clipping and NMS (`num_detections`,
//! `detection_boxes`, `detection_scores`, `detection_classes`).
//!
//! Output names are those of `Detector::trace`. The graphs follow the modules of
//! `crates/detect` and the official blocks (megvii-model/DetNAS `shuffle_blocks.py`); the
//! protobuf messages are the subset of `onnx/onnx.proto` these graphs use.

use crate::PipelineError;
use detnas_detect::{DetectorConfig, HeadConfig};
use detnas_space::{Arch, ChannelShuffle, Choice, SearchSpace};
use prost::Message;
use std::collections::BTreeMap;
use tch::{Kind, Tensor};

/// The ONNX operator set the graphs use.
pub const OPSET: i64 = 17;
/// BN's ε (PyTorch's default, detnas's).
const BN_EPS: f64 = 1e-5;

mod postprocess;
mod proto;

use proto::{AttributeProto, NodeProto, TensorProto};
type ValueInfo = proto::ValueInfoProto;

const FLOAT: i32 = 1;
const INT64: i32 = 7;

fn ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto { name: name.into(), ints: v.to_vec(), r#type: 7, ..Default::default() }
}
fn int(name: &str, v: i64) -> AttributeProto {
    AttributeProto { name: name.into(), i: v, r#type: 2, ..Default::default() }
}
fn float(name: &str, v: f32) -> AttributeProto {
    AttributeProto { name: name.into(), f: v, r#type: 1, ..Default::default() }
}
fn string(name: &str, v: &str) -> AttributeProto {
    AttributeProto { name: name.into(), s: v.as_bytes().to_vec(), r#type: 3, ..Default::default() }
}

/// A graph under construction over a child detector's variables.
struct Graph<'a> {
    vars: &'a BTreeMap<String, Tensor>,
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    /// Folded `(weight, bias)` initializers by `(conv, bn)`: a conv shared by the pyramid
    /// levels is stored once.
    folded: std::collections::HashMap<(String, Option<String>), (String, String)>,
    count: usize,
}

impl<'a> Graph<'a> {
    fn new(vars: &'a BTreeMap<String, Tensor>) -> Graph<'a> {
        Graph { vars, nodes: Vec::new(), initializers: Vec::new(), folded: Default::default(), count: 0 }
    }

    fn var(&self, name: &str) -> Result<&Tensor, PipelineError> {
        self.vars
            .get(name)
            .ok_or_else(|| PipelineError::Config(format!("ONNX export: the detector has no variable {name}")))
    }

    /// A constant: float tensors as f32, integer ones as i64.
    fn constant(&mut self, t: &Tensor) -> String {
        self.count += 1;
        let name = format!("const_{}", self.count);
        let (data_type, raw_data) = if t.is_floating_point() {
            let v: Vec<f32> = Vec::try_from(t.to_kind(Kind::Float).reshape([-1])).expect("a float tensor");
            (FLOAT, v.iter().flat_map(|x| x.to_le_bytes()).collect())
        } else {
            let v: Vec<i64> = Vec::try_from(t.to_kind(Kind::Int64).reshape([-1])).expect("an integer tensor");
            (INT64, v.iter().flat_map(|x| x.to_le_bytes()).collect())
        };
        self.initializers.push(TensorProto { dims: t.size(), data_type, name: name.clone(), raw_data });
        name
    }

    fn op(&mut self, op: &str, inputs: &[&str], attribute: Vec<AttributeProto>) -> String {
        self.op_named(op, inputs, attribute, None)
    }

    /// A node with one output, `output` or a fresh name.
    fn op_named(&mut self, op: &str, inputs: &[&str], attribute: Vec<AttributeProto>, output: Option<&str>) -> String {
        match output {
            Some(o) => self.node(op, inputs, attribute, vec![o.to_string()]).remove(0),
            None => self.op_outputs(op, inputs, attribute, 1).remove(0),
        }
    }

    /// A node with `n` outputs of fresh names.
    fn op_outputs(&mut self, op: &str, inputs: &[&str], attribute: Vec<AttributeProto>, n: usize) -> Vec<String> {
        let outputs = (0..n).map(|i| format!("{}_{}_{i}", op.to_lowercase(), self.count + 1)).collect();
        self.node(op, inputs, attribute, outputs)
    }

    fn node(&mut self, op: &str, inputs: &[&str], attribute: Vec<AttributeProto>, output: Vec<String>) -> Vec<String> {
        self.count += 1;
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: output.clone(),
            name: format!("{op}_{}", self.count),
            op_type: op.into(),
            attribute,
        });
        output
    }

    /// `conv` (`{conv}.weight`, optional `{conv}.bias`) with the BN `bn` (`{bn}.weight`, `.bias`,
    /// `.running_mean`, `.running_var`) folded in, then ReLU when `relu`. Depthwise when the
    /// weight has one input channel per group and more than one output.
    fn conv(
        &mut self,
        x: &str,
        conv: &str,
        bn: Option<&str>,
        stride: i64,
        relu: bool,
    ) -> Result<String, PipelineError> {
        let w = self.var(&format!("{conv}.weight"))?.to_kind(Kind::Double);
        let s = w.size();
        let (cout, k) = (s[0], s[2]);
        let groups = if s[1] == 1 && cout > 1 { cout } else { 1 };
        let key = (conv.to_string(), bn.map(str::to_string));
        let (wn, bn_) = match self.folded.get(&key) {
            Some(names) => names.clone(),
            None => {
                let names = self.fold(w, conv, bn)?;
                self.folded.insert(key, names.clone());
                names
            }
        };
        let p = k / 2;
        let y = self.op(
            "Conv",
            &[x, &wn, &bn_],
            vec![
                ints("kernel_shape", &[k, k]),
                ints("strides", &[stride, stride]),
                ints("pads", &[p, p, p, p]),
                int("group", groups),
            ],
        );
        Ok(if relu { self.op("Relu", &[&y], vec![]) } else { y })
    }

    /// The initializers of conv weight `w` (`{conv}.weight`, double) with its bias and BN folded.
    fn fold(&mut self, w: Tensor, conv: &str, bn: Option<&str>) -> Result<(String, String), PipelineError> {
        let cout = w.size()[0];
        let mut b = match self.vars.get(&format!("{conv}.bias")) {
            Some(b) => b.to_kind(Kind::Double),
            None => Tensor::zeros([cout], (Kind::Double, tch::Device::Cpu)),
        };
        let mut w = w;
        if let Some(bn) = bn {
            // y = γ (conv(x) + b − μ) / √(σ² + ε) + β
            let g = |n: &str| -> Result<Tensor, PipelineError> {
                Ok(self.var(&format!("{bn}.{n}"))?.to_kind(Kind::Double))
            };
            let scale = g("weight")? * (g("running_var")? + BN_EPS).rsqrt();
            w *= scale.view([-1, 1, 1, 1]);
            b = (b - g("running_mean")?) * &scale + g("bias")?;
        }
        Ok((self.constant(&w), self.constant(&b)))
    }

    /// A unit `{prefix}.conv` with its BN `{prefix}.bn` when the detector has one.
    fn unit(&mut self, x: &str, prefix: &str, stride: i64, relu: bool) -> Result<String, PipelineError> {
        let bn = format!("{prefix}.bn");
        let has_bn = self.vars.contains_key(&format!("{bn}.weight"));
        self.conv(x, &format!("{prefix}.conv"), has_bn.then_some(bn.as_str()), stride, relu)
    }

    fn gather_channels(&mut self, x: &str, idx: &[i64]) -> String {
        let i = self.constant(&Tensor::from_slice(idx));
        self.op("Gather", &[x, &i], vec![int("axis", 1)])
    }

    /// `[N, A·C, H, W]` → `[N, H·W·A, C]` (`[N, H·W·A]` when `squeeze`), as `output`.
    fn flatten_level(&mut self, x: &str, a: i64, c: i64, squeeze: bool, output: &str) -> String {
        let split = self.constant(&Tensor::from_slice(&[0i64, a, c, -1]));
        let y = self.op("Reshape", &[x, &split], vec![]);
        let y = self.op("Transpose", &[&y], vec![ints("perm", &[0, 3, 1, 2])]);
        let flat: &[i64] = if squeeze { &[0, -1] } else { &[0, -1, c] };
        let flat = self.constant(&Tensor::from_slice(flat));
        self.op_named("Reshape", &[&y, &flat], vec![], Some(output))
    }

    fn finish(self, inputs: Vec<ValueInfo>, outputs: Vec<ValueInfo>, name: &str) -> Vec<u8> {
        let model = proto::ModelProto {
            ir_version: 8,
            producer_name: "detnas".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            doc_string: "DetNAS child detector (arXiv:1903.10979) exported by detnas".into(),
            graph: Some(proto::GraphProto {
                node: self.nodes,
                name: name.into(),
                initializer: self.initializers,
                input: inputs,
                output: outputs,
            }),
            opset_import: vec![proto::OperatorSetIdProto { domain: String::new(), version: OPSET }],
        };
        model.encode_to_vec()
    }
}

fn tensor_info(name: &str, dims: &[Result<i64, &str>]) -> ValueInfo {
    typed_info(name, FLOAT, dims)
}

/// A graph input or output of element type `elem` (`FLOAT`, `INT64`); a dimension is a size
/// or a symbolic name.
fn typed_info(name: &str, elem: i32, dims: &[Result<i64, &str>]) -> ValueInfo {
    let dim = dims
        .iter()
        .map(|d| match d {
            Ok(v) => proto::Dimension { dim_value: Some(*v), dim_param: None },
            Err(p) => proto::Dimension { dim_value: None, dim_param: Some(p.to_string()) },
        })
        .collect();
    ValueInfo {
        name: name.into(),
        r#type: Some(proto::TypeProto {
            tensor_type: Some(proto::TensorType { elem_type: elem, shape: Some(proto::TensorShapeProto { dim }) }),
        }),
    }
}

/// The channel indices a stride-1 block passes through and transforms (`shuffle`, `c` input
/// channels): DetNAS's `channel_shuffle1` (view `[2, c/2]`, transpose, halves) or SPOS's even
/// and odd channels.
fn split_channels(shuffle: ChannelShuffle, c: i64) -> (Vec<i64>, Vec<i64>) {
    let half = c / 2;
    let order: Vec<i64> = match shuffle {
        ChannelShuffle::Detnas => (0..c).map(|n| (n % 2) * half + n / 2).collect(),
        ChannelShuffle::EvenOdd => (0..c).step_by(2).chain((1..c).step_by(2)).collect(),
    };
    (order[..half as usize].to_vec(), order[half as usize..].to_vec())
}

/// The backbone's stage outputs C2–C5 from `x`.
fn backbone(g: &mut Graph, x: &str, space: &SearchSpace, arch: &Arch) -> Result<Vec<String>, PipelineError> {
    let mut x = g.unit(x, "backbone.stem", 2, true)?;
    let mut cin = space.stem as i64;
    let mut outs = Vec::new();
    let mut i = 0usize;
    for (&w, &d) in space.widths.iter().zip(&space.depths) {
        for j in 0..d {
            let stride = if j == 0 { 2 } else { 1 };
            let p = format!("backbone.features.{i}");
            let choice = arch.choices()[i];
            let (passed, input) = if stride == 2 {
                let y = g.unit(&x, &format!("{p}.proj.0"), 2, false)?;
                (g.unit(&y, &format!("{p}.proj.1"), 1, true)?, x.clone())
            } else {
                let (a, b) = split_channels(space.shuffle, cin);
                (g.gather_channels(&x, &a), g.gather_channels(&x, &b))
            };
            // (stride of each unit, ReLU after it): the official blocks.
            let units: &[(i64, bool)] = match choice {
                Choice::Xception => &[(stride, false), (1, true), (1, false), (1, true), (1, false), (1, false)],
                _ => &[(1, true), (stride, false), (1, false)],
            };
            let mut y = input;
            for (u, &(s, relu)) in units.iter().enumerate() {
                y = g.unit(&y, &format!("{p}.branch.{u}"), s, relu)?;
            }
            let y = g.op("Relu", &[&y], vec![]);
            x = g.op("Concat", &[&passed, &y], vec![int("axis", 1)]);
            cin = w as i64;
            i += 1;
        }
        outs.push(x.clone());
    }
    Ok(outs)
}

/// FPN outputs from backbone stages `c`: `P6`/`P7` from C5 (RetinaNet) or `P6` as the top
/// output subsampled (Faster R-CNN). Nearest upsampling to each lateral's size.
fn fpn(g: &mut Graph, c: &[String], retina: bool) -> Result<Vec<String>, PipelineError> {
    let n = c.len();
    let mut last = g.unit(&c[n - 1], &format!("fpn.inner{}", n - 1), 1, false)?;
    let mut outs = vec![g.unit(&last, &format!("fpn.layer{}", n - 1), 1, false)?];
    for i in (0..n - 1).rev() {
        let lat = g.unit(&c[i], &format!("fpn.inner{i}"), 1, false)?;
        let size = g.op("Shape", &[&lat], vec![]);
        let up = g.op(
            "Resize",
            &[&last, "", "", &size],
            vec![
                string("mode", "nearest"),
                string("coordinate_transformation_mode", "asymmetric"),
                string("nearest_mode", "floor"),
            ],
        );
        last = g.op("Add", &[&lat, &up], vec![]);
        outs.insert(0, g.unit(&last, &format!("fpn.layer{i}"), 1, false)?);
    }
    if retina {
        let p6 = g.unit(&c[n - 1], "fpn.p6", 2, false)?;
        let r = g.op("Relu", &[&p6], vec![]);
        let p7 = g.unit(&r, "fpn.p7", 2, false)?;
        outs.extend([p6, p7]);
    } else {
        let top = outs[n - 1].clone();
        outs.push(g.op("MaxPool", &[&top], vec![ints("kernel_shape", &[1, 1]), ints("strides", &[2, 2])]));
    }
    Ok(outs)
}

/// The ONNX graphs of a child detector (module docs): `(detector.onnx, box_head.onnx)`;
/// with `nms`, `detector.onnx` also decodes, clips and suppresses the boxes
/// ([`postprocess`]: input `image_sizes`, outputs `num_detections`, `detection_boxes`,
/// `detection_scores`, `detection_classes`).
///
/// # Errors
/// [`PipelineError::Config`] naming a variable the detector lacks.
pub fn detector_graphs(
    space: &SearchSpace,
    arch: &Arch,
    cfg: &DetectorConfig,
    classes: i64,
    vars: &BTreeMap<String, Tensor>,
    nms: bool,
) -> Result<(Vec<u8>, Option<Vec<u8>>), PipelineError> {
    let mut g = Graph::new(vars);
    let c = backbone(&mut g, "images", space, arch)?;
    let mut inputs = vec![tensor_info("images", &[Err("batch"), Ok(3), Err("height"), Err("width")])];
    if nms {
        inputs.push(postprocess::sizes_input());
    }
    let mut outputs = Vec::new();
    let level = |t: &str, l: usize, c: Option<i64>| {
        // Each level its own symbolic size: runtimes hold equal names to equal sizes.
        let anchors = format!("anchors_{l}");
        let mut d = vec![Err("batch"), Err(anchors.as_str())];
        d.extend(c.map(Ok));
        tensor_info(&format!("{t}.{l}"), &d)
    };
    match &cfg.head {
        HeadConfig::Retinanet(r) => {
            let p = fpn(&mut g, &c[1..], true)?;
            let a = (r.scales_per_octave * r.aspect_ratios.len()) as i64;
            for (l, f) in p.iter().enumerate() {
                for (tower, out, width, name) in
                    [("cls_tower", "cls_logits", classes, "cls"), ("bbox_tower", "bbox_pred", 4, "reg")]
                {
                    let mut y = f.clone();
                    for u in 0..r.num_convs {
                        let unit = format!("retina.{tower}.{u}");
                        let bn = if r.tower_bn && r.level_bn {
                            Some(format!("{unit}.bn_p{}", l + 3))
                        } else if r.tower_bn {
                            Some(format!("{unit}.bn"))
                        } else {
                            None
                        };
                        y = g.conv(&y, &format!("{unit}.conv"), bn.as_deref(), 1, true)?;
                    }
                    let y = g.conv(&y, &format!("retina.{out}"), None, 1, false)?;
                    g.flatten_level(&y, a, width, false, &format!("{name}.{l}"));
                    outputs.push(level(name, l, Some(width)));
                }
            }
            if nms {
                outputs.extend(postprocess::retinanet(&mut g, r, classes, &p));
            }
            Ok((g.finish(inputs, outputs, "detector"), None))
        }
        HeadConfig::FasterRcnn(f) => {
            let p = fpn(&mut g, &c, false)?;
            let a = f.rpn.aspect_ratios.len() as i64;
            for (l, x) in p.iter().enumerate() {
                let t = g.conv(x, "rpn.conv", None, 1, true)?;
                let o = g.conv(&t, "rpn.cls_logits", None, 1, false)?;
                g.flatten_level(&o, a, 1, true, &format!("rpn_obj.{l}"));
                outputs.push(level("rpn_obj", l, None));
                let r = g.conv(&t, "rpn.bbox_pred", None, 1, false)?;
                g.flatten_level(&r, a, 4, false, &format!("rpn_reg.{l}"));
                outputs.push(level("rpn_reg", l, Some(4)));
            }
            for (l, x) in p.iter().take(4).enumerate() {
                let name = format!("p{}", l + 2);
                g.op_named("Identity", &[x], vec![], Some(&name));
                let (h, w) = (format!("height_{name}"), format!("width_{name}"));
                outputs.push(tensor_info(&name, &[Err("batch"), Ok(cfg.fpn_channels), Err(&h), Err(&w)]));
            }
            if nms {
                outputs.extend(postprocess::faster_rcnn(&mut g, f, classes, &p, |g, x| box_head(g, x, f))?);
            }
            let detector = g.finish(inputs, outputs, "detector");
            let mut h = Graph::new(vars);
            let (cls, reg) = box_head(&mut h, "pooled", f)?;
            h.op_named("Identity", &[&cls], vec![], Some("roi_cls"));
            h.op_named("Identity", &[&reg], vec![], Some("roi_reg"));
            let r = f.roi.pooler_resolution;
            let head = h.finish(
                vec![tensor_info("pooled", &[Err("rois"), Ok(cfg.fpn_channels), Ok(r), Ok(r)])],
                vec![
                    tensor_info("roi_cls", &[Err("rois"), Ok(classes + 1)]),
                    tensor_info("roi_reg", &[Err("rois"), Ok(4 * (classes + 1))]),
                ],
                "box_head",
            );
            Ok((detector, Some(head)))
        }
    }
}

/// Faster R-CNN's box head on pooled RoI features `x` `[R, C, P, P]`: class logits
/// `[R, K+1]` and box deltas `[R, 4(K+1)]`.
fn box_head(
    g: &mut Graph,
    x: &str,
    f: &detnas_detect::rcnn::FasterRcnnConfig,
) -> Result<(String, String), PipelineError> {
    let mut x = x.to_string();
    let hidden = match f.roi.head {
        detnas_detect::rcnn::BoxHeadKind::FourConvOneFc => {
            for u in 0..4 {
                x = g.unit(&x, &format!("roi_heads.convs.{u}"), 1, true)?;
            }
            let flat = g.op("Flatten", &[&x], vec![int("axis", 1)]);
            linear(g, &flat, "roi_heads.fc6", true)?
        }
        detnas_detect::rcnn::BoxHeadKind::TwoFc => {
            let flat = g.op("Flatten", &[&x], vec![int("axis", 1)]);
            let y = linear(g, &flat, "roi_heads.fc6", true)?;
            linear(g, &y, "roi_heads.fc7", true)?
        }
    };
    Ok((linear(g, &hidden, "roi_heads.cls_score", false)?, linear(g, &hidden, "roi_heads.bbox_pred", false)?))
}

/// `x · Wᵀ + b` of the linear layer `name` (`.weight` `[out, in]`, `.bias`), then ReLU.
fn linear(g: &mut Graph, x: &str, name: &str, relu: bool) -> Result<String, PipelineError> {
    let w = g.var(&format!("{name}.weight"))?.shallow_clone();
    let b = g.var(&format!("{name}.bias"))?.shallow_clone();
    let (wn, bn) = (g.constant(&w), g.constant(&b));
    let y = g.op("Gemm", &[x, &wn, &bn], vec![int("transB", 1)]);
    Ok(if relu { g.op("Relu", &[&y], vec![]) } else { y })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The gathered channels are the official shuffles' halves: DetNAS's `channel_shuffle1`
    /// (view `[2, c/2]`, transpose, split) computed with tensors, SPOS's even and odd channels.
    #[test]
    fn stride_one_blocks_split_the_channels_as_the_official_shuffles() {
        let c = 12i64;
        let x = Tensor::arange(c, (Kind::Int64, tch::Device::Cpu));
        let shuffled = x.view([2, c / 2]).transpose(0, 1).reshape([c]);
        let official: Vec<i64> = Vec::try_from(shuffled).unwrap();
        let (a, b) = split_channels(ChannelShuffle::Detnas, c);
        assert_eq!([a, b].concat(), official);
        let (a, b) = split_channels(ChannelShuffle::EvenOdd, c);
        assert_eq!((a, b), ((0..c).step_by(2).collect(), (1..c).step_by(2).collect()));
    }

    /// A unit becomes Conv + Relu with its BN folded in, hand-computed (ONNX Runtime reading
    /// whole detectors is checked by the CLI tests).
    #[test]
    fn a_graph_round_trips_through_its_encoding() {
        let vars: BTreeMap<String, Tensor> = [
            ("u.conv.weight".to_string(), Tensor::ones([2, 3, 3, 3], (Kind::Float, tch::Device::Cpu))),
            ("u.bn.weight".into(), Tensor::from_slice(&[2.0f32, 1.0])),
            ("u.bn.bias".into(), Tensor::from_slice(&[0.5f32, 0.0])),
            ("u.bn.running_mean".into(), Tensor::from_slice(&[1.0f32, 0.0])),
            ("u.bn.running_var".into(), Tensor::from_slice(&[4.0f32 - 1e-5, 1.0 - 1e-5])),
        ]
        .into_iter()
        .collect();
        let mut g = Graph::new(&vars);
        let y = g.unit("x", "u", 1, true).unwrap();
        let bytes =
            g.finish(vec![tensor_info("x", &[Err("n"), Ok(3), Err("h"), Err("w")])], vec![tensor_info(&y, &[])], "t");
        let m = proto::ModelProto::decode(bytes.as_slice()).unwrap();
        let graph = m.graph.unwrap();
        assert_eq!(m.opset_import[0].version, OPSET);
        assert_eq!(graph.node.iter().map(|n| n.op_type.as_str()).collect::<Vec<_>>(), ["Conv", "Relu"]);
        // Folded: w' = w·γ/√(σ²+ε) = (1·2/2, 1·1/1), b' = (0 − μ)·γ/√(σ²+ε) + β = (−1 + 0.5, 0).
        let floats = |t: &TensorProto| -> Vec<f32> {
            t.raw_data.chunks(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
        };
        let (w, b) = (&graph.initializer[0], &graph.initializer[1]);
        assert_eq!(w.dims, [2, 3, 3, 3]);
        let w = floats(w);
        assert!((w[0] - 1.0).abs() < 1e-6 && (w[27] - 1.0).abs() < 1e-6, "{w:?}");
        let b = floats(b);
        assert!((b[0] + 0.5).abs() < 1e-6 && b[1].abs() < 1e-6, "{b:?}");
    }
}
