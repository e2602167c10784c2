//! Concatenation along channels (the U-Net's skip connections) as one op each
//! way, copied by all threads. candle's `cat` copies on one thread, and its
//! backward hands each input a strided view of the gradient, which the
//! backward pass then copies on one thread too.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{f32_slice, zeroed};

/// (B, Ca, H, W), (B, Cb, H, W) -> (B, Ca + Cb, H, W).
struct CatChannels;

/// Channels `start..start + len` of a (B, C, H, W) tensor, as a new tensor.
struct ChannelRange {
    start: usize,
    len: usize,
}

impl CustomOp2 for CatChannels {
    fn name(&self) -> &'static str {
        "e2h-cat-channels"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, ca, h, w) = l1.shape().dims4()?;
        let (b2, cb, h2, w2) = l2.shape().dims4()?;
        if (b, h, w) != (b2, h2, w2) {
            candle_core::bail!(
                "{}: {:?} and {:?} differ in more than their channels",
                self.name(),
                l1.shape(),
                l2.shape()
            )
        }
        let (xa, xb) = (
            f32_slice(self.name(), s1, l1)?,
            f32_slice(self.name(), s2, l2)?,
        );
        let (na, nb) = (ca * h * w, cb * h * w);
        let mut out = zeroed(b * (na + nb));
        out.par_chunks_mut(na + nb)
            .zip(xa.par_chunks(na.max(1)).zip(xb.par_chunks(nb.max(1))))
            .for_each(|(dst, (a, b))| {
                let (dst_a, dst_b) = dst.split_at_mut(na);
                dst_a.copy_from_slice(a);
                dst_b.copy_from_slice(b);
            });
        Ok((CpuStorage::F32(out), Shape::from((b, ca + cb, h, w))))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let (ca, cb) = (a.dim(1)?, b.dim(1)?);
        let ga = grad.apply_op1_no_bwd(&ChannelRange { start: 0, len: ca })?;
        let gb = grad.apply_op1_no_bwd(&ChannelRange { start: ca, len: cb })?;
        Ok((Some(ga), Some(gb)))
    }
}

impl CustomOp1 for ChannelRange {
    fn name(&self) -> &'static str {
        "e2h-channel-range"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, c, h, w) = l.shape().dims4()?;
        if self.start + self.len > c {
            candle_core::bail!(
                "{}: channels {}..{} of {c}",
                self.name(),
                self.start,
                self.start + self.len
            )
        }
        let x = f32_slice(self.name(), s, l)?;
        let (plane, n) = (h * w, self.len * h * w);
        let mut out = zeroed(b * n);
        out.par_chunks_mut(n.max(1))
            .zip(x.par_chunks((c * plane).max(1)))
            .for_each(|(dst, src)| dst.copy_from_slice(&src[self.start * plane..][..n]));
        Ok((CpuStorage::F32(out), Shape::from((b, self.len, h, w))))
    }
}

/// `Tensor::cat(&[a, b], 1)` of two (B, C, H, W) tensors on the CPU (f32),
/// differentiable: the same values and gradients.
pub fn cat_channels(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    a.contiguous()?.apply_op2(&b.contiguous()?, CatChannels)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::bits;
    use candle_core::{Device, Var};

    #[test]
    fn matches_candle_cat_with_its_gradients() {
        let dev = Device::Cpu;
        let values = |n: usize, salt: f32| -> Vec<f32> {
            (0..n).map(|i| (i as f32 * 0.37 + salt).sin()).collect()
        };
        let a = Var::from_vec(values(2 * 3 * 20, 0.1), (2, 3, 4, 5), &dev).unwrap();
        let b = Var::from_vec(values(2 * 2 * 20, 0.2), (2, 2, 4, 5), &dev).unwrap();
        let g = Tensor::from_vec(values(2 * 5 * 20, 0.3), (2, 5, 4, 5), &dev).unwrap();
        let want = Tensor::cat(&[a.as_tensor(), b.as_tensor()], 1).unwrap();
        let got = cat_channels(a.as_tensor(), b.as_tensor()).unwrap();
        assert_eq!(got.dims(), want.dims());
        assert_eq!(bits(&got), bits(&want));
        let grads = |y: &Tensor| (y * &g).unwrap().sum_all().unwrap().backward().unwrap();
        let (gw, gg) = (grads(&want), grads(&got));
        for v in [&a, &b] {
            let (x, y) = (
                gw.get(v.as_tensor()).unwrap(),
                gg.get(v.as_tensor()).unwrap(),
            );
            assert_eq!(bits(y), bits(x));
        }
    }
}
