//! BatchNorm recalibration: recompute the running statistics of every BN a forward touches.
//!
//! A one-shot supernet's BN statistics are a mix over all paths, so before a path is
//! evaluated its statistics are recomputed on training images (reference §6). While a
//! [`Recalibration`] is active on the current thread, every conv+BN unit run in training mode
//! reports its input to it:
//!
//! * [`BnMode::Exact`] (default): the running mean and variance become the exact mean and
//!   (unbiased) variance of the BN's input over *all* recalibration images. Each batch's
//!   mean and biased variance come out of the BN forward itself (libtorch's
//!   `native_batch_norm`, no extra pass over the activations); batches are pooled in f64 with
//!   Chan's parallel formula (`M2 += n_b·var_b + δ²·n·n_b/(n + n_b)`), which stays accurate
//!   when the mean is large against the spread, so the result does not depend on how the
//!   images are split into batches (to float rounding of the per-batch statistics).
//!   Inside the forward each BN still normalises with its batch's statistics, as in training
//!   (and as the official code), so deeper BNs see what training-mode batches produce: with
//!   the whole set in one batch this is exactly each BN's batch statistics.
//! * [`BnMode::Ema`]: the official procedure — statistics reset to (0, 1) the first time a BN
//!   is seen, then updated as in training (momentum 0.1).
//!
//! Run the forwards under `tch::no_grad`.

use std::cell::RefCell;
use std::collections::HashMap;
use tch::{Kind, Tensor, nn, nn::ModuleT};

/// How statistics are recomputed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BnMode {
    #[default]
    Exact,
    Ema,
}

struct Entry {
    running_mean: Tensor,
    running_var: Tensor,
    /// Pooled mean (f64, per channel).
    mean: Tensor,
    /// Pooled sum of squared deviations (f64, per channel).
    m2: Tensor,
    count: i64,
}

/// ε of every BN of these networks (PyTorch's default, see `layers::batch_norm`).
const EPS: f64 = 1e-5;

struct Session {
    mode: BnMode,
    entries: HashMap<usize, Entry>,
}

thread_local! {
    static SESSION: RefCell<Option<Session>> = const { RefCell::new(None) };
}

/// Runs `bn` on `y` in training mode, reporting to the active recalibration; `None` when no
/// recalibration is active (the caller then runs the BN itself).
pub(crate) fn observe(bn: &nn::BatchNorm, y: &Tensor) -> Option<Tensor> {
    SESSION.with(|s| {
        let mut s = s.borrow_mut();
        let session = s.as_mut()?;
        let key = bn.running_mean.data_ptr() as usize;
        let mode = session.mode;
        let entry = session.entries.entry(key).or_insert_with(|| {
            if mode == BnMode::Ema {
                let _ = bn.running_mean.shallow_clone().fill_(0.0);
                let _ = bn.running_var.shallow_clone().fill_(1.0);
            }
            let zeros = Tensor::zeros_like(&bn.running_mean).to_kind(Kind::Double);
            Entry {
                running_mean: bn.running_mean.shallow_clone(),
                running_var: bn.running_var.shallow_clone(),
                mean: zeros.copy(),
                m2: zeros,
                count: 0,
            }
        });
        if mode == BnMode::Ema {
            return Some(bn.forward_t(y, true));
        }
        // Training-mode BN without touching the running statistics; its saved batch mean and
        // inverse std give this batch's statistics.
        let (out, mean_b, invstd) =
            y.native_batch_norm(bn.ws.as_ref(), bn.bs.as_ref(), None::<&Tensor>, None::<&Tensor>, true, 0.1, EPS);
        let s = y.size();
        let nb = (s[0] * s[2] * s[3]) as f64;
        let mean_b = mean_b.to_kind(Kind::Double);
        let invstd = invstd.to_kind(Kind::Double);
        let var_b = (invstd.square().reciprocal() - EPS).clamp_min(0.0);
        let n = entry.count as f64;
        let delta = &mean_b - &entry.mean;
        entry.mean += &delta * (nb / (n + nb));
        entry.m2 += var_b * nb + delta.square() * (n * nb / (n + nb));
        entry.count += nb as i64;
        Some(out)
    })
}

