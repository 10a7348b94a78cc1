//! Feature Pyramid Network (Lin et al. 2017) as maskrcnn_benchmark builds it for DetNAS:
//! 1×1 lateral and 3×3 output convs of `out_channels`, nearest-neighbour top-down path, BN
//! after every conv when `bn` (DetNAS: `FPN.USE_SYNCBN: True`), and an extra top block:
//! * `MaxPool` (Faster R-CNN): `P6 = max_pool(P5, 1, stride 2)`;
//! * `P6P7` (RetinaNet): `P6 = conv3×3/2(C5)`, `P7 = conv3×3/2(ReLU(P6))`.
//!
//! # Shapes
//! Inputs `C_first..C5` (strides `2^first..32`), outputs `P_first..P5` of `out_channels`
//! plus the top block's levels.

use crate::layers::{bn_if, conv_unit};
use detnas_nn::layers::ConvBn;
use serde::{Deserialize, Serialize};
use tch::Tensor;
use tch::nn;
use tch::nn::ModuleT;

/// The FPN's extra top levels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TopBlock {
    /// P6 by max-pooling P5 (Faster R-CNN).
    MaxPool,
    /// P6 and P7 by strided 3×3 convs from C5 (RetinaNet).
    P6P7,
}

/// The pyramid: lateral and output convs per input level, and the top block.
#[derive(Debug)]
pub struct Fpn {
    lateral: Vec<ConvBn>,
    output: Vec<ConvBn>,
    p6: Option<ConvBn>,
    p7: Option<ConvBn>,
    top: TopBlock,
    strides: Vec<i64>,
}

impl Fpn {
    /// `in_channels` and `in_strides` (pixels): the backbone levels used (e.g. C2..C5 or
    /// C3..C5); `out` channels on every output level.
    ///
    /// # Panics
    /// When `in_channels` is empty.
    pub fn new(p: &nn::Path, in_channels: &[i64], in_strides: &[i64], out: i64, bn: bool, top: TopBlock) -> Fpn {
        let lateral = in_channels
            .iter()
            .enumerate()
            .map(|(i, &c)| conv_unit(&(p / format!("inner{i}")), (c, out, 1, 1), bn_if(bn), false, None))
            .collect();
        let output = (0..in_channels.len())
            .map(|i| conv_unit(&(p / format!("layer{i}")), (out, out, 3, 1), bn_if(bn), false, None))
            .collect();
        let (p6, p7) = match top {
            TopBlock::MaxPool => (None, None),
            TopBlock::P6P7 => {
                let c5 = *in_channels.last().expect("at least one level");
                (
                    Some(conv_unit(&(p / "p6"), (c5, out, 3, 2), bn_if(bn), false, None)),
                    Some(conv_unit(&(p / "p7"), (out, out, 3, 2), bn_if(bn), false, None)),
                )
            }
        };
        let last = *in_strides.last().expect("at least one level");
        let mut strides = in_strides.to_vec();
        strides.push(2 * last);
        if top == TopBlock::P6P7 {
            strides.push(4 * last);
        }
        Fpn { lateral, output, p6, p7, top, strides }
    }

    /// Strides (pixels) of the output levels, finest first: the input levels', then the top
    /// block's (one level for `MaxPool`, two for `P6P7`).
    pub fn strides(&self) -> &[i64] {
        &self.strides
    }

    /// Strides of the output levels that come from backbone levels (without the top block).
    pub fn input_strides(&self) -> &[i64] {
        &self.strides[..self.lateral.len()]
    }

    /// Pyramid levels, finest first.
    ///
    /// # Shapes
    /// `feats[l]`: `[N, in_channels[l], H/s_l, W/s_l]` → `[N, out, H/s, W/s]` for every
    /// stride of [`Fpn::strides`].
    ///
    /// # Panics
    /// Never: the extra level is built whenever the configuration uses it.
    pub fn forward_t(&self, feats: &[Tensor], train: bool) -> Vec<Tensor> {
        let n = feats.len();
        let mut last = self.lateral[n - 1].forward_t(&feats[n - 1], train);
        let mut outs = vec![self.output[n - 1].forward_t(&last, train)];
        for i in (0..n - 1).rev() {
            let lat = self.lateral[i].forward_t(&feats[i], train);
            let s = lat.size();
            let up = last.upsample_nearest2d([s[2], s[3]], None, None);
            last = lat + up;
            outs.insert(0, self.output[i].forward_t(&last, train));
        }
        match self.top {
            TopBlock::MaxPool => {
                let p6 = outs[n - 1].max_pool2d([1, 1], [2, 2], [0, 0], [1, 1], false);
                outs.push(p6);
            }
            TopBlock::P6P7 => {
                let p6 = self.p6.as_ref().expect("built").forward_t(&feats[n - 1], train);
                let p7 = self.p7.as_ref().expect("built").forward_t(&p6.relu(), train);
                outs.push(p6);
                outs.push(p7);
            }
        }
        outs
    }
}
