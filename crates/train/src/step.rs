//! One optimisation step, with one host read.
//!
//! For each path of the step (one, or a strict-fairness group) the task's losses come back as
//! device tensors; their sums and counts, the metrics, the stop request and the task's
//! exactness flag are packed into one `f64` vector on the device and, with several
//! processes, summed over the ranks in one collective (still on the device). The normalisers
//! (`max(Σ count, 1)`) divide the sums for the backward pass on the device. Gradients are then
//! summed over the ranks, their global L2 norm is computed and, with `clip_grad_norm`, the
//! clipping factor is applied, all on the device. Only then is one vector read by the host:
//! every path's packed numbers and the gradient norm. A non-finite loss stops the run before
//! the optimizer moves anything ([`TrainError::Numerical`]). A step whose device kernels were
//! not exact (see `detnas_detect::Losses::exact`) is run again with host kernels from the
//! same gradients (restored to their state before the step).
//!
//! With several processes the gradient all-reduce reads which variables have a gradient on
//! any rank (one more host read; the collectives synchronise anyway).

use crate::{PathSgd, TrainError};
use detnas_device::settings::with_kernels;
use detnas_device::{Kernels, host, phase};
use detnas_dist::{GradReducer, ProcessGroup};
use detnas_nn::LossTerm;
use tch::{Device, Kind, Tensor};

/// One step's output of a task, on the device (nothing read back to the host).
#[derive(Debug)]
pub struct StepLosses {
    /// The losses, each a sum and a count; the optimised loss is `Σ sum / max(count, 1)`.
    pub losses: Vec<LossTerm>,
    /// Named metrics as `(name, sum, count)` scalar tensors (e.g. top-1: correct, images),
    /// logged as `sum / count` over the global batch, averaged over the logging window.
    pub metrics: Vec<(&'static str, Tensor, Tensor)>,
    /// A scalar bool: the task's device kernels gave the host kernels' result (see
    /// `detnas_detect::Losses::exact`); `false` makes the engine run the step again with host
    /// kernels. `None`: always exact.
    pub exact: Option<Tensor>,
}

/// Fails with the collective error a synchronized BN forward recorded, if any.
///
/// # Errors
/// [`TrainError::Dist`] with that error.
pub fn check_sync() -> Result<(), TrainError> {
    match detnas_nn::bn::take_sync_error() {
        Some(e) => Err(TrainError::Dist(detnas_dist::DistError::Collective(format!(
            "{} [in a synchronized BatchNorm]",
            e.strip_prefix("distributed: ").unwrap_or(&e)
        )))),
        None => Ok(()),
    }
}

/// What a step needs besides its losses.
#[derive(Clone, Copy, Debug)]
pub struct StepSettings<'a> {
    /// The model's buffers (BN running statistics): a training forward moves them, so a step
    /// that runs again puts them back first. With device kernels they are copied (one
    /// concatenation on the device) before every step.
    pub buffers: &'a [Tensor],
    /// Learning rate of the update.
    pub lr: f64,
    /// Global L2 norm clipping of the summed gradients.
    pub clip_grad_norm: Option<f64>,
    /// This rank was asked to stop (a signal).
    pub stop: bool,
    /// Replace the losses by NaN (fault injection for the tests).
    pub nan: bool,
    /// The job's process group when several processes train together.
    pub dist: Option<&'a ProcessGroup>,
}