/// An active recalibration on this thread; [`Recalibration::finish`] writes the statistics.
/// Dropping it unfinished leaves exact-mode statistics as they were before.
#[must_use = "call finish() to write the statistics"]
pub struct Recalibration {
    _not_send: std::marker::PhantomData<*const ()>,
}

impl std::fmt::Debug for Recalibration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Recalibration")
    }
}

impl Recalibration {
    /// Starts recalibrating BNs run on this thread.
    ///
    /// # Panics
    /// If one is already active on this thread.
    pub fn begin(mode: BnMode) -> Recalibration {
        SESSION.with(|s| {
            let mut s = s.borrow_mut();
            assert!(s.is_none(), "a BN recalibration is already active on this thread");
            *s = Some(Session { mode, entries: HashMap::new() });
        });
        Recalibration { _not_send: std::marker::PhantomData }
    }

    /// Writes the recomputed statistics; returns how many BN layers were recalibrated.
    pub fn finish(self) -> usize {
        let session = SESSION.with(|s| s.borrow_mut().take()).expect("begun");
        let n = session.entries.len();
        if session.mode == BnMode::Exact {
            tch::no_grad(|| {
                for e in session.entries.into_values() {
                    let count = e.count as f64;
                    let var = &e.m2 / (count - 1.0).max(1.0);
                    e.running_mean.shallow_clone().copy_(&e.mean.to_kind(e.running_mean.kind()));
                    e.running_var.shallow_clone().copy_(&var.to_kind(e.running_var.kind()));
                }
            });
        }
        n
    }
}

impl Drop for Recalibration {
    fn drop(&mut self) {
        SESSION.with(|s| s.borrow_mut().take());
    }
}

/// Geometry of a 2-D convolution, kept beside tch's `nn::Conv2D` (whose config is private)
/// so that [`conv_bn_t`] can run the conv itself with folded weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeometry {
    pub stride: i64,
    pub padding: i64,
    pub groups: i64,
}

/// A conv followed by its BN, `[N, in, H, W] → [N, out, H', W']`.
///
/// Training mode (and recalibration) runs them apart: the BN needs the conv's output
/// statistics. Eval mode folds the BN into the conv, as deployed inference does
/// (`W' = W·s`, `b' = β + (b − μ)·s` with `s = γ/√(σ² + ε)` per output channel): one pass over
/// the activations instead of two. Equal to conv-then-BN up to float rounding (≈1e-6
/// relative); the folded weights are recomputed per call (a few thousand elements, against
/// activations many times larger), so fresh BN statistics always apply.
pub fn conv_bn_t(conv: &nn::Conv2D, geom: ConvGeometry, bn: &nn::BatchNorm, x: &Tensor, train: bool) -> Tensor {
    if train {
        let y = x.conv2d(&conv.ws, conv.bs.as_ref(), geom.stride, geom.padding, 1, geom.groups);
        return run_bn(bn, &y, true);
    }
    let scale = (&bn.running_var + EPS).rsqrt();
    let scale = match &bn.ws {
        Some(g) => g * scale,
        None => scale,
    };
    let shift = match &conv.bs {
        Some(b) => (b - &bn.running_mean) * &scale,
        None => -(&bn.running_mean * &scale),
    };
    let shift = match &bn.bs {
        Some(beta) => shift + beta,
        None => shift,
    };
    let w = &conv.ws * scale.view([-1, 1, 1, 1]);
    x.conv2d(&w, Some(&shift), geom.stride, geom.padding, 1, geom.groups)
}

/// Runs a BN (of any module, detection heads included): through the active recalibration
/// in training mode, else normally.
pub fn run_bn(bn: &nn::BatchNorm, y: &Tensor, train: bool) -> Tensor {
    if train && let Some(out) = observe(bn, y) {
        return out;
    }
    bn.forward_t(y, train)
}
