//! BatchNorm recalibration: recompute the running statistics of every BN a forward touches.
//!
//! A one-shot supernet's BN statistics are a mix over all paths, so before a path is
//! evaluated its statistics are recomputed on training images (DetNAS arXiv:1903.10979
//! §3.3). While a
//! [`Recalibration`] is active on the current thread, every conv+BN unit run in training mode
//! reports its input to it:
//!
//! * [`BnMode::Exact`] (default): the running mean and variance become the exact mean and
//!   (unbiased) variance of the BN's input over *all* recalibration images. Each batch's
//!   mean and inverse standard deviation come out of the BN forward itself (libtorch's
//!   `native_batch_norm`, no extra pass over the activations and no other operator per batch);
//!   they are kept on the device and pooled in f64 every [`POOL_EVERY`] batches and at the end:
//!   within a group by the two-pass formula (`M2 = Σ n_b·var_b + Σ n_b·(mean_b − mean)²`),
//!   across groups by Chan's parallel formula (`M2 += M2_g + δ²·n·n_g/(n + n_g)`), which stay
//!   accurate when the mean is large against the spread, so the result does not depend on how
//!   the images are split into batches (to float rounding of the per-batch statistics).
//!   Inside the forward each BN still normalises with its batch's statistics, as in training
//!   (and as the official code), so deeper BNs see what training-mode batches produce: with
//!   the whole set in one batch this is exactly each BN's batch statistics.
//! * [`BnMode::Ema`]: the official procedure — statistics reset to (0, 1) the first time a BN
//!   is seen, then updated as in training (momentum 0.1).
//!
//! Run the forwards under `tch::no_grad`.
//!
//! **Synchronized BatchNorm.** While a [`BnSync`] is installed on the current thread
//! ([`synchronize`]), every BN run in training mode normalises with the statistics of the
//! *global* batch — every rank's share of it — as PyTorch's `SyncBatchNorm` does (DetNAS
//! trains the detector's BNs synchronized over 8 GPUs): each rank's per-channel mean, biased
//! variance and count are gathered (differentiably, so gradients flow across the ranks),
//! combined, used to normalise, and folded into the running statistics (unbiased variance,
//! momentum 0.1). A recalibration under a [`BnSync`] pools every rank's statistics at
//! [`Recalibration::finish`], so several ranks recalibrating their shards of the images give
//! the statistics one process gets from all of them.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use tch::{Kind, Tensor, nn, nn::ModuleT};

/// What synchronized BatchNorm needs from a multi-process runtime.
pub trait BnSync {
    /// The ranks' `stats` `[k, C]` concatenated along dim 0 in rank order, `[world·k, C]`;
    /// differentiable (the gradient of each rank's slice flows back to that rank's `stats`).
    ///
    /// # Errors
    /// A failed collective (a rank died, the timeout passed), as a message.
    fn all_gather(&self, stats: &Tensor) -> Result<Tensor, String>;

    /// `t` summed over the ranks (no gradient).
    ///
    /// # Errors
    /// As [`BnSync::all_gather`].
    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor, String>;
}

thread_local! {
    static SYNC: RefCell<Option<Rc<dyn BnSync>>> = const { RefCell::new(None) };
    static SYNC_ERROR: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Synchronized BatchNorm on this thread while the guard lives.
#[must_use = "synchronization stops when the guard is dropped"]
pub struct SyncGuard {
    previous: Option<Rc<dyn BnSync>>,
}

impl std::fmt::Debug for SyncGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SyncGuard")
    }
}

/// Installs `sync` for the BNs run on this thread until the guard is dropped.
pub fn synchronize(sync: Rc<dyn BnSync>) -> SyncGuard {
    let previous = SYNC.with(|s| s.borrow_mut().replace(sync));
    SyncGuard { previous }
}

impl Drop for SyncGuard {
    fn drop(&mut self) {
        SYNC.with(|s| *s.borrow_mut() = self.previous.take());
    }
}

/// The first collective failure inside a synchronized BN forward since the last call (a
/// forward cannot return an error; the caller checks after it).
pub fn take_sync_error() -> Option<String> {
    SYNC_ERROR.with(|e| e.borrow_mut().take())
}

fn sync() -> Option<Rc<dyn BnSync>> {
    SYNC.with(|s| s.borrow().clone())
}