/// The global values of one path of a step: each loss term's `Σ sum / max(Σ count, 1)` and
/// each metric's `Σ sum / Σ count` (sums over the ranks).
#[derive(Clone, Debug, PartialEq)]
pub struct PathValues {
    /// `(name, value)` per loss term.
    pub losses: Vec<(&'static str, f64)>,
    /// `(name, value)` per metric.
    pub metrics: Vec<(&'static str, f64)>,
}

impl PathValues {
    /// The optimised loss: the sum of the terms.
    pub fn total(&self) -> f64 {
        self.losses.iter().map(|l| l.1).sum()
    }
}

/// What a step reports.
#[derive(Clone, Debug, PartialEq)]
pub struct StepReport {
    /// One per path of the step.
    pub paths: Vec<PathValues>,
    /// The global L2 norm of the summed gradients before clipping.
    pub grad_norm: f64,
    /// Whether any rank was asked to stop.
    pub stop: bool,
    /// Whether the step had to run again with host kernels.
    pub rerun_on_host: bool,
}

/// The packed numbers of one path on the device (`f64`), summed over the ranks: per loss
/// term `(sum, count)`, per metric `(sum, count)`, then the stop flag and the count of inexact
/// steps.
fn pack(out: &StepLosses, device: Device, s: &StepSettings) -> Result<Tensor, TrainError> {
    let mut parts: Vec<Tensor> = Vec::with_capacity(2 * out.losses.len() + 2 * out.metrics.len() + 2);
    let nan = Tensor::full([1], if s.nan { f64::NAN } else { 1.0 }, (Kind::Double, device));
    for t in &out.losses {
        parts.push(t.sum.detach().to_kind(Kind::Double).reshape([1]) * &nan);
        parts.push(t.count.to_kind(Kind::Double).to_device(device).reshape([1]));
    }
    for (_, sum, count) in &out.metrics {
        parts.push(sum.to_kind(Kind::Double).reshape([1]));
        parts.push(count.to_kind(Kind::Double).reshape([1]));
    }
    parts.push(Tensor::full([1], f64::from(u8::from(s.stop)), (Kind::Double, device)));
    parts.push(match &out.exact {
        Some(e) => e.logical_not().to_kind(Kind::Double).reshape([1]),
        None => Tensor::zeros([1], (Kind::Double, device)),
    });
    let v = Tensor::cat(&parts, 0);
    Ok(match s.dist {
        Some(pg) => {
            let t = v.to_device(pg.device());
            pg.all_reduce_sum(&[&t])?;
            t.to_device(device)
        }
        None => v,
    })
}

/// Backward of `Σ sum_i / max(count_i, 1)` with the packed (global) counts; gradients add to
/// those already held, so several paths' backward passes accumulate.
///
/// # Errors
/// [`TrainError::Config`] when the task returned no loss term; a libtorch error from the
/// backward pass, as [`TrainError::Dist`] naming the rank in a multi-process job (a
/// synchronized BatchNorm's collectives run inside it).
pub fn backward(losses: &[LossTerm], packed: &Tensor, dist: Option<&ProcessGroup>) -> Result<(), TrainError> {
    let loss = losses
        .iter()
        .enumerate()
        .map(|(i, t)| &t.sum / packed.narrow(0, 2 * i as i64 + 1, 1).clamp_min(1.0).to_kind(t.sum.kind()).reshape([]))
        .reduce(|a, b| a + b)
        .ok_or_else(|| TrainError::Config("a training task returned no loss".into()))?;
    loss.f_backward().map_err(|e| match dist {
        Some(pg) => TrainError::Dist(pg.failure("the backward pass", &e.to_string())),
        None => TrainError::Torch(e),
    })
}

/// The global L2 norm (`f64`, scalar on the device) of the gradients of `vars` (those that
/// have one; 0 without any), and, with `max_norm`, the gradients scaled by
/// `max_norm / (norm + 1e-6)` when the norm exceeds it — on the device.
pub fn clip_gradients(vars: &[&(String, Tensor)], max_norm: Option<f64>, device: Device) -> Tensor {
    tch::no_grad(|| {
        let grads: Vec<Tensor> = vars.iter().map(|(_, v)| v.grad()).filter(Tensor::defined).collect();
        if grads.is_empty() {
            return Tensor::zeros([], (Kind::Double, device));
        }
        let flat: Vec<Tensor> = grads.iter().map(|g| g.reshape([-1])).collect();
        let norm = Tensor::cat(&flat, 0).to_kind(Kind::Double).norm();
        if let Some(max) = max_norm {
            let factor = (Tensor::full([], max, (Kind::Double, device)) / (&norm + 1e-6))
                .where_self(&norm.gt(max), &Tensor::ones([], (Kind::Double, device)));
            for mut g in grads {
                let f = factor.to_kind(g.kind());
                g *= f;
            }
        }
        norm
    })
}

/// Whether each variable has a gradient now (host metadata, no device access).
fn grad_state(vars: &[&(String, Tensor)]) -> Vec<bool> {
    vars.iter().map(|(_, v)| v.grad().defined()).collect()
}

/// Puts the gradients back to their state before a step: zero where one was held, none
/// where none was.
fn restore_grads(vars: &[&(String, Tensor)], had: &[bool]) -> Result<(), TrainError> {
    tch::no_grad(|| {
        for ((_, v), &h) in vars.iter().zip(had) {
            let mut g = v.grad();
            if !g.defined() {
                continue;
            }
            if h {
                let _ = g.zero_();
            } else {
                detnas_dist::set_grad(v, &Tensor::new())?;
            }
        }
        Ok(())
    })
}

/// One optimisation step: the losses of `paths` paths (`losses(i)`, each followed by its
/// backward pass), the gradients of `vars` summed over the ranks and clipped, one host read,
/// then the path-wise SGD update of `vars`. `nonfinite(path, loss)` builds the error for a
/// non-finite loss (nothing is updated then).
///
/// # Errors
/// The task's errors, [`TrainError::Dist`] when a collective fails, the error of
/// `nonfinite`, and a libtorch error from the read.
///
/// # Panics
/// Never: a non-finite loss ends the step at the first one.
pub fn step(
    paths: usize,
    mut losses: impl FnMut(usize) -> Result<StepLosses, TrainError>,
    vars: &[&(String, Tensor)],
    opt: &mut PathSgd,
    s: &StepSettings,
    nonfinite: impl FnOnce(usize, f64) -> TrainError,
) -> Result<StepReport, TrainError> {
    let had = grad_state(vars);
    let device = vars.first().map_or(Device::Cpu, |v| v.1.device());
    let snapshot = (!s.buffers.is_empty() && !detnas_device::settings::host_kernels(device))
        .then(|| tch::no_grad(|| Tensor::cat(&s.buffers.iter().map(|b| b.reshape([-1])).collect::<Vec<_>>(), 0)));
    type Names = (Vec<&'static str>, Vec<&'static str>);
    let attempt = |losses: &mut dyn FnMut(usize) -> Result<StepLosses, TrainError>| -> Result<(Vec<f64>, Vec<Names>), TrainError> {
        let mut packed = Vec::with_capacity(paths);
        let mut shapes = Vec::with_capacity(paths);
        let mut device = Device::Cpu;
        for i in 0..paths {
            let out = losses(i)?;
            check_sync()?;
            device = out.losses.first().map_or(Device::Cpu, LossTerm::device);
            let p = pack(&out, device, s)?;
            phase::time("backward", device, || backward(&out.losses, &p, s.dist))?;
            check_sync()?;
            shapes.push((out.losses.iter().map(|t| t.name).collect(), out.metrics.iter().map(|m| m.0).collect()));
            packed.push(p);
        }
        let _p = phase::enter("optimizer", device);
        if let Some(pg) = s.dist {
            let tensors: Vec<&Tensor> = vars.iter().map(|(_, t)| t).collect();
            GradReducer::new(25 << 20).all_reduce_sum(pg, &tensors)?;
        }
        let norm = clip_gradients(vars, s.clip_grad_norm, device);
        packed.push(norm.reshape([1]).to_device(device));
        Ok((host::read::<f64>(&Tensor::cat(&packed, 0), "train.step")?, shapes))
    };
    let (mut v, mut shapes) = attempt(&mut losses)?;
    let inexact = |v: &[f64], shapes: &[Names]| {
        let mut at = 0;
        shapes.iter().any(|(t, m)| {
            at += 2 * t.len() + 2 * m.len() + 2;
            v[at - 1] > 0.0
        })
    };
    let rerun_on_host = inexact(&v, &shapes);
    if rerun_on_host {
        restore_grads(vars, &had)?;
        if let Some(snap) = &snapshot {
            tch::no_grad(|| {
                let mut at = 0;
                for b in s.buffers {
                    let n = b.numel() as i64;
                    b.shallow_clone().copy_(&snap.narrow(0, at, n).view_as(b));
                    at += n;
                }
            });
        }
        (v, shapes) = with_kernels(Kernels::Host, || attempt(&mut losses))?;
    }
    let mut report =
        StepReport { paths: Vec::with_capacity(paths), grad_norm: v[v.len() - 1], stop: false, rerun_on_host };
    let mut at = 0;
    let mut nonfinite = Some(nonfinite);
    for (i, (names, metric_names)) in shapes.iter().enumerate() {
        let (t, m) = (names.len(), metric_names.len());
        let r = &v[at..at + 2 * t + 2 * m + 2];
        at += r.len();
        let losses: Vec<(&'static str, f64)> =
            names.iter().enumerate().map(|(k, &n)| (n, r[2 * k] / r[2 * k + 1].max(1.0))).collect();
        let metrics = metric_names
            .iter()
            .enumerate()
            .map(|(k, &n)| (n, r[2 * t + 2 * k] / r[2 * t + 2 * k + 1].max(1e-12)))
            .collect();
        report.stop |= r[2 * t + 2 * m] > 0.0;
        let p = PathValues { losses, metrics };
        if !p.total().is_finite() {
            return Err(nonfinite.take().expect("once")(i, p.total()));
        }
        report.paths.push(p);
    }
    phase::time("optimizer", vars.first().map_or(Device::Cpu, |v| v.1.device()), || {
        opt.step(vars.iter().copied(), s.lr)
    });
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The step's numbers are read once; the update equals `opt.step` after a plain backward
    /// of `Σ sum / max(count, 1)`, with the clipping factor applied on the device.
    #[test]
    fn one_read_and_the_plain_update() {
        let make = || {
            let w = Tensor::from_slice(&[1.0f32, -2.0, 3.0]).set_requires_grad(true);
            (vec![("w.weight".to_string(), w.shallow_clone())], w)
        };
        let loss = |w: &Tensor| StepLosses {
            losses: vec![
                LossTerm::with_count("a", (w * w).sum(Kind::Float) * 3.0, 3.0),
                LossTerm::with_count("b", w.sum(Kind::Float), 0.0),
            ],
            metrics: vec![("m", Tensor::from(2.0), Tensor::from(4.0))],
            exact: None,
        };
        let (vars, w) = make();
        let refs: Vec<&(String, Tensor)> = vars.iter().collect();
        let mut opt = PathSgd::new(0.9, 0.0);
        let s = StepSettings { buffers: &[], lr: 0.1, clip_grad_norm: Some(1.0), stop: false, nan: false, dist: None };
        let (r, counts) =
            host::measure(|| step(1, |_| Ok(loss(&w)), &refs, &mut opt, &s, |_, _| unreachable!()).unwrap());
        assert_eq!(counts.reads, 1, "{:?}", host::sites());
        // loss = (w·w·3)/3 + Σw: gradient 2w + 1 = (3, −3, 7), norm √67.
        assert_eq!(r.paths[0].losses, vec![("a", 14.0), ("b", 2.0)]);
        assert_eq!(r.paths[0].metrics, vec![("m", 0.5)]);
        assert!((r.grad_norm - 67f64.sqrt()).abs() < 1e-9);
        let f = 1.0 / (67f64.sqrt() + 1e-6);
        let want = [1.0 - 0.1 * 3.0 * f, -2.0 + 0.1 * 3.0 * f, 3.0 - 0.1 * 7.0 * f];
        let got = Vec::<f64>::try_from(w.detach().to_kind(Kind::Double)).unwrap();
        for (g, e) in got.iter().zip(want) {
            assert!((g - e).abs() < 1e-6, "{got:?} vs {want:?}");
        }
        // A non-finite loss stops before the update.
        let (vars, w) = make();
        let refs: Vec<&(String, Tensor)> = vars.iter().collect();
        let nan = StepSettings { nan: true, ..s };
        let e = step(1, |_| Ok(loss(&w)), &refs, &mut opt, &nan, |p, l| TrainError::Config(format!("{p} {l}")));
        assert!(matches!(e, Err(TrainError::Config(m)) if m.starts_with("0 NaN")));
        assert_eq!(Vec::<f32>::try_from(w.detach()).unwrap(), vec![1.0, -2.0, 3.0]);
    }

    /// An inexact step runs again with host kernels, from the gradients as they were.
    #[test]
    fn an_inexact_step_reruns_on_host_kernels() {
        let w = Tensor::from_slice(&[1.0f32, 2.0]).set_requires_grad(true);
        let vars = [("w.weight".to_string(), w.shallow_clone())];
        let refs: Vec<&(String, Tensor)> = vars.iter().collect();
        let mut opt = PathSgd::new(0.0, 0.0);
        let mut calls = Vec::new();
        let s = StepSettings { buffers: &[], lr: 1.0, clip_grad_norm: None, stop: false, nan: false, dist: None };
        let r = step(
            1,
            |_| {
                let host = detnas_device::settings::host_kernels(Device::Cuda(0));
                calls.push(host);
                Ok(StepLosses {
                    losses: vec![LossTerm::with_count("a", w.sum(Kind::Float), 1.0)],
                    metrics: vec![],
                    exact: Some(Tensor::from(host)),
                })
            },
            &refs,
            &mut opt,
            &s,
            |_, _| unreachable!(),
        )
        .unwrap();
        assert!(r.rerun_on_host);
        assert_eq!(calls, vec![false, true]);
        // One gradient of 1 per element, not two: the first attempt's was dropped.
        assert_eq!(Vec::<f32>::try_from(w.detach()).unwrap(), vec![0.0, 1.0]);
    }
}
