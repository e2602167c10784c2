//! The AdamW and EMA updates in place, one pass per tensor, with the same f32
//! arithmetic (operation for operation) as the candle-op formulation in
//! [`crate::adam`], so both give bit-identical weights.

use candle_core::{CpuStorage, InplaceOp2, InplaceOp3, Layout, Result, Tensor};
use rayon::prelude::*;

use super::f32_slice;

/// Elements per parallel task: small tensors stay on one thread.
const GRAIN: usize = 1 << 14;

fn f32_slice_mut<'a>(op: &str, s: &'a mut CpuStorage, l: &Layout) -> Result<&'a mut [f32]> {
    let CpuStorage::F32(data) = s else {
        candle_core::bail!("{op}: expects f32")
    };
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&mut data[start..end]),
        None => candle_core::bail!("{op}: expects a contiguous destination"),
    }
}

/// `g * scale` as candle's `affine(scale, 0)` computes it (or `g` unscaled).
fn scaled(g: f32, scale: Option<f32>) -> f32 {
    match scale {
        Some(s) => g * s + 0.0,
        None => g,
    }
}

/// A moment update `m <- beta m + (1 - beta) f(scale g)`, with `f` the identity
/// (first moment) or the square (second moment).
struct MomentUpdate {
    beta: f64,
    grad_scale: Option<f32>,
    square: bool,
}

impl InplaceOp2 for MomentUpdate {
    fn name(&self) -> &'static str {
        "e2h-adam-moment"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        let m = f32_slice_mut(self.name(), s1, l1)?;
        let g = f32_slice(self.name(), s2, l2)?;
        if m.len() != g.len() {
            candle_core::bail!("{}: moment and gradient sizes differ", self.name())
        }
        let (keep, take) = (self.beta as f32, (1.0 - self.beta) as f32);
        let (scale, square) = (self.grad_scale, self.square);
        m.par_chunks_mut(GRAIN)
            .zip(g.par_chunks(GRAIN))
            .for_each(|(m, g)| {
                for (m, &g) in m.iter_mut().zip(g) {
                    let g = scaled(g, scale);
                    let f = if square { g * g } else { g };
                    *m = (*m * keep + 0.0) + (f * take + 0.0);
                }
            });
        Ok(())
    }
}

/// `w <- w (1 - lr wd) - step_size m / (sqrt(v) / sqrt(1 - beta2^t) + eps)`.
struct AdamApply {
    step_size: f64,
    inv_bc2_sqrt: f64,
    eps: f64,
    decay: Option<f64>,
}

impl InplaceOp3 for AdamApply {
    fn name(&self) -> &'static str {
        "e2h-adam-apply"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<()> {
        let w = f32_slice_mut(self.name(), s1, l1)?;
        let (m, v) = (
            f32_slice(self.name(), s2, l2)?,
            f32_slice(self.name(), s3, l3)?,
        );
        if m.len() != w.len() || v.len() != w.len() {
            candle_core::bail!("{}: weight and moment sizes differ", self.name())
        }
        let (step, inv, eps) = (
            self.step_size as f32,
            self.inv_bc2_sqrt as f32,
            self.eps as f32,
        );
        let decay = self.decay.map(|d| d as f32);
        w.par_chunks_mut(GRAIN)
            .zip(m.par_chunks(GRAIN))
            .zip(v.par_chunks(GRAIN))
            .for_each(|((w, m), v)| {
                for ((w, &m), &v) in w.iter_mut().zip(m).zip(v) {
                    let denom = v.sqrt() * inv + eps;
                    let update = (m / denom) * step + 0.0;
                    let kept = match decay {
                        Some(d) => *w * d + 0.0,
                        None => *w,
                    };
                    *w = kept - update;
                }
            });
        Ok(())
    }
}

/// `e <- decay e + (1 - decay) w`.
struct EmaUpdate {
    decay: f64,
}

impl InplaceOp2 for EmaUpdate {
    fn name(&self) -> &'static str {
        "e2h-ema"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        let e = f32_slice_mut(self.name(), s1, l1)?;
        let w = f32_slice(self.name(), s2, l2)?;
        if e.len() != w.len() {
            candle_core::bail!("{}: sizes differ", self.name())
        }
        let (keep, take) = (self.decay as f32, (1.0 - self.decay) as f32);
        e.par_chunks_mut(GRAIN)
            .zip(w.par_chunks(GRAIN))
            .for_each(|(e, w)| {
                for (e, &w) in e.iter_mut().zip(w) {
                    *e = (*e * keep + 0.0) + (w * take + 0.0);
                }
            });
        Ok(())
    }
}

/// Hyper-parameters of one AdamW update, already bias-corrected for its step.
#[derive(Clone, Copy, Debug)]
pub struct AdamStep {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// `lr / (1 - beta1^t)`.
    pub step_size: f64,
    /// `1 / sqrt(1 - beta2^t)`.
    pub inv_bc2_sqrt: f64,
    /// `1 - lr wd`, when weight decay is on.
    pub decay: Option<f64>,
    /// Gradient clipping factor, when clipping applies.
    pub grad_scale: Option<f64>,
}

/// Updates weight `w` and moments `m`, `v` in place from gradient `g`.
pub fn adam_update(w: &Tensor, m: &Tensor, v: &Tensor, g: &Tensor, p: &AdamStep) -> Result<()> {
    let g = g.contiguous()?;
    let grad_scale = p.grad_scale.map(|s| s as f32);
    m.inplace_op2(
        &g,
        &MomentUpdate {
            beta: p.beta1,
            grad_scale,
            square: false,
        },
    )?;
    v.inplace_op2(
        &g,
        &MomentUpdate {
            beta: p.beta2,
            grad_scale,
            square: true,
        },
    )?;
    w.inplace_op3(
        m,
        v,
        &AdamApply {
            step_size: p.step_size,
            inv_bc2_sqrt: p.inv_bc2_sqrt,
            eps: p.eps,
            decay: p.decay,
        },
    )
}

/// `ema <- decay ema + (1 - decay) w`, in place.
pub fn ema_update(ema: &Tensor, w: &Tensor, decay: f64) -> Result<()> {
    ema.inplace_op2(&w.contiguous()?, &EmaUpdate { decay })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::bits;
    use candle_core::Device;

    #[test]
    fn ema_update_is_bit_identical_to_the_candle_ops() {
        let e0: Vec<f32> = (0..40000).map(|i| ((i as f32) * 0.11).cos()).collect();
        let w: Vec<f32> = (0..40000).map(|i| ((i as f32) * 0.29).sin()).collect();
        let e = Tensor::from_vec(e0.clone(), 40000, &Device::Cpu).unwrap();
        let w = Tensor::from_vec(w, 40000, &Device::Cpu).unwrap();
        let decay = 0.9999;
        let reference = ((&e * decay).unwrap() + (&w * (1.0 - decay)).unwrap()).unwrap();
        ema_update(&e, &w, decay).unwrap();
        assert_eq!(bits(&e), bits(&reference));
        assert_ne!(bits(&e), e0.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
    }
}
