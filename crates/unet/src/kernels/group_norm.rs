//! GroupNorm (optionally followed by SiLU) in one pass forward and two passes
//! backward, instead of candle's dozen elementwise ops with their allocations.
//!
//! Per (image, group): mean and variance (biased, summed in f64), `xhat = (x -
//! mean) / sqrt(var + eps)`, `z = gamma xhat + beta`, `y = z` or `silu(z)`.
//! The backward pass reuses the forward pass's statistics (two floats per
//! image and group) and recomputes the rest.

use std::sync::{Arc, Mutex, OnceLock};

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{expf, f32_slice, with_cpu_values, zeroed};

/// Groups, epsilon and whether SiLU follows.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GroupNormSpec {
    pub groups: usize,
    pub eps: f64,
    pub silu: bool,
}

/// (batch, channels, positions per channel) of an input, checked against the spec.
fn dims(op: &str, spec: &GroupNormSpec, shape: &Shape) -> Result<(usize, usize, usize)> {
    let d = shape.dims();
    if d.len() < 3 {
        candle_core::bail!("{op}: input rank {} below 3", d.len())
    }
    let (b, c) = (d[0], d[1]);
    if spec.groups == 0 || !c.is_multiple_of(spec.groups) {
        candle_core::bail!("{op}: {} groups do not divide {c} channels", spec.groups)
    }
    Ok((b, c, d[2..].iter().product()))
}

/// The mean and 1 / sqrt(var + eps) of every (image, group), image-major.
pub type Statistics = Arc<[(f32, f32)]>;

/// Groups whose statistics are summed side by side.
const LANES: usize = 8;

/// `$body` with the const `$l` set to the run-time `$lanes` (1 to [`LANES`]).
macro_rules! with_lanes {
    ($lanes:expr, $l:ident => $body:expr) => {
        with_lanes!(@ $lanes, $l, $body; 8, 7, 6, 5, 4, 3, 2)
    };
    (@ $lanes:expr, $l:ident, $body:expr; $($n:literal),*) => {
        match $lanes {
            $($n => { const $l: usize = $n; $body })*
            _ => { const $l: usize = 1; $body }
        }
    };
}

/// Mean and 1 / sqrt(var + eps) of every (image, group) of `x`, groups of
/// `n` consecutive elements, in parallel over images. The sums are f64 in
/// element order within each group (as one group at a time would give them),
/// with the groups of an image [`LANES`] side by side: eight independent
/// chains keep the adders busy instead of waiting out each addition.
fn all_stats(x: &[f32], groups: usize, n: usize, eps: f64) -> Vec<(f32, f32)> {
    let mut stats = vec![(0f32, 0f32); x.len() / n.max(1)];
    stats
        .par_chunks_mut(groups)
        .zip(x.par_chunks(groups * n))
        .for_each(|(out, xs)| {
            for (block, out) in out.chunks_mut(LANES).enumerate() {
                let xs = &xs[block * LANES * n..][..out.len() * n];
                with_lanes!(out.len(), L => lane_stats::<L>(xs, n, eps, out));
            }
        });
    stats
}

/// The statistics of the `L` groups of `n` elements in `xs`.
// Indexing by position, not iterators: element `i` of all lanes per round.
#[allow(clippy::needless_range_loop)]
fn lane_stats<const L: usize>(xs: &[f32], n: usize, eps: f64, out: &mut [(f32, f32)]) {
    let nf = n.max(1) as f64;
    let rows: [&[f32]; L] = std::array::from_fn(|l| &xs[l * n..(l + 1) * n]);
    // -0.0, where `Iterator::sum` starts.
    let mut sum = [-0f64; L];
    for i in 0..n {
        for l in 0..L {
            sum[l] += f64::from(rows[l][i]);
        }
    }
    let mean = sum.map(|s| s / nf);
    let mut sq = [-0f64; L];
    for i in 0..n {
        for l in 0..L {
            sq[l] += (f64::from(rows[l][i]) - mean[l]).powi(2);
        }
    }
    for l in 0..L {
        out[l] = (mean[l] as f32, (1.0 / (sq[l] / nf + eps).sqrt()) as f32);
    }
}

