//! Quantised matmul (GEMV and GEMM) on the GPU against the CPU reference.
//!
//! Tolerance: the reference sums in f64 over the *dequantised* weights, which
//! are exact in f32 (a ≤7-bit integer times an f16 scale), so the only error
//! is the kernel's f32 accumulation. Rounding errors of a k-term sum grow like
//! √k·u·Σ|xᵢwᵢ| (u = 2⁻²⁴); we allow 16× that, plus the rounding of the bias
//! add and scale multiply (4u·|y|). For q4, |wᵢ| counts 8·|scale| more (the
//! rowwise kernel sums the stored q + 8 and subtracts 8·Σx per group).

mod common;

use common::{assert_close, gpu, read_f32, run};
use llama_adapter_web::format::quant::{PackedMatrix, QuantFormat, Rounding};
use llama_adapter_web::kernels::matmul::{matmul, rowwise_windows, GpuMatrix, LoraEpilogue, MatmulArgs, MatmulShape};
use llama_adapter_web::reference;
use llama_adapter_web::util::Rng;

const U: f64 = 1.0 / (1u64 << 24) as f64;

struct Case {
    format: QuantFormat,
    m: usize,
    n: usize,
    k: usize,
    shape: MatmulShape,
    bias: bool,
    scale: bool,
    accumulate: bool,
    /// Per-block byte limit (forces row blocks), or None for the device's.
    block_limit: Option<u64>,
    x_pad: usize,
    /// Put x in an activations buffer (uniform-window reads for rowwise).
    window: bool,
    /// How the Q formats round (full-range and search give negative scales and the -8 / -128 level).
    rounding: Rounding,
    /// The weights are [w1; w3] (2n rows) and the kernel stores silu(y1) ⊙ y3.
    gated: bool,
    /// A LoRA term in the epilogue.
    lora: Option<LoraCase>,
}

/// A LoRA epilogue: random u and L2, weights in members of `member_rows`
/// rows, this matrix reading u from column `u_offset` and L2 from row `up_row0`.
#[derive(Clone, Copy)]
struct LoraCase {
    rank: usize,
    member_rows: usize,
    u_offset: usize,
    up_row0: usize,
}

