//! Downsampling by a stride-2 3x3 convolution.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::layers::{Conv2d, ConvImpl};

/// Halves the resolution with a 3x3, stride-2, padding-1 convolution. Parameters: `conv`.
#[derive(Clone, Debug)]
pub struct Downsample {
    conv: Conv2d,
}

impl Downsample {
    /// Keeps the channel count.
    pub fn new(channels: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            conv: Conv2d::new(channels, channels, 3, 2, 1, false, vb.pp("conv"))?,
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

impl Module for Downsample {
    /// (B, C, H, W) -> (B, C, H/2, W/2).
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.conv.forward(x)
    }
}
