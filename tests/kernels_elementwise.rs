//! Activations, residual add and embedding gather against the CPU reference.
//!
//! Tolerances: SiLU-gate and QuickGELU are a few f32 operations (exp, divide,
//! multiply): 8u relative plus the exp's own error on Vulkan (≤ 3 + 2|x| ulp)
//! → 8u·(4 + 2|x|)·|y|. GELU's erf is Abramowitz–Stegun 7.1.26 (|err| ≤
//! 1.5e-7), so its bound is 0.5·|x|·1.5e-7 on top. The add and the gather are
//! exact.

mod common;

use common::{assert_close, gpu, read_f32, run};
use llama_adapter_web::format::quant::{PackedMatrix, QuantFormat};
use llama_adapter_web::kernels::elementwise;
use llama_adapter_web::kernels::embedding::embedding;
use llama_adapter_web::kernels::matmul::GpuMatrix;
use llama_adapter_web::reference;
use llama_adapter_web::util::Rng;

const U: f64 = 1.0 / (1u64 << 24) as f64;

fn inputs(n: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
    let mut rng = Rng::new(seed);
    // Span the interesting range, including large |x| where exp overflows.
    let a: Vec<f32> = (0..n).map(|i| if i % 97 == 0 { rng.symmetric(60.0) } else { rng.normal(3.0) }).collect();
    let b = rng.vec_normal(n, 1.0);
    (a, b)
}

#[test]
fn activations_match_reference() {
    let ctx = gpu();
    for n in [1usize, 255, 257, 100_000] {
        let (a, b) = inputs(n, n as u64);
        let (ag, bg) = (ctx.upload("a", &a), ctx.upload("b", &b));

        let out = ctx.storage("out", (n * 4) as u64);
        run(ctx, &[elementwise::silu_gate(ctx, &ag, &bg, &out, n).unwrap()]);
        let want = reference::elementwise::silu_gate(&a, &b);
        assert_close("silu_gate", &read_f32(ctx, &out, n), &want, |i| 8.0 * U * (4.0 + 2.0 * a[i].abs() as f64) * want[i].abs() as f64 + 1e-30);

        let buf = ctx.upload("x", &a);
        run(ctx, &[elementwise::gelu(ctx, &buf, n).unwrap()]);
        let want = reference::elementwise::gelu(&a);
        assert_close("gelu", &read_f32(ctx, &buf, n), &want, |i| 0.5 * a[i].abs() as f64 * (1.5e-7 + 4.0 * U) + 8.0 * U * (4.0 + 2.0 * a[i].abs() as f64) * want[i].abs() as f64 + 1e-30);

        let buf = ctx.upload("x", &a);
        run(ctx, &[elementwise::quick_gelu(ctx, &buf, n).unwrap()]);
        let want = reference::elementwise::quick_gelu(&a);
        assert_close("quick_gelu", &read_f32(ctx, &buf, n), &want, |i| 8.0 * U * (4.0 + 2.0 * a[i].abs() as f64) * want[i].abs() as f64 + 1e-30);

        let buf = ctx.upload("h", &a);
        run(ctx, &[elementwise::add(ctx, &bg, &buf, n).unwrap()]);
        assert_eq!(read_f32(ctx, &buf, n), reference::elementwise::add(&a, &b), "residual add must be exact");
    }
}

/// The SwiGLU gate over the halves of fused [w1 | w3] rows: the same
/// arithmetic as `silu_gate`, so the same tolerance, plus exact addressing.
#[test]
fn silu_gate_over_fused_halves_matches_reference() {
    let ctx = gpu();
    for &(rows, width) in &[(1usize, 1usize), (3, 255), (128, 1376), (2, 11008)] {
        let (a, b) = inputs(rows * width, (rows * width) as u64 + 3);
        // Row r of the fused output: [a row r | b row r].
        let fused: Vec<f32> = (0..rows).flat_map(|r| a[r * width..(r + 1) * width].iter().chain(&b[r * width..(r + 1) * width]).copied().collect::<Vec<_>>()).collect();
        let out = ctx.storage("out", (rows * width * 4) as u64);
        run(ctx, &[elementwise::silu_gate_halves(ctx, &ctx.upload("a|b", &fused), rows, width, &out).unwrap()]);
        let want = reference::elementwise::silu_gate(&a, &b);
        assert_close(&format!("silu_gate_halves {rows}x{width}"), &read_f32(ctx, &out, rows * width), &want, |i| 8.0 * U * (4.0 + 2.0 * a[i].abs() as f64) * want[i].abs() as f64 + 1e-30);
    }
}

#[test]
fn gelu_reference_erf_is_accurate() {
    // The reference's erf against known values (to 1e-15).
    let known = [(0.0, 0.0), (0.5, 0.5204998778130465), (1.0, 0.8427007929497149), (2.0, 0.9953222650189527), (3.0, 0.9999779095030014), (-1.5, -0.9661051464753108)];
    for (x, e) in known {
        assert!((reference::elementwise::erf(x) - e).abs() < 1e-14, "erf({x})");
    }
}

#[test]
fn embedding_gather_all_formats_and_blocks() {
    let ctx = gpu();
    let (vocab, dim) = (300, 70);
    let mut rng = Rng::new(3);
    let table = rng.vec_normal(vocab * dim, 0.5);
    let tokens: Vec<u32> = vec![0, 299, 1, 150, 150, 42, 298, 77];
    for format in QuantFormat::ALL {
        let packed = PackedMatrix::pack(format, vocab, dim, &table);
        // Force several row blocks, as the 32000-row tables get in f16/q8/f32.
        let gpu_table = GpuMatrix::upload_with_limit(ctx, "emb", &packed, 4096).unwrap();
        assert!(gpu_table.blocks.len() > 2);
        let tok = ctx.upload("tokens", &tokens);
        let out = ctx.upload("out", &vec![f32::NAN; 5 + tokens.len() * dim]);
        run(ctx, &embedding(ctx, &gpu_table, &tok, tokens.len(), &out, 5).unwrap());
        let got = read_f32(ctx, &out, 5 + tokens.len() * dim);
        assert!(got[..5].iter().all(|v| v.is_nan()), "wrote before out_offset");
        assert_eq!(&got[5..], &reference::embedding::embedding(&packed, &tokens)[..], "{}: gather must be exact", format.name());
    }
}
