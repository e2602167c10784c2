//! 2-D convolution with bias (NCHW, square kernel, zero padding) as im2col and
//! one GEMM per chunk of images, forward and backward.
//!
//! Forward: the patches of a chunk of images are unfolded into `cols`
//! (C k k, images x Ho Wo), `y = W cols + b`. Backward: with `dY` laid out the
//! same way, `dW = dY cols^T`, `db = dY 1`, `dX = col2im(W^T dY)`: three GEMMs
//! of the forward's size, as cuDNN-free frameworks do.

use std::cell::RefCell;
use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::gemm::{Mat, matmul_threaded};
use super::reduce::candle_sum;
use super::{f32_slice, zeroed};

/// At most this many f32 in the unfolded patches at once (2 MiB, so they stay
/// in the L2 cache between the unfolding and the GEMM): larger
/// batches are processed in chunks of images.
const MAX_COLS: usize = 1 << 19;

thread_local! {
    /// Work buffers (patches, reordered outputs) kept between calls: fresh
    /// multi-megabyte allocations cost a page fault per 4 KiB every time.
    static SCRATCH: RefCell<Vec<Vec<f32>>> = const { RefCell::new(Vec::new()) };
}

/// A work buffer of at least `len` elements with unspecified contents (every
/// caller overwrites what it reads); hand it back with [`give_back`].
fn take_scratch(len: usize) -> Vec<f32> {
    let mut v = SCRATCH.with(|s| s.borrow_mut().pop()).unwrap_or_default();
    if v.len() < len {
        v.resize(len, 0.0);
    }
    v
}

fn give_back(v: Vec<f32>) {
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < 4 {
            s.push(v);
        }
    });
}

/// `f(index, piece)` over the `size`-long pieces of `data`: in parallel, or
/// on the calling thread when the caller already runs pieces side by side.
fn for_each_piece<T: Send>(
    data: &mut [T],
    size: usize,
    parallel: bool,
    f: impl Fn(usize, &mut [T]) + Send + Sync,
) {
    if parallel {
        data.par_chunks_mut(size)
            .enumerate()
            .for_each(|(i, piece)| f(i, piece));
    } else {
        data.chunks_mut(size)
            .enumerate()
            .for_each(|(i, piece)| f(i, piece));
    }
}

/// Whether the `gemm` crate (0.19) computes every entry of an (m x k)(k x n)
/// product the same way for each width n in `widths`. It sums the inner
/// dimension in blocks of `kc`: `min(k, 512)` when m and n are both at most
/// 64, otherwise a size that depends on k alone; the two agree for k <= 512.
/// One column takes a matrix-vector path. The test
/// `forward_chunks_give_the_same_bits` checks this on both sides of each bound.
fn same_inner_blocking(m: usize, k: usize, widths: &[usize]) -> bool {
    let small = |n: usize| m <= 64 && n <= 64;
    let first = widths.first().copied().unwrap_or(2);
    widths.iter().all(|&n| n >= 2) && (k <= 512 || widths.iter().all(|&n| small(n) == small(first)))
}

/// The forward pass's images per chunk, and whether each chunk's steps are
/// threaded. Its chunks need not be the backward pass's (whose weight
/// gradient sums over them in order): the cache-sized chunks are spread
/// evenly over a multiple of the thread count, so that the threads run
/// chunks side by side with as many each, where that leaves every product's
/// value unchanged.
fn forward_chunking(d: &Dims, g: ConvGeometry, cache_chunk: usize) -> (usize, bool) {
    let threads = rayon::current_num_threads();
    let hwo = d.ho * d.wo;
    // A multiple of the thread count, so that every thread gets as many.
    let chunks =
        d.b.div_ceil(cache_chunk)
            .next_multiple_of(threads)
            .min(d.b)
            .max(1);
    let spread = d.b.div_ceil(chunks).max(1);
    // Every product of either chunking, a short last chunk's included: each
    // image must be multiplied in the blocking the cache-sized chunks give it.
    let widths: Vec<usize> = [cache_chunk, spread]
        .iter()
        .flat_map(|&chunk| [chunk, d.b % chunk])
        .filter(|&images| images > 0)
        .map(|images| images * hwo)
        .collect();
    let chunk = if same_inner_blocking(d.o, d.ckk(g), &widths) {
        spread
    } else {
        cache_chunk
    };
    (chunk, d.b.div_ceil(chunk) < threads)
}

/// Kernel size, stride and zero padding of a convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeometry {
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
}

/// Sizes of one convolution call.
#[derive(Clone, Copy, Debug)]
struct Dims {
    b: usize,
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    ho: usize,
    wo: usize,
}

impl Dims {
    fn new(op: &str, g: ConvGeometry, x: &Shape, weight: &Shape) -> Result<Self> {
        let (b, c, h, w) = x.dims4()?;
        let (o, c_w, kh, kw) = weight.dims4()?;
        if c_w != c || kh != g.kernel || kw != g.kernel {
            candle_core::bail!(
                "{op}: weight {weight:?} does not fit input {x:?} with kernel {}",
                g.kernel
            )
        }
        if g.stride == 0 || h + 2 * g.padding < g.kernel || w + 2 * g.padding < g.kernel {
            candle_core::bail!("{op}: input {x:?} too small for {g:?}")
        }
        let ho = (h + 2 * g.padding - g.kernel) / g.stride + 1;
        let wo = (w + 2 * g.padding - g.kernel) / g.stride + 1;
        Ok(Self {
            b,
            c,
            h,
            w,
            o,
            ho,
            wo,
        })
    }

    fn ckk(&self, g: ConvGeometry) -> usize {
        self.c * g.kernel * g.kernel
    }

    /// Images per chunk: the whole batch unless the patches exceed `max_cols`.
    fn chunk(&self, g: ConvGeometry, max_cols: usize) -> usize {
        (max_cols / (self.ckk(g) * self.ho * self.wo).max(1)).clamp(1, self.b.max(1))
    }
}

