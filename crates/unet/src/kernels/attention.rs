//! Attention's core, `v softmax(q^T k scale)^T`, as one op each way.
//!
//! The composite (q, k and v narrowed out of the 1x1 convolution's output and
//! copied, two batched matmuls over transposed views, the softmax) copied on
//! one thread forward; backward it built the qkv gradient from three
//! zero-padded concatenations summed together, after a transposed copy for
//! q's gradient and one for the weights'. This op reads q, k and v where the
//! convolution wrote them, writes the qkv gradient into one buffer, and works
//! image by image with the images side by side. Each product is the `gemm`
//! call candle's matmul makes for the composite (same shapes, same strides)
//! and the softmax is [`super::softmax`]'s, so values and gradients are the
//! composite's bit for bit.

use std::sync::OnceLock;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::gemm::{Mat, matmul_threaded};
use super::softmax::{row_backward, row_forward};
use super::{f32_slice, zeroed};

/// The forward's logits and weights, (B, N, N) each, kept for the backward
/// as the composite's graph kept its two tensors.
struct Saved {
    logits: Vec<f32>,
    weights: Vec<f32>,
}

/// (B, 3C, N) q, k, v -> (B, C, N) attended values.
struct Attention {
    channels: usize,
    scale: f32,
    saved: OnceLock<Saved>,
}

/// (qkv, d out) -> d qkv for [`Attention`].
struct AttentionBackward<'a> {
    channels: usize,
    scale: f32,
    saved: &'a Saved,
}

/// Images and positions of a (B, 3C, N) layout, or an error naming `op`.
fn images_and_positions(op: &str, l: &Layout, channels: usize) -> Result<(usize, usize)> {
    let (b, c3, n) = l.shape().dims3()?;
    if c3 != 3 * channels || n == 0 {
        candle_core::bail!(
            "{op}: expects q, k and v as (B, 3 x {channels}, N), got {:?}",
            l.shape()
        )
    }
    Ok((b, n))
}

/// One image's q, k and v, each (C, N) row-major.
fn split(qkv: &[f32], c: usize, n: usize) -> (Mat<'_>, Mat<'_>, Mat<'_>) {
    let (q, kv) = qkv.split_at(c * n);
    let (k, v) = kv.split_at(c * n);
    (
        Mat::row_major(q, c, n),
        Mat::row_major(k, c, n),
        Mat::row_major(v, c, n),
    )
}

/// Whether each image's products should be threaded themselves: only when
/// there are fewer images than threads to run side by side.
fn threaded_products(images: usize) -> bool {
    images < rayon::current_num_threads()
}

impl CustomOp1 for Attention {
    fn name(&self) -> &'static str {
        "e2h-attention"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let c = self.channels;
        let (b, n) = images_and_positions(self.name(), l, c)?;
        let qkv = f32_slice(self.name(), s, l)?;
        let threaded = threaded_products(b);
        let mut out = zeroed(b * c * n);
        let mut logits = zeroed(b * n * n);
        let mut weights = zeroed(b * n * n);
        out.par_chunks_mut(c * n)
            .zip(logits.par_chunks_mut(n * n))
            .zip(weights.par_chunks_mut(n * n))
            .zip(qkv.par_chunks(3 * c * n))
            .for_each(|(((out, logits), weights), qkv)| {
                let (q, k, v) = split(qkv, c, n);
                // logits = q^T k, q^T a transposed view as in the composite.
                matmul_threaded(logits, false, q.t(), k, threaded);
                for (w, z) in weights.chunks_mut(n).zip(logits.chunks(n)) {
                    row_forward(z, Some(self.scale), w);
                }
                // out[c, i] = sum_j v[c, j] weights[i, j]
                let weights = Mat::row_major(weights, n, n);
                matmul_threaded(out, false, v, weights.t(), threaded);
            });
        if self.saved.set(Saved { logits, weights }).is_err() {
            candle_core::bail!("{}: one op instance ran forward twice", self.name())
        }
        Ok((CpuStorage::F32(out), Shape::from((b, c, n))))
    }

    fn bwd(&self, qkv: &Tensor, _out: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let Some(saved) = self.saved.get() else {
            candle_core::bail!("{}: backward before forward", self.name())
        };
        let backward = AttentionBackward {
            channels: self.channels,
            scale: self.scale,
            saved,
        };
        Ok(Some(qkv.apply_op2_no_bwd(&grad.contiguous()?, &backward)?))
    }
}