/// `(mean, biased variance)` `[C]` of the global batch from every rank's `[3, C]`
/// (mean, biased variance, count) gathered into `[world·3, C]`, and the global count `[C]`.
fn combine(gathered: &Tensor) -> (Tensor, Tensor, Tensor) {
    let c = gathered.size()[1];
    let g = gathered.view([-1, 3, c]);
    let (means, vars, counts) = (g.select(1, 0), g.select(1, 1), g.select(1, 2));
    let total = counts.sum_dim_intlist(&[0i64][..], false, None);
    let mean = (&means * &counts).sum_dim_intlist(&[0i64][..], false, None) / &total;
    let var =
        ((vars + (&means - mean.unsqueeze(0)).square()) * &counts).sum_dim_intlist(&[0i64][..], false, None) / &total;
    (mean, var, total)
}

/// This rank's per-channel `[3, C]` (mean, biased variance, count) of `y` `[N, C, H, W]`.
fn local_stats(y: &Tensor) -> Tensor {
    let s = y.size();
    let n = (s[0] * s[2] * s[3]) as f64;
    let dims = &[0i64, 2, 3][..];
    let yf = y.to_kind(Kind::Float);
    let (mean, var) = if n > 0.0 {
        let mean = yf.mean_dim(dims, false, Kind::Float);
        let var = (&yf - mean.view([1, -1, 1, 1])).square().mean_dim(dims, false, Kind::Float);
        (mean, var)
    } else {
        let z = Tensor::zeros([s[1]], (Kind::Float, y.device()));
        (z.copy(), z)
    };
    Tensor::stack(&[mean, var, Tensor::full([s[1]], n, (Kind::Float, y.device()))], 0)
}

/// `y` normalised with `mean` and `var` `[C]`, then scaled and shifted by the BN's affine.
fn normalise(bn: &nn::BatchNorm, y: &Tensor, mean: &Tensor, var: &Tensor) -> Tensor {
    let shape = [1i64, -1, 1, 1];
    // Out-of-place throughout: autograd needs every intermediate.
    let out = (y - mean.view(shape)) * (var + EPS).rsqrt().view(shape);
    let out = match &bn.ws {
        Some(w) => out * w.view(shape),
        None => out,
    };
    let out = match &bn.bs {
        Some(b) => out + b.view(shape),
        None => out,
    };
    out.to_kind(y.kind())
}

/// Synchronized BN in training mode: global statistics, running statistics updated.
fn sync_forward(bn: &nn::BatchNorm, y: &Tensor, sync: &dyn BnSync) -> Tensor {
    let gathered = match sync.all_gather(&local_stats(y)) {
        Ok(g) => g,
        Err(e) => {
            SYNC_ERROR.with(|s| s.borrow_mut().get_or_insert(e).clone());
            return y.zeros_like();
        }
    };
    let (mean, var, total) = combine(&gathered);
    tch::no_grad(|| {
        let m = 0.1;
        let unbiased = &var * &total / (&total - 1.0).clamp_min(1.0);
        let mut rm = bn.running_mean.shallow_clone();
        let mut rv = bn.running_var.shallow_clone();
        let new_mean = &rm * (1.0 - m) + mean.detach().to_kind(rm.kind()) * m;
        let new_var = &rv * (1.0 - m) + unbiased.detach().to_kind(rv.kind()) * m;
        rm.copy_(&new_mean);
        rv.copy_(&new_var);
    });
    normalise(bn, y, &mean, &var)
}

/// How statistics are recomputed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BnMode {
    /// The exact mean and variance over all recalibration images.
    #[default]
    Exact,
    /// The official exponential moving average (momentum 0.1) after a reset.
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
    /// Batches not pooled yet: their means `[C]`, their spreads `[C]` (inverse standard
    /// deviations from `native_batch_norm`, or biased variances from a synchronized forward)
    /// and their sizes.
    pending: Vec<(Tensor, Tensor, f64)>,
    /// Whether the pending spreads are inverse standard deviations.
    invstd: bool,
}

/// Batches of statistics kept per BN before they are pooled (a bound on the memory they take,
/// and on the operators spent pooling: a few per group of batches).
pub const POOL_EVERY: usize = 32;

