//! Primitive layers with the initialisation of Ho et al. 2020 (TensorFlow
//! `variance_scaling(1, "fan_avg", "uniform")` for weights, zero biases; "zero
//! initialised" layers get exactly zero weights where Ho uses scale 1e-10).

use candle_core::{D, Module, Result, Tensor};
use candle_nn::{Init, VarBuilder};
use serde::{Deserialize, Serialize};

use crate::dropout::ForwardMode;
use crate::kernels::{self, conv::ConvGeometry, group_norm::GroupNormSpec, use_cpu_kernels};

fn fan_avg_uniform(fan_in: usize, fan_out: usize) -> Init {
    let bound = (6.0 / (fan_in + fan_out) as f64).sqrt();
    Init::Uniform {
        lo: -bound,
        up: bound,
    }
}

fn weight_init(fan_in: usize, fan_out: usize, zero: bool) -> Init {
    if zero {
        Init::Const(0.0)
    } else {
        fan_avg_uniform(fan_in, fan_out)
    }
}

/// How k x k convolutions are computed. Both give the same function (up to
/// float rounding); they differ in speed, most in the backward pass.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConvImpl {
    /// im2col and matrix products (default): on the CPU the fused kernel of
    /// [`crate::kernels::conv`], elsewhere built from candle's pad/narrow/stack
    /// and a batched matmul.
    #[default]
    Im2col,
    /// candle's `conv2d` (its backward uses `conv_transpose2d`).
    Candle,
}

/// A k x k convolution with bias, NCHW. Parameters `weight` (out, in, k, k), `bias` (out).
#[derive(Clone, Debug)]
pub struct Conv2d {
    weight: Tensor,
    bias: Tensor,
    stride: usize,
    padding: usize,
    imp: ConvImpl,
}

impl Conv2d {
    /// `zero_init`: weights start at exactly zero.
    pub fn new(
        c_in: usize,
        c_out: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        zero_init: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        let k2 = kernel * kernel;
        let weight = vb.get_with_hints(
            (c_out, c_in, kernel, kernel),
            "weight",
            weight_init(c_in * k2, c_out * k2, zero_init),
        )?;
        let bias = vb.get_with_hints(c_out, "bias", Init::Const(0.0))?;
        Ok(Self {
            weight,
            bias,
            stride,
            padding,
            imp: ConvImpl::default(),
        })
    }

    /// Use `imp` to compute the convolution.
    pub fn with_impl(mut self, imp: ConvImpl) -> Self {
        self.imp = imp;
        self
    }

    /// Number of scalar parameters.
    pub fn param_count(&self) -> usize {
        self.weight.elem_count() + self.bias.elem_count()
    }
}

impl Conv2d {
    /// The geometry of the fused CPU kernel, when it applies to `x`.
    fn cpu_geometry(&self, x: &Tensor) -> Option<ConvGeometry> {
        (self.imp == ConvImpl::Im2col && use_cpu_kernels(x)).then(|| ConvGeometry {
            kernel: self.weight.dim(2).unwrap_or(0),
            stride: self.stride,
            padding: self.padding,
        })
    }

    /// `conv(x) + addend`, the addend (B, C_out) broadcast over each output
    /// plane (a ResBlock's time embedding); fused into the convolution on the CPU.
    pub fn forward_plus_per_image(&self, x: &Tensor, addend: &Tensor) -> Result<Tensor> {
        if let Some(g) = self.cpu_geometry(x) {
            return kernels::conv::conv2d_plus_per_image(x, &self.weight, &self.bias, addend, g);
        }
        self.forward(x)?
            .broadcast_add(&addend.unsqueeze(2)?.unsqueeze(3)?)
    }

    /// `skip + conv(x)` (a residual connection); fused into the convolution on the CPU.
    pub fn forward_plus_residual(&self, x: &Tensor, skip: &Tensor) -> Result<Tensor> {
        if let Some(g) = self.cpu_geometry(x) {
            return kernels::conv::conv2d_plus_residual(x, &self.weight, &self.bias, skip, g);
        }
        skip + self.forward(x)?
    }

