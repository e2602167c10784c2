//! The DDPM U-Net of Ho et al. 2020 (their `diffusion_tf/models/unet.py`).

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use crate::attention::AttentionBlock;
use crate::downsample::Downsample;
use crate::dropout::ForwardMode;
use crate::kernels::{self, use_cpu_kernels};
use crate::layers::{Conv2d, ConvImpl, GroupNorm, group_norm, group_norm_params};
use crate::resblock::ResBlock;
use crate::time_embedding::TimeEmbedding;
use crate::upsample::Upsample;

/// Architecture of the U-Net.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UNetConfig {
    /// Image channels (3 for CIFAR-10).
    pub image_channels: usize,
    /// Image height = width (32 for CIFAR-10).
    pub image_size: usize,
    /// Base width C: level i has C x channel_mult[i] channels.
    pub base_channels: usize,
    /// Channel multipliers per resolution level, e.g. (1, 2, 2, 2).
    pub channel_mult: Vec<usize>,
    /// Residual blocks per level on the way down (the way up has one more).
    pub num_res_blocks: usize,
    /// Resolutions (side lengths) with self-attention after each residual block, e.g. [16].
    pub attn_resolutions: Vec<usize>,
    /// Dropout probability inside residual blocks (training only).
    pub dropout: f64,
    /// GroupNorm groups (32 in Ho et al.; must divide every channel count).
    pub groups: usize,
    /// How the 3x3 convolutions are computed (default: im2col + matrix product).
    #[serde(default)]
    pub conv_impl: ConvImpl,
}

impl UNetConfig {
    /// Ho et al.'s CIFAR-10 model: width 128, (1,2,2,2), 2 blocks, attention at
    /// 16x16, dropout 0.1, 32 groups: 35,746,307 parameters.
    pub fn paper() -> Self {
        Self {
            image_channels: 3,
            image_size: 32,
            base_channels: 128,
            channel_mult: vec![1, 2, 2, 2],
            num_res_blocks: 2,
            attn_resolutions: vec![16],
            dropout: 0.1,
            groups: 32,
            conv_impl: ConvImpl::Im2col,
        }
    }

    /// A tiny model for CPU tests: 16x16 images, width 16, (1, 2), 1 block,
    /// attention at 8x8, dropout 0.1, 8 groups.
    pub fn tiny() -> Self {
        Self {
            image_channels: 3,
            image_size: 16,
            base_channels: 16,
            channel_mult: vec![1, 2],
            num_res_blocks: 1,
            attn_resolutions: vec![8],
            dropout: 0.1,
            groups: 8,
            conv_impl: ConvImpl::Im2col,
        }
    }

    /// Number of scalar values in one image.
    pub fn image_dim(&self) -> usize {
        self.image_channels * self.image_size * self.image_size
    }

    /// Check that the configuration describes a buildable network.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.channel_mult.is_empty() {
            return Err("channel_mult must not be empty".into());
        }
        if self.base_channels < 2 || !self.base_channels.is_multiple_of(2) {
            return Err("base_channels must be even (sinusoidal embedding)".into());
        }
        if self.image_channels == 0 || self.num_res_blocks == 0 || self.groups == 0 {
            return Err("image_channels, num_res_blocks and groups must be positive".into());
        }
        let levels = self.channel_mult.len();
        if self.image_size == 0 || !self.image_size.is_multiple_of(1 << (levels - 1)) {
            return Err(format!(
                "image_size {} must be divisible by 2^(levels-1) = {}",
                self.image_size,
                1 << (levels - 1)
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(format!("dropout {} must be in [0, 1)", self.dropout));
        }
        for c in self.channel_counts() {
            if !c.is_multiple_of(self.groups) {
                return Err(format!(
                    "groups {} must divide every GroupNorm channel count (found {c})",
                    self.groups
                ));
            }
        }
        Ok(())
    }

    /// Every channel count a GroupNorm sees (including concatenated skips).
    fn channel_counts(&self) -> Vec<usize> {
        let c = self.base_channels;
        let mut out = vec![c];
        let mut skips = vec![c];
        let mut ch = c;
        for (i, m) in self.channel_mult.iter().enumerate() {
            for _ in 0..self.num_res_blocks {
                out.push(ch);
                ch = c * m;
                out.push(ch);
                skips.push(ch);
            }
            if i + 1 != self.channel_mult.len() {
                skips.push(ch);
            }
        }
        for m in self.channel_mult.iter().rev() {
            for _ in 0..=self.num_res_blocks {
                let s = skips.pop().unwrap_or(0);
                out.push(ch + s);
                ch = c * m;
                out.push(ch);
            }
        }
        out
    }
}