impl Entry {
    /// Pools the pending batches into `(count, mean, m2)`.
    fn pool(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let pending = std::mem::take(&mut self.pending);
        let means = Tensor::stack(&pending.iter().map(|p| &p.0).collect::<Vec<_>>(), 0).to_kind(Kind::Double);
        let spread = Tensor::stack(&pending.iter().map(|p| &p.1).collect::<Vec<_>>(), 0).to_kind(Kind::Double);
        let vars = if self.invstd { (spread.square().reciprocal() - EPS).clamp_min(0.0) } else { spread };
        let sizes: Vec<f64> = pending.iter().map(|p| p.2).collect();
        let ng: f64 = sizes.iter().sum();
        if ng <= 0.0 {
            return;
        }
        let w = if sizes.iter().all(|&n| n == sizes[0]) {
            None
        } else {
            Some(detnas_device::host::upload(
                &sizes,
                &[sizes.len() as i64, 1],
                means.device(),
                "bn.recalibration.sizes",
            ))
        };
        let weigh = |t: Tensor| match &w {
            Some(w) => (t * w).sum_dim_intlist(&[0i64][..], false, Kind::Double),
            None => t.sum_dim_intlist(&[0i64][..], false, Kind::Double) * sizes[0],
        };
        let mean_g = weigh(means.shallow_clone()) / ng;
        let m2_g = weigh(vars) + weigh((means - mean_g.unsqueeze(0)).square());
        let n = self.count as f64;
        let delta = &mean_g - &self.mean;
        self.mean += &delta * (ng / (n + ng));
        self.m2 += m2_g + delta.square() * (n * ng / (n + ng));
        self.count += ng as i64;
    }
}

/// ε of every BN of these networks (PyTorch's default, see `layers::batch_norm`).
const EPS: f64 = 1e-5;

struct Session {
    mode: BnMode,
    entries: HashMap<usize, Entry>,
    /// Keys in the order the BNs were first seen (the same on every rank).
    order: Vec<usize>,
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
        if !session.entries.contains_key(&key) {
            session.order.push(key);
        }
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
                pending: Vec::new(),
                invstd: true,
            }
        });
        if mode == BnMode::Ema {
            return Some(match sync() {
                Some(sy) => sync_forward(bn, y, sy.as_ref()),
                None => bn.forward_t(y, true),
            });
        }
        let s = y.size();
        let nb = (s[0] * s[2] * s[3]) as f64;
        let (out, mean_b, spread_b, invstd) = match sync() {
            // This rank's statistics are pooled; the forward normalises with the global batch's.
            Some(sy) => {
                let local = local_stats(y);
                let out = match sy.all_gather(&local) {
                    Ok(g) => {
                        let (mean, var, _) = combine(&g);
                        normalise(bn, y, &mean, &var)
                    }
                    Err(e) => {
                        SYNC_ERROR.with(|s| s.borrow_mut().get_or_insert(e).clone());
                        y.zeros_like()
                    }
                };
                (out, local.get(0), local.get(1), false)
            }
            None => {
                // Training-mode BN without touching the running statistics; its saved batch
                // mean and inverse std give this batch's statistics.
                let (out, mean_b, invstd) = y.native_batch_norm(
                    bn.ws.as_ref(),
                    bn.bs.as_ref(),
                    None::<&Tensor>,
                    None::<&Tensor>,
                    true,
                    0.1,
                    EPS,
                );
                (out, mean_b, invstd, true)
            }
        };
        if nb > 0.0 {
            if entry.invstd != invstd && !entry.pending.is_empty() {
                entry.pool();
            }
            entry.invstd = invstd;
            entry.pending.push((mean_b, spread_b, nb));
            if entry.pending.len() >= POOL_EVERY {
                entry.pool();
            }
        }
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
            *s = Some(Session { mode, entries: HashMap::new(), order: Vec::new() });
        });
        Recalibration { _not_send: std::marker::PhantomData }
    }

    /// Writes the recomputed statistics; returns how many BN layers were recalibrated. Under
    /// a [`BnSync`], every rank's statistics are pooled first (one all-reduce of each BN's
    /// count, `Σ n·mean` and `Σ (M2 + n·mean²)` in f64); a failed collective leaves the
    /// statistics unchanged and is reported by [`take_sync_error`].
    ///
    /// # Panics
    /// When no session was begun on this thread.
    pub fn finish(self) -> usize {
        let mut session = SESSION.with(|s| s.borrow_mut().take()).expect("begun");
        let n = session.order.len();
        if session.mode != BnMode::Exact {
            return n;
        }
        let mut entries: Vec<Entry> = session.order.iter().filter_map(|k| session.entries.remove(k)).collect();
        tch::no_grad(|| {
            for e in &mut entries {
                e.pool();
            }
            // (mean, m2, count − 1) of each entry: device tensors, never read by the host.
            let mut pooled: Vec<(Tensor, Tensor, Tensor)> = Vec::with_capacity(entries.len());
            if let Some(sy) = sync() {
                let packed: Vec<Tensor> = entries
                    .iter()
                    .map(|e| {
                        let count = Tensor::full_like(&e.mean, e.count as f64);
                        Tensor::cat(&[count, &e.mean * e.count as f64, &e.m2 + e.mean.square() * e.count as f64], 0)
                    })
                    .collect();
                match sy.all_reduce_sum(&Tensor::cat(&packed, 0)) {
                    Ok(sum) => {
                        let mut at = 0;
                        for e in &entries {
                            let c = e.mean.size()[0];
                            let total = sum.narrow(0, at, c);
                            let mean = sum.narrow(0, at + c, c) / total.clamp_min(1.0);
                            let m2 = sum.narrow(0, at + 2 * c, c) - mean.square() * &total;
                            pooled.push((mean, m2, total - 1.0));
                            at += 3 * c;
                        }
                    }
                    Err(err) => {
                        SYNC_ERROR.with(|s| s.borrow_mut().get_or_insert(err).clone());
                        return;
                    }
                }
            } else {
                for e in &entries {
                    let dof = Tensor::full([1], e.count as f64 - 1.0, (Kind::Double, e.mean.device()));
                    pooled.push((e.mean.shallow_clone(), e.m2.shallow_clone(), dof));
                }
            }
            for (e, (mean, m2, dof)) in entries.iter().zip(pooled) {
                let var = m2 / dof.clamp_min(1.0);
                e.running_mean.shallow_clone().copy_(&mean.to_kind(e.running_mean.kind()));
                e.running_var.shallow_clone().copy_(&var.to_kind(e.running_var.kind()));
            }
        });
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
    /// Convolution stride.
    pub stride: i64,
    /// Zero padding, pixels per side.
    pub padding: i64,
    /// Channel groups (the channels for a depthwise convolution).
    pub groups: i64,
}