/// `sigmoid(z) = 1 / (1 + e^-z)` of every `z(j)`, `j < out.len()`, into `out`:
/// the exponentials of a whole channel at once, so that they vectorise.
fn sigmoids(out: &mut [f32], z: impl Fn(usize) -> f32) {
    for (j, e) in out.iter_mut().enumerate() {
        *e = -z(j);
    }
    expf::exp_in_place(out);
    for e in out.iter_mut() {
        *e = 1.0 / (1.0 + *e);
    }
}

/// Forward op: (x, gamma, beta) -> y, times a dropout mask if there is one.
/// Keeps the statistics it computed for its backward pass (two floats per
/// image and group).
struct GroupNormForward {
    spec: GroupNormSpec,
    stats: OnceLock<Statistics>,
    mask: Option<Arc<Vec<f32>>>,
}

impl CustomOp3 for GroupNormForward {
    fn name(&self) -> &'static str {
        "e2h-group-norm"
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
        let spec = self.spec;
        let (_b, c, hw) = dims(self.name(), &spec, l1.shape())?;
        let (x, gamma, beta) = (
            f32_slice(self.name(), s1, l1)?,
            f32_slice(self.name(), s2, l2)?,
            f32_slice(self.name(), s3, l3)?,
        );
        if gamma.len() != c || beta.len() != c {
            candle_core::bail!(
                "{}: affine parameters of {} and {} for {c} channels",
                self.name(),
                gamma.len(),
                beta.len()
            )
        }
        if self.mask.as_ref().is_some_and(|m| m.len() != x.len()) {
            candle_core::bail!(
                "{}: a dropout mask of another size than the input",
                self.name()
            )
        }
        let cpg = c / spec.groups;
        // Computed here unless the caller computed them (the same way).
        let stats = match self.stats.get() {
            Some(stats) if stats.len() == x.len() / (cpg * hw).max(1) => stats.clone(),
            _ => {
                let stats: Statistics = all_stats(x, spec.groups, cpg * hw, spec.eps).into();
                // A second forward through the same op (none happens) would
                // compute the same statistics: keeping the first is correct.
                let _ = self.stats.set(stats.clone());
                stats
            }
        };
        let mut out = zeroed(x.len());
        out.par_chunks_mut(cpg * hw)
            .zip(x.par_chunks(cpg * hw))
            .enumerate()
            .for_each(|(idx, (ys, xs))| {
                let g = idx % spec.groups;
                let (mean, rstd) = stats[idx];
                for ci in 0..cpg {
                    let ch = g * cpg + ci;
                    let (ga, be) = (gamma[ch], beta[ch]);
                    let (ys, xs) = (&mut ys[ci * hw..(ci + 1) * hw], &xs[ci * hw..(ci + 1) * hw]);
                    let z = |v: f32| (v - mean) * rstd * ga + be;
                    if spec.silu {
                        sigmoids(ys, |j| z(xs[j]));
                        for (y, &v) in ys.iter_mut().zip(xs) {
                            *y *= z(v);
                        }
                    } else {
                        for (y, &v) in ys.iter_mut().zip(xs) {
                            *y = z(v);
                        }
                    }
                    if let Some(mask) = &self.mask {
                        let start = idx * cpg * hw + ci * hw;
                        for (y, m) in ys.iter_mut().zip(&mask[start..start + hw]) {
                            *y *= m;
                        }
                    }
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let affine = Tensor::cat(&[gamma, beta], 0)?;
        let backward = GroupNormBackward {
            spec: self.spec,
            stats: self.stats.get().cloned(),
            affine_grads: Mutex::new(None),
        };
        let grad = match &self.mask {
            Some(mask) => masked(grad, mask)?,
            None => grad.contiguous()?,
        };
        let dx = x.apply_op3_no_bwd(&affine, &grad, &backward)?;
        let Some(affine_grads) = backward.affine_grads.into_inner().ok().flatten() else {
            candle_core::bail!(
                "{}: the backward pass left no gradients of gamma and beta",
                self.name()
            )
        };
        let c = gamma.elem_count();
        let flat = Tensor::from_vec(affine_grads, 2 * c, x.device())?;
        Ok((
            Some(dx),
            Some(flat.narrow(0, 0, c)?),
            Some(flat.narrow(0, c, c)?),
        ))
    }
}

/// Backward op: (x, [gamma, beta], dy) -> dx, leaving [dgamma, dbeta] in
/// `affine_grads` (apart from dx, as the convolution's backward op does),
/// with the forward pass's statistics (recomputed when absent).
struct GroupNormBackward {
    spec: GroupNormSpec,
    stats: Option<Statistics>,
    affine_grads: Mutex<Option<Vec<f32>>>,
}

impl CustomOp3 for GroupNormBackward {
    fn name(&self) -> &'static str {
        "e2h-group-norm-backward"
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
        let spec = self.spec;
        let (b, c, hw) = dims(self.name(), &spec, l1.shape())?;
        let (x, affine, dy) = (
            f32_slice(self.name(), s1, l1)?,
            f32_slice(self.name(), s2, l2)?,
            f32_slice(self.name(), s3, l3)?,
        );
        if affine.len() != 2 * c || dy.len() != x.len() {
            candle_core::bail!("{}: inconsistent sizes", self.name())
        }
        let (gamma, beta) = affine.split_at(c);
        let cpg = c / spec.groups;
        let group = cpg * hw;
        let (mut dx, mut affine_grads) = (zeroed(x.len()), vec![0f32; 2 * c]);
        // Per-(image, channel) partial sums of dgamma and dbeta, summed over
        // images afterwards in image order.
        let mut partial = vec![(0f64, 0f64); b * c];
        let stats = match &self.stats {
            Some(stats) if stats.len() == b * spec.groups => stats.clone(),
            _ => all_stats(x, spec.groups, group, spec.eps).into(),
        };
        dx.par_chunks_mut(c * hw)
            .zip(x.par_chunks(c * hw))
            .zip(dy.par_chunks(c * hw))
            .zip(partial.par_chunks_mut(c))
            .zip(stats.par_chunks(spec.groups))
            .for_each(|((((dxs, xs), dys), part), stats)| {
                // The sigmoids of the whole image, a channel at a time.
                let mut sig = vec![0f32; if spec.silu { c * hw } else { 0 }];
                for (ch, s) in sig.chunks_mut(hw).enumerate() {
                    let (mean, rstd) = stats[ch / cpg];
                    let (ga, be) = (gamma[ch], beta[ch]);
                    let xs = &xs[ch * hw..(ch + 1) * hw];
                    sigmoids(s, |j| (xs[j] - mean) * rstd * ga + be);
                }
                for g0 in (0..spec.groups).step_by(LANES) {
                    let lanes = LANES.min(spec.groups - g0);
                    let (e0, e1) = (g0 * group, (g0 + lanes) * group);
                    let (c0, c1) = (g0 * cpg, (g0 + lanes) * cpg);
                    let block = BackwardBlock {
                        xs: &xs[e0..e1],
                        dys: &dys[e0..e1],
                        sig: if spec.silu { &sig[e0..e1] } else { &[] },
                        stats: &stats[g0..g0 + lanes],
                        gamma: &gamma[c0..c1],
                        beta: &beta[c0..c1],
                        cpg,
                        hw,
                    };
                    let (dxs, part) = (&mut dxs[e0..e1], &mut part[c0..c1]);
                    with_lanes!(lanes, L => block.run::<L>(dxs, part));
                }
            });
        let (dgamma, dbeta) = affine_grads.split_at_mut(c);
        for ch in 0..c {
            let (mut sg, mut sb) = (0f64, 0f64);
            for i in 0..b {
                sg += partial[i * c + ch].0;
                sb += partial[i * c + ch].1;
            }
            dgamma[ch] = sg as f32;
            dbeta[ch] = sb as f32;
        }
        if let Ok(mut slot) = self.affine_grads.lock() {
            *slot = Some(affine_grads);
        }
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// The backward pass over `L` consecutive groups of one image (`stats`,
/// `gamma` and `beta` theirs; `sig` their SiLU sigmoids, empty without SiLU).
struct BackwardBlock<'a> {
    xs: &'a [f32],
    dys: &'a [f32],
    sig: &'a [f32],
    stats: &'a [(f32, f32)],
    gamma: &'a [f32],
    beta: &'a [f32],
    cpg: usize,
    hw: usize,
}

impl BackwardBlock<'_> {
    /// `dxs` and the groups' per-channel (dgamma, dbeta) in `part`. Every sum
    /// is one f64 chain per group and channel in element order, as one group
    /// at a time would give it; the `L` groups run side by side so that their
    /// chains overlap.
    fn run<const L: usize>(&self, dxs: &mut [f32], part: &mut [(f64, f64)]) {
        let (cpg, hw) = (self.cpg, self.hw);
        let group = cpg * hw;
        let silu = !self.sig.is_empty();
        let x: [&[f32]; L] = std::array::from_fn(|l| &self.xs[l * group..][..group]);
        let gy: [&[f32]; L] = std::array::from_fn(|l| &self.dys[l * group..][..group]);
        let sig: [&[f32]; L] = std::array::from_fn(|l| {
            if silu {
                &self.sig[l * group..][..group]
            } else {
                &[][..]
            }
        });
        let mean: [f32; L] = std::array::from_fn(|l| self.stats[l].0);
        let rstd: [f32; L] = std::array::from_fn(|l| self.stats[l].1);
        if let Some((sum_d, sum_dx)) = simd::eight_lane_backward::<L>(self, dxs, part) {
            finish_dx(&x, dxs, &mean, &rstd, &sum_d, &sum_dx);
            return;
        }
        let mut rows = dxs.chunks_mut(group);
        let d: [&mut [f32]; L] = std::array::from_fn(|_| rows.next().expect("L groups"));
        let (mut sum_d, mut sum_dx) = ([0f64; L], [0f64; L]);
        for ci in 0..cpg {
            let ga: [f32; L] = std::array::from_fn(|l| self.gamma[l * cpg + ci]);
            let be: [f32; L] = std::array::from_fn(|l| self.beta[l * cpg + ci]);
            let (mut dgamma, mut dbeta) = ([0f64; L], [0f64; L]);
            for j in ci * hw..(ci + 1) * hw {
                for l in 0..L {
                    let xhat = (x[l][j] - mean[l]) * rstd[l];
                    let dz = if silu {
                        let z = xhat * ga[l] + be[l];
                        let s = sig[l][j];
                        gy[l][j] * s * (1.0 + z * (1.0 - s))
                    } else {
                        gy[l][j]
                    };
                    dgamma[l] += f64::from(dz * xhat);
                    dbeta[l] += f64::from(dz);
                    let dxhat = dz * ga[l];
                    sum_d[l] += f64::from(dxhat);
                    sum_dx[l] += f64::from(dxhat * xhat);
                    d[l][j] = dxhat;
                }
            }
            for l in 0..L {
                part[l * cpg + ci] = (dgamma[l], dbeta[l]);
            }
        }
        finish_dx(&x, dxs, &mean, &rstd, &sum_d, &sum_dx);
    }
}

/// The input gradient of `L` groups from their `dxhat` (in `dxs`) and its sums.
fn finish_dx<const L: usize>(
    x: &[&[f32]; L],
    dxs: &mut [f32],
    mean: &[f32; L],
    rstd: &[f32; L],
    sum_d: &[f64; L],
    sum_dx: &[f64; L],
) {
    let group = dxs.len() / L;
    let n = group as f64;
    for (l, d) in dxs.chunks_mut(group).enumerate() {
        let (m1, m2) = ((sum_d[l] / n) as f32, (sum_dx[l] / n) as f32);
        for (dd, &v) in d.iter_mut().zip(x[l]) {
            let xhat = (v - mean[l]) * rstd[l];
            *dd = rstd[l] * (*dd - m1 - xhat * m2);
        }
    }
}

/// AVX-512 versions of the eight-lane loops above, one group per vector lane.
/// Each lane performs the scalar code's operations in its order (separate
/// multiplies and adds, f64 sums element by element), so the results are
/// bit for bit the same; the lanes' elements, a group apart, are gathered.
mod simd {
    use super::BackwardBlock;

