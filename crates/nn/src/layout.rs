//! Memory layout of activations. tch 0.24 has no `MemoryFormat` API; a channels-last tensor is
//! an `[N, C, H, W]` tensor with NHWC strides, which libtorch's convolution, BN, pooling and
//! element-wise kernels recognise and keep (oneDNN runs NHWC convolutions without reorders).
//!
//! Which layout a network runs in is the process's `runtime.memory_format`
//! ([`detnas_device::settings`]): `auto` is channels-last on the CPU and NCHW on CUDA.

use detnas_device::Layout;
use tch::Tensor;

/// Whether `x` (4-D) has channels-last strides (`C` innermost) and more than one channel.
pub fn is_channels_last(x: &Tensor) -> bool {
    let (size, stride) = (x.size(), x.stride());
    size.len() == 4 && size[1] > 1 && stride[1] == 1 && stride[3] == size[1]
}

/// A channels-last copy of `[N, C, H, W]` `x` (same values, NHWC strides).
pub fn to_channels_last(x: &Tensor) -> Tensor {
    if is_channels_last(x) { x.shallow_clone() } else { x.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2]) }
}

/// `x` in `layout` (a copy only when it is in the other one).
pub fn to_layout(x: &Tensor, layout: Layout) -> Tensor {
    match layout {
        Layout::ChannelsLast => to_channels_last(x),
        Layout::Nchw => x.contiguous(),
    }
}

/// `x` in the layout this thread's setting gives its device: how a network's input enters it.
pub fn for_network(x: &Tensor) -> Tensor {
    to_layout(x, detnas_device::settings::layout(x.device()))
}