impl CustomOp2 for AttentionBackward<'_> {
    fn name(&self) -> &'static str {
        "e2h-attention-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let c = self.channels;
        let (b, n) = images_and_positions(self.name(), l1, c)?;
        let qkv = f32_slice(self.name(), s1, l1)?;
        let d_out = f32_slice(self.name(), s2, l2)?;
        if l2.shape().dims() != [b, c, n] {
            candle_core::bail!(
                "{}: gradient of shape {:?} for an output of ({b}, {c}, {n})",
                self.name(),
                l2.shape()
            )
        }
        let Saved { logits, weights } = self.saved;
        let threaded = threaded_products(b);
        let mut d_qkv = zeroed(qkv.len());
        d_qkv
            .par_chunks_mut(3 * c * n)
            .zip(qkv.par_chunks(3 * c * n))
            .zip(d_out.par_chunks(c * n))
            .zip(logits.par_chunks(n * n).zip(weights.par_chunks(n * n)))
            .for_each(|(((d_qkv, qkv), d_out), (logits, weights))| {
                let (q, k, v) = split(qkv, c, n);
                let d_out = Mat::row_major(d_out, c, n);
                let (d_q, d_kv) = d_qkv.split_at_mut(c * n);
                let (d_k, d_v) = d_kv.split_at_mut(c * n);
                // out = v w^T: candle's matmul backward, lhs then rhs.
                matmul_threaded(d_v, false, d_out, Mat::row_major(weights, n, n), threaded);
                let mut d_weights_t = vec![0f32; n * n];
                matmul_threaded(&mut d_weights_t, false, v.t(), d_out, threaded);
                // The softmax's rows, their gradients read through the transpose.
                let mut d_logits = vec![0f32; n * n];
                let mut d_row = vec![0f32; n];
                for (i, (dz, z)) in d_logits.chunks_mut(n).zip(logits.chunks(n)).enumerate() {
                    for (j, g) in d_row.iter_mut().enumerate() {
                        *g = d_weights_t[j * n + i];
                    }
                    row_backward(z, &d_row, Some(self.scale), dz);
                }
                // logits = q^T k.
                let d_logits = Mat::row_major(&d_logits, n, n);
                let mut d_q_t = vec![0f32; n * c];
                matmul_threaded(&mut d_q_t, false, d_logits, k.t(), threaded);
                matmul_threaded(d_k, false, q, d_logits, threaded);
                for (ch, row) in d_q.chunks_mut(n).enumerate() {
                    for (i, d) in row.iter_mut().enumerate() {
                        *d = d_q_t[i * c + ch];
                    }
                }
                // The composite summed q's, k's and v's zero-padded gradients:
                // x + 0 turns -0 into +0 and changes nothing else.
                for d in d_qkv.iter_mut() {
                    *d += 0.0;
                }
            });
        Ok((CpuStorage::F32(d_qkv), l1.shape().clone()))
    }
}

/// `v softmax(q^T k scale)^T` per image, on the CPU (f32), differentiable:
/// `qkv` (B, 3C, N) holds q, k, v (each (C, N)) one after the other per image;
/// returns (B, C, N). Values and gradients are bit for bit those of the
/// candle composite in [`crate::attention::AttentionBlock`].
pub fn attention(qkv: &Tensor, channels: usize, scale: f64) -> Result<Tensor> {
    qkv.contiguous()?.apply_op1(Attention {
        channels,
        scale: scale as f32,
        saved: OnceLock::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::bits;
    use candle_core::{Device, Var};

    /// The composite this op replaces (`AttentionBlock`'s candle path).
    fn composite(qkv: &Tensor, c: usize, scale: f64) -> Tensor {
        let q = qkv.narrow(1, 0, c).unwrap().contiguous().unwrap();
        let k = qkv.narrow(1, c, c).unwrap().contiguous().unwrap();
        let v = qkv.narrow(1, 2 * c, c).unwrap().contiguous().unwrap();
        let logits = q.transpose(1, 2).unwrap().matmul(&k).unwrap();
        let attn = crate::layers::scaled_softmax_last_dim(&logits, scale).unwrap();
        v.matmul(&attn.transpose(1, 2).unwrap()).unwrap()
    }

    #[test]
    fn matches_the_candle_composite_bit_for_bit() {
        // One image (threaded products), several (images side by side), and
        // Figure 1's attention at 16x16 with 64 and 128 channels.
        for (b, c, n) in [(1, 4, 9), (3, 8, 64), (2, 64, 256), (3, 128, 256)] {
            let len = b * 3 * c * n;
            let xs: Vec<f32> = (0..len).map(|i| (i as f32 * 0.613).sin() * 2.0).collect();
            let gs: Vec<f32> = (0..b * c * n).map(|i| (i as f32 * 0.291).cos()).collect();
            let dev = Device::Cpu;
            let qkv = Var::from_vec(xs, (b, 3 * c, n), &dev).unwrap();
            let g = Tensor::from_vec(gs, (b, c, n), &dev).unwrap();
            let scale = 1.0 / (c as f64).sqrt();
            let want = composite(qkv.as_tensor(), c, scale);
            let got = attention(qkv.as_tensor(), c, scale).unwrap();
            let grad = |y: &Tensor| {
                let grads = (y * &g).unwrap().sum_all().unwrap().backward().unwrap();
                grads.get(qkv.as_tensor()).unwrap().clone()
            };
            assert_eq!(got.dims(), want.dims());
            assert_eq!(bits(&got), bits(&want), "values of {b}x{c}x{n}");
            assert_eq!(
                bits(&grad(&got)),
                bits(&grad(&want)),
                "gradient of {b}x{c}x{n}"
            );
        }
    }
}
