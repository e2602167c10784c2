//! A bounds-checked wrapper around the `gemm` crate (the one candle's CPU
//! matmul uses), threaded on the current rayon pool.
#![allow(unsafe_code)]

/// A read-only strided matrix: element (i, j) is `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub struct Mat<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a> Mat<'a> {
    /// A row-major (rows x cols) matrix.
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }

    /// The transpose (no copy).
    pub fn t(self) -> Self {
        Self {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
        }
    }

    fn assert_in_bounds(&self, what: &str) {
        if self.rows > 0 && self.cols > 0 {
            let last = (self.rows - 1) * self.rs + (self.cols - 1) * self.cs;
            assert!(
                last < self.data.len(),
                "gemm: {what} ({}x{}, strides {}, {}) exceeds its {} elements",
                self.rows,
                self.cols,
                self.rs,
                self.cs,
                self.data.len()
            );
        }
    }
}

/// `dst = a b` (or `dst += a b` with `accumulate`), `dst` row-major (a.rows x b.cols).
pub fn matmul(dst: &mut [f32], accumulate: bool, a: Mat, b: Mat) {
    matmul_threaded(dst, accumulate, a, b, true)
}

/// [`matmul`] on the calling thread alone when not `threaded`: for products
/// that callers already run side by side (one per image). The result is the
/// same either way.
pub fn matmul_threaded(dst: &mut [f32], accumulate: bool, a: Mat, b: Mat, threaded: bool) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(k, b.rows, "gemm: inner dimensions differ");
    assert_eq!(dst.len(), m * n, "gemm: destination has the wrong size");
    a.assert_in_bounds("lhs");
    b.assert_in_bounds("rhs");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst.fill(0.0);
        }
        return;
    }
    // rayon's pool size, not candle's `get_num_threads()`, which parses
    // /proc/cpuinfo on every call (3% of a training step). Products do not
    // split the inner dimension, so the thread count never changes a result.
    let threads = if threaded {
        rayon::current_num_threads()
    } else {
        1
    };
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: every index the kernel touches, (i, j) -> i * rs + j * cs for i <
    // rows, j < cols, was checked against the slice lengths above; dst is
    // exclusively borrowed and row-major (m x n).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: Mat, b: Mat) -> Vec<f32> {
        let mut out = vec![0f32; a.rows * b.cols];
        for i in 0..a.rows {
            for j in 0..b.cols {
                out[i * b.cols + j] = (0..a.cols)
                    .map(|p| a.data[i * a.rs + p * a.cs] * b.data[p * b.rs + j * b.cs])
                    .sum();
            }
        }
        out
    }

    #[test]
    fn strided_products_match_the_naive_sum() {
        let a: Vec<f32> = (0..35).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..63).map(|i| (i as f32 * 0.11).cos()).collect();
        let (a, b) = (Mat::row_major(&a, 5, 7), Mat::row_major(&b, 7, 9));
        let mut dst = vec![1f32; 45];
        matmul(&mut dst, false, a, b);
        let want = naive(a, b);
        for (x, y) in dst.iter().zip(&want) {
            assert!((x - y).abs() < 1e-5, "{x} vs {y}");
        }
        // Transposed operands and accumulation: dst += (b^T a^T)^T computed as a b again.
        let bt: Vec<f32> = (0..63)
            .map(|i| {
                let (r, c) = (i / 7, i % 7);
                b.data[c * 9 + r]
            })
            .collect();
        let bt = Mat::row_major(&bt, 9, 7).t();
        matmul(&mut dst, true, a, bt);
        for (x, y) in dst.iter().zip(&want) {
            assert!((x - 2.0 * y).abs() < 1e-5, "{x} vs {}", 2.0 * y);
        }
    }
}