#[derive(Clone, Debug)]
struct Level {
    blocks: Vec<ResBlock>,
    attns: Vec<Option<AttentionBlock>>,
    down: Option<Downsample>,
    up: Option<Upsample>,
}

/// The U-Net: `conv_in`, `down.{i}.block.{j}` / `down.{i}.attn.{j}` /
/// `down.{i}.downsample`, `mid.block1` / `mid.attn` / `mid.block2`,
/// `up.{i}.block.{j}` / `up.{i}.attn.{j}` / `up.{i}.upsample`, `norm_out`,
/// `conv_out` (zero-initialised, so a fresh network outputs exactly zero), and
/// the time embedding `temb`.
#[derive(Clone, Debug)]
pub struct UNet {
    config: UNetConfig,
    temb: TimeEmbedding,
    conv_in: Conv2d,
    down: Vec<Level>,
    mid_block1: ResBlock,
    mid_attn: AttentionBlock,
    mid_block2: ResBlock,
    up: Vec<Level>,
    norm_out: GroupNorm,
    conv_out: Conv2d,
    params: usize,
    device: candle_core::Device,
}

/// The self-attention block after a residual block at resolution `res`, when the
/// configuration asks for one there (its parameters are counted into `params`).
fn attention_at(
    config: &UNetConfig,
    res: usize,
    channels: usize,
    groups: usize,
    vb: VarBuilder,
    params: &mut usize,
) -> Result<Option<AttentionBlock>> {
    if !config.attn_resolutions.contains(&res) {
        return Ok(None);
    }
    let a = AttentionBlock::new(channels, groups, vb)?;
    *params += a.param_count();
    Ok(Some(a))
}

impl UNet {
    /// Build the network; parameters come from `vb` (e.g. [`crate::ParamStore::var_builder`]).
    pub fn new(config: &UNetConfig, vb: VarBuilder) -> Result<Self> {
        config.validate().map_err(candle_core::Error::Msg)?;
        let c = config.base_channels;
        let g = config.groups;
        let p = config.dropout;
        let temb = TimeEmbedding::new(c, vb.pp("temb"))?;
        let td = temb.out_dim();
        let ci = config.conv_impl;
        let conv_in =
            Conv2d::new(config.image_channels, c, 3, 1, 1, false, vb.pp("conv_in"))?.with_impl(ci);
        let mut params = temb.param_count() + conv_in.param_count();
        let levels = config.channel_mult.len();

        let mut skip_ch = vec![c];
        let mut ch = c;
        let mut res = config.image_size;
        let mut down = Vec::with_capacity(levels);
        for (i, m) in config.channel_mult.iter().enumerate() {
            let vbl = vb.pp("down").pp(i);
            let out = c * m;
            let mut blocks = Vec::new();
            let mut attns = Vec::new();
            for j in 0..config.num_res_blocks {
                let b = ResBlock::new(ch, out, td, g, p, vbl.pp("block").pp(j))?.with_conv_impl(ci);
                params += b.param_count();
                blocks.push(b);
                ch = out;
                attns.push(attention_at(
                    config,
                    res,
                    ch,
                    g,
                    vbl.pp("attn").pp(j),
                    &mut params,
                )?);
                skip_ch.push(ch);
            }
            let d = if i + 1 != levels {
                let d = Downsample::new(ch, vbl.pp("downsample"))?.with_conv_impl(ci);
                params += d.param_count();
                skip_ch.push(ch);
                res /= 2;
                Some(d)
            } else {
                None
            };
            down.push(Level {
                blocks,
                attns,
                down: d,
                up: None,
            });
        }

        let vbm = vb.pp("mid");
        let mid_block1 = ResBlock::new(ch, ch, td, g, p, vbm.pp("block1"))?.with_conv_impl(ci);
        let mid_attn = AttentionBlock::new(ch, g, vbm.pp("attn"))?;
        let mid_block2 = ResBlock::new(ch, ch, td, g, p, vbm.pp("block2"))?.with_conv_impl(ci);
        params += mid_block1.param_count() + mid_attn.param_count() + mid_block2.param_count();

        // Built from the lowest resolution up; stored in that (forward) order.
        let mut up = Vec::with_capacity(levels);
        for (i, m) in config.channel_mult.iter().enumerate().rev() {
            let vbl = vb.pp("up").pp(i);
            let out = c * m;
            let mut blocks = Vec::new();
            let mut attns = Vec::new();
            for j in 0..=config.num_res_blocks {
                let s = skip_ch
                    .pop()
                    .ok_or_else(|| candle_core::Error::Msg("skip bookkeeping".into()))?;
                let b =
                    ResBlock::new(ch + s, out, td, g, p, vbl.pp("block").pp(j))?.with_conv_impl(ci);
                params += b.param_count();
                blocks.push(b);
                ch = out;
                attns.push(attention_at(
                    config,
                    res,
                    ch,
                    g,
                    vbl.pp("attn").pp(j),
                    &mut params,
                )?);
            }
            let u = if i != 0 {
                let u = Upsample::new(ch, vbl.pp("upsample"))?.with_conv_impl(ci);
                params += u.param_count();
                res *= 2;
                Some(u)
            } else {
                None
            };
            up.push(Level {
                blocks,
                attns,
                down: None,
                up: u,
            });
        }
        let norm_out = group_norm(g, ch, vb.pp("norm_out"))?;
        let conv_out =
            Conv2d::new(ch, config.image_channels, 3, 1, 1, true, vb.pp("conv_out"))?.with_impl(ci);
        params += group_norm_params(ch) + conv_out.param_count();
        Ok(Self {
            config: config.clone(),
            temb,
            conv_in,
            down,
            mid_block1,
            mid_attn,
            mid_block2,
            up,
            norm_out,
            conv_out,
            params,
            device: vb.device().clone(),
        })
    }

