//! RMSNorm and LayerNorm on the GPU against the CPU reference.
//!
//! Tolerance: the kernels sum squares in f32 over `dim` terms in a 256-way
//! tree; the relative error of the mean square is ≲ √dim·u, halved by the
//! square root, then two more roundings (scale, weight). We allow
//! 8·(√dim + 4)·u relative to |x·w|·rsqrt(...) plus a tiny absolute floor.

mod common;

use common::{assert_close, gpu, read_f32, run};
use llama_adapter_web::kernels::{layernorm, rmsnorm};
use llama_adapter_web::reference;
use llama_adapter_web::util::Rng;

const U: f64 = 1.0 / (1u64 << 24) as f64;

#[test]
fn rmsnorm_matches_reference() {
    let ctx = gpu();
    for &(rows, dim, eps) in &[(1, 1, 1e-6f32), (3, 7, 1e-5), (2, 255, 1e-6), (5, 4096, 1e-6), (2, 4097, 1e-5), (70, 64, 1e-5)] {
        let mut rng = Rng::new((rows * dim) as u64);
        let x: Vec<f32> = (0..rows * dim).map(|i| rng.normal(1.0) * (1 + i % 3) as f32).collect();
        let w: Vec<f32> = rng.vec_normal(dim, 1.0);
        let (xg, wg, yg) = (ctx.upload("x", &x), ctx.upload("w", &w), ctx.storage("y", (rows * dim * 4) as u64));
        run(ctx, &[rmsnorm::rmsnorm(ctx, &xg, &wg, &yg, rows, dim, eps).unwrap()]);
        let want = reference::rmsnorm::rmsnorm(&x, &w, dim, eps);
        let tol_rel = 8.0 * ((dim as f64).sqrt() + 4.0) * U;
        assert_close(&format!("rmsnorm rows={rows} dim={dim}"), &read_f32(ctx, &yg, rows * dim), &want, |i| tol_rel * want[i].abs() as f64 + 1e-30);
    }
}

#[test]
fn layernorm_matches_reference() {
    let ctx = gpu();
    for &(rows, dim) in &[(1, 1), (3, 7), (257, 1024), (267, 768), (2, 4096), (4, 1000)] {
        let mut rng = Rng::new(dim as u64 + 17);
        // An offset mean makes the centring matter.
        let x: Vec<f32> = (0..rows * dim).map(|_| 3.0 + rng.normal(2.0)).collect();
        let w: Vec<f32> = rng.vec_normal(dim, 1.0);
        let b: Vec<f32> = rng.vec_normal(dim, 1.0);
        let (xg, wg, bg, yg) = (ctx.upload("x", &x), ctx.upload("w", &w), ctx.upload("b", &b), ctx.storage("y", (rows * dim * 4) as u64));
        run(ctx, &[layernorm::layernorm(ctx, &xg, &wg, &bg, &yg, rows, dim, layernorm::LAYERNORM_EPS).unwrap()]);
        let want = reference::layernorm::layernorm(&x, &w, &b, dim, layernorm::LAYERNORM_EPS);
        // Relative to the normalised term |(x−mean)·inv·w| (≤ ~4·|w|) plus the bias add.
        let tol = |i: usize| {
            let c = i % dim;
            8.0 * ((dim as f64).sqrt() + 8.0) * U * (8.0 * w[c].abs() as f64 + b[c].abs() as f64) + 1e-30
        };
        assert_close(&format!("layernorm rows={rows} dim={dim}"), &read_f32(ctx, &yg, rows * dim), &want, tol);
    }
}