/// The range of output columns `ox` whose input column `ox + dx - padding`
/// lies inside `0..w` (stride 1).
fn valid_columns(w: usize, wo: usize, dx: usize, padding: usize) -> (usize, usize) {
    let lo = padding.saturating_sub(dx).min(wo);
    let hi = (w + padding).saturating_sub(dx).min(wo).max(lo);
    (lo, hi)
}

/// Whether patch rows are whole shifted planes: stride 1 and as many output as
/// input columns (3x3 with padding 1, 1x1 without), so that output pixel `j`
/// of patch row (dy, dx) reads input pixel `j + shift(dy, dx)`.
fn shifts_planes(d: &Dims, g: ConvGeometry) -> bool {
    g.stride == 1 && d.wo == d.w
}

/// The input offset of patch row (dy, dx) in a shifted-plane convolution.
fn plane_shift(d: &Dims, g: ConvGeometry, dy: usize, dx: usize) -> isize {
    (dy as isize - g.padding as isize) * d.w as isize + dx as isize - g.padding as isize
}

/// The output pixels `a..b` of rows `ylo..yhi` whose source `j + shift` lies
/// inside a plane of `plane` pixels; the pixels cut off are all in padding
/// columns (zero in the patches). Empty (`a == b`) when no row is valid.
fn shifted_span(ylo: usize, yhi: usize, w: usize, shift: isize, plane: usize) -> (usize, usize) {
    let a = (ylo * w).max((-shift).max(0) as usize);
    let b = (yhi * w).min((plane as isize - shift).max(0) as usize);
    (a, b.max(a))
}

/// Unfolds images `n0..n0 + nb` of `x` into `cols`, (C k k) rows ordered
/// (c, dy, dx) like the weight, each row `nb * Ho * Wo` long, image-major.
/// Rows in parallel unless `parallel` is false.
fn im2col(
    x: &[f32],
    d: &Dims,
    g: ConvGeometry,
    (n0, nb): (usize, usize),
    cols: &mut [f32],
    parallel: bool,
) {
    let k = g.kernel;
    let hwo = d.ho * d.wo;
    let plane = d.h * d.w;
    let fast = shifts_planes(d, g);
    for_each_piece(cols, nb * hwo, parallel, |r, row| {
        let (c, dy, dx) = (r / (k * k), (r / k) % k, r % k);
        for i in 0..nb {
            let img = &x[((n0 + i) * d.c + c) * plane..][..plane];
            let out = &mut row[i * hwo..(i + 1) * hwo];
            if fast {
                unfold_shifted(img, d, g, dy, dx, out);
            } else {
                unfold_rows(img, d, g, dy, dx, out);
            }
        }
    });
}

/// One patch row of one image as one copy of the shifted plane, then the
/// padding rows and columns zeroed (a per-row copy of 32 or fewer pixels
/// costs more in calls than in bytes).
fn unfold_shifted(img: &[f32], d: &Dims, g: ConvGeometry, dy: usize, dx: usize, out: &mut [f32]) {
    let (ylo, yhi) = valid_columns(d.h, d.ho, dy, g.padding);
    let (xlo, xhi) = valid_columns(d.w, d.wo, dx, g.padding);
    let w = d.wo;
    out[..ylo * w].fill(0.0);
    out[yhi * w..].fill(0.0);
    let shift = plane_shift(d, g, dy, dx);
    let (a, b) = shifted_span(ylo, yhi, w, shift, img.len());
    if a < b {
        out[a..b]
            .copy_from_slice(&img[(a as isize + shift) as usize..(b as isize + shift) as usize]);
    }
    zero_columns(&mut out[ylo * w..yhi * w], w, xlo, xhi);
}

/// Zeroes columns `..lo` and `hi..` of the rows of `w` pixels in `rows`:
/// column by column, a strided store each, where a `fill` per row costs a
/// `memset` call for one or two floats.
fn zero_columns(rows: &mut [f32], w: usize, lo: usize, hi: usize) {
    for column in (0..lo).chain(hi..w) {
        for v in rows.iter_mut().skip(column).step_by(w) {
            *v = 0.0;
        }
    }
}

/// One patch row of one image, output row by output row (any stride).
fn unfold_rows(img: &[f32], d: &Dims, g: ConvGeometry, dy: usize, dx: usize, out: &mut [f32]) {
    let (s, p) = (g.stride, g.padding);
    let (lo, hi) = valid_columns(d.w, d.wo, dx, p);
    for oy in 0..d.ho {
        let orow = &mut out[oy * d.wo..(oy + 1) * d.wo];
        let iy = oy * s + dy;
        if iy < p || iy - p >= d.h {
            orow.fill(0.0);
            continue;
        }
        let irow = &img[(iy - p) * d.w..][..d.w];
        if s == 1 {
            orow[..lo].fill(0.0);
            orow[hi..].fill(0.0);
            orow[lo..hi].copy_from_slice(&irow[lo + dx - p..hi + dx - p]);
        } else {
            for (ox, v) in orow.iter_mut().enumerate() {
                let ix = ox * s + dx;
                *v = if ix < p || ix - p >= d.w {
                    0.0
                } else {
                    irow[ix - p]
                };
            }
        }
    }
}

/// The adjoint of [`im2col`]: sums the patch gradients `dcols` back into the
/// input gradient `dx` of images `n0..n0 + nb` (`dx` holds just those images).
/// Each (image, channel) plane is summed by one task in a fixed order, the
/// patch rows in (dy, dx) order. For shifted planes the padding columns of
/// `dcols` are zeroed first, so each patch row adds in one contiguous pass (the
/// zeros it adds change no sum).
fn col2im(dcols: &mut [f32], d: &Dims, g: ConvGeometry, nb: usize, dx: &mut [f32], parallel: bool) {
    let k = g.kernel;
    let hwo = d.ho * d.wo;
    let width = nb * hwo;
    let fast = shifts_planes(d, g);
    if fast {
        for_each_piece(dcols, width, parallel, |r, row| {
            let (xlo, xhi) = valid_columns(d.w, d.wo, r % k, g.padding);
            zero_columns(row, d.wo, xlo, xhi);
        });
    }
    let dcols = &*dcols;
    for_each_piece(dx, d.h * d.w, parallel, |idx, plane| {
        let (i, c) = (idx / d.c, idx % d.c);
        plane.fill(0.0);
        for dy in 0..k {
            for dxk in 0..k {
                let r = (c * k + dy) * k + dxk;
                let src = &dcols[r * width + i * hwo..][..hwo];
                if fast {
                    let (ylo, yhi) = valid_columns(d.h, d.ho, dy, g.padding);
                    let shift = plane_shift(d, g, dy, dxk);
                    let (a, b) = shifted_span(ylo, yhi, d.wo, shift, plane.len());
                    if a == b {
                        continue;
                    }
                    let dst =
                        &mut plane[(a as isize + shift) as usize..(b as isize + shift) as usize];
                    for (dst, v) in dst.iter_mut().zip(&src[a..b]) {
                        *dst += v;
                    }
                } else {
                    fold_rows(src, d, g, dy, dxk, plane);
                }
            }
        }
    });
}

