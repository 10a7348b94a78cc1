//! Project-owned random draws on top of a seedable stream.
//!
//! All randomness of detnas comes from [`ChaCha8Rng`] streams whose state can be saved and
//! restored. The draws below are defined here (not by `rand`'s distribution code) so the
//! sequence an architecture search produces for a seed never changes with a dependency
//! upgrade.

use rand::{RngCore, SeedableRng};
pub use rand_chacha::ChaCha8Rng;

/// A ChaCha8 stream for `seed`.
pub fn seeded(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// Uniform integer in `0..n` (Lemire's multiply-shift; exact for powers of two such as 4).
///
/// # Panics
/// If `n == 0`.
pub fn below<R: RngCore + ?Sized>(rng: &mut R, n: u64) -> u64 {
    assert!(n > 0, "below(0)");
    ((rng.next_u64() as u128 * n as u128) >> 64) as u64
}

/// Uniform float in `[0, 1)` with 53 random bits.
pub fn unit<R: RngCore + ?Sized>(rng: &mut R) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// `true` with probability `p`.
pub fn bernoulli<R: RngCore + ?Sized>(rng: &mut R, p: f64) -> bool {
    unit(rng) < p
}

/// In-place Fisher–Yates shuffle.
pub fn shuffle<T, R: RngCore + ?Sized>(rng: &mut R, items: &mut [T]) {
    for i in (1..items.len()).rev() {
        let j = below(rng, i as u64 + 1) as usize;
        items.swap(i, j);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn below_is_uniform_enough() {
        let mut rng = seeded(7);
        let mut counts = [0u32; 4];
        for _ in 0..40_000 {
            counts[below(&mut rng, 4) as usize] += 1;
        }
        for c in counts {
            assert!((9_500..10_500).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn shuffle_is_a_permutation_and_reproducible() {
        let mut a: Vec<u32> = (0..100).collect();
        let mut b = a.clone();
        shuffle(&mut seeded(3), &mut a);
        shuffle(&mut seeded(3), &mut b);
        assert_eq!(a, b);
        assert_ne!(a, (0..100).collect::<Vec<_>>());
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
    }
}
