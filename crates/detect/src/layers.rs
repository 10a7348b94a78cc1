//! Conv units of the detection neck and heads: the backbone's [`ConvBn`] (its BNs run
//! through [`detnas_nn::bn::conv_bn_t`], so BN recalibration covers the FPN and heads as well
//! as the backbone: DetNAS arXiv:1903.10979 §3.3 recomputes every BN statistic of a
//! candidate), initialised as maskrcnn_benchmark initialises them, and the plain predictor
//! convs.

use detnas_nn::layers::{ConvBn, ConvBnConfig, NormKind};
use tch::nn;

/// A `k × k` conv unit under `p` (`p.conv.*`, `p.bn.*`): with BN (`norm` not `None`) and
/// without a per-level BN the conv has no bias; weights `N(0, std)` with `std = None` as
/// `1/√fan_in` (the variance of PyTorch's default and of maskrcnn_benchmark's
/// `kaiming_uniform_(a=1)` for FPN convs).
pub fn conv_unit(
    p: &nn::Path,
    (cin, cout, k, stride): (i64, i64, i64, i64),
    norm: NormKind,
    relu: bool,
    std: Option<f64>,
) -> ConvBn {
    ConvBnConfig {
        cin,
        cout,
        kernel: k,
        stride,
        depthwise: false,
        bias: !matches!(norm, NormKind::Bn),
        relu,
        std: Some(std.unwrap_or(1.0 / ((cin * k * k) as f64).sqrt())),
        norm,
    }
    .build(p)
}

/// The BN of a unit: one, or none.
pub fn bn_if(bn: bool) -> NormKind {
    if bn { NormKind::Bn } else { NormKind::None }
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
