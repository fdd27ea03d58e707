//! Error-compensating rounding (the GPTQ method, Frantar et al. 2022,
//! arXiv 2210.17323) into our Q formats.
//!
//! A linear's output error for inputs x is (W − Ŵ)·x; over calibration
//! inputs its mean square is Σ_rows eᵣᵀ H eᵣ with H = E[x xᵀ]. Rounding the
//! columns of a row one at a time and spreading each column's rounding
//! error over the columns not yet rounded, in proportion to H⁻¹, lowers that
//! error far below rounding each weight on its own. Each group's scale is
//! chosen (by the importance-weighted search) when the group's first column
//! is reached, from the weights as updated so far. The storage layout is the
//! format's own: the kernels do not change.

use half::f16;

use super::quant::{group_values, quantise_group, write_group, PackedMatrix, QuantFormat, Rounding, QGROUP};

/// Dampening added to H's diagonal, as a fraction of its mean diagonal
/// (the paper's 1 %): keeps H invertible where some inputs never vary.
const DAMP: f64 = 0.01;

/// The upper Cholesky factor U of H⁻¹ (H⁻¹ = UᵀU), row-major `n × n`, from
/// the `n × n` second-moment matrix `h` (dampened first). None if H is not
/// positive definite even after dampening.
pub fn inverse_hessian_factor(h: &[f64], n: usize) -> Option<Vec<f64>> {
    assert_eq!(h.len(), n * n);
    let mean_diag = (0..n).map(|i| h[i * n + i]).sum::<f64>() / n as f64;
    let damp = DAMP * mean_diag.max(1e-12);
    let mut a: Vec<f64> = h.to_vec();
    for i in 0..n {
        a[i * n + i] += damp;
    }
    // H = L Lᵀ.
    let l = cholesky_lower(&a, n)?;
    // L⁻¹ by forward substitution, then H⁻¹ = L⁻ᵀ L⁻¹.
    let mut linv = vec![0f64; n * n];
    for j in 0..n {
        linv[j * n + j] = 1.0 / l[j * n + j];
        for i in j + 1..n {
            let s: f64 = (j..i).map(|k| l[i * n + k] * linv[k * n + j]).sum();
            linv[i * n + j] = -s / l[i * n + i];
        }
    }
    let mut hinv = vec![0f64; n * n];
    for i in 0..n {
        for j in 0..=i {
            let s: f64 = (i.max(j)..n).map(|k| linv[k * n + i] * linv[k * n + j]).sum();
            hinv[i * n + j] = s;
            hinv[j * n + i] = s;
        }
    }
    // Row c of U (from column c on) spreads column c's rounding error.
    cholesky_upper(&hinv, n)
}

/// Lower Cholesky factor of a symmetric positive-definite `n × n` matrix.
fn cholesky_lower(a: &[f64], n: usize) -> Option<Vec<f64>> {
    let mut l = vec![0f64; n * n];
    for i in 0..n {
        for j in 0..=i {
            let s: f64 = a[i * n + j] - (0..j).map(|k| l[i * n + k] * l[j * n + k]).sum::<f64>();
            if i == j {
                if s <= 0.0 || !s.is_finite() {
                    return None;
                }
                l[i * n + i] = s.sqrt();
            } else {
                l[i * n + j] = s / l[j * n + j];
            }
        }
    }
    Some(l)
}

/// The upper triangular U with UᵀU = a: the transpose of the lower factor.
fn cholesky_upper(a: &[f64], n: usize) -> Option<Vec<f64>> {
    let l = cholesky_lower(a, n)?;
    let mut u = vec![0f64; n * n];
    for i in 0..n {
        for j in i..n {
            u[i * n + j] = l[j * n + i];
        }
    }
    Some(u)
}

