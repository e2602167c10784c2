//! `exp` of f32 as glibc computes it, vectorisable.
//!
//! The U-Net's SiLU spent a tenth of a training step calling libm's `expf` one
//! element at a time. This is the same algorithm (ARM's optimized-routines, in
//! glibc since 2.28): `2^(k/32) * 2^(r/32)` with a 32-entry table and a cubic,
//! evaluated in f64 with fused multiply-adds, rounded once to f32. It gives
//! glibc's results bit for bit (tested against libm on every f32 where the
//! platform is glibc), on every platform, and a slice of them compiles to
//! AVX-512 where the CPU has it.
#![allow(unsafe_code)]

/// `2^(i/32)` as bits, minus `i << 47`, so that adding `k << 47` for
/// `k = 32 m + i` scales it by `2^m`.
#[rustfmt::skip]
const TABLE: [u64; 32] = [
    0x3ff0000000000000, 0x3fefd9b0d3158574, 0x3fefb5586cf9890f, 0x3fef9301d0125b51,
    0x3fef72b83c7d517b, 0x3fef54873168b9aa, 0x3fef387a6e756238, 0x3fef1e9df51fdee1,
    0x3fef06fe0a31b715, 0x3feef1a7373aa9cb, 0x3feedea64c123422, 0x3feece086061892d,
    0x3feebfdad5362a27, 0x3feeb42b569d4f82, 0x3feeab07dd485429, 0x3feea47eb03a5585,
    0x3feea09e667f3bcd, 0x3fee9f75e8ec5f74, 0x3feea11473eb0187, 0x3feea589994cce13,
    0x3feeace5422aa0db, 0x3feeb737b0cdc5e5, 0x3feec49182a3f090, 0x3feed503b23e255d,
    0x3feee89f995ad3ad, 0x3feeff76f2fb5e47, 0x3fef199bdd85529c, 0x3fef3720dcef9069,
    0x3fef5818dcfba487, 0x3fef7c97337b9b5f, 0x3fefa4afa2a490da, 0x3fefd0765b6e4540,
];
/// 32 / ln 2.
const INV_LN2_N: f64 = f64::from_bits(0x40471547652b82fe);
/// 1.5 * 2^52: adding it rounds to an integer, kept in the low mantissa bits.
const SHIFT: f64 = f64::from_bits(0x4338000000000000);
/// The cubic for `2^(r/32) - 1`, r in [-1/2, 1/2].
const C0: f64 = f64::from_bits(0x3ebc6af84b912394);
const C1: f64 = f64::from_bits(0x3f2ebfce50fac4f3);
const C2: f64 = f64::from_bits(0x3f962e42ff0c52d6);

/// The exponent field of `x`'s bits (sign dropped) from which on glibc takes
/// its special cases: |x| >= 88, infinities and NaN.
const SPECIAL_TOP: u32 = 0x42b;

/// The main path, exact for |x| < 88 (and what glibc computes for -103.28 <= x <= -88).
#[inline(always)]
fn exp_main(x: f32) -> f32 {
    let xd = f64::from(x);
    let z = INV_LN2_N.mul_add(xd, SHIFT);
    let ki = z.to_bits();
    let kd = z - SHIFT;
    let r = INV_LN2_N.mul_add(xd, -kd);
    let s = f64::from_bits(TABLE[(ki & 31) as usize].wrapping_add(ki << 47));
    let p = C0.mul_add(r, C1);
    let y = r.mul_add(C2, 1.0);
    let y = p.mul_add(r * r, y);
    (y * s) as f32
}

fn is_special(x: f32) -> bool {
    (x.to_bits() >> 20) & 0x7ff >= SPECIAL_TOP
}

/// glibc's special cases: overflow, underflow, infinities, NaN.
#[cold]
fn exp_special(x: f32) -> f32 {
    if x == f32::NEG_INFINITY {
        0.0
    } else if x.is_nan() || x.is_infinite() {
        x + x
    } else if x > f32::from_bits(0x42b17217) {
        // x > ln(2^128)
        f32::INFINITY
    } else if x < f32::from_bits(0xc2cff1b4) {
        // x < ln(2^-150)
        0.0
    } else if x < f32::from_bits(0xc2ce8ecf) {
        // ln(2^-150) <= x < ln(2^-149): glibc's "may underflow", the smallest subnormal
        f32::from_bits(1)
    } else {
        exp_main(x)
    }
}