/// Adds one patch row of one image back into its plane, row by row (any stride).
fn fold_rows(src: &[f32], d: &Dims, g: ConvGeometry, dy: usize, dxk: usize, plane: &mut [f32]) {
    let (s, p) = (g.stride, g.padding);
    let (lo, hi) = valid_columns(d.w, d.wo, dxk, p);
    for oy in 0..d.ho {
        let iy = oy * s + dy;
        if iy < p || iy - p >= d.h {
            continue;
        }
        let prow = &mut plane[(iy - p) * d.w..][..d.w];
        let srow = &src[oy * d.wo..(oy + 1) * d.wo];
        if s == 1 {
            for (dst, v) in prow[lo + dxk - p..hi + dxk - p]
                .iter_mut()
                .zip(&srow[lo..hi])
            {
                *dst += v;
            }
        } else {
            for (ox, v) in srow.iter().enumerate() {
                let ix = ox * s + dxk;
                if ix >= p && ix - p < d.w {
                    prow[ix - p] += v;
                }
            }
        }
    }
}

/// `dst` (cols x rows, row-major, rows `stride >= rows` apart) = the
/// transpose of `src` (rows x cols, row-major), by tiles of 64 source columns
/// (in parallel if `parallel`); the `stride - rows` values after each
/// destination row are left as they are.
fn transpose_into(
    src: &[f32],
    (rows, cols): (usize, usize),
    dst: &mut [f32],
    stride: usize,
    parallel: bool,
) {
    const TILE: usize = 64;
    let (src, dst) = (&src[..rows * cols], &mut dst[..cols * stride]);
    for_each_piece(dst, TILE * stride, parallel, |tile, out| {
        let j0 = tile * TILE;
        let tile_cols = out.len() / stride;
        for i0 in (0..rows).step_by(TILE) {
            for i in i0..(i0 + TILE).min(rows) {
                let row = &src[i * cols + j0..][..tile_cols];
                for (j, &v) in row.iter().enumerate() {
                    out[j * stride + i] = v;
                }
            }
        }
    });
}

/// What a convolution adds to `W cols + bias`, fused into the pass that
/// writes its output: each replaces a candle op on the whole activation (and
/// that op's gradient bookkeeping in the backward pass).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Addend {
    /// Nothing: inputs (x, weight (O, C, k, k), bias (O)).
    None,
    /// One value per image and output channel (a ResBlock's time embedding):
    /// inputs (x, weight, rows (1 + B, O)), row 0 the bias, row 1 + i the
    /// addend of image i; `y = (W cols + bias) + addend`, as candle's
    /// `broadcast_add` of the addend to the convolution's output.
    PerImage,
    /// A tensor of the output's shape (a residual connection): inputs (skip
    /// (B, O, Ho, Wo), x, weight and bias (O, C k k + 1), each row the
    /// weight's then the bias); `y = (W cols + bias) + skip`, as candle's
    /// `skip + y`.
    Residual,
}

impl Addend {
    /// The op's inputs as (x, parameters, addend): a residual sum takes the
    /// skip first, as candle's `skip + y` did, so that candle's backward pass
    /// visits the graph and sums gradients in the same order as before the
    /// fusion (a tensor read three times sums its gradients in that order).
    fn inputs<T>(self, [a1, a2, a3]: [T; 3]) -> [T; 3] {
        match self {
            Addend::None | Addend::PerImage => [a1, a2, a3],
            Addend::Residual => [a2, a3, a1],
        }
    }
}

/// The weight as an (O x C k k) matrix, whatever the packing of [`Addend`].
fn weight_matrix<'a>(
    op: &str,
    addend: Addend,
    params: &'a [f32],
    d: &Dims,
    ckk: usize,
) -> Result<Mat<'a>> {
    let packed = addend == Addend::Residual;
    let row = ckk + usize::from(packed);
    if params.len() != d.o * row {
        candle_core::bail!("{op}: {} parameters for {} x {row}", params.len(), d.o)
    }
    let mut weight = Mat::row_major(params, d.o, row);
    weight.cols = ckk;
    Ok(weight)
}

/// The bias (O) and the addend of a forward call, checked against the shapes.
fn bias_and_addend<'a>(
    op: &str,
    addend: Addend,
    params: &[f32],
    aux: &'a [f32],
    d: &Dims,
    ckk: usize,
) -> Result<(Vec<f32>, &'a [f32])> {
    let want = match addend {
        Addend::None => d.o,
        Addend::PerImage => (1 + d.b) * d.o,
        Addend::Residual => d.b * d.o * d.ho * d.wo,
    };
    if aux.len() != want {
        candle_core::bail!("{op}: {} values for {addend:?}, expected {want}", aux.len())
    }
    Ok(match addend {
        Addend::None => (aux.to_vec(), &[]),
        Addend::PerImage => (aux[..d.o].to_vec(), &aux[d.o..]),
        Addend::Residual => (params.chunks(ckk + 1).map(|row| row[ckk]).collect(), aux),
    })
}

/// Forward op: (x, weight, bias or addend) -> y, unfolding at most `max_cols`
/// f32 at once.
struct Conv2dForward {
    geometry: ConvGeometry,
    max_cols: usize,
    addend: Addend,
}

