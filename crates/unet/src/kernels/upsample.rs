//! Nearest-neighbour 2x upsampling as one op each way. candle's composite
//! (reshape, broadcast, reshape) copies strided on one thread forward, and
//! backward sums over the broadcast axes with its generic strided reduction
//! after two gradient buffers of the output's size.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{f32_slice, zeroed};

/// (B, C, H, W) -> (B, C, 2H, 2W), each value repeated over a 2x2 block.
struct Upsample2x;

/// The upsampling's adjoint: each 2x2 block of the gradient summed back.
struct Upsample2xBackward;

impl CustomOp1 for Upsample2x {
    fn name(&self) -> &'static str {
        "e2h-upsample2x"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, c, h, w) = l.shape().dims4()?;
        let x = f32_slice(self.name(), s, l)?;
        let mut out = zeroed(4 * x.len());
        out.par_chunks_mut(4 * h * w)
            .zip(x.par_chunks(h * w))
            .for_each(|(dst, src)| {
                for (rows, row) in dst.chunks_mut(4 * w).zip(src.chunks(w)) {
                    let (top, bottom) = rows.split_at_mut(2 * w);
                    for (pair, &v) in top.chunks_mut(2).zip(row) {
                        pair.fill(v);
                    }
                    bottom.copy_from_slice(top);
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((b, c, 2 * h, 2 * w))))
    }

    fn bwd(&self, _x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            grad.contiguous()?.apply_op1_no_bwd(&Upsample2xBackward)?,
        ))
    }
}

impl CustomOp1 for Upsample2xBackward {
    fn name(&self) -> &'static str {
        "e2h-upsample2x-backward"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, c, h2, w2) = l.shape().dims4()?;
        if h2 % 2 != 0 || w2 % 2 != 0 {
            candle_core::bail!("{}: odd gradient size {h2}x{w2}", self.name())
        }
        let dy = f32_slice(self.name(), s, l)?;
        let (h, w) = (h2 / 2, w2 / 2);
        let mut out = zeroed(b * c * h * w);
        out.par_chunks_mut(h * w)
            .zip(dy.par_chunks(4 * h * w))
            .for_each(|(dst, src)| {
                for (row, rows) in dst.chunks_mut(w).zip(src.chunks(4 * w)) {
                    let (top, bottom) = rows.split_at(2 * w);
                    for (j, d) in row.iter_mut().enumerate() {
                        // The order of candle's reduction over the broadcast
                        // axes: the block's values in row-major order, from 0.
                        *d = 0.0 + top[2 * j] + top[2 * j + 1] + bottom[2 * j] + bottom[2 * j + 1];
                    }
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((b, c, h, w))))
    }
}

/// Nearest-neighbour 2x upsampling of `x` (B, C, H, W) on the CPU (f32),
/// differentiable: values and gradients bit for bit those of the candle
/// composite in [`crate::upsample::upsample_nearest2x`].
pub fn upsample_nearest2x(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Upsample2x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::bits;
    use candle_core::{Device, Var};

    #[test]
    fn matches_the_candle_composite_bit_for_bit() {
        let (b, c, h, w) = (2, 3, 5, 4);
        let n = b * c * h * w;
        let xs: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin() * 3.1).collect();
        let x = Var::from_vec(xs, (b, c, h, w), &Device::Cpu).unwrap();
        let weights: Vec<f32> = (0..4 * n).map(|i| (i as f32 * 0.113).cos() * 1e3).collect();
        let weights = Tensor::from_vec(weights, (b, c, 2 * h, 2 * w), &Device::Cpu).unwrap();
        let composite = x
            .as_tensor()
            .reshape((b, c, h, 1, w, 1))
            .unwrap()
            .broadcast_as((b, c, h, 2, w, 2))
            .unwrap()
            .reshape((b, c, 2 * h, 2 * w))
            .unwrap();
        let fused = upsample_nearest2x(x.as_tensor()).unwrap();
        assert_eq!(fused.dims(), composite.dims());
        assert_eq!(bits(&fused), bits(&composite));
        let loss = |y: &Tensor| (y * &weights).unwrap().sum_all().unwrap();
        let (gc, gf) = (
            loss(&composite).backward().unwrap(),
            loss(&fused).backward().unwrap(),
        );
        assert_eq!(
            bits(gf.get(x.as_tensor()).unwrap()),
            bits(gc.get(x.as_tensor()).unwrap())
        );
    }
}
