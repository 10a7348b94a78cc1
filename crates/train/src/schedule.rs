//! Learning-rate schedules with linear warm-up.
//!
//! * `linear`: `lr · (1 − t/T)` — the official SPOS/DetNAS pre-training schedule (to 0 at T);
//! * `cosine`: `lr · ½(1 + cos(π t/T))`;
//! * `step`: `lr · γ^k` after the k-th milestone (detection fine-tuning: ×0.1 at 60k, 80k).
//!
//! Warm-up multiplies by a factor rising linearly from `warmup_factor` at step 0 to 1 at
//! `warmup_iters` (the detectron convention).

use serde::{Deserialize, Serialize};

/// The schedule's shape after the warm-up.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum ScheduleKind {
    /// Linear decay to 0 (the official SPOS / DetNAS pre-training).
    Linear,
    /// Cosine decay to 0.
    Cosine,
    /// Multiplied by `gamma` at each milestone (the detection schedules).
    Step {
        /// Steps at which the rate drops.
        milestones: Vec<u64>,
        /// The factor.
        gamma: f64,
    },
}

/// A schedule over `total` steps.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    /// Base learning rate.
    pub base: f64,
    /// Total iterations.
    pub total: u64,
    /// The shape.
    pub kind: ScheduleKind,
    /// Linear warm-up iterations.
    pub warmup_iters: u64,
    /// Learning-rate factor at step 0 of the warm-up.
    pub warmup_factor: f64,
}

impl LrSchedule {
    /// The learning rate of step `t` (0-based).
    pub fn lr(&self, t: u64) -> f64 {
        let progress = if self.total == 0 { 1.0 } else { (t as f64 / self.total as f64).min(1.0) };
        let main = match &self.kind {
            ScheduleKind::Linear => self.base * (1.0 - progress),
            ScheduleKind::Cosine => self.base * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
            ScheduleKind::Step { milestones, gamma } => {
                self.base * gamma.powi(milestones.iter().filter(|&&m| t >= m).count() as i32)
            }
        };
        if t < self.warmup_iters {
            let alpha = t as f64 / self.warmup_iters as f64;
            main * (self.warmup_factor * (1.0 - alpha) + alpha)
        } else {
            main
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn known_values() {
        let lin =
            LrSchedule { base: 0.5, total: 300_000, kind: ScheduleKind::Linear, warmup_iters: 0, warmup_factor: 1.0 };
        assert!(close(lin.lr(0), 0.5) && close(lin.lr(150_000), 0.25) && close(lin.lr(300_000), 0.0));
        assert!(close(lin.lr(299_999), 0.5 / 300_000.0));
        let cos = LrSchedule { kind: ScheduleKind::Cosine, ..lin.clone() };
        assert!(
            close(cos.lr(0), 0.5)
                && close(cos.lr(150_000), 0.25)
                && close(cos.lr(75_000), 0.25 * (1.0 + 0.5f64.sqrt()))
        );
        let step = LrSchedule {
            base: 0.02,
            total: 90_000,
            kind: ScheduleKind::Step { milestones: vec![60_000, 80_000], gamma: 0.1 },
            warmup_iters: 500,
            warmup_factor: 1.0 / 3.0,
        };
        assert!(close(step.lr(0), 0.02 / 3.0));
        assert!(close(step.lr(250), 0.02 * (1.0 / 3.0 * 0.5 + 0.5)));
        assert!(close(step.lr(500), 0.02) && close(step.lr(59_999), 0.02));
        assert!(close(step.lr(60_000), 0.002) && close(step.lr(80_000), 0.0002));
    }
}
