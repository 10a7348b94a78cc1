//! Conv + BN (+ ReLU) units with the official initialisation, and the classification head.

use crate::bn::{ConvGeometry, conv_bn_t, fold, fold_key};
use crate::count;
use std::sync::Mutex;
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

/// The BatchNorm after a unit's conv.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormKind {
    /// No BN.
    None,
    /// One BN (`p.bn.*`).
    Bn,
    /// One BN per pyramid level (`p.bn_p{first}.*`, `p.bn_p{first+1}.*`, …) after a conv shared
    /// by the levels.
    PerLevel {
        /// Pyramid levels sharing the conv.
        levels: usize,
        /// Number of the first level (`p{first}`).
        first: usize,
    },
}

/// A conv (optionally with bias) followed by BN (none, one, or one per pyramid level) and
/// optionally ReLU: the one conv unit of the backbone, the FPN and the detection heads. Its BN
/// runs through [`conv_bn_t`] in training mode (observed by BN recalibration); in eval mode
/// it is folded into the conv, and the folded weights are kept until the conv's weights or
/// the BN's parameters or statistics change ([`fold_key`]), or the unit runs in training
/// mode.
///
/// # Shapes
/// `[N, in, H, W] → [N, out, H', W']` with `H' = ⌊(H + 2·⌊k/2⌋ − k)/stride⌋ + 1`.
#[derive(Debug)]
pub struct ConvBn {
    /// The convolution.
    pub conv: nn::Conv2D,
    /// Its stride, padding and groups.
    pub geometry: ConvGeometry,
    /// The BNs: none, one, or one per level.
    pub bns: Vec<nn::BatchNorm>,
    /// A ReLU after the BN.
    pub relu: bool,
    /// Folded eval-mode weights and bias per BN, with the [`fold_key`] they were made from.
    folded: Mutex<Vec<Option<Folded>>>,
}

#[derive(Debug)]
struct Folded {
    key: Vec<(i64, usize)>,
    weight: Tensor,
    bias: Tensor,
}

/// Geometry and initialisation of a [`ConvBn`].
#[derive(Clone, Copy, Debug)]
pub struct ConvBnConfig {
    /// Input channels.
    pub cin: i64,
    /// Output channels.
    pub cout: i64,
    /// Kernel side.
    pub kernel: i64,
    /// Stride.
    pub stride: i64,
    /// `true` for depthwise (`groups = cin`, requires `cin == cout`).
    pub depthwise: bool,
    /// A bias on the convolution.
    pub bias: bool,
    /// A ReLU after the normalisation.
    pub relu: bool,
    /// Weight std; `None` is the official `1 / (cin / groups)`.
    pub std: Option<f64>,
    /// The normalisation after the convolution.
    pub norm: NormKind,
}

impl ConvBnConfig {
    /// A bias-free 1×1 conv with BN.
    pub fn pointwise(cin: i64, cout: i64, relu: bool) -> ConvBnConfig {
        ConvBnConfig {
            cin,
            cout,
            kernel: 1,
            stride: 1,
            depthwise: false,
            bias: false,
            relu,
            std: None,
            norm: NormKind::Bn,
        }
    }

    /// A bias-free depthwise `kernel × kernel` conv with BN, never followed by ReLU.
    pub fn depthwise(c: i64, kernel: i64, stride: i64) -> ConvBnConfig {
        ConvBnConfig {
            cin: c,
            cout: c,
            kernel,
            stride,
            depthwise: true,
            bias: false,
            relu: false,
            std: None,
            norm: NormKind::Bn,
        }
    }

    /// Builds the unit under `p` (`p.conv.*`, then `p.bn.*` or `p.bn_p{l}.*`).
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
        let bns = match self.norm {
            NormKind::None => Vec::new(),
            NormKind::Bn => vec![batch_norm(&(p / "bn"), self.cout)],
            NormKind::PerLevel { levels, first } => {
                (0..levels).map(|l| batch_norm(&(p / format!("bn_p{}", first + l)), self.cout)).collect()
            }
        };
        let folded = Mutex::new(bns.iter().map(|_| None).collect());
        ConvBn { conv, geometry, bns, relu: self.relu, folded }
    }
}

impl ConvBn {
    /// The unit's (first) BN, if it has one.
    pub fn bn(&self) -> Option<&nn::BatchNorm> {
        self.bns.first()
    }

    /// The unit on pyramid level `level` (which selects the BN of a per-level unit).
    ///
    /// # Shapes
    /// `[N, in, H, W] → [N, out, H/stride, W/stride]`.
    pub fn forward_level(&self, xs: &Tensor, level: usize, train: bool) -> Tensor {
        let l = if self.bns.len() == 1 { 0 } else { level };
        let mut y = match self.bns.len() {
            0 => self.conv.forward(xs),
            _ if train => {
                // The running statistics move without a version bump: forget the fold.
                self.folded.lock().unwrap_or_else(std::sync::PoisonError::into_inner)[l] = None;
                conv_bn_t(&self.conv, self.geometry, &self.bns[l], xs, true)
            }
            // Gradients through eval-mode BN need the fold in the graph: no cache then.
            _ if detnas_device::grad_enabled() && self.conv.ws.requires_grad() => {
                conv_bn_t(&self.conv, self.geometry, &self.bns[l], xs, false)
            }
            _ => {
                let (w, b) = self.folded_weights(l);
                let g = self.geometry;
                xs.conv2d(&w, Some(&b), g.stride, g.padding, 1, g.groups)
            }
        };
        count::record_conv(&self.conv.ws, &y);
        if self.relu { y.relu_() } else { y }
    }
}

