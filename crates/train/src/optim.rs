//! Path-wise SGD with momentum (PyTorch's `torch.optim.SGD` update, dampening 0, no
//! Nesterov): `g = ∇ + wd·p` (weight decay only on conv and FC weights, i.e. `*.weight`
//! tensors of rank ≥ 2 — not BN, not biases), `buf = μ·buf + g` (`buf = g` the first time),
//! `p −= lr·buf`.
//!
//! [`PathSgd::step`] updates only the variables it is given — the sampled path's (see
//! [`detnas_nn::PathIndex`]) — so choices off the path keep their weights *and* momentum
//! buffers bit-identical, and get no weight decay. Gradients of the given variables are
//! zeroed after the step.

use std::collections::BTreeMap;
use tch::Tensor;

/// SGD with momentum that moves only the variables of the trained path (DetNAS §3.2: path-wise).
#[derive(Debug)]
pub struct PathSgd {
    /// Momentum.
    pub momentum: f64,
    /// Weight decay, on conv and FC weights only.
    pub weight_decay: f64,
    buffers: BTreeMap<String, Tensor>,
}

/// Whether weight decay applies to variable `name` of shape `t`.
pub fn decays(name: &str, t: &Tensor) -> bool {
    name.ends_with(".weight") && t.dim() >= 2
}

impl PathSgd {
    /// An optimiser without momentum buffers yet.
    pub fn new(momentum: f64, weight_decay: f64) -> PathSgd {
        PathSgd { momentum, weight_decay, buffers: BTreeMap::new() }
    }

    /// One update of `vars` at learning rate `lr`. Variables without a gradient are skipped.
    pub fn step<'a>(&mut self, vars: impl Iterator<Item = &'a (String, Tensor)>, lr: f64) {
        tch::no_grad(|| {
            for (name, p) in vars {
                let mut grad = p.grad();
                if !grad.defined() {
                    continue;
                }
                let mut d = if self.weight_decay != 0.0 && decays(name, p) {
                    &grad + p * self.weight_decay
                } else {
                    grad.copy()
                };
                if self.momentum != 0.0 {
                    match self.buffers.get_mut(name) {
                        Some(buf) => {
                            *buf *= self.momentum;
                            *buf += &d;
                            d = buf.shallow_clone();
                        }
                        None => {
                            self.buffers.insert(name.clone(), d.copy());
                        }
                    }
                }
                let mut p = p.shallow_clone();
                p -= d * lr;
                let _ = grad.zero_();
            }
        });
    }

    /// Drops every momentum buffer (the next update of each variable starts a new one).
    pub fn clear_buffers(&mut self) {
        self.buffers.clear();
    }

    /// Momentum buffers by variable name (for checkpoints).
    pub fn buffers(&self) -> &BTreeMap<String, Tensor> {
        &self.buffers
    }

    /// Restores momentum buffers saved by [`PathSgd::buffers`].
    pub fn set_buffers(&mut self, buffers: BTreeMap<String, Tensor>) {
        self.buffers = buffers;
    }
}