    /// The architecture.
    pub fn config(&self) -> &UNetConfig {
        &self.config
    }

    /// Number of scalar parameters.
    pub fn param_count(&self) -> usize {
        self.params
    }

    /// The device the parameters live on.
    pub fn device(&self) -> &candle_core::Device {
        &self.device
    }

    /// Predict the noise. `x`: (B, C, H, W) noisy images; `t`: the 1-based noise
    /// levels (1..=T), one per image. The time embedding is evaluated at `t - 1`,
    /// the 0-based index of Ho et al.'s code.
    pub fn forward(&self, x: &Tensor, t: &[usize], mode: &ForwardMode) -> Result<Tensor> {
        let steps: Vec<f32> = t.iter().map(|&s| s.saturating_sub(1) as f32).collect();
        let steps = Tensor::from_vec(steps, t.len(), x.device())?;
        self.forward_steps(x, &steps, mode)
    }

    /// As [`UNet::forward`] with the 0-based timestep values as a (B,) tensor.
    pub fn forward_steps(&self, x: &Tensor, steps: &Tensor, mode: &ForwardMode) -> Result<Tensor> {
        let x = x.to_dtype(DType::F32)?;
        let temb = self.temb.forward(steps)?.silu()?;
        let mut hs = vec![self.conv_in.forward(&x)?];
        for level in &self.down {
            for (b, a) in level.blocks.iter().zip(&level.attns) {
                let prev = hs.last().expect("non-empty");
                let mut h = b.forward(prev, &temb, mode)?;
                if let Some(a) = a {
                    h = a.forward(&h)?;
                }
                hs.push(h);
            }
            if let Some(d) = &level.down {
                let h = d.forward(hs.last().expect("non-empty"))?;
                hs.push(h);
            }
        }
        let mut h = hs.last().expect("non-empty").clone();
        h = self.mid_block1.forward(&h, &temb, mode)?;
        h = self.mid_attn.forward(&h)?;
        h = self.mid_block2.forward(&h, &temb, mode)?;
        for level in &self.up {
            for (b, a) in level.blocks.iter().zip(&level.attns) {
                let skip = hs
                    .pop()
                    .ok_or_else(|| candle_core::Error::Msg("skip stack exhausted".into()))?;
                let joined = if use_cpu_kernels(&h) {
                    kernels::concat::cat_channels(&h, &skip)?
                } else {
                    Tensor::cat(&[&h, &skip], 1)?
                };
                h = b.forward(&joined, &temb, mode)?;
                if let Some(a) = a {
                    h = a.forward(&h)?;
                }
            }
            if let Some(u) = &level.up {
                h = u.forward(&h)?;
            }
        }
        debug_assert!(hs.is_empty());
        self.conv_out.forward(&self.norm_out.forward_silu(&h)?)
    }

    /// The attention blocks, in forward order (down path, middle, up path).
    pub fn attention_blocks(&self) -> Vec<&AttentionBlock> {
        let mut out: Vec<&AttentionBlock> = self
            .down
            .iter()
            .flat_map(|l| l.attns.iter().flatten())
            .collect();
        out.push(&self.mid_attn);
        out.extend(self.up.iter().flat_map(|l| l.attns.iter().flatten()));
        out
    }
}