impl ConvBn {
    /// The eval-mode weights and bias with BN `l` folded in, from the cache when still valid.
    fn folded_weights(&self, l: usize) -> (Tensor, Tensor) {
        let bn = &self.bns[l];
        let key = fold_key(&self.conv, bn);
        let mut cache = self.folded.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(f) = &cache[l]
            && f.key == key
        {
            return (f.weight.shallow_clone(), f.bias.shallow_clone());
        }
        let (weight, bias) = tch::no_grad(|| fold(&self.conv, bn));
        cache[l] = Some(Folded { key, weight: weight.shallow_clone(), bias: bias.shallow_clone() });
        (weight, bias)
    }
}

impl ModuleT for ConvBn {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        self.forward_level(xs, 0, train)
    }
}

/// The stem: 3×3 conv stride 2 with bias (N(0, 0.01)), BN, ReLU.
pub fn stem(p: &nn::Path, channels: i64) -> ConvBn {
    stem_config(channels).build(p)
}

/// The stem's unit: 3×3 conv stride 2 with bias, 3 → `channels`, BN, ReLU.
pub fn stem_config(channels: i64) -> ConvBnConfig {
    ConvBnConfig {
        cin: 3,
        cout: channels,
        kernel: 3,
        stride: 2,
        depthwise: false,
        bias: true,
        relu: true,
        std: Some(0.01),
        norm: NormKind::Bn,
    }
}

/// Classification head: 1×1 conv with bias → BN → ReLU → Dropout2d(0.2) → global average
/// pool → FC (N(0, 0.01), zero bias).
///
/// # Shapes
/// `[N, C5, H, W] → [N, classes]`
#[derive(Debug)]
pub struct ClsHead {
    /// The last 1×1 conv (to the head's width) with BN and ReLU.
    pub last_conv: ConvBn,
    /// The classifier.
    pub fc: nn::Linear,
    /// Dropout probability before the classifier (training only).
    pub dropout: f64,
}

impl ClsHead {
    /// Builds `last_conv.*` and `fc.*` under `p`.
    pub fn new(p: &nn::Path, cin: i64, last: i64, classes: i64) -> ClsHead {
        let last_conv = ConvBnConfig {
            cin,
            cout: last,
            kernel: 1,
            stride: 1,
            depthwise: false,
            bias: true,
            relu: true,
            std: None,
            norm: NormKind::Bn,
        }
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

impl ClsHead {
    /// Channels the dropout acts on (the last conv's).
    pub fn channels(&self) -> i64 {
        self.last_conv.conv.ws.size()[0]
    }

    /// The head with a given channel-dropout mask in training mode: `mask` `[N, C]` holds
    /// `0` for a dropped channel and `1/(1 − p)` for a kept one. `None` draws the mask from
    /// libtorch's generator (`Dropout2d`).
    ///
    /// # Shapes
    /// `[N, C5, H, W] → [N, classes]`
    pub fn forward_masked(&self, xs: &Tensor, train: bool, mask: Option<&Tensor>) -> Tensor {
        let y = self.last_conv.forward_t(xs, train);
        let y = match (train, mask) {
            (true, Some(m)) => {
                let s = m.size();
                let kind = y.kind();
                y * m.view([s[0], s[1], 1, 1]).to_kind(kind)
            }
            _ => y.feature_dropout(self.dropout, train),
        };
        let y = y.mean_dim(&[2i64, 3][..], false, None);
        count::record_linear(&self.fc.ws);
        self.fc.forward(&y)
    }
}

impl ModuleT for ClsHead {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        self.forward_masked(xs, train, None)
    }
}

/// A channel-dropout mask `[n, channels]` on `device` for samples with `seeds` (one each):
/// channel `c` of sample `i` is dropped with probability `p` by the ChaCha8 stream of
/// `seeds[i]`, and kept ones are scaled by `1/(1 − p)`, as `Dropout2d` in training mode. A
/// sample's mask depends only on its seed. One upload (non-blocking on CUDA).
pub fn dropout_mask(seeds: &[u64], channels: i64, p: f64, device: tch::Device) -> Tensor {
    let scale = if p < 1.0 { 1.0 / (1.0 - p) } else { 0.0 };
    let mut v = Vec::with_capacity(seeds.len() * channels as usize);
    for &s in seeds {
        let mut rng = detnas_space::rng::seeded(s);
        for _ in 0..channels {
            v.push(if detnas_space::rng::bernoulli(&mut rng, p) { 0f32 } else { scale as f32 });
        }
    }
    detnas_device::host::upload(&v, &[seeds.len() as i64, channels], device, "nn.dropout_mask")
}
