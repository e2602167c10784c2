//! Softmax over the last dimension as one op forward and one backward.
//!
//! Attention's softmax was built from candle primitives (max, subtract, exp,
//! sum, divide); its backward then ran about a dozen full passes over the
//! (batch, queries, keys) weights, with a buffer of zeros per edge. This op
//! performs the same floating-point operations in the same order, so its
//! results equal the composite's bit for bit: the exponential is glibc's
//! (as candle's, through libm, on glibc), the row sums follow candle's CPU
//! reduction (four 8-lane accumulators, then a fixed tree), and the backward
//! reproduces what candle's autograd computes for the composite, down to the
//! zeros it adds gradients to.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::reduce::candle_sum;
use super::{expf, f32_slice, zeroed};

/// `e = exp(z - max z)` of one row into `e`, with `z = x scale + 0` (candle's
/// `affine`, as in `x * scale`) when there is a scale, else `z = x`; returns
/// `sum e`.
fn exponentials(xs: &[f32], scale: Option<f32>, e: &mut [f32]) -> f32 {
    match scale {
        Some(s) => {
            for (z, &x) in e.iter_mut().zip(xs) {
                *z = x * s + 0.0;
            }
        }
        None => e.copy_from_slice(xs),
    }
    let max = e.iter().copied().fold(e[0], f32::max);
    for z in e.iter_mut() {
        *z -= max;
    }
    expf::exp_in_place(e);
    candle_sum(e.len(), |i| e[i])
}

/// One row of [`Softmax`]: `y = softmax(xs)`, or `softmax(xs scale)`.
pub(super) fn row_forward(xs: &[f32], scale: Option<f32>, y: &mut [f32]) {
    let sum = exponentials(xs, scale, y);
    for y in y.iter_mut() {
        *y /= sum;
    }
}

/// The gradient `dx` of one row of [`Softmax`] (of `x scale` with a scale)
/// from the row's input `xs` and output gradient `gs`: the exponentials are
/// recomputed from `xs`, and every operation is the one candle's autograd
/// performs for the composite.
pub(super) fn row_backward(xs: &[f32], gs: &[f32], scale: Option<f32>, dx: &mut [f32]) {
    let n = xs.len();
    // dx holds e until the last loop.
    let sum = exponentials(xs, scale, dx);
    let sq = sum * sum;
    // y = e / s: the gradient reaching s through the division,
    // summed over the row as candle's broadcast backward does.
    let to_s = 0.0 + candle_sum(n, |i| 0.0 - gs[i] * dx[i] / sq);
    // e's gradient: through the division first, then through s;
    // then exp's backward (times e).
    for (d, &g) in dx.iter_mut().zip(gs) {
        let e = *d;
        let de = (0.0 + g / sum) + to_s;
        *d = 0.0 + de * e;
    }
    // Through the scaling: candle's `affine` backward, `dz scale + 0`.
    if let Some(s) = scale {
        for d in dx.iter_mut() {
            *d = *d * s + 0.0;
        }
    }
}

/// Rows of `n` elements of a contiguous f32 input.
fn rows<'a>(op: &str, s: &'a CpuStorage, l: &Layout) -> Result<(&'a [f32], usize)> {
    let xs = f32_slice(op, s, l)?;
    let n = *l.shape().dims().last().unwrap_or(&0);
    if n == 0 {
        candle_core::bail!("{op}: empty last dimension in {:?}", l.shape())
    }
    Ok((xs, n))
}

/// Softmax of each row of `x`, or of `x scale` (attention's logits scaled in
/// the same pass).
struct Softmax {
    scale: Option<f32>,
}

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "e2h-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (xs, n) = rows(self.name(), s, l)?;
        let mut out = zeroed(xs.len());
        out.par_chunks_mut(n)
            .zip(xs.par_chunks(n))
            .for_each(|(y, xs)| row_forward(xs, self.scale, y));
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let backward = SoftmaxBackward { scale: self.scale };
        let dx = x.apply_op2_no_bwd(&grad.contiguous()?, &backward)?;
        Ok(Some(dx))
    }
}

/// (x, dy) -> dx for [`Softmax`], the exponentials recomputed from x.
struct SoftmaxBackward {
    scale: Option<f32>,
}

