//! Cross-entropy with label smoothing (ε = 0.1 in the official `train.py` of
//! megvii-model/DetNAS and SinglePathOneShot).
//!
//! `loss = mean_n Σ_k −t_{n,k} log softmax(z_n)_k` with `t = (1 − ε)·onehot + ε/K`, which is
//! PyTorch's `CrossEntropyLoss(label_smoothing=ε)` and the official `CrossEntropyLabelSmooth`.

use tch::{Kind, Tensor};

/// # Shapes
/// `logits [N, K]`, `targets [N]` (int64) → scalar.
pub fn smooth_cross_entropy(logits: &Tensor, targets: &Tensor, epsilon: f64) -> Tensor {
    let logp = logits.log_softmax(-1, Kind::Float);
    let nll = -logp.gather(1, &targets.unsqueeze(1), false).squeeze_dim(1);
    let uniform = -logp.mean_dim(&[-1i64][..], false, Kind::Float);
    (nll * (1.0 - epsilon) + uniform * epsilon).mean(Kind::Float)
}

/// Number of rows whose target is among the `k` largest logits, a scalar tensor
/// (`Kind::Double`) on the logits' device.
pub fn topk_hits(logits: &Tensor, targets: &Tensor, k: i64) -> Tensor {
    let k = k.min(logits.size()[1]);
    let (_, idx) = logits.topk(k, 1, true, true);
    idx.eq_tensor(&targets.unsqueeze(1)).any_dim(1, false).sum(Kind::Double)
}

/// [`topk_hits`] read to the host (one read).
///
/// # Errors
/// A libtorch error from the read.
pub fn topk_correct(logits: &Tensor, targets: &Tensor, k: i64) -> Result<i64, tch::TchError> {
    Ok(detnas_device::host::scalar(&topk_hits(logits, targets, k), "train.topk_correct")? as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_value() {
        // logits [[2, 0, 0]], target 0, ε = 0.1, K = 3:
        // log softmax = [2, 0, 0] − ln(e² + 2); nll = ln(e²+2) − 2; mean(−log p) = ln(e²+2) − 2/3.
        let z = Tensor::from_slice(&[2.0f32, 0.0, 0.0]).view([1, 3]);
        let t = Tensor::from_slice(&[0i64]);
        let lse = (2f64.exp() + 2.0).ln();
        let want = 0.9 * (lse - 2.0) + 0.1 * (lse - 2.0 / 3.0);
        let got = f64::try_from(smooth_cross_entropy(&z, &t, 0.1)).unwrap();
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        // ε = 0 is plain cross-entropy.
        let plain = f64::try_from(smooth_cross_entropy(&z, &t, 0.0)).unwrap();
        assert!((plain - (lse - 2.0)).abs() < 1e-6);
    }

    #[test]
    fn topk_counts() {
        let z = Tensor::from_slice(&[0.1f32, 0.5, 0.4, 0.9, 0.05, 0.05]).view([2, 3]);
        let t = Tensor::from_slice(&[2i64, 0]);
        assert_eq!(topk_correct(&z, &t, 1).unwrap(), 1);
        assert_eq!(topk_correct(&z, &t, 2).unwrap(), 2);
        assert_eq!(topk_correct(&z, &t, 5).unwrap(), 2);
    }
}