    /// Whether this CPU runs the functions below.
    fn available() -> bool {
        #[cfg(target_arch = "x86_64")]
        return std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512vl")
            && std::is_x86_feature_detected!("avx2");
        #[cfg(not(target_arch = "x86_64"))]
        false
    }

    /// The first pass of [`BackwardBlock::run`] for eight groups: `dxhat`
    /// into `dxs`, the per-channel (dgamma, dbeta) into `part`; returns the
    /// groups' sums of `dxhat` and `dxhat xhat`. `None` for other lane
    /// counts or CPUs.
    pub(super) fn eight_lane_backward<const L: usize>(
        block: &BackwardBlock,
        dxs: &mut [f32],
        part: &mut [(f64, f64)],
    ) -> Option<([f64; L], [f64; L])> {
        let len = 8 * block.cpg * block.hw;
        let fits = block.xs.len() == len
            && block.dys.len() == len
            && dxs.len() == len
            && (block.sig.is_empty() || block.sig.len() == len)
            && block.stats.len() == 8
            && block.gamma.len() == 8 * block.cpg
            && block.beta.len() == 8 * block.cpg
            && part.len() == 8 * block.cpg
            && len <= i32::MAX as usize;
        if L != 8 || !available() || !fits {
            return None;
        }
        #[cfg(target_arch = "x86_64")]
        {
            // SAFETY: the CPU has the features; the lengths checked above
            // bound every gathered and scattered index `l * group + j`.
            #[allow(unsafe_code)]
            let (sum_d, sum_dx) = unsafe { x86::backward(block, dxs, part) };
            return Some((
                std::array::from_fn(|l| sum_d[l]),
                std::array::from_fn(|l| sum_dx[l]),
            ));
        }
        #[allow(unreachable_code)]
        None
    }

