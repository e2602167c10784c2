//! Helpers shared by the unit tests.

use candle_core::Tensor;

/// The bit patterns of a tensor's f32 values, for bit-for-bit comparisons.
pub fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect()
}
