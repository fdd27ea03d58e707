//! CPU quantisation: round-trip error bounds and row-block splitting.

use half::f16;
use llama_adapter_web::format::quant::{rows_per_block, PackedMatrix, QuantFormat, Rounding, QGROUP};
use llama_adapter_web::util::Rng;

fn random_matrix(rows: usize, cols: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    // Mixed magnitudes per row, an all-zero group and an outlier.
    let mut w: Vec<f32> = (0..rows * cols).map(|i| rng.normal(0.02 * (1 + i / cols % 5) as f32)).collect();
    if cols >= QGROUP && rows > 1 {
        w[cols..cols + QGROUP].iter_mut().for_each(|v| *v = 0.0);
        w[0] = 3.0;
    }
    w
}

/// Q8/Q4: every element is within half a quantisation step, d/2, of the
/// original (d is the stored f16 group scale), and d is absmax/qmax within
/// f16 rounding (2⁻¹¹ relative, one subnormal step 2⁻²⁴ absolute).
#[test]
fn q8_q4_round_trip_within_half_a_step() {
    for (format, qmax) in [(QuantFormat::Q8, 127.0f32), (QuantFormat::Q4, 7.0)] {
        for &(rows, cols) in &[(3, 32), (5, 33), (4, 100), (7, 4096)] {
            let w = random_matrix(rows, cols, (rows * cols) as u64);
            let p = PackedMatrix::pack(format, rows, cols, &w);
            assert_eq!(p.words.len(), format.total_words(rows, cols));
            let deq = p.dequantize();
            for r in 0..rows {
                for g in 0..cols.div_ceil(QGROUP) {
                    let range = g * QGROUP..((g + 1) * QGROUP).min(cols);
                    let absmax = w[r * cols..][range.clone()].iter().fold(0f32, |m, x| m.max(x.abs()));
                    let d = p.scale(r, g);
                    assert!((d - absmax / qmax).abs() <= (absmax / qmax) * 2f32.powi(-11) + 2f32.powi(-24), "scale of group {g} row {r} ({rows}x{cols}): {d} vs {}", absmax / qmax);
                    for c in range {
                        let err = (deq[r * cols + c] - w[r * cols + c]).abs();
                        assert!(err <= d / 2.0 * (1.0 + 1e-6), "{} ({r},{c}): error {err} > d/2 = {}", format.name(), d / 2.0);
                    }
                }
            }
        }
    }
}

/// Measured, for the record: RMS round-trip error relative to RMS weight on
/// Gaussian weights (q8 ≈ 0.5%, q4 ≈ 10%); the bar is 2× those figures.
#[test]
fn quantisation_relative_rms_error() {
    let (rows, cols) = (64, 4096);
    let mut rng = Rng::new(9);
    let w = rng.vec_normal(rows * cols, 0.02);
    let rms = |v: &[f32]| (v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / v.len() as f64).sqrt();
    for (format, bar) in [(QuantFormat::F16, 1e-3), (QuantFormat::Q8, 0.012), (QuantFormat::Q4, 0.2)] {
        let deq = PackedMatrix::pack(format, rows, cols, &w).dequantize();
        let diff: Vec<f32> = deq.iter().zip(&w).map(|(a, b)| a - b).collect();
        let rel = rms(&diff) / rms(&w);
        println!("{}: relative RMS error {rel:.4}", format.name());
        assert!(rel < bar, "{}: relative RMS error {rel} over {bar}", format.name());
    }
}

#[test]
fn f16_and_f32_round_trip() {
    let w = random_matrix(3, 7, 1);
    let p32 = PackedMatrix::pack(QuantFormat::F32, 3, 7, &w);
    assert_eq!(p32.dequantize(), w);
    let p16 = PackedMatrix::pack(QuantFormat::F16, 3, 7, &w);
    assert_eq!(p16.words.len(), 3 * 4, "odd rows are padded to whole words");
    let want: Vec<f32> = w.iter().map(|x| f16::from_f32(*x).to_f32()).collect();
    assert_eq!(p16.dequantize(), want);
}

#[test]
fn row_blocks_reassemble_and_fit() {
    for format in QuantFormat::ALL {
        let (rows, cols) = (37, 70);
        let w = random_matrix(rows, cols, 5);
        let p = PackedMatrix::pack(format, rows, cols, &w);
        let limit = 1000;
        let blocks = p.split_rows(limit);
        assert!(blocks.len() > 1);
        let mut joined = Vec::new();
        let mut next = 0;
        for (start, b) in &blocks {
            assert_eq!(*start, next);
            assert!(b.words.len() as u64 * 4 <= limit, "block of {} bytes over {limit}", b.words.len() * 4);
            assert_eq!(*b, PackedMatrix::pack(format, b.rows, cols, &w[start * cols..(start + b.rows) * cols]));
            joined.extend(b.dequantize());
            next += b.rows;
        }
        assert_eq!(next, rows);
        assert_eq!(joined, p.dequantize());
    }
}

