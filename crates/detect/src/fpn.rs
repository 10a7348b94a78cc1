//! Feature Pyramid Network (Lin et al. 2017) as maskrcnn_benchmark builds it for DetNAS:
//! 1×1 lateral and 3×3 output convs of `out_channels`, nearest-neighbour top-down path, BN
//! after every conv when `bn` (DetNAS: `FPN.USE_SYNCBN: True`), and an extra top block:
//! * `MaxPool` (Faster R-CNN): `P6 = max_pool(P5, 1, stride 2)`;
//! * `P6P7` (RetinaNet): `P6 = conv3×3/2(C5)`, `P7 = conv3×3/2(ReLU(P6))`.
//!
//! # Shapes
//! Inputs `C_first..C5` (strides `2^first..32`), outputs `P_first..P5` of `out_channels`
//! plus the top block's levels.

use crate::layers::ConvUnit;
use serde::{Deserialize, Serialize};
use tch::Tensor;
use tch::nn;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TopBlock {
    MaxPool,
    P6P7,
}

#[derive(Debug)]
pub struct Fpn {
    lateral: Vec<ConvUnit>,
    output: Vec<ConvUnit>,
    p6: Option<ConvUnit>,
    p7: Option<ConvUnit>,
    top: TopBlock,
}

impl Fpn {
    /// `in_channels`: channels of the backbone levels used (e.g. C2..C5 or C3..C5).
    pub fn new(p: &nn::Path, in_channels: &[i64], out: i64, bn: bool, top: TopBlock) -> Fpn {
        let lateral = in_channels
            .iter()
            .enumerate()
            .map(|(i, &c)| ConvUnit::new(&(p / format!("inner{i}")), c, out, 1, 1, bn, false, None))
            .collect();
        let output = (0..in_channels.len())
            .map(|i| ConvUnit::new(&(p / format!("layer{i}")), out, out, 3, 1, bn, false, None))
            .collect();
        let (p6, p7) = match top {
            TopBlock::MaxPool => (None, None),
            TopBlock::P6P7 => {
                let c5 = *in_channels.last().expect("at least one level");
                (
                    Some(ConvUnit::new(&(p / "p6"), c5, out, 3, 2, bn, false, None)),
                    Some(ConvUnit::new(&(p / "p7"), out, out, 3, 2, bn, false, None)),
                )
            }
        };
        Fpn { lateral, output, p6, p7, top }
    }

    /// Pyramid levels, finest first.
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
