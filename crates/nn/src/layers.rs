//! Conv + BN (+ ReLU) units with the official initialisation, and the classification head.

use crate::bn::{ConvGeometry, conv_bn_t};
use crate::count;
use tch::Tensor;
use tch::nn::{self, Module, ModuleT};

/// BN with γ = 1, β = 1e-4 (official init; tch's default γ is uniform in (0, 1)),
/// momentum 0.1, ε 1e-5 as PyTorch's defaults.
pub fn batch_norm(p: &nn::Path, channels: i64) -> nn::BatchNorm {
    nn::batch_norm2d(
        p,
        channels,
        nn::BatchNormConfig { ws_init: nn::Init::Const(1.0), bs_init: nn::Init::Const(1e-4), ..Default::default() },
    )
}

/// A conv (optionally with bias) followed by BN and optionally ReLU.
///
/// # Shapes
/// `[N, in, H, W] → [N, out, H', W']` with `H' = ⌊(H + 2·⌊k/2⌋ − k)/stride⌋ + 1`.
#[derive(Debug)]
pub struct ConvBn {
    pub conv: nn::Conv2D,
    pub geometry: ConvGeometry,
    pub bn: nn::BatchNorm,
    pub relu: bool,
}

/// Geometry of a [`ConvBn`].
#[derive(Clone, Copy, Debug)]
pub struct ConvBnConfig {
    pub cin: i64,
    pub cout: i64,
    pub kernel: i64,
    pub stride: i64,
    /// `true` for depthwise (`groups = cin`, requires `cin == cout`).
    pub depthwise: bool,
    pub bias: bool,
    pub relu: bool,
    /// Weight std; `None` is the official `1 / (cin / groups)`.
    pub std: Option<f64>,
}

impl ConvBnConfig {
    /// A bias-free 1×1 conv.
    pub fn pointwise(cin: i64, cout: i64, relu: bool) -> ConvBnConfig {
        ConvBnConfig { cin, cout, kernel: 1, stride: 1, depthwise: false, bias: false, relu, std: None }
    }

    /// A bias-free depthwise `kernel × kernel` conv, never followed by ReLU.
    pub fn depthwise(c: i64, kernel: i64, stride: i64) -> ConvBnConfig {
        ConvBnConfig { cin: c, cout: c, kernel, stride, depthwise: true, bias: false, relu: false, std: None }
    }

    /// Builds the unit under `p` (`p.conv.*`, `p.bn.*`).
    pub fn build(self, p: &nn::Path) -> ConvBn {
        let groups = if self.depthwise { self.cin } else { 1 };
        let std = self.std.unwrap_or(1.0 / (self.cin / groups) as f64);
        let conv = nn::conv2d(
            p / "conv",
            self.cin,
            self.cout,
            self.kernel,
            nn::ConvConfig {
                stride: self.stride,
                padding: self.kernel / 2,
                groups,
                bias: self.bias,
                ws_init: nn::Init::Randn { mean: 0.0, stdev: std },
                bs_init: nn::Init::Const(0.0),
                ..Default::default()
            },
        );
        let geometry = ConvGeometry { stride: self.stride, padding: self.kernel / 2, groups };
        ConvBn { conv, geometry, bn: batch_norm(&(p / "bn"), self.cout), relu: self.relu }
    }
}

impl ModuleT for ConvBn {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut y = conv_bn_t(&self.conv, self.geometry, &self.bn, xs, train);
        count::record_conv(&self.conv.ws, &y);
        if self.relu { y.relu_() } else { y }
    }
}

/// The stem: 3×3 conv stride 2 with bias (N(0, 0.01)), BN, ReLU.
pub fn stem(p: &nn::Path, channels: i64) -> ConvBn {
    ConvBnConfig {
        cin: 3,
        cout: channels,
        kernel: 3,
        stride: 2,
        depthwise: false,
        bias: true,
        relu: true,
        std: Some(0.01),
    }
    .build(p)
}

/// Classification head: 1×1 conv with bias → BN → ReLU → Dropout2d(0.2) → global average
/// pool → FC (N(0, 0.01), zero bias).
///
/// # Shapes
/// `[N, C5, H, W] → [N, classes]`
#[derive(Debug)]
pub struct ClsHead {
    pub last_conv: ConvBn,
    pub fc: nn::Linear,
    pub dropout: f64,
}

impl ClsHead {
    /// Builds `last_conv.*` and `fc.*` under `p`.
    pub fn new(p: &nn::Path, cin: i64, last: i64, classes: i64) -> ClsHead {
        let last_conv =
            ConvBnConfig { cin, cout: last, kernel: 1, stride: 1, depthwise: false, bias: true, relu: true, std: None }
                .build(&(p / "last_conv"));
        let fc = nn::linear(
            p / "fc",
            last,
            classes,
            nn::LinearConfig {
                ws_init: nn::Init::Randn { mean: 0.0, stdev: 0.01 },
                bs_init: Some(nn::Init::Const(0.0)),
                bias: true,
            },
        );
        ClsHead { last_conv, fc, dropout: 0.2 }
    }
}

impl ModuleT for ClsHead {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let y = self.last_conv.forward_t(xs, train).feature_dropout(self.dropout, train);
        let y = y.mean_dim(&[2i64, 3][..], false, None);
        count::record_linear(&self.fc.ws);
        self.fc.forward(&y)
    }
}
