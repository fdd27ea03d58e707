//! Rotary embedding on the GPU against the CPU reference, and the table
//! against an independent f64 evaluation.
//!
//! Both sides read the same (cos, sin) table, so only the rotation's own
//! rounding differs: a·c − b·s in f32 is within 2 ulp of |a|+|b| (tolerance
//! 4u·(|a|+|b|)).

mod common;

use common::{assert_close, gpu, read_f32, run};
use llama_adapter_web::kernels::rope::{rope, RopeArgs, RopeTable};
use llama_adapter_web::reference;
use llama_adapter_web::util::Rng;

const U: f64 = 1.0 / (1u64 << 24) as f64;

#[test]
fn rope_matches_reference() {
    let ctx = gpu();
    for &(rows, n_heads, head_dim, start_pos, theta) in &[
        (1, 1, 2, 0, 10000.0f32),
        (5, 3, 8, 7, 10000.0),
        (1, 32, 128, 1023, 10000.0), // the 7B shape at the last position of the table
        (17, 4, 64, 100, 500000.0),
        (300, 2, 128, 0, 10000.0),
    ] {
        let table = RopeTable::new(ctx, 1024, head_dim, theta);
        let mut rng = Rng::new(rows as u64 * 7 + head_dim as u64);
        let width = n_heads * head_dim;
        // Rotate the second half of each row of a wider buffer (q|k style) to test offset/stride.
        let stride = 2 * width;
        let data: Vec<f32> = rng.vec_normal(rows * stride, 1.0);
        let buf = ctx.upload("qk", &data);
        let args = RopeArgs { data: &buf, rows, n_heads, row_stride: stride, offset: width, start_pos };
        run(ctx, &[rope(ctx, &table, &args).unwrap()]);
        let got = read_f32(ctx, &buf, rows * stride);

        let mut want = data.clone();
        let mut part: Vec<f32> = (0..rows).flat_map(|t| data[t * stride + width..(t + 1) * stride].to_vec()).collect();
        reference::rope::rope(&mut part, n_heads, head_dim, start_pos, theta);
        for t in 0..rows {
            want[t * stride + width..(t + 1) * stride].copy_from_slice(&part[t * width..(t + 1) * width]);
        }
        let tol = |i: usize| {
            let pair = i - i % 2;
            4.0 * U * (data[pair].abs() + data[pair + 1].abs()) as f64 + 1e-30
        };
        assert_close(&format!("rope rows={rows} d={head_dim} pos={start_pos}"), &got, &want, tol);
    }
}

#[test]
fn rope_table_matches_f64_angles() {
    // The table follows PyTorch's f32 steps; check it against angles computed
    // wholly in f64: the difference is the f32 rounding of freq and t·freq,
    // ≤ 2u·|angle| in angle, so ≤ 2u·|angle| + u in cos/sin.
    let (positions, d, theta) = (1024, 128, 10000.0f32);
    let table = reference::rope::rope_table(positions, d, theta);
    for t in [0usize, 1, 511, 1023] {
        for i in [0usize, 1, 31, 63] {
            let angle = t as f64 / (theta as f64).powf(2.0 * i as f64 / d as f64);
            let tol = 4.0 * U * angle.abs() + 2.0 * U;
            let (c, s) = (table[(t * d / 2 + i) * 2] as f64, table[(t * d / 2 + i) * 2 + 1] as f64);
            assert!((c - angle.cos()).abs() <= tol, "cos t={t} i={i}: {c} vs {}", angle.cos());
            assert!((s - angle.sin()).abs() <= tol, "sin t={t} i={i}: {s} vs {}", angle.sin());
        }
    }
}

#[test]
fn rope_rejects_positions_past_the_table() {
    let ctx = gpu();
    let table = RopeTable::new(ctx, 16, 8, 10000.0);
    let buf = ctx.storage("qk", 4 * 8 * 4);
    let args = RopeArgs { data: &buf, rows: 4, n_heads: 1, row_stride: 8, offset: 0, start_pos: 14 };
    assert!(rope(ctx, &table, &args).is_err());
}