/// Packs `data` (`rows × cols`, row-major) in a Q format with GPTQ rounding,
/// given `u`, the upper Cholesky factor of H⁻¹ ([`inverse_hessian_factor`]),
/// and the per-column importance (H's diagonal) for the group scales.
pub fn pack_gptq(format: QuantFormat, rows: usize, cols: usize, data: &[f32], u: &[f64], importance: &[f32]) -> PackedMatrix {
    assert!(matches!(format, QuantFormat::Q8 | QuantFormat::Q4), "GPTQ packs the Q formats only");
    assert_eq!(data.len(), rows * cols);
    assert_eq!(u.len(), cols * cols);
    let qmax = if format == QuantFormat::Q8 { 127.0 } else { 7.0 };
    let mut words = vec![0u32; format.total_words(rows, cols)];
    let mut chunk = [0f32; QGROUP];
    let mut weight = [1f32; QGROUP];
    let mut w = vec![0f64; cols];
    let mut row32 = vec![0f32; cols];
    for r in 0..rows {
        w.iter_mut().zip(&data[r * cols..(r + 1) * cols]).for_each(|(a, b)| *a = *b as f64);
        for g in 0..format.groups(cols) {
            row32.iter_mut().zip(&w).for_each(|(a, b)| *a = *b as f32);
            group_values(&row32, Some(importance), g, &mut chunk, &mut weight);
            let (d, _) = quantise_group(format, Rounding::Search, &chunk, &weight);
            let df = d.to_f32() as f64;
            let mut q = [0i32; QGROUP];
            for (i, qi) in q.iter_mut().enumerate() {
                let c = g * QGROUP + i;
                if c >= cols {
                    break;
                }
                *qi = if df != 0.0 { (w[c] / df).round().clamp(-(qmax + 1.0), qmax) as i32 } else { 0 };
                let err = (w[c] - df * *qi as f64) / u[c * cols + c];
                for j in c + 1..cols {
                    w[j] -= err * u[c * cols + j];
                }
            }
            write_group(&mut words, format, rows, cols, r, g, if df != 0.0 { d } else { f16::from_f32(0.0) }, &q);
        }
    }
    PackedMatrix { format, rows, cols, words }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::Rng;

    #[test]
    fn factor_inverts_the_hessian() {
        let n = 7;
        let mut rng = Rng::new(3);
        let x: Vec<f64> = (0..40 * n).map(|_| rng.normal(1.0) as f64).collect();
        let mut h = vec![0f64; n * n];
        for t in 0..40 {
            for i in 0..n {
                for j in 0..n {
                    h[i * n + j] += x[t * n + i] * x[t * n + j];
                }
            }
        }
        let u = inverse_hessian_factor(&h, n).unwrap();
        // UᵀU · (H + damp) = I, and U is upper triangular.
        let damp = DAMP * (0..n).map(|i| h[i * n + i]).sum::<f64>() / n as f64;
        for i in 0..n {
            for j in 0..i {
                assert_eq!(u[i * n + j], 0.0);
            }
        }
        for i in 0..n {
            for j in 0..n {
                let mut s = 0.0;
                for k in 0..n {
                    let hinv_ik: f64 = (0..n).map(|m| u[m * n + i] * u[m * n + k]).sum();
                    s += hinv_ik * (h[k * n + j] + if k == j { damp } else { 0.0 });
                }
                assert!((s - (i == j) as u8 as f64).abs() < 1e-9, "({i},{j}): {s}");
            }
        }
    }

    /// On correlated inputs, GPTQ's output error E‖(W − Ŵ)x‖² is below the
    /// importance-weighted search's (which rounds each weight on its own),
    /// in both Q formats; the packed layout dequantises like any other.
    #[test]
    fn gptq_lowers_the_output_error() {
        let (rows, cols, samples) = (24, 96, 400);
        let mut rng = Rng::new(11);
        // x = A z: strongly correlated columns.
        let a: Vec<f64> = (0..cols * 8).map(|_| rng.normal(1.0) as f64).collect();
        let mut h = vec![0f64; cols * cols];
        for _ in 0..samples {
            let z: Vec<f64> = (0..8).map(|_| rng.normal(1.0) as f64).collect();
            let x: Vec<f64> = (0..cols).map(|c| (0..8).map(|k| a[c * 8 + k] * z[k]).sum::<f64>() + 0.05 * rng.normal(1.0) as f64).collect();
            for i in 0..cols {
                for j in 0..cols {
                    h[i * cols + j] += x[i] * x[j] / samples as f64;
                }
            }
        }
        let w: Vec<f32> = rng.vec_normal(rows * cols, 0.05);
        let importance: Vec<f32> = (0..cols).map(|i| h[i * cols + i] as f32).collect();
        let output_error = |p: &PackedMatrix| -> f64 {
            let deq = p.dequantize();
            (0..rows)
                .map(|r| {
                    let e: Vec<f64> = (0..cols).map(|c| (w[r * cols + c] - deq[r * cols + c]) as f64).collect();
                    (0..cols).map(|i| (0..cols).map(|j| e[i] * h[i * cols + j] * e[j]).sum::<f64>()).sum::<f64>()
                })
                .sum()
        };
        let u = inverse_hessian_factor(&h, cols).unwrap();
        for format in [QuantFormat::Q8, QuantFormat::Q4] {
            let search = PackedMatrix::pack_with(format, rows, cols, &w, Rounding::Search, Some(&importance));
            let gptq = pack_gptq(format, rows, cols, &w, &u, &importance);
            let (es, eg) = (output_error(&search), output_error(&gptq));
            assert!(eg < 0.8 * es, "{}: GPTQ {eg} vs search {es}", format.name());
        }
    }
}