/// A conv followed by its BN, `[N, in, H, W] → [N, out, H', W']`.
///
/// Training mode (and recalibration) runs them apart: the BN needs the conv's output
/// statistics. Eval mode folds the BN into the conv ([`fold`]), as deployed inference does:
/// one pass over the activations instead of two. Equal to conv-then-BN up to float rounding
/// (≈1e-6 relative). This function folds on every call; [`crate::layers::ConvBn`] caches the
/// folded weights until the weights or statistics change.
pub fn conv_bn_t(conv: &nn::Conv2D, geom: ConvGeometry, bn: &nn::BatchNorm, x: &Tensor, train: bool) -> Tensor {
    if train {
        let y = x.conv2d(&conv.ws, conv.bs.as_ref(), geom.stride, geom.padding, 1, geom.groups);
        return run_bn(bn, &y, true);
    }
    let (w, shift) = fold(conv, bn);
    x.conv2d(&w, Some(&shift), geom.stride, geom.padding, 1, geom.groups)
}

/// The weights and bias of `conv` with its eval-mode `bn` folded in: `W' = W·s`,
/// `b' = β + (b − μ)·s` with `s = γ/√(σ² + ε)` per output channel.
pub fn fold(conv: &nn::Conv2D, bn: &nn::BatchNorm) -> (Tensor, Tensor) {
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
    (w, shift)
}

/// What a folded conv+BN was computed from: the version counter and storage of each tensor it
/// reads. In-place changes (an optimizer step, a checkpoint load, written recalibration
/// statistics) bump a version counter; a training-mode BN forward updates the running
/// statistics without one, so [`crate::layers::ConvBn`] drops its cache itself then.
pub fn fold_key(conv: &nn::Conv2D, bn: &nn::BatchNorm) -> Vec<(i64, usize)> {
    let tensors = [
        Some(&conv.ws),
        conv.bs.as_ref(),
        bn.ws.as_ref(),
        bn.bs.as_ref(),
        Some(&bn.running_mean),
        Some(&bn.running_var),
    ];
    tensors.iter().map(|t| t.map_or((-1, 0), |t| (t.internal_version(), t.data_ptr() as usize))).collect()
}

/// Runs a BN (of any module, detection heads included): through the active recalibration
/// in training mode, synchronized over the ranks while a [`BnSync`] is installed, else
/// normally.
pub fn run_bn(bn: &nn::BatchNorm, y: &Tensor, train: bool) -> Tensor {
    if train && let Some(out) = observe(bn, y) {
        return out;
    }
    if train && let Some(sy) = sync() {
        return sync_forward(bn, y, sy.as_ref());
    }
    bn.forward_t(y, train)
}
