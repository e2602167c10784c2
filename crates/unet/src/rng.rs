//! Seed derivation. Every random draw of training and evaluation comes from a
//! `Xoshiro256PlusPlus` seeded by `derive_seed(seed, stream, index)`, so any
//! draw can be regenerated from `(seed, step)` alone (resuming needs no RNG state).

use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use rand_xoshiro::Xoshiro256PlusPlus;

/// Independent random streams (the `stream` argument of [`derive_seed`]).
pub mod stream {
    /// Epoch permutations of the training set (index: epoch).
    pub const ORDER: u64 = 0x0bde;
    /// Horizontal flips (index: step).
    pub const FLIP: u64 = 0xf11b;
    /// Noise levels t (index: step).
    pub const TIME: u64 = 0x7135;
    /// Training noise eps (index: step).
    pub const NOISE: u64 = 0x2015e;
    /// Dropout masks (index: step).
    pub const DROPOUT: u64 = 0xd209;
    /// Parameter initialisation (index: hash of the parameter name).
    pub const INIT: u64 = 0x1217;
    /// Evaluation noise (index: image index, then noise level).
    pub const EVAL: u64 = 0xe7a1;
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A 64-bit seed for draw `index` of stream `stream` under the run seed `seed`.
pub fn derive_seed(seed: u64, stream: u64, index: u64) -> u64 {
    splitmix64(splitmix64(splitmix64(seed) ^ stream) ^ index)
}

/// The generator for draw `index` of stream `stream`.
pub fn rng_for(seed: u64, stream: u64, index: u64) -> Xoshiro256PlusPlus {
    Xoshiro256PlusPlus::seed_from_u64(derive_seed(seed, stream, index))
}

/// FNV-1a hash of a string (parameter names).
pub fn name_hash(name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Fill `out` with standard normal draws.
pub fn fill_standard_normal<R: rand::Rng>(rng: &mut R, out: &mut [f32]) {
    for v in out.iter_mut() {
        *v = StandardNormal.sample(rng);
    }
}

/// A fast non-cryptographic 64-bit fingerprint of a byte string (used to check
/// that a checkpoint belongs to the same training data and evaluation sets).
pub fn fingerprint(bytes: &[u8]) -> u64 {
    let mut h = splitmix64(bytes.len() as u64);
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_le_bytes(c.try_into().expect("chunk of 8"));
        h = (h.rotate_left(23) ^ w).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
    let mut last = [0u8; 8];
    let rem = chunks.remainder();
    last[..rem.len()].copy_from_slice(rem);
    h = (h.rotate_left(23) ^ u64::from_le_bytes(last)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    splitmix64(h)
}