impl CustomOp3 for Conv2dForward {
    fn name(&self) -> &'static str {
        "e2h-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let [(s1, l1), (s2, l2), (s3, l3)] = self.addend.inputs([(s1, l1), (s2, l2), (s3, l3)]);
        let g = self.geometry;
        let shape = weight_shape(self.name(), self.addend, g.kernel, l1, l2)?;
        let d = Dims::new(self.name(), g, l1.shape(), &shape)?;
        let (x, params, aux) = (
            f32_slice(self.name(), s1, l1)?,
            f32_slice(self.name(), s2, l2)?,
            f32_slice(self.name(), s3, l3)?,
        );
        let (ckk, hwo, chunk) = (d.ckk(g), d.ho * d.wo, d.chunk(g, self.max_cols));
        let weight = weight_matrix(self.name(), self.addend, params, &d, ckk)?;
        let (bias, addend) = bias_and_addend(self.name(), self.addend, params, aux, &d, ckk)?;
        let mut out = zeroed(d.b * d.o * hwo);
        // One chunk of images: unfold, multiply, add the bias and addend.
        // Each output value comes from the same products and sums whether the
        // chunk's steps are threaded or the chunks run side by side.
        let forward_chunk = |n0: usize, dst: &mut [f32], parallel: bool| {
            let nb = dst.len() / (d.o * hwo);
            let width = nb * hwo;
            let mut cols = take_scratch(ckk * width);
            im2col(x, &d, g, (n0, nb), &mut cols[..ckk * width], parallel);
            // One image's products (O x Ho Wo) are laid out as its output
            // already: the GEMM writes them there, and the sums below add in
            // place (the same values, one copy less).
            let in_place = nb == 1;
            let mut ymat = take_scratch(if in_place { 0 } else { d.o * width });
            let cols_mat = Mat::row_major(&cols[..ckk * width], ckk, width);
            matmul_threaded(
                if in_place {
                    &mut *dst
                } else {
                    &mut ymat[..d.o * width]
                },
                false,
                weight,
                cols_mat,
                parallel,
            );
            let ymat_ref = &ymat[..if in_place { 0 } else { d.o * width }];
            for_each_piece(dst, hwo, parallel, |idx, dst| {
                let (i, o) = (idx / d.o, idx % d.o);
                let image_channel = (n0 + i) * d.o + o;
                let b = bias[o];
                let src = (!in_place).then(|| &ymat_ref[o * width + i * hwo..][..hwo]);
                let product = |j: usize, y: f32| src.map_or(y, |src| src[j]);
                match self.addend {
                    Addend::None => {
                        for (j, y) in dst.iter_mut().enumerate() {
                            *y = product(j, *y) + b;
                        }
                    }
                    Addend::PerImage => {
                        let t = addend[image_channel];
                        for (j, y) in dst.iter_mut().enumerate() {
                            *y = (product(j, *y) + b) + t;
                        }
                    }
                    Addend::Residual => {
                        let skip = &addend[image_channel * hwo..][..hwo];
                        for ((j, y), s) in dst.iter_mut().enumerate().zip(skip) {
                            *y = (product(j, *y) + b) + s;
                        }
                    }
                }
            });
            give_back(cols);
            give_back(ymat);
        };
        // Chunks side by side, each with its own buffers; their steps are
        // threaded only when there are fewer chunks than threads.
        let (chunk, threaded_steps) = forward_chunking(&d, g, chunk);
        let side_by_side = d.b > chunk;
        let size = chunk * d.o * hwo;
        if side_by_side {
            // One chunk per task: rayon would otherwise hand each thread a
            // run of chunks, and one thread could finish its run long before
            // the other (a chunk is a few hundred microseconds).
            out.par_chunks_mut(size)
                .with_max_len(1)
                .enumerate()
                .for_each(|(c, dst)| forward_chunk(c * chunk, dst, threaded_steps));
        } else {
            for (c, dst) in out.chunks_mut(size).enumerate() {
                forward_chunk(c * chunk, dst, threaded_steps);
            }
        }
        // A residual sum takes the skip's shape (spared a reshape, whose
        // gradient candle would accumulate into a fresh buffer).
        let shape = match self.addend {
            Addend::Residual => l3.shape().clone(),
            Addend::None | Addend::PerImage => Shape::from((d.b, d.o, d.ho, d.wo)),
        };
        Ok((CpuStorage::F32(out), shape))
    }

    fn bwd(
        &self,
        a1: &Tensor,
        a2: &Tensor,
        a3: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let [x, params, aux] = self.addend.inputs([a1, a2, a3]);
        let grad = grad.contiguous()?;
        let backward = Conv2dBackward {
            geometry: self.geometry,
            max_cols: self.max_cols,
            addend: self.addend,
            param_grads: Mutex::new(None),
        };
        let dx = x.apply_op3_no_bwd(params, &grad, &backward)?;
        let param_grads = backward.param_grads.into_inner().ok().flatten();
        let Some(param_grads) = param_grads else {
            candle_core::bail!(
                "{}: the backward pass left no parameter gradients",
                self.name()
            )
        };
        let n = param_grads.len();
        let flat = Tensor::from_vec(param_grads, n, x.device())?;
        if self.addend == Addend::Residual {
            // Already laid out as the packed [W | b] rows.
            return Ok((Some(grad), Some(dx), Some(flat.reshape(params.shape())?)));
        }
        let nw = params.elem_count();
        let dw = flat.narrow(0, 0, nw)?.reshape(params.shape())?;
        // The bias's gradient, and after it for a per-image addend the
        // addend's: together the gradient of the (1 + B, O) rows.
        let rest = flat.narrow(0, nw, aux.elem_count())?;
        Ok((Some(dx), Some(dw), Some(rest.reshape(aux.shape())?)))
    }
}

/// The (O, C, k, k) shape of the weight, unpacked for [`Addend::Residual`].
fn weight_shape(
    op: &str,
    addend: Addend,
    kernel: usize,
    x: &Layout,
    params: &Layout,
) -> Result<Shape> {
    match addend {
        Addend::None | Addend::PerImage => Ok(params.shape().clone()),
        Addend::Residual => {
            let (o, cols) = params.shape().dims2()?;
            let c = x.shape().dims4()?.1;
            if cols != c * kernel * kernel + 1 {
                candle_core::bail!(
                    "{op}: packed weight and bias {:?} do not fit {c} input channels",
                    params.shape()
                )
            }
            Ok(Shape::from((o, c, kernel, kernel)))
        }
    }
}