    #[cfg(target_arch = "x86_64")]
    #[allow(unsafe_code)]
    mod x86 {
        use std::arch::x86_64::*;

        use super::BackwardBlock;

        /// Offsets of the eight lanes, `stride` elements apart.
        #[target_feature(enable = "avx2,avx512f,avx512vl")]
        fn lanes(stride: usize) -> __m256i {
            let s = stride as i32;
            _mm256_setr_epi32(0, s, 2 * s, 3 * s, 4 * s, 5 * s, 6 * s, 7 * s)
        }

        #[target_feature(enable = "avx2,avx512f,avx512vl")]
        fn to_array(v: __m512d) -> [f64; 8] {
            let mut out = [0f64; 8];
            // SAFETY: `out` holds eight f64.
            unsafe { _mm512_storeu_pd(out.as_mut_ptr(), v) };
            out
        }

        /// See `eight_lane_backward`; the caller checked every length.
        #[target_feature(enable = "avx2,avx512f,avx512vl")]
        pub(super) unsafe fn backward(
            b: &BackwardBlock,
            dxs: &mut [f32],
            part: &mut [(f64, f64)],
        ) -> ([f64; 8], [f64; 8]) {
            let (cpg, hw) = (b.cpg, b.hw);
            let idx = lanes(cpg * hw);
            let silu = !b.sig.is_empty();
            let (px, pdy, psig, pd) = (
                b.xs.as_ptr(),
                b.dys.as_ptr(),
                b.sig.as_ptr(),
                dxs.as_mut_ptr(),
            );
            let per_lane = |f: &dyn Fn(usize) -> f32| {
                let v: [f32; 8] = std::array::from_fn(f);
                // SAFETY: `v` holds eight f32.
                unsafe { _mm256_loadu_ps(v.as_ptr()) }
            };
            let mean = per_lane(&|l| b.stats[l].0);
            let rstd = per_lane(&|l| b.stats[l].1);
            let one = _mm256_set1_ps(1.0);
            let (mut sum_d, mut sum_dx) = (_mm512_setzero_pd(), _mm512_setzero_pd());
            for ci in 0..cpg {
                let ga = per_lane(&|l| b.gamma[l * cpg + ci]);
                let be = per_lane(&|l| b.beta[l * cpg + ci]);
                let (mut dgamma, mut dbeta) = (_mm512_setzero_pd(), _mm512_setzero_pd());
                for j in ci * hw..(ci + 1) * hw {
                    // SAFETY (gathers and the scatter): index l * group + j
                    // with l < 8, j < group, inside all four slices.
                    let xv = unsafe { _mm256_i32gather_ps::<4>(px.add(j), idx) };
                    let xhat = _mm256_mul_ps(_mm256_sub_ps(xv, mean), rstd);
                    let gy = unsafe { _mm256_i32gather_ps::<4>(pdy.add(j), idx) };
                    let dz = if silu {
                        let z = _mm256_add_ps(_mm256_mul_ps(xhat, ga), be);
                        let s = unsafe { _mm256_i32gather_ps::<4>(psig.add(j), idx) };
                        let slope = _mm256_add_ps(one, _mm256_mul_ps(z, _mm256_sub_ps(one, s)));
                        _mm256_mul_ps(_mm256_mul_ps(gy, s), slope)
                    } else {
                        gy
                    };
                    dgamma = _mm512_add_pd(dgamma, _mm512_cvtps_pd(_mm256_mul_ps(dz, xhat)));
                    dbeta = _mm512_add_pd(dbeta, _mm512_cvtps_pd(dz));
                    let dxhat = _mm256_mul_ps(dz, ga);
                    sum_d = _mm512_add_pd(sum_d, _mm512_cvtps_pd(dxhat));
                    sum_dx = _mm512_add_pd(sum_dx, _mm512_cvtps_pd(_mm256_mul_ps(dxhat, xhat)));
                    unsafe { _mm256_i32scatter_ps::<4>(pd.add(j), idx, dxhat) };
                }
                let (dgamma, dbeta) = (to_array(dgamma), to_array(dbeta));
                for l in 0..8 {
                    part[l * cpg + ci] = (dgamma[l], dbeta[l]);
                }
            }
            (to_array(sum_d), to_array(sum_dx))
        }
    }
}

/// The gradient that reaches the group norm through a dropout mask: `0 + dy
/// m`, the sum candle's backward pass forms when it adds the mask product's
/// gradient to a fresh buffer of zeros (it turns -0 into +0).
fn masked(grad: &Tensor, mask: &[f32]) -> Result<Tensor> {
    let out = with_cpu_values("e2h-group-norm", grad, |dy| {
        if dy.len() != mask.len() {
            candle_core::bail!("e2h-group-norm: a gradient of another size than the mask")
        }
        Ok(dy
            .par_iter()
            .zip(mask)
            .map(|(&g, &m)| 0.0 + g * m)
            .collect::<Vec<f32>>())
    })?;
    Tensor::from_vec(out, grad.shape(), grad.device())
}

/// GroupNorm of `x` (B, C, ...) with per-channel `gamma`, `beta`, then SiLU if
/// `spec.silu`, on the CPU (f32); differentiable in all three.
pub fn group_norm(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    spec: GroupNormSpec,
) -> Result<Tensor> {
    apply(x, gamma, beta, spec, None, None)
}

/// [`group_norm`] times a dropout `mask` (one value per element of `x`, in
/// its order): the same values and gradients as `mask_mul` of its output, bit
/// for bit, without the extra pass and gradient buffer. `stats`: the
/// [`statistics`] of `x`, when computed already.
pub fn group_norm_masked(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    spec: GroupNormSpec,
    mask: Vec<f32>,
    stats: Option<Statistics>,
) -> Result<Tensor> {
    // Moved, not copied: an activation-sized buffer.
    apply(x, gamma, beta, spec, Some(Arc::new(mask)), stats)
}

/// The mean and 1 / sqrt(var + eps) of every (image, group) of `x` (CPU,
/// f32), as the forward op computes them.
pub fn statistics(x: &Tensor, spec: GroupNormSpec) -> Result<Statistics> {
    let (_b, c, hw) = dims("e2h-group-norm", &spec, x.shape())?;
    with_cpu_values("e2h-group-norm", x, |xs| {
        Ok(all_stats(xs, spec.groups, c / spec.groups * hw, spec.eps).into())
    })
}

fn apply(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    spec: GroupNormSpec,
    mask: Option<Arc<Vec<f32>>>,
    stats: Option<Statistics>,
) -> Result<Tensor> {
    let known = OnceLock::new();
    if let Some(stats) = stats {
        let _ = known.set(stats);
    }
    x.contiguous()?.apply_op3(
        &gamma.contiguous()?,
        &beta.contiguous()?,
        GroupNormForward {
            spec,
            stats: known,
            mask,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Module, Var};

    fn det(shape: &[usize], salt: f32, scale: f32) -> Tensor {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|i| (i as f32 * 0.5311 + salt).sin() * scale + 0.3)
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn max_rel(a: &Tensor, b: &Tensor) -> f32 {
        let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
        a.iter()
            .zip(&b)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs() / scale))
    }

