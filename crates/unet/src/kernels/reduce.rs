//! Sums in the order of candle's CPU reductions, so that fused ops can
//! replace candle composites without changing a bit.

use candle_core::{Result, Tensor};

/// `value(0) + ... + value(n - 1)` in the order of candle's CPU sum over a
/// contiguous last dimension (`sum_keepdim`, `sum_all`) on an x86 CPU with
/// AVX2 (candle's `vec_sum`): four accumulators of eight lanes over blocks of
/// 32, reduced pairwise, then the remaining elements one by one. Elsewhere
/// candle sums sequentially (or with NEON on ARM), and the two may differ in
/// the last bits; see [`sums_like_candle`].
pub fn candle_sum(n: usize, value: impl Fn(usize) -> f32) -> f32 {
    const LANES: usize = 8;
    const STEP: usize = 4 * LANES;
    let blocks = n / STEP * STEP;
    let mut acc = [[0f32; LANES]; 4];
    for i in (0..blocks).step_by(STEP) {
        for (j, acc) in acc.iter_mut().enumerate() {
            for (lane, a) in acc.iter_mut().enumerate() {
                *a += value(i + j * LANES + lane);
            }
        }
    }
    let add =
        |x: [f32; LANES], y: [f32; LANES]| -> [f32; LANES] { std::array::from_fn(|i| x[i] + y[i]) };
    let x = add(add(acc[0], acc[1]), add(acc[2], acc[3]));
    // The 256-bit register's halves added, then two horizontal adds.
    let t: [f32; 4] = std::array::from_fn(|i| x[i] + x[i + 4]);
    let mut sum = (t[0] + t[1]) + (t[2] + t[3]);
    for i in blocks..n {
        sum += value(i);
    }
    sum
}

/// Whether candle sums in the order of [`candle_sum`] on this CPU.
pub fn sums_like_candle() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::is_x86_feature_detected!("avx2");
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// `t.sqr().sum_all()` of a CPU f32 tensor without the squared copy.
pub fn sum_of_squares(t: &Tensor) -> Result<f32> {
    super::with_cpu_values("sum_of_squares", t, |xs| {
        Ok(candle_sum(xs.len(), |i| xs[i] * xs[i]))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn sums_of_squares_match_candle_sqr_and_sum_all() {
        for n in [1, 7, 32, 33, 100, 4096, 4099] {
            let xs: Vec<f32> = (0..n).map(|i| (i as f32 * 0.731).sin() * 1e3).collect();
            let t = Tensor::from_vec(xs, n, &Device::Cpu).unwrap();
            let want = t
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            let got = sum_of_squares(&t).unwrap();
            if sums_like_candle() {
                assert_eq!(got.to_bits(), want.to_bits(), "n = {n}: {got} vs {want}");
            } else {
                assert!(
                    (got - want).abs() <= 1e-5 * want.abs(),
                    "n = {n}: {got} vs {want}"
                );
            }
        }
    }
}