/// Adds each output channel's sum of the gradient `dy` over the pixels of
/// images `n0..n0 + nb` to `acc` (f64, image by image, each image's pixels
/// in order from the start of an f64 `sum`), and with `image_sums` (O x B)
/// stores each channel's sum per image in candle's order. Eight channels are
/// summed together: their sums are independent chains of additions, which
/// one channel at a time would wait on, one addition after another.
fn channel_sums(
    dy: &[f32],
    d: &Dims,
    (n0, nb): (usize, usize),
    acc: &mut [f64],
    image_sums: Option<&mut [f32]>,
    parallel: bool,
) {
    const LANES: usize = 8;
    let hwo = d.ho * d.wo;
    let start = std::iter::empty::<f64>().sum::<f64>();
    for_each_piece(acc, LANES, parallel, |group, acc| {
        let o0 = group * LANES;
        for i in 0..nb {
            let image = &dy[((n0 + i) * d.o + o0) * hwo..][..acc.len() * hwo];
            let mut sums = [start; LANES];
            for p in 0..hwo {
                for (l, sum) in sums.iter_mut().enumerate().take(acc.len()) {
                    *sum += f64::from(image[l * hwo + p]);
                }
            }
            for (a, sum) in acc.iter_mut().zip(sums) {
                *a += sum;
            }
        }
    });
    if let Some(image_sums) = image_sums {
        for_each_piece(image_sums, d.b, parallel, |o, sums| {
            for i in 0..nb {
                let src = &dy[((n0 + i) * d.o + o) * hwo..][..hwo];
                // In the order of the `sum_keepdim` it replaces.
                sums[n0 + i] = candle_sum(hwo, |p| src[p]);
            }
        });
    }
}

/// Backward op: (x, weight, dy) -> dx; leaves [dweight, dbias] and, for a
/// per-image addend, its gradient in `param_grads`. Kept apart from dx: a
/// parameter's gradient lives to the end of the step, and a view into a
/// buffer shared with dx would keep dx alive with it.
struct Conv2dBackward {
    geometry: ConvGeometry,
    max_cols: usize,
    addend: Addend,
    param_grads: Mutex<Option<Vec<f32>>>,
}

impl CustomOp3 for Conv2dBackward {
    fn name(&self) -> &'static str {
        "e2h-conv2d-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = self.geometry;
        let shape = weight_shape(self.name(), self.addend, g.kernel, l1, l2)?;
        let d = Dims::new(self.name(), g, l1.shape(), &shape)?;
        let (x, params, dy) = (
            f32_slice(self.name(), s1, l1)?,
            f32_slice(self.name(), s2, l2)?,
            f32_slice(self.name(), s3, l3)?,
        );
        let (ckk, hwo, chunk) = (d.ckk(g), d.ho * d.wo, d.chunk(g, self.max_cols));
        let weight = weight_matrix(self.name(), self.addend, params, &d, ckk)?;
        if dy.len() != d.b * d.o * hwo {
            candle_core::bail!(
                "{}: output gradient of {} elements, expected {}",
                self.name(),
                dy.len(),
                d.b * d.o * hwo
            )
        }
        // dx, and [dW, db] with, for a per-image addend, its gradient (B x O).
        let per_image = self.addend == Addend::PerImage;
        let (nx, nw) = (x.len(), d.o * ckk);
        let n_image = if per_image { d.b * d.o } else { 0 };
        // [dW | db | the addend's gradient], or for a residual sum [dW | db]
        // row by row, the layout of its packed parameters.
        let packed = self.addend == Addend::Residual;
        let row = if packed { ckk + 1 } else { ckk };
        let n_db = if packed { 0 } else { d.o };
        let mut param_grads = vec![0f32; d.o * row + n_db + n_image];
        let (dw, rest) = param_grads.split_at_mut(d.o * row);
        let (db, d_image) = rest.split_at_mut(n_db);
        let mut dx_all = zeroed(nx);
        let chunks = || {
            (0..d.b)
                .step_by(chunk)
                .map(move |n0| (n0, chunk.min(d.b - n0)))
        };
        // The two sides share only their inputs. On two threads each runs on
        // one, its steps in the same order as alone; on more, each side's
        // steps are threaded too.
        let threads = rayon::current_num_threads();
        let inner = threads > 2;
        // dW, db and the addend's gradient, summed over the chunks in order.
        let mut param_side = || {
            let mut db_acc = vec![0f64; d.o];
            // The addend's gradient channel-major (O x B), as the channels
            // are summed together (one unused value per channel without).
            let image_stride = if per_image { d.b } else { 1 };
            let mut d_image_t = vec![0f32; d.o * image_stride];
            let mut cols = take_scratch(ckk * chunk * hwo);
            let mut dymat_t = take_scratch(d.o * chunk * hwo);
            // dW^T (C k k x O), accumulated over chunks, transposed into dW at the end.
            let mut dw_t = take_scratch(nw);
            for (n0, nb) in chunks() {
                let width = nb * hwo;
                channel_sums(
                    dy,
                    &d,
                    (n0, nb),
                    &mut db_acc,
                    per_image.then_some(&mut d_image_t[..]),
                    inner,
                );
                // dY with pixels as rows, (images Ho Wo) x O: the weight
                // gradient contracts dY and the patches over pixels, the
                // contiguous axis of both; giving the GEMM one operand
                // pixel-major lets it skip its transposing pack of the other.
                let dymat_t = &mut dymat_t[..width * d.o];
                for (i, rows) in dymat_t.chunks_mut(hwo * d.o).enumerate() {
                    let image = &dy[(n0 + i) * d.o * hwo..][..d.o * hwo];
                    transpose_into(image, (d.o, hwo), rows, d.o, inner);
                }
                let cols = &mut cols[..ckk * width];
                im2col(x, &d, g, (n0, nb), cols, inner);
                matmul_threaded(
                    &mut dw_t[..nw],
                    n0 > 0,
                    Mat::row_major(cols, ckk, width),
                    Mat::row_major(dymat_t, width, d.o),
                    inner,
                );
            }
            transpose_into(&dw_t[..nw], (ckk, d.o), dw, row, inner);
            give_back(cols);
            give_back(dymat_t);
            give_back(dw_t);
            for (o, acc) in db_acc.iter().enumerate() {
                if packed {
                    dw[o * row + ckk] = *acc as f32;
                } else {
                    db[o] = *acc as f32;
                }
            }
            if per_image {
                transpose_into(&d_image_t, (d.o, d.b), d_image, d.o, inner);
            }
        };
        // dX = col2im(W^T dY), chunk by chunk.
        let mut input_side = || {
            let plane = d.c * d.h * d.w;
            let mut dymat = take_scratch(d.o * chunk * hwo);
            let mut dcols = take_scratch(ckk * chunk * hwo);
            for (n0, nb) in chunks() {
                let width = nb * hwo;
                // dY as (O x images Ho Wo); one image's dY is laid out so
                // already and is not copied.
                let dymat: &[f32] = if nb == 1 {
                    &dy[n0 * d.o * hwo..][..d.o * hwo]
                } else {
                    let dymat = &mut dymat[..d.o * width];
                    for_each_piece(dymat, width, inner, |o, row| {
                        for (i, dst) in row.chunks_mut(hwo).enumerate() {
                            dst.copy_from_slice(&dy[((n0 + i) * d.o + o) * hwo..][..hwo]);
                        }
                    });
                    dymat
                };
                let dcols = &mut dcols[..ckk * width];
                matmul_threaded(
                    dcols,
                    false,
                    weight.t(),
                    Mat::row_major(dymat, d.o, width),
                    inner,
                );
                let dx = &mut dx_all[n0 * plane..(n0 + nb) * plane];
                col2im(dcols, &d, g, nb, dx, inner);
            }
            give_back(dymat);
            give_back(dcols);
        };
        if threads > 1 {
            rayon::join(param_side, input_side);
        } else {
            param_side();
            input_side();
        }
        if let Ok(mut slot) = self.param_grads.lock() {
            *slot = Some(param_grads);
        }
        Ok((CpuStorage::F32(dx_all), l1.shape().clone()))
    }
}