    /// One group of one image at a time, as the kernels computed before
    /// their groups ran side by side: y, dx and the per-channel (dgamma,
    /// dbeta) of the group.
    #[allow(clippy::type_complexity)]
    fn one_group(
        xs: &[f32],
        dys: &[f32],
        gamma: &[f32],
        beta: &[f32],
        spec: GroupNormSpec,
        hw: usize,
    ) -> (Vec<f32>, Vec<f32>, Vec<(f64, f64)>) {
        let sigmoid = |z: f32| 1.0 / (1.0 + (-z).exp());
        let n = xs.len() as f64;
        let mean = xs.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let var = xs
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / n;
        let (mean, rstd) = (mean as f32, (1.0 / (var + spec.eps).sqrt()) as f32);
        let (mut ys, mut dxs, mut part) = (vec![0f32; xs.len()], vec![0f32; xs.len()], Vec::new());
        let (mut sum_d, mut sum_dx) = (0f64, 0f64);
        for ci in 0..xs.len() / hw {
            let (ga, be) = (gamma[ci], beta[ci]);
            let (mut dgamma, mut dbeta) = (0f64, 0f64);
            for j in ci * hw..(ci + 1) * hw {
                let z = (xs[j] - mean) * rstd * ga + be;
                ys[j] = if spec.silu { z * sigmoid(z) } else { z };
                let xhat = (xs[j] - mean) * rstd;
                let dz = if spec.silu {
                    let s = sigmoid(xhat * ga + be);
                    dys[j] * s * (1.0 + (xhat * ga + be) * (1.0 - s))
                } else {
                    dys[j]
                };
                dgamma += f64::from(dz * xhat);
                dbeta += f64::from(dz);
                let dxhat = dz * ga;
                sum_d += f64::from(dxhat);
                sum_dx += f64::from(dxhat * xhat);
                dxs[j] = dxhat;
            }
            part.push((dgamma, dbeta));
        }
        let (m1, m2) = ((sum_d / n) as f32, (sum_dx / n) as f32);
        for (d, &v) in dxs.iter_mut().zip(xs) {
            let xhat = (v - mean) * rstd;
            *d = rstd * (*d - m1 - xhat * m2);
        }
        (ys, dxs, part)
    }

