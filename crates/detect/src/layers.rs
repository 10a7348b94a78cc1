//! Conv (+ BN) (+ ReLU) units of the detection neck and heads. Their BNs run through
//! [`detnas_nn::bn::conv_bn_t`] (folded into the conv in eval mode), so BN recalibration
//! covers the FPN and heads as well as the backbone (reference §6: every BN statistic of a
//! candidate is recomputed).

use detnas_nn::bn::{ConvGeometry, conv_bn_t};
use detnas_nn::layers::batch_norm;
use tch::Tensor;
use tch::nn::{self, Module};

/// A `k × k` conv; with `bn`, bias-free and followed by BN (γ = 1); optionally ReLU.
#[derive(Debug)]
pub struct ConvUnit {
    pub conv: nn::Conv2D,
    pub geometry: ConvGeometry,
    pub bn: Option<nn::BatchNorm>,
    pub relu: bool,
}

impl ConvUnit {
    /// Weights `N(0, std)`; `std = None` is `1/√fan_in` (the variance of PyTorch's default
    /// and of maskrcnn_benchmark's `kaiming_uniform_(a=1)` for FPN convs).
    #[allow(clippy::too_many_arguments)]
    pub fn new(p: &nn::Path, cin: i64, cout: i64, k: i64, stride: i64, bn: bool, relu: bool, std: Option<f64>) -> Self {
        let std = std.unwrap_or(1.0 / ((cin * k * k) as f64).sqrt());
        let conv = nn::conv2d(
            p / "conv",
            cin,
            cout,
            k,
            nn::ConvConfig {
                stride,
                padding: k / 2,
                bias: !bn,
                ws_init: nn::Init::Randn { mean: 0.0, stdev: std },
                bs_init: nn::Init::Const(0.0),
                ..Default::default()
            },
        );
        let geometry = ConvGeometry { stride, padding: k / 2, groups: 1 };
        ConvUnit { conv, geometry, bn: bn.then(|| batch_norm(&(p / "bn"), cout)), relu }
    }

    pub fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let mut y = match &self.bn {
            Some(bn) => conv_bn_t(&self.conv, self.geometry, bn, x, train),
            None => self.conv.forward(x),
        };
        if self.relu { y.relu_() } else { y }
    }
}

/// A plain predictor conv with bias: weights `N(0, std)`, bias `bias`.
pub fn predictor(p: nn::Path, cin: i64, cout: i64, k: i64, std: f64, bias: f64) -> nn::Conv2D {
    nn::conv2d(
        p,
        cin,
        cout,
        k,
        nn::ConvConfig {
            padding: k / 2,
            ws_init: nn::Init::Randn { mean: 0.0, stdev: std },
            bs_init: nn::Init::Const(bias),
            ..Default::default()
        },
    )
}