    /// The same convolution through candle's `conv2d` (reference for tests).
    pub fn forward_candle(&self, x: &Tensor) -> Result<Tensor> {
        let c_out = self.bias.dim(0)?;
        x.conv2d(&self.weight, self.padding, self.stride, 1, 1)?
            .broadcast_add(&self.bias.reshape((1, c_out, 1, 1))?)
    }
}

impl Module for Conv2d {
    /// Convolution as im2col (built from pad/narrow/stack) followed by a batched
    /// matrix product: forward and backward are then copies and matrix products.
    /// candle's own conv2d backward (a naive conv_transpose2d on the CPU, slow
    /// kernels on CUDA) was about 8x slower than its forward pass.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if self.imp == ConvImpl::Candle {
            return self.forward_candle(x);
        }
        if let Some(g) = self.cpu_geometry(x) {
            return kernels::conv::conv2d(x, &self.weight, &self.bias, g);
        }
        let (c_out, c_in, k, _) = self.weight.dims4()?;
        let b = x.dim(0)?;
        let (cols, ho, wo) = im2col(x, k, self.stride, self.padding)?;
        let kk = c_in * k * k;
        self.weight
            .reshape((c_out, kk))?
            .broadcast_as((b, c_out, kk))?
            .matmul(&cols)?
            .broadcast_add(&self.bias.reshape((1, c_out, 1))?)?
            .reshape((b, c_out, ho, wo))
    }
}

/// Unfold the k x k patches of `x` (B, C, H, W), zero-padded by `padding`, at
/// stride `stride`: returns (B, C k k, Ho Wo) with rows ordered (c, dy, dx) like
/// a (C_out, C, k, k) kernel, and (Ho, Wo). Differentiable (pad, narrow, reshape,
/// stack).
pub fn im2col(
    x: &Tensor,
    k: usize,
    stride: usize,
    padding: usize,
) -> Result<(Tensor, usize, usize)> {
    let (b, c, h, w) = x.dims4()?;
    if stride == 0 || k == 0 {
        candle_core::bail!("im2col: kernel and stride must be positive")
    }
    let (hp, wp) = (h + 2 * padding, w + 2 * padding);
    if hp < k || wp < k {
        candle_core::bail!("im2col: input {h}x{w} smaller than kernel {k}")
    }
    let (ho, wo) = ((hp - k) / stride + 1, (wp - k) / stride + 1);
    let xp = if padding > 0 {
        x.pad_with_zeros(2, padding, padding)?
            .pad_with_zeros(3, padding, padding)?
    } else {
        x.clone()
    };
    let mut cols = Vec::with_capacity(k * k);
    if stride == 1 {
        for dy in 0..k {
            for dx in 0..k {
                cols.push(xp.narrow(2, dy, ho)?.narrow(3, dx, wo)?.contiguous()?);
            }
        }
    } else {
        // Pad to multiples of the stride and split each spatial axis into
        // (position / stride, position % stride): strided slices become narrows.
        let (hs, ws) = (hp.div_ceil(stride), wp.div_ceil(stride));
        let xr = xp
            .pad_with_zeros(2, 0, hs * stride - hp)?
            .pad_with_zeros(3, 0, ws * stride - wp)?
            .reshape((b, c, hs, stride, ws, stride))?;
        for dy in 0..k {
            for dx in 0..k {
                cols.push(
                    xr.narrow(2, dy / stride, ho)?
                        .narrow(3, dy % stride, 1)?
                        .narrow(4, dx / stride, wo)?
                        .narrow(5, dx % stride, 1)?
                        .reshape((b, c, ho, wo))?,
                );
            }
        }
    }
    let cols = Tensor::stack(&cols, 2)?.reshape((b, c * k * k, ho * wo))?;
    Ok((cols, ho, wo))
}