fn check(case: &Case, seed: u64) {
    let ctx = gpu();
    let Case { format, m, n, k, shape, .. } = *case;
    // Weight rows: n outputs, or [w1; w3] for the gated epilogue.
    let rows = if case.gated { 2 * n } else { n };
    let mut rng = Rng::new(seed);
    let w: Vec<f32> = rng.vec_normal(rows * k, 0.5);
    let packed = PackedMatrix::pack_with(format, rows, k, &w, case.rounding, None);
    // x rows live at offset 3 with a stride of k + x_pad, to test addressing.
    let x_stride = k + case.x_pad;
    let x_offset = if case.window { 8 } else { 3 };
    let mut x_buf = vec![f32::NAN; x_offset + m * x_stride];
    let x: Vec<f32> = rng.vec_normal(m * k, 1.0);
    for t in 0..m {
        x_buf[x_offset + t * x_stride..x_offset + t * x_stride + k].copy_from_slice(&x[t * k..(t + 1) * k]);
    }
    let bias: Vec<f32> = rng.vec_normal(rows, 1.0);
    let scale: Vec<f32> = (0..rows).map(|_| 0.5 + rng.uniform() as f32).collect();
    let y0: Vec<f32> = rng.vec_normal(m * n, 1.0);
    // LoRA: u rows of u_stride (with a spare column), L2 rows for every global weight row.
    let lora = case.lora.map(|l| {
        let members = rows.div_ceil(l.member_rows);
        let u_stride = l.u_offset + members * l.rank + 1;
        let u: Vec<f32> = rng.vec_normal(m * u_stride, 1.0);
        let up: Vec<f32> = rng.vec_normal((l.up_row0 + rows) * l.rank, 0.5);
        (l, u_stride, u, up)
    });
    // The LoRA term of x row t, weight row j, and the sum of its |products|.
    let lora_term = |t: usize, j: usize| -> (f64, f64) {
        let Some((l, u_stride, u, up)) = &lora else { return (0.0, 0.0) };
        let u0 = t * u_stride + l.u_offset + (j / l.member_rows) * l.rank;
        let w0 = (l.up_row0 + j) * l.rank;
        (0..l.rank).fold((0.0, 0.0), |(s, a), i| {
            let p = u[u0 + i] as f64 * up[w0 + i] as f64;
            (s + p, a + p.abs())
        })
    };

    let weight = match case.block_limit {
        Some(limit) => GpuMatrix::upload_with_limit(ctx, "w", &packed, limit).unwrap(),
        None => GpuMatrix::upload(ctx, "w", &packed).unwrap(),
    };
    if let Some(limit) = case.block_limit {
        assert!(weight.blocks.len() > 1, "block limit {limit} should split the {rows}x{k} matrix");
    }
    let x_gpu = if case.window { ctx.upload_activations("x", &x_buf) } else { ctx.upload("x", &x_buf) };
    let bias_gpu = ctx.upload("bias", &bias);
    let scale_gpu = ctx.upload("scale", &scale);
    let y_gpu = ctx.upload("y", &y0);
    let lora_gpu = lora.as_ref().map(|(_, _, u, up)| (ctx.upload("u", u), ctx.upload("up", up)));
    let args = MatmulArgs {
        x: &x_gpu,
        x_offset,
        x_stride,
        m,
        weight: &weight,
        bias: case.bias.then_some(&bias_gpu),
        scale: case.scale.then_some(&scale_gpu),
        y: &y_gpu,
        y_offset: 0,
        y_stride: n,
        accumulate: case.accumulate,
        gated: case.gated,
        lora: match (&lora, &lora_gpu) {
            (Some((l, u_stride, _, _)), Some((u, up))) => {
                Some(LoraEpilogue { u, u_stride: *u_stride, u_offset: l.u_offset, up, up_row0: l.up_row0, rank: l.rank, member_rows: l.member_rows })
            }
            _ => None,
        },
    };
    if shape == MatmulShape::Rowwise {
        let aligned = k % 4 == 0 && x_stride % 4 == 0;
        assert_eq!(rowwise_windows(ctx, &args).is_some(), case.window && aligned, "uniform window use");
    }
    run(ctx, &matmul(ctx, &args, shape).unwrap());
    let got = read_f32(ctx, &y_gpu, m * n);

    // The plain product of all weight rows, and its error bound per element.
    // s ⊙ (x·Wᵀ + b + L) = s ⊙ (x·Wᵀ + b) + s ⊙ L.
    let mut full = reference::matmul::matmul(&x, m, &packed, case.bias.then_some(&bias[..]), case.scale.then_some(&scale[..]));
    for t in 0..m {
        for j in 0..rows {
            let s = if case.scale { scale[j] as f64 } else { 1.0 };
            full[t * rows + j] = (full[t * rows + j] as f64 + s * lora_term(t, j).0) as f32;
        }
    }
    let deq = packed.dequantize();
    // The rowwise q4 path sums (q + 8)·x and takes 8·Σx off per group, so its
    // rounding scales with |q + 8|, not |q|: count 8·|scale| more per weight.
    let q4_bias = |j: usize, i: usize| if format == QuantFormat::Q4 { 8.0 * packed.scale(j, i / 32).abs() } else { 0.0 };
    let abs_sum = |t: usize, j: usize| -> f64 { (0..k).map(|i| (x[t * k + i].abs() * (deq[j * k + i].abs() + q4_bias(j, i))) as f64).sum() };
    let bound = |t: usize, j: usize| -> f64 {
        let s = if case.scale { scale[j] as f64 } else { 1.0 };
        // The LoRA sum's own rounding (rank terms) and its add before the bias.
        let (term, term_abs) = lora_term(t, j);
        let lora = 16.0 * (lora.as_ref().map_or(1, |l| l.0.rank) as f64).sqrt() * U * term_abs * s + 4.0 * U * term.abs() * s;
        16.0 * (k as f64).sqrt() * U * abs_sum(t, j) * s + 4.0 * U * full[t * rows + j].abs() as f64 + lora
    };
    let what = format!("{} {:?} m={m} n={n} k={k} bias={} scale={} acc={} gated={} lora={}", format.name(), shape, case.bias, case.scale, case.accumulate, case.gated, case.lora.is_some());
    if case.gated {
        // silu(a)·b: an error da moves it by at most 1.1·|da|·|b| (|silu'| < 1.1), db by |silu(a)|·|db|.
        let silu = |a: f64| a / (1.0 + (-a).exp());
        let want: Vec<f32> = (0..m * n).map(|i| {
            let (t, j) = (i / n, i % n);
            (silu(full[t * rows + j] as f64) * full[t * rows + n + j] as f64) as f32
        }).collect();
        assert_close(&what, &got, &want, |i| {
            let (t, j) = (i / n, i % n);
            let (a, b) = (full[t * rows + j] as f64, full[t * rows + n + j] as f64);
            1.1 * bound(t, j) * b.abs() + silu(a).abs() * bound(t, n + j) + bound(t, j) * bound(t, n + j) + 8.0 * U * (want[i].abs() as f64) + 1e-30
        });
        return;
    }
    let mut want = full.clone();
    if case.accumulate {
        for (w, y) in want.iter_mut().zip(&y0) {
            *w += y;
        }
    }
    assert_close(&what, &got, &want, |i| {
        let (t, j) = (i / n, i % n);
        bound(t, j) + 4.0 * U * y0[i].abs() as f64 + 1e-30
    });
}