/// `conv2d(x, weight) + bias` on the CPU (f32): `x` (B, C, H, W), `weight`
/// (O, C, k, k), `bias` (O); differentiable in all three.
pub fn conv2d(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    geometry: ConvGeometry,
) -> Result<Tensor> {
    conv2d_chunked(x, weight, bias, geometry, MAX_COLS)
}

fn conv2d_chunked(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    geometry: ConvGeometry,
    max_cols: usize,
) -> Result<Tensor> {
    let op = Conv2dForward {
        geometry,
        max_cols,
        addend: Addend::None,
    };
    x.contiguous()?
        .apply_op3(&weight.contiguous()?, &bias.contiguous()?, op)
}

/// `conv2d(x, weight) + bias + addend[b, o]`, the addend (B, O) broadcast over
/// each output plane (CPU, f32); differentiable in all four.
pub fn conv2d_plus_per_image(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    addend: &Tensor,
    geometry: ConvGeometry,
) -> Result<Tensor> {
    let rows = Tensor::cat(&[&bias.unsqueeze(0)?, addend], 0)?;
    let op = Conv2dForward {
        geometry,
        max_cols: MAX_COLS,
        addend: Addend::PerImage,
    };
    x.contiguous()?.apply_op3(&weight.contiguous()?, &rows, op)
}

