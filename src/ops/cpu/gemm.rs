//! A safe, single-threaded f32 matrix product over the `gemm` crate (the kernel candle uses).
//!
//! The ops parallelise over images themselves, so each product runs on the calling thread:
//! nesting gemm's own thread pool inside ours would only add barriers.

/// A row-major matrix stored contiguously, possibly read transposed.
#[derive(Clone, Copy)]
pub struct Mat<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    transposed: bool,
}

impl<'a> Mat<'a> {
    /// `rows × cols`, stored row-major.
    pub fn new(data: &'a [f32], rows: usize, cols: usize) -> Self {
        assert!(data.len() >= rows * cols, "matrix data too short");
        Mat {
            data,
            rows,
            cols,
            transposed: false,
        }
    }

    /// The transpose (no copy).
    pub fn t(self) -> Self {
        Mat {
            transposed: !self.transposed,
            ..self
        }
    }

    /// `(rows, cols)` as read.
    fn shape(&self) -> (usize, usize) {
        if self.transposed {
            (self.cols, self.rows)
        } else {
            (self.rows, self.cols)
        }
    }

    /// `(row stride, column stride)` as read.
    fn strides(&self) -> (isize, isize) {
        if self.transposed {
            (1, self.cols as isize)
        } else {
            (self.cols as isize, 1)
        }
    }
}

/// `dst = a × b` (or `dst += a × b` when `accumulate`), `dst` row-major `m × n`.
pub fn matmul(dst: &mut [f32], a: Mat, b: Mat, accumulate: bool) {
    let (m, k) = a.shape();
    let (k2, n) = b.shape();
    assert_eq!(k, k2, "inner dimensions differ");
    assert!(dst.len() >= m * n, "destination too short");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst[..m * n].fill(0.0);
        }
        return;
    }
    let (a_rs, a_cs) = a.strides();
    let (b_rs, b_cs) = b.strides();
    // SAFETY: the asserts above bound every index the strides can reach: a reads
    // (m-1)*rs + (k-1)*cs < rows*cols <= len, likewise b, and dst is m×n row-major.
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
            a_cs,
            a_rs,
            b.data.as_ptr(),
            b_cs,
            b_rs,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        let mut out = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            }
        }
        out
    }

    fn transpose(a: &[f32], rows: usize, cols: usize) -> Vec<f32> {
        let mut t = vec![0.0; a.len()];
        for i in 0..rows {
            for j in 0..cols {
                t[j * rows + i] = a[i * cols + j];
            }
        }
        t
    }

    #[test]
    fn all_transpose_combinations_match_a_naive_product() {
        let (m, k, n) = (5, 7, 3);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.11).cos()).collect();
        let want = naive(&a, &b, m, k, n);
        let at = transpose(&a, m, k);
        let bt = transpose(&b, k, n);
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let am = if ta {
                Mat::new(&at, k, m).t()
            } else {
                Mat::new(&a, m, k)
            };
            let bm = if tb {
                Mat::new(&bt, n, k).t()
            } else {
                Mat::new(&b, k, n)
            };
            let mut got = vec![1.0; m * n];
            matmul(&mut got, am, bm, false);
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() < 1e-5, "{ta} {tb}: {g} vs {w}");
            }
            matmul(&mut got, am, bm, true);
            for (g, w) in got.iter().zip(&want) {
                assert!((g - 2.0 * w).abs() < 1e-5, "accumulate {ta} {tb}");
            }
        }
    }
}