    /// The groups summed side by side give, bit for bit, what one group at a
    /// time gives (on glibc, whose `expf` the kernels' exponential is).
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn groups_side_by_side_match_one_group_at_a_time_exactly() {
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        for (b, groups, cpg, hw) in [(2, 2, 3, 20), (1, 8, 4, 64), (3, 12, 2, 9), (2, 32, 1, 16)] {
            for silu in [false, true] {
                let spec = GroupNormSpec {
                    groups,
                    eps: 1e-6,
                    silu,
                };
                let c = groups * cpg;
                let x = Var::from_tensor(&det(&[b, c, hw], 0.1, 2.0)).unwrap();
                let dy = det(&[b, c, hw], 0.7, 1.0);
                let gamma = Var::from_tensor(&det(&[c], 0.2, 1.0)).unwrap();
                let beta = Var::from_tensor(&det(&[c], 0.3, 1.0)).unwrap();
                let y =
                    group_norm(x.as_tensor(), gamma.as_tensor(), beta.as_tensor(), spec).unwrap();
                let grads = (&y * &dy).unwrap().sum_all().unwrap().backward().unwrap();
                let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let (xs, dys, ys) = (flat(x.as_tensor()), flat(&dy), flat(&y));
                let dx = flat(grads.get(x.as_tensor()).unwrap());
                let (ga, be) = (flat(gamma.as_tensor()), flat(beta.as_tensor()));
                let (mut dgamma, mut dbeta) = (vec![0f64; c], vec![0f64; c]);
                for i in 0..b {
                    for g in 0..groups {
                        let r = (i * c + g * cpg) * hw..(i * c + (g + 1) * cpg) * hw;
                        let ch = g * cpg..(g + 1) * cpg;
                        let (want_y, want_dx, part) = one_group(
                            &xs[r.clone()],
                            &dys[r.clone()],
                            &ga[ch.clone()],
                            &be[ch.clone()],
                            spec,
                            hw,
                        );
                        let what = format!("image {i}, group {g} of {groups}, silu {silu}");
                        assert_eq!(bits(&ys[r.clone()]), bits(&want_y), "y, {what}");
                        assert_eq!(bits(&dx[r]), bits(&want_dx), "dx, {what}");
                        for (k, (pg, pb)) in ch.zip(part) {
                            dgamma[k] += pg;
                            dbeta[k] += pb;
                        }
                    }
                }
                let to_f32 = |v: Vec<f64>| v.into_iter().map(|s| s as f32).collect::<Vec<_>>();
                assert_eq!(
                    bits(&flat(grads.get(gamma.as_tensor()).unwrap())),
                    bits(&to_f32(dgamma))
                );
                assert_eq!(
                    bits(&flat(grads.get(beta.as_tensor()).unwrap())),
                    bits(&to_f32(dbeta))
                );
            }
        }
    }