#[test]
fn matmul_random_shapes_all_formats() {
    // Sizes that are not multiples of the 32-group, the 8-row GEMV block or
    // the 64×64 GEMM tile, plus exact multiples.
    let shapes = [(1, 1, 1), (1, 7, 31), (1, 9, 33), (2, 65, 100), (3, 128, 64), (5, 70, 257), (1, 300, 1000)];
    let mut seed = 1;
    for format in QuantFormat::ALL {
        for &(m, n, k) in &shapes {
            for shape in [MatmulShape::Gemv, MatmulShape::Gemm, MatmulShape::Rowwise] {
                for window in [false, true] {
                    seed += 1;
                    let flags = seed % 4;
                    let x_pad = if window { 4 * (seed as usize % 2) } else { seed as usize % 5 };
                    check(
                        &Case { format, m, n, k, shape, bias: flags & 1 == 1, scale: flags & 2 == 2, accumulate: seed % 3 == 0, block_limit: None, x_pad, window, rounding: Rounding::Absmax, gated: false, lora: None },
                        seed,
                    );
                }
            }
        }
    }
}

/// The rowwise shape's register tiles (1, 2 and 4 weight rows per
/// invocation, picked by the output count), with partial tiles and groups;
/// m = 1 runs the single-row entry point (`rowwise_one`), m > 1 `rowwise`.
#[test]
fn rowwise_register_tiles() {
    let mut seed = 900;
    for format in QuantFormat::ALL {
        for &(m, n, k) in &[(1, 255, 64), (5, 300, 96), (1, 513, 100), (6, 700, 64), (9, 1031, 40)] {
            for window in [false, true] {
                seed += 1;
                let case = Case { format, m, n, k, shape: MatmulShape::Rowwise, bias: true, scale: seed % 2 == 0, accumulate: seed % 3 == 0, block_limit: None, x_pad: 0, window, rounding: Rounding::Absmax, gated: false, lora: None };
                check(&case, seed);
            }
        }
    }
}

/// The gated epilogue (the FFN's silu(w1·x) ⊙ w3·x in one matmul) in the two
/// shapes that have it, every format, every rowwise tile size.
#[test]
fn matmul_gated_epilogue() {
    let mut seed = 1100;
    for format in QuantFormat::ALL {
        for &(m, n, k) in &[(1, 7, 31), (1, 100, 64), (3, 300, 96), (1, 600, 100), (6, 520, 64)] {
            for shape in [MatmulShape::Gemv, MatmulShape::Rowwise] {
                seed += 1;
                let case = Case { format, m, n, k, shape, bias: seed % 2 == 0, scale: seed % 3 != 0, accumulate: false, block_limit: None, x_pad: 0, window: seed % 2 == 1, rounding: Rounding::Absmax, gated: true, lora: None };
                check(&case, seed);
            }
        }
    }
}

