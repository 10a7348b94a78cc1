//! Memory layout helpers. tch 0.24 has no `MemoryFormat` API; a channels-last tensor is an
//! `[N, C, H, W]` tensor with NHWC strides, which libtorch's convolution, BN, pooling and
//! element-wise kernels recognise and keep (oneDNN runs NHWC convolutions without reorders).

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