    #[test]
    fn matches_candle_group_norm_and_silu_with_gradients() {
        for silu in [false, true] {
            let spec = GroupNormSpec {
                groups: 2,
                eps: 1e-6,
                silu,
            };
            let x = Var::from_tensor(&det(&[3, 6, 4, 5], 0.1, 2.0)).unwrap();
            let gamma = Var::from_tensor(&det(&[6], 0.2, 1.0)).unwrap();
            let beta = Var::from_tensor(&det(&[6], 0.3, 1.0)).unwrap();
            let ours =
                group_norm(x.as_tensor(), gamma.as_tensor(), beta.as_tensor(), spec).unwrap();
            let gn = candle_nn::GroupNorm::new(
                gamma.as_tensor().clone(),
                beta.as_tensor().clone(),
                6,
                2,
                1e-6,
            )
            .unwrap();
            let reference = gn.forward(x.as_tensor()).unwrap();
            let reference = if silu {
                reference.silu().unwrap()
            } else {
                reference
            };
            assert!(
                max_rel(&ours, &reference) < 1e-5,
                "forward silu={silu}: {}",
                max_rel(&ours, &reference)
            );
            let weights = det(ours.dims(), 0.4, 1.0);
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
            for (name, v) in [("x", &x), ("gamma", &gamma), ("beta", &beta)] {
                let (a, r) = (
                    g_ours.get(v.as_tensor()).unwrap(),
                    g_ref.get(v.as_tensor()).unwrap(),
                );
                assert_eq!(a.dims(), r.dims());
                assert!(
                    max_rel(a, r) < 1e-4,
                    "d{name} silu={silu}: {}",
                    max_rel(a, r)
                );
            }
        }
    }

