//! Detection losses, elementwise (for masked sums over fixed-size batches) and summed.

use tch::{Kind, Reduction, Tensor};

/// Sigmoid focal loss (Lin et al. 2017) per element: for logit `x`, target `t ∈ {0, 1}` and
/// `p = σ(x)`: `−α_t (1 − p_t)^γ ln p_t` with `p_t = p` if `t = 1` else `1 − p`, and
/// `α_t = α` if `t = 1` else `1 − α` (no α weighting when `α < 0`).
pub fn sigmoid_focal_loss_elementwise(logits: &Tensor, targets: &Tensor, alpha: f64, gamma: f64) -> Tensor {
    let p = logits.sigmoid();
    let ce = logits.binary_cross_entropy_with_logits::<Tensor>(targets, None, None, Reduction::None);
    let p_t: Tensor = &p * targets + (1.0 - &p) * (1.0 - targets);
    let modulating = p_t.neg().g_add_scalar(1.0).pow_tensor_scalar(gamma);
    let mut loss = ce * modulating;
    if alpha >= 0.0 {
        loss *= targets * alpha + (1.0 - targets) * (1.0 - alpha);
    }
    loss
}

/// [`sigmoid_focal_loss_elementwise`] summed.
pub fn sigmoid_focal_loss(logits: &Tensor, targets: &Tensor, alpha: f64, gamma: f64) -> Tensor {
    sigmoid_focal_loss_elementwise(logits, targets, alpha, gamma).sum(Kind::Float)
}

/// Smooth-L1 per element, with transition point `beta` (0 = L1).
pub fn smooth_l1_elementwise(input: &Tensor, target: &Tensor, beta: f64) -> Tensor {
    if beta < 1e-5 {
        return (input - target).abs();
    }
    input.smooth_l1_loss(target, Reduction::None, beta)
}

/// Smooth-L1 summed over all elements, with transition point `beta` (0 = L1).
pub fn smooth_l1_sum(input: &Tensor, target: &Tensor, beta: f64) -> Tensor {
    smooth_l1_elementwise(input, target, beta).sum(Kind::Float)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn focal_loss_hand_computed() {
        // x = 0 → p = 0.5; t = 1: 0.25 · 0.5² · ln 2; t = 0: 0.75 · 0.5² · ln 2.
        // x = 2, t = 1: p = σ(2); 0.25 · (1 − p)² · (−ln p).
        let x = Tensor::from_slice(&[0f32, 0.0, 2.0]);
        let t = Tensor::from_slice(&[1f32, 0.0, 1.0]);
        let got = f64::try_from(sigmoid_focal_loss(&x, &t, 0.25, 2.0)).unwrap();
        let p2 = 1.0 / (1.0 + (-2f64).exp());
        let want = 0.25 * 0.25 * 2f64.ln() + 0.75 * 0.25 * 2f64.ln() + 0.25 * (1.0 - p2).powi(2) * -p2.ln();
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        // γ = 0, α < 0 is plain BCE.
        let bce = f64::try_from(sigmoid_focal_loss(&x, &t, -1.0, 0.0)).unwrap();
        assert!((bce - (2.0 * 2f64.ln() - p2.ln())).abs() < 1e-6);
    }

    #[test]
    fn smooth_l1_hand_computed() {
        let a = Tensor::from_slice(&[0f32, 0.0]);
        let b = Tensor::from_slice(&[0.05f32, 2.0]);
        // |d| < β: 0.5 d²/β; else |d| − β/2.
        let got = f64::try_from(smooth_l1_sum(&a, &b, 0.1)).unwrap();
        assert!((got - (0.5 * 0.0025 / 0.1 + 2.0 - 0.05)).abs() < 1e-6);
    }
}