/// The geometry of a [`Nin`] as a convolution.
const ONE_BY_ONE: ConvGeometry = ConvGeometry {
    kernel: 1,
    stride: 1,
    padding: 0,
};

/// A 1x1 convolution ("network in network") computed as a batched matrix
/// product, which is cheaper than candle's convolution backward. Parameters
/// `weight` (out, in), `bias` (out).
#[derive(Clone, Debug)]
pub struct Nin {
    weight: Tensor,
    bias: Tensor,
}

impl Nin {
    /// `zero_init`: weights start at exactly zero.
    pub fn new(c_in: usize, c_out: usize, zero_init: bool, vb: VarBuilder) -> Result<Self> {
        let weight =
            vb.get_with_hints((c_out, c_in), "weight", weight_init(c_in, c_out, zero_init))?;
        let bias = vb.get_with_hints(c_out, "bias", Init::Const(0.0))?;
        Ok(Self { weight, bias })
    }

    /// Number of scalar parameters.
    pub fn param_count(&self) -> usize {
        self.weight.elem_count() + self.bias.elem_count()
    }

    /// The weight as a (C_out, C_in, 1, 1) convolution kernel.
    fn kernel(&self) -> Result<Tensor> {
        let (c_out, c_in) = self.weight.dims2()?;
        self.weight.reshape((c_out, c_in, 1, 1))
    }

    /// (B, C, N) -> (B, C_out, N).
    pub fn forward_flat(&self, x: &Tensor) -> Result<Tensor> {
        let (b, _c, n) = x.dims3()?;
        let (c_out, c_in) = self.weight.dims2()?;
        if use_cpu_kernels(x) {
            let x = x.reshape((b, c_in, n, 1))?;
            return kernels::conv::conv2d(&x, &self.kernel()?, &self.bias, ONE_BY_ONE)?
                .reshape((b, c_out, n));
        }
        self.weight
            .broadcast_as((b, c_out, c_in))?
            .matmul(&x.contiguous()?)?
            .broadcast_add(&self.bias.reshape((1, c_out, 1))?)
    }

    /// `skip + forward_flat(x)` in the shape of `skip`, (B, C_out, N) or any
    /// other with the same values in the same order; fused into the product
    /// on the CPU.
    pub fn forward_flat_plus_residual(&self, x: &Tensor, skip: &Tensor) -> Result<Tensor> {
        if !use_cpu_kernels(x) {
            return skip + self.forward_flat(x)?.reshape(skip.shape())?;
        }
        let (b, c_in, n) = x.dims3()?;
        kernels::conv::conv2d_plus_residual(
            &x.reshape((b, c_in, n, 1))?,
            &self.kernel()?,
            &self.bias,
            skip,
            ONE_BY_ONE,
        )
    }
}

impl Module for Nin {
    /// (B, C, H, W) -> (B, C_out, H, W).
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if use_cpu_kernels(x) {
            // As a 1x1 convolution of the image itself: the same products as
            // `forward_flat`, without reshapes whose gradients candle would
            // copy into fresh buffers.
            return kernels::conv::conv2d(x, &self.kernel()?, &self.bias, ONE_BY_ONE);
        }
        let (b, c, h, w) = x.dims4()?;
        let c_out = self.bias.dim(0)?;
        self.forward_flat(&x.reshape((b, c, h * w))?)?
            .reshape((b, c_out, h, w))
    }
}

/// A dense layer y = x W^T + b. Parameters `weight` (out, in), `bias` (out).
#[derive(Clone, Debug)]
pub struct Dense {
    weight: Tensor,
    bias: Tensor,
}

impl Dense {
    /// Dense layer with fan-avg uniform weights and zero bias.
    pub fn new(d_in: usize, d_out: usize, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints((d_out, d_in), "weight", fan_avg_uniform(d_in, d_out))?;
        let bias = vb.get_with_hints(d_out, "bias", Init::Const(0.0))?;
        Ok(Self { weight, bias })
    }