/// `skip + (conv2d(x, weight) + bias)` (CPU, f32), in the shape of `skip`,
/// which holds as many values as the convolution's output, in its order;
/// differentiable in all four.
pub fn conv2d_plus_residual(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    skip: &Tensor,
    geometry: ConvGeometry,
) -> Result<Tensor> {
    let o = weight.dim(0)?;
    let packed = Tensor::cat(&[&weight.reshape((o, ()))?, &bias.reshape((o, 1))?], 1)?;
    let op = Conv2dForward {
        geometry,
        max_cols: MAX_COLS,
        addend: Addend::Residual,
    };
    skip.contiguous()?.apply_op3(&x.contiguous()?, &packed, op)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn det(shape: &[usize], salt: f32) -> Tensor {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|i| (i as f32 * 0.7311 + salt).sin() * 0.9)
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn max_rel(a: &Tensor, b: &Tensor) -> f32 {
        let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(a.len(), b.len());
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
        a.iter()
            .zip(&b)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs() / scale))
    }

    /// Forward and all three gradients against candle's conv2d, for a loss
    /// that weights every output differently.
    fn check(b: usize, c: usize, h: usize, w: usize, o: usize, g: ConvGeometry) {
        let x = Var::from_tensor(&det(&[b, c, h, w], 0.1)).unwrap();
        let wt = Var::from_tensor(&det(&[o, c, g.kernel, g.kernel], 0.2)).unwrap();
        let bias = Var::from_tensor(&det(&[o], 0.3)).unwrap();
        let ours = conv2d(x.as_tensor(), wt.as_tensor(), bias.as_tensor(), g).unwrap();
        let reference = x
            .as_tensor()
            .conv2d(wt.as_tensor(), g.padding, g.stride, 1, 1)
            .unwrap()
            .broadcast_add(&bias.as_tensor().reshape((1, o, 1, 1)).unwrap())
            .unwrap();
        assert_eq!(ours.dims(), reference.dims());
        assert!(
            max_rel(&ours, &reference) < 1e-5,
            "forward {g:?}: {}",
            max_rel(&ours, &reference)
        );
        let weights = det(ours.dims(), 0.4);
        let g_ours = (&ours * &weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g_ref = (&reference * &weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for (name, v) in [("x", &x), ("weight", &wt), ("bias", &bias)] {
            let (a, r) = (
                g_ours.get(v.as_tensor()).unwrap(),
                g_ref.get(v.as_tensor()).unwrap(),
            );
            assert_eq!(a.dims(), r.dims());
            assert!(max_rel(a, r) < 1e-5, "d{name} {g:?}: {}", max_rel(a, r));
        }
    }

    #[test]
    fn matches_candle_conv2d_and_its_gradients() {
        check(
            2,
            3,
            8,
            8,
            4,
            ConvGeometry {
                kernel: 3,
                stride: 1,
                padding: 1,
            },
        );
        check(
            3,
            4,
            8,
            6,
            5,
            ConvGeometry {
                kernel: 3,
                stride: 2,
                padding: 1,
            },
        );
        check(
            2,
            5,
            7,
            7,
            3,
            ConvGeometry {
                kernel: 3,
                stride: 2,
                padding: 1,
            },
        );
        check(
            2,
            6,
            4,
            4,
            7,
            ConvGeometry {
                kernel: 1,
                stride: 1,
                padding: 0,
            },
        );
        check(
            1,
            2,
            5,
            5,
            2,
            ConvGeometry {
                kernel: 3,
                stride: 1,
                padding: 0,
            },
        );
    }

    /// The shifted-plane unfolding and folding agree bit for bit with the
    /// row-by-row ones they replace (same values, same order of sums).
    #[test]
    fn shifted_planes_match_the_row_by_row_path_exactly() {
        for (h, w, k, p) in [
            (8, 8, 3, 1),
            (5, 7, 3, 1),
            (4, 6, 1, 0),
            (6, 5, 5, 2),
            (1, 3, 3, 1),
        ] {
            let g = ConvGeometry {
                kernel: k,
                stride: 1,
                padding: p,
            };
            let (b, c) = (2, 3);
            let x = det(&[b, c, h, w], 0.1)
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let d = Dims {
                b,
                c,
                h,
                w,
                o: 1,
                ho: h + 2 * p - k + 1,
                wo: w + 2 * p - k + 1,
            };
            assert!(shifts_planes(&d, g));
            let (hwo, plane) = (d.ho * d.wo, h * w);
            let mut fast = vec![f32::NAN; d.ckk(g) * b * hwo];
            im2col(&x, &d, g, (0, b), &mut fast, true);
            let mut serial = vec![f32::NAN; fast.len()];
            im2col(&x, &d, g, (0, b), &mut serial, false);
            assert_eq!(
                fast.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                serial.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            );
            let mut slow = vec![f32::NAN; fast.len()];
            for (r, row) in slow.chunks_mut(b * hwo).enumerate() {
                let (ci, dy, dx) = (r / (k * k), (r / k) % k, r % k);
                for i in 0..b {
                    let img = &x[(i * c + ci) * plane..][..plane];
                    unfold_rows(img, &d, g, dy, dx, &mut row[i * hwo..(i + 1) * hwo]);
                }
            }
            assert_eq!(
                fast.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                slow.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "im2col {h}x{w} k{k} p{p}"
            );
            let dcols = det(&[fast.len()], 0.9).to_vec1::<f32>().unwrap();
            let mut dx_fast = vec![f32::NAN; b * c * plane];
            col2im(&mut dcols.clone(), &d, g, b, &mut dx_fast, true);
            let mut dx_serial = vec![f32::NAN; b * c * plane];
            col2im(&mut dcols.clone(), &d, g, b, &mut dx_serial, false);
            assert_eq!(
                dx_fast.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                dx_serial.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            );
            let mut dx_slow = vec![0f32; b * c * plane];
            for (idx, pl) in dx_slow.chunks_mut(plane).enumerate() {
                let (i, ci) = (idx / c, idx % c);
                for dy in 0..k {
                    for dxk in 0..k {
                        let r = (ci * k + dy) * k + dxk;
                        fold_rows(&dcols[r * b * hwo + i * hwo..][..hwo], &d, g, dy, dxk, pl);
                    }
                }
            }
            assert_eq!(
                dx_fast.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                dx_slow.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "col2im {h}x{w} k{k} p{p}"
            );
        }
    }

    /// The thread count changes how the work is shared, never a value: one
    /// thread, two (the two gradients side by side, chunks of images side by
    /// side) and four (each side threaded as well) agree bit for bit.
    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        use crate::test_support::bits;
        let g = ConvGeometry {
            kernel: 3,
            stride: 1,
            padding: 1,
        };
        // At most 2 images per chunk: 3 chunks, one short.
        let max_cols = 2 * 27 * 36;
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let x = Var::from_tensor(&det(&[5, 3, 6, 6], 0.5)).unwrap();
                let wt = Var::from_tensor(&det(&[4, 3, 3, 3], 0.6)).unwrap();
                let bias = Var::from_tensor(&det(&[4], 0.7)).unwrap();
                let y = conv2d_chunked(x.as_tensor(), wt.as_tensor(), &bias, g, max_cols).unwrap();
                let grads = (&y * &det(y.dims(), 0.8))
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap();
                let mut all = bits(&y);
                for v in [&x, &wt, &bias] {
                    all.extend(bits(grads.get(v.as_tensor()).unwrap()));
                }
                all
            })
        };
        let one = run(1);
        assert_eq!(run(2), one, "two threads");
        assert_eq!(run(4), one, "four threads");
    }

    /// `same_inner_blocking` on both sides of each bound: where it says the
    /// product of the first columns is computed the same way, the values
    /// agree bit for bit; where it says not (k > 512 with m and n crossing
    /// 64), they differ, so a change in `gemm`'s blocking fails here.
    #[test]
    fn forward_chunks_give_the_same_bits() {
        use crate::kernels::gemm::matmul;
        let cases = [
            (64, 576, 128, 64, false),
            (65, 576, 128, 16, true),
            (64, 512, 128, 16, true),
            (32, 576, 64, 16, true),
            (64, 576, 192, 96, true),
            (128, 1152, 256, 2, true),
        ];
        for (m, k, n_a, n_b, same) in cases {
            assert_eq!(
                same_inner_blocking(m, k, &[n_a, n_b]),
                same,
                "{m} {k} {n_a} {n_b}"
            );
            let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.731).sin()).collect();
            let b: Vec<f32> = (0..k * n_a).map(|i| (i as f32 * 0.377).cos()).collect();
            let b_first: Vec<f32> = b.chunks(n_a).flat_map(|row| &row[..n_b]).copied().collect();
            let (mut c_a, mut c_b) = (vec![0f32; m * n_a], vec![0f32; m * n_b]);
            let lhs = Mat::row_major(&a, m, k);
            matmul(&mut c_a, false, lhs, Mat::row_major(&b, k, n_a));
            matmul(&mut c_b, false, lhs, Mat::row_major(&b_first, k, n_b));
            let first: Vec<u32> = c_a
                .chunks(n_a)
                .flat_map(|row| &row[..n_b])
                .map(|v| v.to_bits())
                .collect();
            let bits_b: Vec<u32> = c_b.iter().map(|v| v.to_bits()).collect();
            assert_eq!(first == bits_b, same, "{m} {k} {n_a} {n_b}");
        }
    }

    /// Figure 1's 8x8 convolution of the concatenated skip (128 channels in,
    /// 64 out): cache-sized chunks of 7 images and 1, the one image's product
    /// only 64 wide, in gemm's small blocking. Spread as 4 and 4 it would be
    /// multiplied in the other blocking, so the chunks stay as they were.
    #[test]
    fn a_short_last_chunk_keeps_its_blocking() {
        let g = ConvGeometry {
            kernel: 3,
            stride: 1,
            padding: 1,
        };
        let d = Dims {
            b: 8,
            c: 128,
            h: 8,
            w: 8,
            o: 64,
            ho: 8,
            wo: 8,
        };
        let cache_chunk = d.chunk(g, MAX_COLS);
        assert_eq!(cache_chunk, 7);
        assert_eq!(forward_chunking(&d, g, cache_chunk).0, 7);
        // With 128 outputs every product is in the general blocking: spread.
        let wide = Dims { o: 128, ..d };
        assert_eq!(forward_chunking(&wide, g, cache_chunk).0, 4);
    }

    #[test]
    fn chunked_batches_give_the_same_result() {
        // 3 x 3 x 5 x 5 x 4 images of patches, at most 2 images per chunk:
        // 3 chunks, the last one short; gradients accumulate across them.
        let g = ConvGeometry {
            kernel: 3,
            stride: 1,
            padding: 1,
        };
        let max_cols = 2 * 27 * 25;
        let x = Var::from_tensor(&det(&[5, 3, 5, 5], 0.5)).unwrap();
        let wt = Var::from_tensor(&det(&[4, 3, 3, 3], 0.6)).unwrap();
        let bias = Var::from_tensor(&det(&[4], 0.7)).unwrap();
        let chunked = conv2d_chunked(x.as_tensor(), wt.as_tensor(), &bias, g, max_cols).unwrap();
        let whole = conv2d(x.as_tensor(), wt.as_tensor(), &bias, g).unwrap();
        assert!(max_rel(&chunked, &whole) < 1e-6);
        let weights = det(whole.dims(), 0.8);
        let g_chunked = (&chunked * &weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g_whole = (&whole * &weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for v in [&x, &wt, &bias] {
            let (a, b) = (
                g_chunked.get(v.as_tensor()).unwrap(),
                g_whole.get(v.as_tensor()).unwrap(),
            );
            assert!(max_rel(a, b) < 1e-5);
        }
    }

    /// The fused addends give what the candle composites they replace give,
    /// bit for bit: values and the gradients of all four inputs (the
    /// composites' gradients pass through the same accumulations).
    #[test]
    fn fused_addends_match_the_composites_exactly() {
        use crate::test_support::bits;
        for (b, c, hw, o, k) in [(3, 4, 6, 5, 3), (2, 3, 5, 4, 1), (2, 2, 32, 3, 3)] {
            let g = ConvGeometry {
                kernel: k,
                stride: 1,
                padding: k / 2,
            };
            let x = Var::from_tensor(&det(&[b, c, hw, hw], 0.1)).unwrap();
            let wt = Var::from_tensor(&det(&[o, c, k, k], 0.2)).unwrap();
            let bias = Var::from_tensor(&det(&[o], 0.3)).unwrap();
            let t = Var::from_tensor(&det(&[b, o], 0.4)).unwrap();
            let skip = Var::from_tensor(&det(&[b, o, hw, hw], 0.5)).unwrap();
            let weights = det(&[b, o, hw, hw], 0.6);
            let conv = || conv2d(x.as_tensor(), wt.as_tensor(), bias.as_tensor(), g).unwrap();
            let t4 = t.as_tensor().unsqueeze(2).unwrap().unsqueeze(3).unwrap();
            let cases = [
                (
                    "per image",
                    conv().broadcast_add(&t4).unwrap(),
                    conv2d_plus_per_image(
                        x.as_tensor(),
                        wt.as_tensor(),
                        bias.as_tensor(),
                        t.as_tensor(),
                        g,
                    )
                    .unwrap(),
                    &t,
                ),
                (
                    "residual",
                    (skip.as_tensor() + conv()).unwrap(),
                    conv2d_plus_residual(
                        x.as_tensor(),
                        wt.as_tensor(),
                        bias.as_tensor(),
                        skip.as_tensor(),
                        g,
                    )
                    .unwrap(),
                    &skip,
                ),
            ];
            for (what, composite, fused, addend) in cases {
                assert_eq!(
                    bits(&fused),
                    bits(&composite),
                    "{what} {b}x{c}x{hw} k{k}: values"
                );
                let loss = |y: &Tensor| (y * &weights).unwrap().sum_all().unwrap();
                let (gc, gf) = (
                    loss(&composite).backward().unwrap(),
                    loss(&fused).backward().unwrap(),
                );
                for (name, v) in [
                    ("x", &x),
                    ("weight", &wt),
                    ("bias", &bias),
                    ("addend", addend),
                ] {
                    assert_eq!(
                        bits(gf.get(v.as_tensor()).unwrap()),
                        bits(gc.get(v.as_tensor()).unwrap()),
                        "{what} {b}x{c}x{hw} k{k}: d{name}"
                    );
                }
            }
        }
    }
}
