//! y = (x·Wᵀ + b) ⊙ s (+ y), on dequantised weights.

use crate::format::quant::PackedMatrix;

/// `x` is `m × w.cols` (row-major), the result `m × w.rows`.
pub fn matmul(x: &[f32], m: usize, w: &PackedMatrix, bias: Option<&[f32]>, scale: Option<&[f32]>) -> Vec<f32> {
    matmul_f32(x, m, &w.dequantize(), w.rows, w.cols, bias, scale)
}

/// The same on a plain row-major `n × k` f32 matrix.
pub fn matmul_f32(x: &[f32], m: usize, w: &[f32], n: usize, k: usize, bias: Option<&[f32]>, scale: Option<&[f32]>) -> Vec<f32> {
    assert_eq!(x.len(), m * k);
    assert_eq!(w.len(), n * k);
    let mut y = vec![0f32; m * n];
    for t in 0..m {
        let xr = &x[t * k..(t + 1) * k];
        for j in 0..n {
            let wr = &w[j * k..(j + 1) * k];
            let mut acc = 0f64;
            for (a, b) in xr.iter().zip(wr) {
                acc += *a as f64 * *b as f64;
            }
            let mut v = acc as f32;
            if let Some(b) = bias {
                v += b[j];
            }
            if let Some(s) = scale {
                v *= s[j];
            }
            y[t * n + j] = v;
        }
    }
    y
}
