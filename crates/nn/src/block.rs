//! One choice of one ShuffleNetV2 block (DetNAS arXiv:1903.10979 §3.1, Fig. 2; the official
//! `shuffle_blocks.py` of megvii-model/DetNAS).

use crate::layers::{ConvBn, ConvBnConfig};
use detnas_space::space::BlockSlot;
use detnas_space::{ChannelShuffle, Choice};
use tch::Tensor;
use tch::nn::{self, ModuleT};

/// A complete block that always takes one choice: split/projection, branch, concatenation.
///
/// Stride 1 (`in == out`): channel shuffle method 1 splits the input into `x_proj` and `x`;
/// output `cat(x_proj, ReLU(branch(x)))`. Stride 2: `x_proj = proj(x)` (depthwise k×k s2 → BN
/// → 1×1 → BN → ReLU, k = 3 for Xception), output `cat(x_proj, ReLU(branch(x)))`, the branch
/// producing `out − in` channels.
///
/// # Shapes
/// `[N, in, H, W] → [N, out, H/stride, W/stride]` (rounded up).
#[derive(Debug)]
pub struct ChoiceOp {
    /// The choice this op implements.
    pub choice: Choice,
    /// Its stride (2 at the first block of a stage).
    pub stride: i64,
    /// The main branch, in order (ReLU after it is applied by [`ChoiceOp`]).
    pub branch: Vec<ConvBn>,
    /// The projection of stride-2 blocks.
    pub proj: Vec<ConvBn>,
    /// How the input is split at stride 1.
    pub shuffle: ChannelShuffle,
}

impl ChoiceOp {
    /// Builds `choice` for `slot` under `p` (`p.branch.j.*`, `p.proj.j.*`).
    pub fn new(p: &nn::Path, slot: &BlockSlot, choice: Choice) -> ChoiceOp {
        let (branch, proj) = units(slot, choice);
        let bp = p / "branch";
        let branch = branch.into_iter().enumerate().map(|(j, u)| u.build(&(&bp / j))).collect();
        let pp = p / "proj";
        let proj = proj.into_iter().enumerate().map(|(j, u)| u.build(&(&pp / j))).collect();
        let stride = slot.stride as i64;
        ChoiceOp { choice, stride, branch, proj, shuffle: slot.shuffle }
    }
}

/// The units of a block in `slot` taking `choice`: its branch (the main chain) and, for a
/// stride-2 block, the projection of the passed half (DetNAS `shuffle_blocks.py`).
pub fn units(slot: &BlockSlot, choice: Choice) -> (Vec<ConvBnConfig>, Vec<ConvBnConfig>) {
    let stride = slot.stride as i64;
    let (cin, out) = (slot.in_channels as i64, slot.out_channels as i64);
    let mid = out / 2;
    let (bin, bout) = if stride == 1 { (cin / 2, out / 2) } else { (cin, out - cin) };
    let k = choice.kernel() as i64;
    let branch = match choice {
        Choice::Shuffle3 | Choice::Shuffle5 | Choice::Shuffle7 => vec![
            ConvBnConfig::pointwise(bin, mid, true),
            ConvBnConfig::depthwise(mid, k, stride),
            ConvBnConfig::pointwise(mid, bout, false),
        ],
        Choice::Xception => vec![
            ConvBnConfig::depthwise(bin, 3, stride),
            ConvBnConfig::pointwise(bin, mid, true),
            ConvBnConfig::depthwise(mid, 3, 1),
            ConvBnConfig::pointwise(mid, mid, true),
            ConvBnConfig::depthwise(mid, 3, 1),
            ConvBnConfig::pointwise(mid, bout, false),
        ],
    };
    let proj = if stride == 2 {
        vec![ConvBnConfig::depthwise(cin, k, 2), ConvBnConfig::pointwise(cin, cin, true)]
    } else {
        Vec::new()
    };
    (branch, proj)
}

/// Channel shuffle "method 1" of the official code: view `[N, 2, C/2, H, W]`, swap dims 1
/// and 2, flatten back; the first half of the channels is `x_proj`, the second `x`.
///
/// A channels-last input (NHWC strides) gives channels-last halves: the same permutation
/// is taken on the NHWC view, so the block's convolutions keep oneDNN's NHWC layout.
///
/// # Panics
/// When `x` is not 4-D (`[N, C, H, W]`).
pub fn channel_shuffle_split(x: &Tensor) -> (Tensor, Tensor) {
    let (n, c, h, w) = x.size4().expect("a block input is 4-D");
    let shuffled = if crate::layout::is_channels_last(x) {
        x.permute([0, 2, 3, 1]).view([n, h, w, 2, c / 2]).transpose(3, 4).reshape([n, h, w, c]).permute([0, 3, 1, 2])
    } else {
        x.view([n, 2, c / 2, h, w]).transpose(1, 2).reshape([n, c, h, w])
    };
    (shuffled.narrow(1, 0, c / 2), shuffled.narrow(1, c / 2, c / 2))
}

/// SPOS's split (`channel_shuffle` of megvii-model/SinglePathOneShot `blocks.py`): the even
/// channels are `x_proj`, the odd ones `x`.
///
/// # Panics
/// When `x` is not 4-D (`[N, C, H, W]`).
pub fn even_odd_split(x: &Tensor) -> (Tensor, Tensor) {
    let (n, c, h, w) = x.size4().expect("a block input is 4-D");
    if crate::layout::is_channels_last(x) {
        let v = x.permute([0, 2, 3, 1]).view([n, h, w, c / 2, 2]);
        let half = |i: i64| v.select(4, i).contiguous().permute([0, 3, 1, 2]);
        (half(0), half(1))
    } else {
        let v = x.view([n, c / 2, 2, h, w]);
        (v.select(2, 0), v.select(2, 1))
    }
}

fn run(units: &[ConvBn], x: &Tensor, train: bool) -> Tensor {
    let mut y = units[0].forward_t(x, train);
    for u in &units[1..] {
        y = u.forward_t(&y, train);
    }
    y
}

impl ModuleT for ChoiceOp {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let (x_proj, x_main) = match (self.stride, self.shuffle) {
            (1, ChannelShuffle::Detnas) => channel_shuffle_split(x),
            (1, ChannelShuffle::EvenOdd) => even_odd_split(x),
            _ => (run(&self.proj, x, train), x.shallow_clone()),
        };
        let y = run(&self.branch, &x_main, train).relu();
        Tensor::cat(&[x_proj, y], 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    /// SPOS's split: even channels pass through, odd ones go to the branch, in either layout
    /// (a channels-last input keeps its layout).
    #[test]
    fn even_odd_split_takes_the_even_and_the_odd_channels() {
        let x = Tensor::arange(2 * 8 * 3 * 2, (Kind::Float, Device::Cpu)).view([2, 8, 3, 2]);
        let idx = |v: &[i64]| Tensor::from_slice(v);
        for input in [x.shallow_clone(), crate::layout::to_channels_last(&x)] {
            let (a, b) = even_odd_split(&input);
            assert_eq!(a, x.index_select(1, &idx(&[0, 2, 4, 6])));
            assert_eq!(b, x.index_select(1, &idx(&[1, 3, 5, 7])));
            assert_eq!(crate::layout::is_channels_last(&a), crate::layout::is_channels_last(&input));
        }
        // DetNAS's split takes other channels.
        let (a, _) = channel_shuffle_split(&x);
        assert_eq!(a, x.index_select(1, &idx(&[0, 4, 1, 5])));
    }
}