impl candle_core::CustomOp2 for SoftmaxBackward {
    fn name(&self) -> &'static str {
        "e2h-softmax-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (xs, n) = rows(self.name(), s1, l1)?;
        let gs = f32_slice(self.name(), s2, l2)?;
        if gs.len() != xs.len() {
            candle_core::bail!(
                "{}: gradient of {} elements for {}",
                self.name(),
                gs.len(),
                xs.len()
            )
        }
        let mut out = zeroed(xs.len());
        out.par_chunks_mut(n)
            .zip(xs.par_chunks(n).zip(gs.par_chunks(n)))
            .for_each(|(dx, (xs, gs))| row_backward(xs, gs, self.scale, dx));
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// Softmax over the last dimension of `x` on the CPU (f32), differentiable.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Softmax { scale: None })
}

/// `softmax_last_dim(x * scale)` in one op each way, bit for bit the same.
pub fn scaled_softmax_last_dim(x: &Tensor, scale: f64) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Softmax {
        scale: Some(scale as f32),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::bits;
    use candle_core::{D, Device, Var};

    /// The composite this op replaces (`layers::softmax_last_dim`).
    fn composite(x: &Tensor) -> Tensor {
        let max = x.max_keepdim(D::Minus1).unwrap().detach();
        let e = x.broadcast_sub(&max).unwrap().exp().unwrap();
        let s = e.sum_keepdim(D::Minus1).unwrap();
        e.broadcast_div(&s).unwrap()
    }

    #[test]
    fn matches_the_candle_composite_with_its_gradient() {
        // Rows shorter than, equal to and longer than a block of 32, with tails.
        for (b, q, n) in [(2, 3, 7), (1, 4, 32), (2, 5, 70), (3, 2, 256)] {
            let len = b * q * n;
            let xs: Vec<f32> = (0..len).map(|i| (i as f32 * 0.913).sin() * 6.0).collect();
            let gs: Vec<f32> = (0..len).map(|i| (i as f32 * 0.377).cos()).collect();
            let dev = Device::Cpu;
            let x = Var::from_vec(xs, (b, q, n), &dev).unwrap();
            let g = Tensor::from_vec(gs, (b, q, n), &dev).unwrap();
            let want = composite(x.as_tensor());
            let want_dx = (&want * &g).unwrap().sum_all().unwrap().backward().unwrap();
            let want_dx = want_dx.get(x.as_tensor()).unwrap();
            let got = softmax_last_dim(x.as_tensor()).unwrap();
            let got_dx = (&got * &g).unwrap().sum_all().unwrap().backward().unwrap();
            let got_dx = got_dx.get(x.as_tensor()).unwrap();
            // Scaled as attention scales its logits.
            let scale = 1.0 / 8f64.sqrt();
            let want_scaled = composite(&(x.as_tensor() * scale).unwrap());
            let want_scaled_dx = (&want_scaled * &g)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let want_scaled_dx = want_scaled_dx.get(x.as_tensor()).unwrap();
            let got_scaled = scaled_softmax_last_dim(x.as_tensor(), scale).unwrap();
            let got_scaled_dx = (&got_scaled * &g)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let got_scaled_dx = got_scaled_dx.get(x.as_tensor()).unwrap();
            if crate::kernels::reduce::sums_like_candle() && cfg!(target_env = "gnu") {
                assert_eq!(bits(&got), bits(&want), "softmax of {b}x{q}x{n}");
                assert_eq!(bits(got_dx), bits(want_dx), "gradient of {b}x{q}x{n}");
                assert_eq!(bits(&got_scaled), bits(&want_scaled), "scaled, {b}x{q}x{n}");
                assert_eq!(
                    bits(got_scaled_dx),
                    bits(want_scaled_dx),
                    "scaled gradient, {b}x{q}x{n}"
                );
            } else {
                let close = |a: &Tensor, b: &Tensor| {
                    let d = (a - b)
                        .unwrap()
                        .abs()
                        .unwrap()
                        .max_all()
                        .unwrap()
                        .to_scalar::<f32>()
                        .unwrap();
                    assert!(d < 1e-6, "{d}");
                };
                close(&got, &want);
                close(got_dx, want_dx);
                close(&got_scaled, &want_scaled);
                close(got_scaled_dx, want_scaled_dx);
            }
        }
    }
}