    /// Number of scalar parameters.
    pub fn param_count(&self) -> usize {
        self.weight.elem_count() + self.bias.elem_count()
    }
}

impl Module for Dense {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.matmul(&self.weight.t()?)?.broadcast_add(&self.bias)
    }
}

/// Group normalisation with eps 1e-6 as in Ho et al.'s TensorFlow code, alone
/// or followed by SiLU. Parameters `weight` (ones), `bias` (zeros).
#[derive(Clone, Debug)]
pub struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
    groups: usize,
}

/// GroupNorm's epsilon.
const GROUP_NORM_EPS: f64 = 1e-6;

impl GroupNorm {
    /// `groups` groups over `channels` channels.
    pub fn new(groups: usize, channels: usize, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(channels, "weight", Init::Const(1.0))?;
        let bias = vb.get_with_hints(channels, "bias", Init::Const(0.0))?;
        Ok(Self {
            weight,
            bias,
            groups,
        })
    }

    fn apply(&self, x: &Tensor, silu: bool) -> Result<Tensor> {
        if use_cpu_kernels(x) {
            let spec = GroupNormSpec {
                groups: self.groups,
                eps: GROUP_NORM_EPS,
                silu,
            };
            return kernels::group_norm::group_norm(x, &self.weight, &self.bias, spec);
        }
        let channels = self.weight.dim(0)?;
        let gn = candle_nn::GroupNorm::new(
            self.weight.clone(),
            self.bias.clone(),
            channels,
            self.groups,
            GROUP_NORM_EPS,
        )?;
        let y = gn.forward(x)?;
        if silu { y.silu() } else { Ok(y) }
    }

    /// GroupNorm(x).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.apply(x, false)
    }

    /// SiLU(GroupNorm(x)), fused on the CPU.
    pub fn forward_silu(&self, x: &Tensor) -> Result<Tensor> {
        self.apply(x, true)
    }

    /// Dropout (with `mode`'s masks) of SiLU(GroupNorm(x)); on the CPU the
    /// mask is applied in the same pass.
    pub fn forward_silu_dropout(&self, x: &Tensor, mode: &ForwardMode, p: f64) -> Result<Tensor> {
        if use_cpu_kernels(x) && mode.draws_host_masks(p) {
            let spec = GroupNormSpec {
                groups: self.groups,
                eps: GROUP_NORM_EPS,
                silu: true,
            };
            // The statistics are computed while the mask is drawn.
            let x = x.contiguous()?;
            let (mask, stats) = mode.host_mask_beside(x.elem_count(), p, || {
                kernels::group_norm::statistics(&x, spec)
            });
            if let Some(mask) = mask {
                let (gamma, beta) = (&self.weight, &self.bias);
                let stats = Some(stats?);
                return kernels::group_norm::group_norm_masked(&x, gamma, beta, spec, mask, stats);
            }
        }
        mode.dropout(&self.forward_silu(x)?, p)
    }
}

/// Group normalisation over `channels` channels in `groups` groups.
pub fn group_norm(groups: usize, channels: usize, vb: VarBuilder) -> Result<GroupNorm> {
    GroupNorm::new(groups, channels, vb)
}

/// Number of scalar parameters of a group norm over `channels` channels.
pub fn group_norm_params(channels: usize) -> usize {
    2 * channels
}

/// `softmax_last_dim(x * scale)`; one op on the CPU.
pub fn scaled_softmax_last_dim(x: &Tensor, scale: f64) -> Result<Tensor> {
    if use_cpu_kernels(x) {
        return kernels::softmax::scaled_softmax_last_dim(x, scale);
    }
    softmax_last_dim(&(x * scale)?)
}

/// Softmax over the last dimension from differentiable primitives (the max
/// subtracted for stability is detached: it cancels in the result).
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if use_cpu_kernels(x) {
        return kernels::softmax::softmax_last_dim(x);
    }
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    let s = e.sum_keepdim(D::Minus1)?;
    e.broadcast_div(&s)
}
