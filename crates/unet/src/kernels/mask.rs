//! Dropout's product with a constant mask, as one op whose backward multiplies
//! the gradient by the same mask. candle's `x.mul(&mask)` also computes (and
//! accumulates) the gradient of the mask, which nothing reads: two more
//! passes and a buffer of zeros per dropout layer.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::f32_slice;

/// `x * mask`, elementwise, with a mask that takes no gradient.
struct MaskMul(Arc<[f32]>);

impl MaskMul {
    /// `xs[i] * mask[i]` (the same product as candle's `mul`, bit for bit).
    fn apply(&self, op: &str, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let xs = f32_slice(op, s, l)?;
        if xs.len() != self.0.len() {
            candle_core::bail!(
                "{op}: {} elements against a mask of {}",
                xs.len(),
                self.0.len()
            )
        }
        let out: Vec<f32> = xs
            .par_iter()
            .zip(&self.0[..])
            .map(|(&x, &m)| x * m)
            .collect();
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
}

impl CustomOp1 for MaskMul {
    fn name(&self) -> &'static str {
        "e2h-mask-mul"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        self.apply(self.name(), s, l)
    }

    fn bwd(&self, _x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let back = MaskMul(self.0.clone());
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&back)?))
    }
}

/// `x * mask` on the CPU (f32), differentiable in `x` only; `mask` holds one
/// value per element of `x`, in its (contiguous) order.
pub fn mask_mul(x: &Tensor, mask: Vec<f32>) -> Result<Tensor> {
    x.contiguous()?.apply_op1(MaskMul(mask.into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::bits;
    use candle_core::{Device, Var};

    #[test]
    fn matches_candle_mul_with_its_gradient_bit_for_bit() {
        let n = 3 * 5 * 7;
        let xs: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin() * 3.1).collect();
        let mask: Vec<f32> = (0..n)
            .map(|i| if i % 3 == 0 { 0.0 } else { 1.0 / 0.9 })
            .collect();
        let dy: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
        let dev = Device::Cpu;
        let x = Var::from_vec(xs, (3, 5, 7), &dev).unwrap();
        let dy = Tensor::from_vec(dy, (3, 5, 7), &dev).unwrap();
        let m = Tensor::from_vec(mask.clone(), (3, 5, 7), &dev).unwrap();
        let want = x.as_tensor().mul(&m).unwrap();
        let want_dx = (&want * &dy)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let got = mask_mul(x.as_tensor(), mask).unwrap();
        let got_dx = (&got * &dy).unwrap().sum_all().unwrap().backward().unwrap();
        assert_eq!(bits(&got), bits(&want));
        assert_eq!(
            bits(got_dx.get(x.as_tensor()).unwrap()),
            bits(want_dx.get(x.as_tensor()).unwrap())
        );
    }
}