/// The LoRA epilogue in every shape and format: a single linear (one
/// member), a fused group (three members, u slices side by side), a member
/// stored on its own (reading its slice of u and its rows of L2), the gated
/// w1 | w3 with one member per half, row blocks, and accumulation.
#[test]
fn matmul_lora_epilogue() {
    let mut seed = 1500;
    for format in QuantFormat::ALL {
        for &(m, n, k, members, gated) in &[(1, 48, 64, 1, false), (3, 96, 100, 3, false), (1, 300, 96, 3, false), (6, 70, 64, 1, false), (1, 100, 64, 2, true), (5, 130, 96, 2, true)] {
            for shape in [MatmulShape::Gemv, MatmulShape::Gemm, MatmulShape::Rowwise] {
                if gated && shape == MatmulShape::Gemm {
                    continue;
                }
                seed += 1;
                let rows = if gated { 2 * n } else { n };
                let (member_rows, u_offset, up_row0) = match seed % 3 {
                    // A separately stored member 1 of 3: its rows are one member.
                    0 if !gated => (rows, 5, rows),
                    _ => (rows / members, 0, 0),
                };
                let lora = Some(LoraCase { rank: if seed % 2 == 0 { 16 } else { 5 }, member_rows, u_offset, up_row0 });
                let accumulate = !gated && seed % 4 == 1;
                let case = Case { format, m, n, k, shape, bias: seed % 2 == 1, scale: seed % 3 != 1, accumulate, block_limit: None, x_pad: 0, window: seed % 2 == 0, rounding: Rounding::Absmax, gated, lora };
                check(&case, seed);
            }
        }
        // Row blocks: L2 is indexed by the global weight row.
        seed += 1;
        let lora = Some(LoraCase { rank: 16, member_rows: 50, u_offset: 0, up_row0: 0 });
        check(&Case { format, m: 3, n: 50, k: 96, shape: MatmulShape::Rowwise, bias: true, scale: true, accumulate: false, block_limit: Some(2048), x_pad: 0, window: true, rounding: Rounding::Absmax, gated: false, lora }, seed);
    }
}

/// The gated epilogue is refused where it does not exist (the tiled GEMM) or
/// cannot hold (accumulating, an odd row count).
#[test]
fn matmul_gated_refusals() {
    let ctx = gpu();
    let packed = PackedMatrix::pack_with(QuantFormat::Q4, 64, 64, &vec![0.5; 64 * 64], Rounding::Absmax, None);
    let weight = GpuMatrix::upload(ctx, "w", &packed).unwrap();
    let odd = GpuMatrix::upload(ctx, "w", &PackedMatrix::pack_with(QuantFormat::Q4, 63, 64, &vec![0.5; 63 * 64], Rounding::Absmax, None)).unwrap();
    let x = ctx.upload("x", &vec![1.0f32; 64 * 16]);
    let y = ctx.upload("y", &vec![0.0f32; 64 * 16]);
    let args = |weight, accumulate| MatmulArgs { x: &x, x_offset: 0, x_stride: 64, m: 16, weight, bias: None, scale: None, y: &y, y_offset: 0, y_stride: 32, accumulate, gated: true, lora: None };
    assert!(matmul(ctx, &args(&weight, false), MatmulShape::Gemm).is_err(), "gemm has no gated epilogue");
    assert!(matmul(ctx, &args(&weight, true), MatmulShape::Rowwise).is_err(), "gated does not accumulate");
    assert!(matmul(ctx, &args(&odd, false), MatmulShape::Rowwise).is_err(), "gated needs an even row count");
    assert!(matmul(ctx, &args(&weight, false), MatmulShape::Rowwise).is_ok());
}

/// The full-range and search roundings store negative scales and use the
/// lowest level (-8, -128); every kernel shape must read them as the CPU does.
#[test]
fn matmul_full_range_and_search_rounding() {
    let mut seed = 700;
    for format in [QuantFormat::Q8, QuantFormat::Q4] {
        for rounding in [Rounding::FullRange, Rounding::Search] {
            for &(m, n, k) in &[(1, 9, 33), (3, 70, 257), (12, 65, 96)] {
                for shape in [MatmulShape::Gemv, MatmulShape::Gemm, MatmulShape::Rowwise] {
                    seed += 1;
                    check(&Case { format, m, n, k, shape, bias: true, scale: seed % 2 == 0, accumulate: false, block_limit: None, x_pad: 1, window: false, rounding, gated: false, lora: None }, seed);
                }
            }
        }
    }
}