/// How the 7B model's largest tensors split under the 128 MiB binding limit.
#[test]
fn seven_b_tensor_blocks() {
    let limit = 128u64 << 20;
    let blocks = |f: QuantFormat, rows: usize, cols: usize| rows.div_ceil(rows_per_block(f, cols, limit));
    // 32000×4096 token embedding / output head
    assert_eq!(blocks(QuantFormat::Q4, 32000, 4096), 1);
    assert_eq!(blocks(QuantFormat::Q8, 32000, 4096), 2);
    assert_eq!(blocks(QuantFormat::F16, 32000, 4096), 2);
    assert_eq!(blocks(QuantFormat::F32, 32000, 4096), 4);
    // 11008×4096 FFN
    assert_eq!(blocks(QuantFormat::Q4, 11008, 4096), 1);
    assert_eq!(blocks(QuantFormat::F32, 11008, 4096), 2);
    // q4 4096×4096: 8 MiB of nibbles + 1 MiB of scales, read once per GEMV.
    assert_eq!(QuantFormat::Q4.bytes(4096, 4096), 9_437_184);
}

/// Full-range rounding: the largest-magnitude element of each group is
/// exact up to f16 rounding of d (it sits on the lowest level), every other
/// element is within |d|/2, or within |d| where it clamps at the top level;
/// the search never does worse than full-range on its own weighted error,
/// and both beat absmax on Gaussian weights (a smaller step).
#[test]
fn full_range_and_search_rounding() {
    let (rows, cols) = (16, 200);
    let w = random_matrix(rows, cols, 5);
    let mut rng = Rng::new(6);
    let importance: Vec<f32> = (0..cols).map(|_| (rng.uniform() * 4.0) as f32).collect();
    for (format, qmax) in [(QuantFormat::Q8, 127.0f32), (QuantFormat::Q4, 7.0)] {
        let full = PackedMatrix::pack_with(format, rows, cols, &w, Rounding::FullRange, None);
        let deq = full.dequantize();
        for r in 0..rows {
            for g in 0..cols.div_ceil(QGROUP) {
                let range = g * QGROUP..((g + 1) * QGROUP).min(cols);
                let d = full.scale(r, g).abs();
                let absmax = w[r * cols..][range.clone()].iter().fold(0f32, |m, x| m.max(x.abs()));
                assert!((d - absmax / (qmax + 1.0)).abs() <= absmax / (qmax + 1.0) * 2f32.powi(-11) + 2f32.powi(-24));
                for c in range {
                    let (x, y) = (w[r * cols + c], deq[r * cols + c]);
                    let clamped = (y - qmax * full.scale(r, g)).abs() < 1e-12;
                    let bound = if clamped { d } else { d / 2.0 };
                    assert!((x - y).abs() <= bound * (1.0 + 1e-5) + 1e-30, "{} ({r},{c}): {x} → {y}, |d| {d}", format.name());
                }
            }
        }
        let weighted = |p: &PackedMatrix, imp: &[f32]| -> Vec<f64> {
            let deq = p.dequantize();
            (0..rows * cols.div_ceil(QGROUP))
                .map(|i| {
                    let (r, g) = (i / cols.div_ceil(QGROUP), i % cols.div_ceil(QGROUP));
                    (g * QGROUP..((g + 1) * QGROUP).min(cols)).map(|c| imp[c] as f64 * ((w[r * cols + c] - deq[r * cols + c]) as f64).powi(2)).sum()
                })
                .collect()
        };
        for imp in [vec![1.0; cols], importance.clone()] {
            let search = PackedMatrix::pack_with(format, rows, cols, &w, Rounding::Search, Some(&imp));
            for (i, (s, f)) in weighted(&search, &imp).iter().zip(weighted(&full, &imp)).enumerate() {
                assert!(*s <= f * (1.0 + 1e-9), "{}: group {i}: search {s} > full-range {f}", format.name());
            }
        }
    }
    let g = Rng::new(9).vec_normal(64 * 4096, 0.02);
    let rel = |r: Rounding| {
        let deq = PackedMatrix::pack_with(QuantFormat::Q4, 64, 4096, &g, r, None).dequantize();
        (deq.iter().zip(&g).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>() / g.iter().map(|b| (*b as f64).powi(2)).sum::<f64>()).sqrt()
    };
    let (absmax, full, search) = (rel(Rounding::Absmax), rel(Rounding::FullRange), rel(Rounding::Search));
    println!("q4 relative RMS error on Gaussian weights: absmax {absmax:.4}, full-range {full:.4}, search {search:.4}");
    assert!(full < absmax && search < full, "absmax {absmax}, full-range {full}, search {search}");
}
