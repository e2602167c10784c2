//! Hand-written CPU kernels for the training step, as candle custom ops.
//!
//! candle's CPU backend runs every elementwise op as its own single-threaded
//! pass with a fresh allocation, and its convolution backward is a naive
//! `conv_transpose2d`; a U-Net step spent most of its time there. These ops
//! fuse the hot paths: convolutions as im2col + one threaded GEMM (forward and
//! both gradients), GroupNorm with its SiLU, and the AdamW/EMA updates in place.
//!
//! Every op has `cpu_fwd` only: callers take the candle-op path on other
//! devices (see [`use_cpu_kernels`]), so CUDA builds keep candle's kernels.
//! Reductions are split by shape alone, never by thread count, so results are
//! bit-identical whatever the number of threads.

pub mod attention;
pub mod concat;
pub mod conv;
pub mod expf;
pub mod gemm;
pub mod group_norm;
pub mod mask;
pub mod optim;
pub mod reduce;
pub mod softmax;
pub mod upsample;

use candle_core::{CpuStorage, DType, Layout, Result, Tensor};
use rayon::prelude::*;

/// `len` zeros for an op's output, written by all threads when long: a
/// kernel's buffer is a few megabytes, and `vec![0.0; len]` zeroes it on the
/// calling thread alone (glibc's `calloc` clears reused memory with `memset`).
pub(crate) fn zeroed(len: usize) -> Vec<f32> {
    const PARALLEL_FROM: usize = 1 << 16;
    if len < PARALLEL_FROM {
        return vec![0.0; len];
    }
    let mut v = Vec::with_capacity(len);
    v.par_extend(rayon::iter::repeat_n(0f32, len));
    v
}

/// Whether the fused CPU kernels apply to `x`: an f32 tensor on the CPU.
pub fn use_cpu_kernels(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32
}

/// `f` of the contiguous f32 values of a CPU tensor, or an error naming `op`.
pub(crate) fn with_cpu_values<R>(
    op: &str,
    t: &Tensor,
    f: impl FnOnce(&[f32]) -> Result<R>,
) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let candle_core::Storage::Cpu(s) = &*storage else {
        candle_core::bail!("{op}: expects a CPU tensor")
    };
    f(f32_slice(op, s, layout)?)
}

/// The contiguous f32 slice behind a storage and layout, or an error naming `op`.
pub(crate) fn f32_slice<'a>(op: &str, s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = s else {
        candle_core::bail!("{op}: expects f32 data")
    };
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{op}: expects a contiguous input"),
    }
}
