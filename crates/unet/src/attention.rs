//! Single-head self-attention over spatial positions (Ho et al. 2020).

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::kernels::{self, use_cpu_kernels};
use crate::layers::{GroupNorm, Nin, group_norm, group_norm_params, scaled_softmax_last_dim};

/// x + proj_out(softmax(q^T k / sqrt(C)) applied to v), with q, k, v from one 1x1
/// convolution of GroupNorm(x). `proj_out` is zero-initialised, so the block
/// starts as the identity. Parameters: `norm`, `qkv` (3C x C), `proj_out`.
#[derive(Clone, Debug)]
pub struct AttentionBlock {
    norm: GroupNorm,
    qkv: Nin,
    proj_out: Nin,
    channels: usize,
}

impl AttentionBlock {
    /// Attention over `channels` channels.
    pub fn new(channels: usize, groups: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            norm: group_norm(groups, channels, vb.pp("norm"))?,
            qkv: Nin::new(channels, 3 * channels, false, vb.pp("qkv"))?,
            proj_out: Nin::new(channels, channels, true, vb.pp("proj_out"))?,
            channels,
        })
    }

    /// Number of scalar parameters.
    pub fn param_count(&self) -> usize {
        group_norm_params(self.channels) + self.qkv.param_count() + self.proj_out.param_count()
    }

    /// q, k, v one after the other, (B, 3C, HW).
    fn qkv_stacked(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        self.qkv
            .forward(&self.norm.forward(x)?)?
            .reshape((b, 3 * c, h * w))
    }

    /// q, k, v as (B, C, HW) each.
    fn qkv(&self, x: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let c = self.channels;
        let qkv = self.qkv_stacked(x)?;
        Ok((
            qkv.narrow(1, 0, c)?.contiguous()?,
            qkv.narrow(1, c, c)?.contiguous()?,
            qkv.narrow(1, 2 * c, c)?.contiguous()?,
        ))
    }

    /// The logits' scale, 1 / sqrt(C).
    fn scale(&self) -> f64 {
        1.0 / (self.channels as f64).sqrt()
    }

    fn weights_from(&self, q: &Tensor, k: &Tensor) -> Result<Tensor> {
        let logits = q.transpose(1, 2)?.matmul(k)?;
        scaled_softmax_last_dim(&logits, self.scale())
    }

    /// The attention weights (B, HW queries, HW keys); each row sums to one.
    pub fn attention_weights(&self, x: &Tensor) -> Result<Tensor> {
        let (q, k, _v) = self.qkv(x)?;
        self.weights_from(&q, &k)
    }

    /// (B, C, H, W) -> (B, C, H, W).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if use_cpu_kernels(x) {
            // The same products and softmax as below, as one op each way.
            let qkv = self.qkv_stacked(x)?;
            let out = kernels::attention::attention(&qkv, self.channels, self.scale())?;
            return self.proj_out.forward_flat_plus_residual(&out, x);
        }
        let (q, k, v) = self.qkv(x)?;
        let attn = self.weights_from(&q, &k)?;
        // out[b, c, i] = sum_j v[b, c, j] attn[b, i, j]
        let out = v.matmul(&attn.transpose(1, 2)?)?;
        self.proj_out.forward_flat_plus_residual(&out, x)
    }
}
