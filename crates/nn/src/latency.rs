//! Measures a [`LatencyTable`]: the eval-mode forward latency of the stem and of every
//! allowed choice of every block, each op alone on its own input shape, median of
//! `repeats` timed runs after warm-up. On CUDA every run is synchronised.

use crate::block::ChoiceOp;
use crate::layers::stem;
use detnas_space::{InputSize, LatencyTable, SearchSpace};
use std::time::Instant;
use tch::nn::ModuleT;
use tch::{Device, Kind, Tensor, nn};

/// `cpu` or `cuda:N`: the device string of tables and reports.
pub fn device_name(device: Device) -> String {
    match device {
        Device::Cuda(i) => format!("cuda:{i}"),
        Device::Mps => "mps".into(),
        Device::Vulkan => "vulkan".into(),
        _ => "cpu".into(),
    }
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

fn median_ms(op: &dyn Fn() -> Tensor, device: Device, repeats: usize) -> f64 {
    for _ in 0..2 {
        let _ = op();
    }
    sync(device);
    let mut times: Vec<f64> = (0..repeats.max(1))
        .map(|_| {
            let t = Instant::now();
            let _ = op();
            sync(device);
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// Spatial size after a stride-`s` conv with odd kernel and padding `k/2`.
fn down(n: u64, s: u64) -> u64 {
    (n - 1) / s + 1
}

/// Measures the table of `space` at `input` (batch `batch`) on `device`.
pub fn measure_table(
    space: &SearchSpace,
    input: InputSize,
    batch: i64,
    device: Device,
    repeats: usize,
) -> LatencyTable {
    tch::no_grad(|| {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(device);
        let opts = (Kind::Float, device);
        let (mut h, mut w) = (down(input.height, 2), down(input.width, 2));
        let s = stem(&(vs.root() / "stem"), space.stem as i64);
        let x = Tensor::randn([batch, 3, input.height as i64, input.width as i64], opts);
        let stem_ms = median_ms(&|| s.forward_t(&x, false), device, repeats);
        let mut blocks = Vec::new();
        for slot in space.slots() {
            let x = Tensor::randn([batch, slot.in_channels as i64, h as i64, w as i64], opts);
            let mut row = [None; 4];
            for c in space.allowed() {
                let op = ChoiceOp::new(&(vs.root() / "features" / slot.index / c.id()), &slot, c);
                row[c.id() as usize] = Some(median_ms(&|| op.forward_t(&x, false), device, repeats));
            }
            blocks.push(row);
            (h, w) = (down(h, slot.stride), down(w, slot.stride));
        }
        LatencyTable {
            space: space.clone(),
            input,
            batch: batch as u64,
            device: device_name(device),
            threads: tch::get_num_threads().max(1) as u64,
            repeats: repeats as u64,
            stem_ms,
            blocks,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use detnas_space::{Arch, Choice};

    /// Every allowed choice of every block is measured, and an architecture's latency is the
    /// stem plus its choices' entries: the sum computed here by hand from the table, between
    /// the table's bounds (fastest and slowest choice of every block).
    #[test]
    fn table_covers_every_allowed_choice_and_sums_an_architecture() {
        let space = SearchSpace::small().scaled(0.25).unwrap();
        let t = measure_table(&space, InputSize::square(64), 1, Device::Cpu, 3);
        assert_eq!(t.blocks.len(), space.num_blocks());
        assert!(t.blocks.iter().flatten().all(|v| v.is_some_and(|ms| ms > 0.0 && ms.is_finite())));
        assert!(t.stem_ms > 0.0);
        let arch: Arch = "01230123012301230123".parse().unwrap();
        let by_hand =
            t.stem_ms + arch.choices().iter().zip(&t.blocks).map(|(c, row)| row[c.id() as usize].unwrap()).sum::<f64>();
        assert!((t.latency_ms(&arch).unwrap() - by_hand).abs() < 1e-9);
        let all3 = t.latency_ms(&Arch::uniform(Choice::Shuffle3, space.num_blocks())).unwrap();
        let (lo, hi) = t.bounds();
        assert!(lo <= all3 && all3 <= hi && lo <= by_hand && by_hand <= hi, "{lo} {all3} {by_hand} {hi}");
        t.check_matches(&space, InputSize::square(64), "cpu").unwrap();
    }
}
