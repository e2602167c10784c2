//! GroupNorm (optionally followed by SiLU) in one pass forward and two passes
//! backward, instead of candle's dozen elementwise ops with their allocations.
//!
//! Per (image, group): mean and variance (biased, summed in f64), `xhat = (x -
//! mean) / sqrt(var + eps)`, `z = gamma xhat + beta`, `y = z` or `silu(z)`.
//! The backward pass recomputes the statistics rather than storing them.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{expf, f32_slice};

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

/// Mean and 1 / sqrt(var + eps) of one group.
fn stats(xs: &[f32], eps: f64) -> (f32, f32) {
    let n = xs.len().max(1) as f64;
    let mean = xs.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let var = xs
        .iter()
        .map(|&v| (f64::from(v) - mean).powi(2))
        .sum::<f64>()
        / n;
    (mean as f32, (1.0 / (var + eps).sqrt()) as f32)
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

/// Forward op: (x, gamma, beta) -> y.
struct GroupNormForward(GroupNormSpec);

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
        let spec = self.0;
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
        let cpg = c / spec.groups;
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(cpg * hw)
            .zip(x.par_chunks(cpg * hw))
            .enumerate()
            .for_each(|(idx, (ys, xs))| {
                let g = idx % spec.groups;
                let (mean, rstd) = stats(xs, spec.eps);
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
        let flat = x.apply_op3_no_bwd(&affine, &grad.contiguous()?, &GroupNormBackward(self.0))?;
        let (n, c) = (x.elem_count(), gamma.elem_count());
        let dx = flat.narrow(0, 0, n)?.reshape(x.shape())?;
        Ok((
            Some(dx),
            Some(flat.narrow(0, n, c)?),
            Some(flat.narrow(0, n + c, c)?),
        ))
    }
}

/// Backward op: (x, [gamma, beta], dy) -> [dx, dgamma, dbeta] in one buffer.
struct GroupNormBackward(GroupNormSpec);

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
        let spec = self.0;
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
        let mut out = vec![0f32; x.len() + 2 * c];
        // Per-(image, channel) partial sums of dgamma and dbeta, summed over
        // images afterwards in image order.
        let mut partial = vec![(0f64, 0f64); b * c];
        let dx = &mut out[..x.len()];
        dx.par_chunks_mut(group)
            .zip(x.par_chunks(group))
            .zip(dy.par_chunks(group))
            .zip(partial.par_chunks_mut(cpg))
            .enumerate()
            .for_each(|(idx, (((dxs, xs), dys), part))| {
                let g = idx % spec.groups;
                let (mean, rstd) = stats(xs, spec.eps);
                let (mut sum_d, mut sum_dx) = (0f64, 0f64);
                let mut sig = vec![0f32; if spec.silu { hw } else { 0 }];
                for (ci, channel_sums) in part.iter_mut().enumerate() {
                    let ch = g * cpg + ci;
                    let (ga, be) = (gamma[ch], beta[ch]);
                    let (mut dgamma, mut dbeta) = (0f64, 0f64);
                    let range = ci * hw..(ci + 1) * hw;
                    if spec.silu {
                        let xs = &xs[range.clone()];
                        sigmoids(&mut sig, |j| (xs[j] - mean) * rstd * ga + be);
                    }
                    for (j, ((d, &v), &gy)) in dxs[range.clone()]
                        .iter_mut()
                        .zip(&xs[range.clone()])
                        .zip(&dys[range])
                        .enumerate()
                    {
                        let xhat = (v - mean) * rstd;
                        let dz = if spec.silu {
                            let z = xhat * ga + be;
                            let s = sig[j];
                            gy * s * (1.0 + z * (1.0 - s))
                        } else {
                            gy
                        };
                        dgamma += f64::from(dz * xhat);
                        dbeta += f64::from(dz);
                        let dxhat = dz * ga;
                        sum_d += f64::from(dxhat);
                        sum_dx += f64::from(dxhat * xhat);
                        *d = dxhat;
                    }
                    *channel_sums = (dgamma, dbeta);
                }
                let n = group as f64;
                let (m1, m2) = ((sum_d / n) as f32, (sum_dx / n) as f32);
                for (d, &v) in dxs.iter_mut().zip(xs) {
                    let xhat = (v - mean) * rstd;
                    *d = rstd * (*d - m1 - xhat * m2);
                }
            });
        let (dgamma, dbeta) = out[x.len()..].split_at_mut(c);
        for ch in 0..c {
            let (mut sg, mut sb) = (0f64, 0f64);
            for i in 0..b {
                sg += partial[i * c + ch].0;
                sb += partial[i * c + ch].1;
            }
            dgamma[ch] = sg as f32;
            dbeta[ch] = sb as f32;
        }
        let n = out.len();
        Ok((CpuStorage::F32(out), Shape::from(n)))
    }
}

/// GroupNorm of `x` (B, C, ...) with per-channel `gamma`, `beta`, then SiLU if
/// `spec.silu`, on the CPU (f32); differentiable in all three.
pub fn group_norm(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    spec: GroupNormSpec,
) -> Result<Tensor> {
    x.contiguous()?.apply_op3(
        &gamma.contiguous()?,
        &beta.contiguous()?,
        GroupNormForward(spec),
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
}
