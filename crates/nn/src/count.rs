//! MACs and parameters counted from instantiated modules — independent of the closed form in
//! `detnas_space::cost`, which tests compare against this.
//!
//! Parameters are the element counts of the var store's trainable tensors; MACs are recorded
//! while a real forward runs: each conv adds `weight.numel() · H_out · W_out` (the weight
//! tensor has `out · in/groups · k · k` elements) and the FC adds `weight.numel()`.

use crate::ChildNet;
use std::cell::Cell;
use tch::{Kind, Tensor, nn};

thread_local! {
    static MACS: Cell<Option<u64>> = const { Cell::new(None) };
}

/// Adds a conv's MACs while a count is running on this thread.
pub(crate) fn record_conv(weight: &Tensor, output: &Tensor) {
    MACS.with(|m| {
        if let Some(acc) = m.get() {
            let s = output.size();
            m.set(Some(acc + weight.numel() as u64 * (s[2] * s[3]) as u64));
        }
    });
}

/// Adds a linear layer's MACs (per sample) while a count is running on this thread.
pub(crate) fn record_linear(weight: &Tensor) {
    MACS.with(|m| {
        if let Some(acc) = m.get() {
            m.set(Some(acc + weight.numel() as u64));
        }
    });
}

fn counting<T>(f: impl FnOnce() -> T) -> (T, u64) {
    MACS.with(|m| m.set(Some(0)));
    let out = f();
    let macs = MACS.with(|m| m.take()).unwrap_or(0);
    (out, macs)
}

/// Counts measured on an instantiated child network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MeasuredCost {
    /// Multiply-accumulates of the backbone, counted by running it.
    pub backbone_macs: u64,
    /// Multiply-accumulates of the whole classifier.
    pub total_macs: u64,
    /// Parameters of the backbone.
    pub backbone_params: u64,
    /// Parameters of the whole classifier.
    pub total_params: u64,
}

/// Runs one image of `height × width` through `child` (eval mode, no grad) and counts.
/// `vs` must be the child's own var store.
///
/// # Panics
/// Never: a network has stages.
pub fn measure_child(child: &ChildNet, vs: &nn::VarStore, height: i64, width: i64) -> MeasuredCost {
    let x = Tensor::zeros([1, 3, height, width], (Kind::Float, vs.device()));
    let (feats, backbone_macs) = tch::no_grad(|| counting(|| child.features_t(&x, false)));
    let (_, head_macs) = tch::no_grad(|| counting(|| child.head_forward_t(feats.last().expect("stages"), false)));
    let mut backbone_params = 0;
    let mut total_params = 0;
    for (name, t) in vs.variables() {
        if name.ends_with("running_mean") || name.ends_with("running_var") {
            continue;
        }
        let n = t.numel() as u64;
        total_params += n;
        if name.starts_with("stem.") || name.starts_with("features.") {
            backbone_params += n;
        }
    }
    MeasuredCost { backbone_macs, total_macs: backbone_macs + head_macs, backbone_params, total_params }
}