#[test]
fn gemm_many_rows_all_formats() {
    for (i, format) in QuantFormat::ALL.into_iter().enumerate() {
        for shape in [MatmulShape::Gemm, MatmulShape::Rowwise] {
            check(
                &Case { format, m: 130, n: 197, k: 176, shape, bias: true, scale: i % 2 == 0, accumulate: i == 3, block_limit: None, x_pad: 1, window: false, rounding: Rounding::Absmax, gated: false, lora: None },
                100 + i as u64,
            );
        }
        check(
            &Case { format, m: 64, n: 64, k: 64, shape: MatmulShape::Auto, bias: false, scale: false, accumulate: false, block_limit: None, x_pad: 0, window: true, rounding: Rounding::Absmax, gated: false, lora: None },
            200 + i as u64,
        );
    }
}

/// Many x rows through several 64 KiB uniform windows (130 rows × 1000
/// inputs = 520 KB of x), and a window pinned to the end of the buffer.
#[test]
fn rowwise_across_uniform_windows() {
    for format in [QuantFormat::Q4, QuantFormat::F32] {
        check(
            &Case { format, m: 130, n: 70, k: 1000, shape: MatmulShape::Rowwise, bias: true, scale: false, accumulate: false, block_limit: None, x_pad: 12, window: true, rounding: Rounding::Absmax, gated: false, lora: None },
            400,
        );
    }
}

#[test]
fn matmul_row_blocks_cover_the_output() {
    // A tiny binding limit splits the weights into several row blocks; every
    // output row must still be written exactly once, with the right bias.
    for format in QuantFormat::ALL {
        for shape in [MatmulShape::Gemv, MatmulShape::Gemm, MatmulShape::Rowwise] {
            check(
                &Case { format, m: 3, n: 50, k: 96, shape, bias: true, scale: true, accumulate: false, block_limit: Some(2048), x_pad: 0, window: true, rounding: Rounding::Absmax, gated: false, lora: None },
                300,
            );
        }
    }
}

/// The real 7B shapes (q/k/v/o: 4096×4096; w1/w3: 11008×4096), one decode token.
#[test]
fn gemv_7b_shapes() {
    for (format, n, k) in [
        (QuantFormat::Q4, 4096, 4096),
        (QuantFormat::Q4, 11008, 4096),
        (QuantFormat::Q8, 11008, 4096),
        (QuantFormat::F16, 4096, 4096),
    ] {
        for shape in [MatmulShape::Gemv, MatmulShape::Rowwise] {
            check(&Case { format, m: 1, n, k, shape, bias: true, scale: false, accumulate: false, block_limit: None, x_pad: 0, window: true, rounding: Rounding::Absmax, gated: false, lora: None }, n as u64 + k as u64);
        }
    }
}

/// f32 11008×4096 is 180 MB: more than one 128 MiB binding, so it must split.
#[test]
fn gemv_7b_f32_splits_over_the_binding_limit() {
    let packed_bytes = QuantFormat::F32.bytes(11008, 4096);
    assert!(packed_bytes > 128 << 20);
    check(
        &Case { format: QuantFormat::F32, m: 1, n: 11008, k: 4096, shape: MatmulShape::Auto, bias: false, scale: false, accumulate: true, block_limit: Some(128 << 20), x_pad: 0, window: true, rounding: Rounding::Absmax, gated: false, lora: None },
        77,
    );
}

#[test]
fn matmul_rejects_mismatched_buffers() {
    let ctx = gpu();
    let packed = PackedMatrix::pack(QuantFormat::Q4, 8, 64, &vec![0.5; 8 * 64]);
    let weight = GpuMatrix::upload(ctx, "w", &packed).unwrap();
    let x = ctx.upload("x", &vec![1f32; 32]); // too short for k = 64
    let y = ctx.storage("y", 8 * 4);
    let args = MatmulArgs { x: &x, x_offset: 0, x_stride: 64, m: 1, weight: &weight, bias: None, scale: None, y: &y, y_offset: 0, y_stride: 8, accumulate: false, gated: false, lora: None };
    let err = matmul(ctx, &args, MatmulShape::Auto).err().expect("short x must be rejected");
    assert!(err.to_string().contains("matmul x"), "{err}");
}
