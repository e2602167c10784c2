//! Residual block of Ho et al. 2020.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::dropout::ForwardMode;
use crate::layers::{Conv2d, ConvImpl, Dense, GroupNorm, Nin, group_norm, group_norm_params};

/// GroupNorm -> SiLU -> conv3x3 -> + dense(SiLU(temb)) -> GroupNorm -> SiLU ->
/// dropout -> conv3x3 (zero-initialised), plus the input (through a 1x1
/// convolution when the channel count changes).
///
/// Parameters: `norm1`, `conv1`, `temb_proj`, `norm2`, `conv2`, and `nin_shortcut`
/// when `c_in != c_out`.
#[derive(Clone, Debug)]
pub struct ResBlock {
    norm1: GroupNorm,
    conv1: Conv2d,
    temb_proj: Dense,
    norm2: GroupNorm,
    conv2: Conv2d,
    nin_shortcut: Option<Nin>,
    dropout: f64,
    params: usize,
}

impl ResBlock {
    /// A block from `c_in` to `c_out` channels with a `temb_dim` time embedding.
    pub fn new(
        c_in: usize,
        c_out: usize,
        temb_dim: usize,
        groups: usize,
        dropout: f64,
        vb: VarBuilder,
    ) -> Result<Self> {
        let norm1 = group_norm(groups, c_in, vb.pp("norm1"))?;
        let conv1 = Conv2d::new(c_in, c_out, 3, 1, 1, false, vb.pp("conv1"))?;
        let temb_proj = Dense::new(temb_dim, c_out, vb.pp("temb_proj"))?;
        let norm2 = group_norm(groups, c_out, vb.pp("norm2"))?;
        let conv2 = Conv2d::new(c_out, c_out, 3, 1, 1, true, vb.pp("conv2"))?;
        let nin_shortcut = if c_in != c_out {
            Some(Nin::new(c_in, c_out, false, vb.pp("nin_shortcut"))?)
        } else {
            None
        };
        let params = group_norm_params(c_in)
            + conv1.param_count()
            + temb_proj.param_count()
            + group_norm_params(c_out)
            + conv2.param_count()
            + nin_shortcut.as_ref().map_or(0, Nin::param_count);
        Ok(Self {
            norm1,
            conv1,
            temb_proj,
            norm2,
            conv2,
            nin_shortcut,
            dropout,
            params,
        })
    }

    /// Compute the 3x3 convolutions with `imp`.
    pub fn with_conv_impl(mut self, imp: ConvImpl) -> Self {
        self.conv1 = self.conv1.with_impl(imp);
        self.conv2 = self.conv2.with_impl(imp);
        self
    }

    /// Number of scalar parameters.
    pub fn param_count(&self) -> usize {
        self.params
    }

    /// `x`: (B, C_in, H, W); `temb_act`: SiLU of the time embedding, (B, temb_dim).
    pub fn forward(&self, x: &Tensor, temb_act: &Tensor, mode: &ForwardMode) -> Result<Tensor> {
        let t = self.temb_proj.forward(temb_act)?;
        let h = self
            .conv1
            .forward_plus_per_image(&self.norm1.forward_silu(x)?, &t)?;
        let h = self.norm2.forward_silu_dropout(&h, mode, self.dropout)?;
        let skip = match &self.nin_shortcut {
            Some(nin) => nin.forward(x)?,
            None => x.clone(),
        };
        self.conv2.forward_plus_residual(&h, &skip)
    }
}
