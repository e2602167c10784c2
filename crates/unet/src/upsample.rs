//! Nearest-neighbour 2x upsampling followed by a 3x3 convolution.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::layers::{Conv2d, ConvImpl};

/// Nearest-neighbour 2x upsampling written as reshape -> broadcast -> reshape, so
/// its backward pass is a plain sum over the broadcast axes (candle's own
/// `upsample_nearest2d` backward is slow); one op each way on the CPU.
pub fn upsample_nearest2x(x: &Tensor) -> Result<Tensor> {
    if crate::kernels::use_cpu_kernels(x) {
        return crate::kernels::upsample::upsample_nearest2x(x);
    }
    let (b, c, h, w) = x.dims4()?;
    x.reshape((b, c, h, 1, w, 1))?
        .broadcast_as((b, c, h, 2, w, 2))?
        .reshape((b, c, 2 * h, 2 * w))
}

/// Doubles the resolution: nearest upsampling, then a 3x3 convolution. Parameters: `conv`.
#[derive(Clone, Debug)]
pub struct Upsample {
    conv: Conv2d,
}

impl Upsample {
    /// Keeps the channel count.
    pub fn new(channels: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            conv: Conv2d::new(channels, channels, 3, 1, 1, false, vb.pp("conv"))?,
        })
    }

    /// Compute the convolution with `imp`.
    pub fn with_conv_impl(mut self, imp: ConvImpl) -> Self {
        self.conv = self.conv.with_impl(imp);
        self
    }

    /// Number of scalar parameters.
    pub fn param_count(&self) -> usize {
        self.conv.param_count()
    }
}

impl Module for Upsample {
    /// (B, C, H, W) -> (B, C, 2H, 2W).
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.conv.forward(&upsample_nearest2x(x)?)
    }
}