/// `e^x`, bit for bit as glibc's `expf`.
pub fn exp(x: f32) -> f32 {
    if is_special(x) {
        exp_special(x)
    } else {
        exp_main(x)
    }
}

/// Replaces every element by its exponential ([`exp`]).
pub fn exp_in_place(xs: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f")
        && std::is_x86_feature_detected!("avx512dq")
        && std::is_x86_feature_detected!("fma")
    {
        // SAFETY: the CPU has the features the function is compiled for.
        unsafe { exp_in_place_avx512(xs) };
        return;
    }
    exp_in_place_portable(xs);
}

#[inline(always)]
fn exp_in_place_portable(xs: &mut [f32]) {
    // Specials first (rare: the main path is wrong for them), then one
    // branch-free loop the compiler can vectorise.
    let any_special = xs.iter().any(|&x| is_special(x));
    if any_special {
        for x in xs.iter_mut() {
            *x = exp(*x);
        }
    } else {
        for x in xs.iter_mut() {
            *x = exp_main(*x);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,fma")]
#[allow(unsafe_code)]
unsafe fn exp_in_place_avx512(xs: &mut [f32]) {
    exp_in_place_portable(xs);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `step`-th f32 bit pattern, both signs.
    fn sample(step: u32) -> Vec<f32> {
        (0..=u32::MAX / step)
            .map(|i| f32::from_bits(i.wrapping_mul(step)))
            .collect()
    }

    /// On glibc, libm's `expf` is this algorithm: compare bit for bit (NaN
    /// payloads aside) on a dense sample of all f32, and exhaustively on the
    /// range a SiLU sees.
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn matches_glibc_expf_bit_for_bit() {
        let mut xs = sample(251);
        xs.extend((-20_000_000..=20_000_000).map(|i| i as f32 * 1e-6));
        xs.extend([
            0.0,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            88.72283,
            88.72284,
            -103.972,
            -103.973,
            -103.28,
        ]);
        let mut ours = xs.clone();
        exp_in_place(&mut ours);
        for (x, y) in xs.iter().zip(&ours) {
            let want = x.exp();
            assert!(
                want.to_bits() == y.to_bits() || (want.is_nan() && y.is_nan()),
                "exp({x:e}) = {y:e}, libm {want:e}"
            );
            assert_eq!(
                exp(*x).to_bits(),
                y.to_bits(),
                "scalar and slice differ at {x:e}"
            );
        }
    }

    /// All 2^32 inputs (about a minute): `cargo test -p e2h-unet expf -- --ignored`.
    #[test]
    #[ignore]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn matches_glibc_expf_on_every_f32() {
        use rayon::prelude::*;
        let mismatches: u64 = (0..=u32::MAX >> 16)
            .into_par_iter()
            .map(|hi| {
                let xs: Vec<f32> = (0..1u32 << 16)
                    .map(|lo| f32::from_bits(hi << 16 | lo))
                    .collect();
                let mut ours = xs.clone();
                exp_in_place(&mut ours);
                xs.iter()
                    .zip(&ours)
                    .filter(|(x, y)| {
                        let want = x.exp();
                        want.to_bits() != y.to_bits() && !(want.is_nan() && y.is_nan())
                    })
                    .count() as u64
            })
            .sum();
        assert_eq!(mismatches, 0);
    }

    /// Everywhere: within 1 ulp of the f64 exponential, rounded.
    #[test]
    fn is_accurate() {
        let mut xs = sample(4093);
        xs.retain(|x| x.abs() < 87.0);
        let mut ours = xs.clone();
        exp_in_place(&mut ours);
        for (x, y) in xs.iter().zip(&ours) {
            let want = f64::from(*x).exp() as f32;
            let ulps = (want.to_bits() as i64 - y.to_bits() as i64).abs();
            assert!(ulps <= 1, "exp({x:e}) = {y:e}, want {want:e}");
        }
    }
}