    /// The mask applied inside the op gives what `mask_mul` of its output
    /// gives, bit for bit: values and the gradients of x, gamma and beta.
    #[test]
    fn masked_matches_group_norm_then_mask_mul_exactly() {
        use crate::test_support::bits;
        for (b, c, hw, groups, silu) in [(2, 16, 12, 8, true), (3, 12, 7, 4, false)] {
            let spec = GroupNormSpec {
                groups,
                eps: 1e-6,
                silu,
            };
            let x = Var::from_tensor(&det(&[b, c, hw], 0.1, 2.0)).unwrap();
            let gamma = Var::from_tensor(&det(&[c], 0.2, 0.5)).unwrap();
            let beta = Var::from_tensor(&det(&[c], 0.3, 0.5)).unwrap();
            let n = b * c * hw;
            let mask: Vec<f32> = (0..n)
                .map(|i| if i % 7 == 3 { 0.0 } else { 1.0 / 0.9 })
                .collect();
            let weights = det(&[b, c, hw], 0.4, 1.0);
            let (xt, gt, bt) = (x.as_tensor(), gamma.as_tensor(), beta.as_tensor());
            let composite =
                super::super::mask::mask_mul(&group_norm(xt, gt, bt, spec).unwrap(), mask.clone())
                    .unwrap();
            let fused = group_norm_masked(xt, gt, bt, spec, mask.clone(), None).unwrap();
            let stats = statistics(xt, spec).unwrap();
            let given = group_norm_masked(xt, gt, bt, spec, mask, Some(stats)).unwrap();
            assert_eq!(bits(&given), bits(&fused), "statistics given, silu {silu}");
            assert_eq!(bits(&fused), bits(&composite), "values, silu {silu}");
            let loss = |y: &Tensor| (y * &weights).unwrap().sum_all().unwrap();
            let (gc, gf) = (
                loss(&composite).backward().unwrap(),
                loss(&fused).backward().unwrap(),
            );
            for (name, v) in [("x", &x), ("gamma", &gamma), ("beta", &beta)] {
                assert_eq!(
                    bits(gf.get(v.as_tensor()).unwrap()),
                    bits(gc.get(v.as_tensor()).unwrap()),
                    "d{name}, silu {silu}"
                );
            }
        }
    }
}
