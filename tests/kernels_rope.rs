//! Rotary embedding on the GPU against the CPU reference, and the table
//! against an independent f64 evaluation.
//!
//! Both sides read the same (cos, sin) table, so only the rotation's own
//! rounding differs: a·c − b·s in f32 is within 2 ulp of |a|+|b| (tolerance
//! 4u·(|a|+|b|)).

mod common;

use common::{assert_close, gpu, read_f32, run};
use llama_adapter_web::kernels::rope::{rope, rope_qkv, QkvArgs, RopeArgs, RopeTable};
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

/// The fused q|k|v RoPE: q rotated in place, k rotated into the key cache
/// rows start_pos.., v copied into the value cache; every other cache row is
/// left alone. Same tolerance as `rope` (v is copied exactly).
#[test]
fn rope_qkv_rotates_q_and_writes_the_cache_rows() {
    let ctx = gpu();
    for &(rows, n_heads, head_dim, start_pos) in &[(1usize, 1usize, 2usize, 0usize), (1, 8, 64, 136), (5, 3, 8, 7), (128, 4, 64, 0), (1, 32, 128, 1023)] {
        let table = RopeTable::new(ctx, 1024, head_dim, 10000.0);
        let width = n_heads * head_dim;
        let stride = 3 * width;
        let mut rng = Rng::new((rows * 31 + head_dim + start_pos) as u64);
        let qkv: Vec<f32> = rng.vec_normal(rows * stride, 1.0);
        let positions = 1024;
        let cache_k0: Vec<f32> = rng.vec_normal(positions * width, 1.0);
        let cache_v0: Vec<f32> = rng.vec_normal(positions * width, 1.0);
        let (qkv_gpu, k_gpu, v_gpu) = (ctx.upload("qkv", &qkv), ctx.upload("k", &cache_k0), ctx.upload("v", &cache_v0));
        let args = QkvArgs { qkv: &qkv_gpu, rows, n_heads, row_stride: stride, start_pos, cache_k: &k_gpu, cache_v: &v_gpu };
        run(ctx, &[rope_qkv(ctx, &table, &args).unwrap()]);

        let part = |t: usize, which: usize| qkv[t * stride + which * width..t * stride + (which + 1) * width].to_vec();
        let mut q: Vec<f32> = (0..rows).flat_map(|t| part(t, 0)).collect();
        let mut k: Vec<f32> = (0..rows).flat_map(|t| part(t, 1)).collect();
        reference::rope::rope(&mut q, n_heads, head_dim, start_pos, 10000.0);
        reference::rope::rope(&mut k, n_heads, head_dim, start_pos, 10000.0);
        let mut want_qkv = qkv.clone();
        let (mut want_k, mut want_v) = (cache_k0.clone(), cache_v0.clone());
        for t in 0..rows {
            want_qkv[t * stride..t * stride + width].copy_from_slice(&q[t * width..(t + 1) * width]);
            want_k[(start_pos + t) * width..(start_pos + t + 1) * width].copy_from_slice(&k[t * width..(t + 1) * width]);
            want_v[(start_pos + t) * width..(start_pos + t + 1) * width].copy_from_slice(&part(t, 2));
        }
        let what = format!("rope_qkv rows={rows} heads={n_heads} d={head_dim} pos={start_pos}");
        // A rotated pair's tolerance comes from its input pair.
        let pair_tol = |src: &[f32], at: usize| 4.0 * U * (src[at - at % 2].abs() + src[at - at % 2 + 1].abs()) as f64 + 1e-30;
        assert_close(&format!("{what} q"), &read_f32(ctx, &qkv_gpu, rows * stride), &want_qkv, |i| pair_tol(&qkv, i));
        let k_src: Vec<f32> = (0..positions).flat_map(|p| if p >= start_pos && p < start_pos + rows { part(p - start_pos, 1) } else { vec![0.0; width] }).collect();
        assert_close(&format!("{what} k cache"), &read_f32(ctx, &k_gpu, positions * width), &want_k, |i| pair_tol(&k_src, i));
        assert_eq!(read_f32(ctx, &v_gpu, positions * width), want_v, "{what}: v cache");
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
