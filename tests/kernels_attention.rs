//! Gated prefix attention (decoder) and bidirectional attention (vision) on
//! the GPU against the CPU reference.
//!
//! Tolerance: scores carry f32 dot-product error ≈ √d·u·|q||k|; the softmax
//! weights then carry that much relative error, and the weighted sum of V
//! adds √n·u relative rounding. With |q|,|k| = O(√d) (unit-variance
//! entries) we allow 2e-5·max|V| absolute (≈ 300u), for values of order 1.

mod common;

use common::{assert_close, gpu, read_f32, run};
use llama_adapter_web::kernels::attention::{bidirectional_attention, decoder_attention, decoder_attention_split, split_partials_len, DecoderAttention, Prefix, Rows, Split, SPLIT_KEYS};
use llama_adapter_web::reference;
use llama_adapter_web::util::Rng;

struct Case {
    n_queries: usize,
    n_heads: usize,
    head_dim: usize,
    start_pos: usize,
    prefix_len: usize,
    new_gate: f32,
    capacity: usize,
}

/// How the decoder attention runs: one pass, or split-K over the keys
/// (one query row) with splits for `capacity` keys.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Pass {
    Single,
    SplitK,
}

fn check_decoder(c: &Case, seed: u64) {
    check_decoder_pass(c, seed, Pass::Single);
}

fn check_decoder_pass(c: &Case, seed: u64, pass: Pass) {
    let ctx = gpu();
    let mut rng = Rng::new(seed);
    let width = c.n_heads * c.head_dim;
    let kv_len = c.start_pos + c.n_queries;
    assert!(kv_len <= c.capacity);
    // Cache rows past kv_len hold garbage the kernel must not read.
    let mut keys = rng.vec_normal(c.capacity * width, 1.0);
    let mut values = rng.vec_normal(c.capacity * width, 1.0);
    for v in keys[kv_len * width..].iter_mut().chain(values[kv_len * width..].iter_mut()) {
        *v = f32::NAN;
    }
    let q = rng.vec_normal(c.n_queries * width, 1.0);
    let pk = rng.vec_normal(c.prefix_len.max(1) * width, 1.0);
    let pv = rng.vec_normal(c.prefix_len.max(1) * width, 1.0);
    let gate: Vec<f32> = (0..c.n_heads).map(|_| rng.symmetric(2.0)).collect();

    let (qg, kg, vg) = (ctx.upload("q", &q), ctx.upload("k", &keys), ctx.upload("v", &values));
    let (pkg, pvg, gg) = (ctx.upload("pk", &pk), ctx.upload("pv", &pv), ctx.upload("gate", &gate));
    let out = ctx.storage("out", (c.n_queries * width * 4) as u64);
    let rows = |b| Rows { buffer: b, offset: 0, stride: width };
    let prefix = (c.prefix_len > 0).then(|| Prefix { keys: rows(&pkg), values: rows(&pvg), len: c.prefix_len, gate: &gg, new_gate: c.new_gate });
    let args = DecoderAttention {
        q: rows(&qg),
        keys: rows(&kg),
        values: rows(&vg),
        prefix,
        out: rows(&out),
        n_queries: c.n_queries,
        n_heads: c.n_heads,
        head_dim: c.head_dim,
        start_pos: c.start_pos,
    };
    match pass {
        Pass::Single => run(ctx, &[decoder_attention(ctx, &args).unwrap()]),
        Pass::SplitK => {
            // Partials start as NaN: every slot the combine reads must be written.
            let partials = ctx.upload("partials", &vec![f32::NAN; split_partials_len(c.n_heads, c.head_dim, c.capacity)]);
            let d = decoder_attention_split(ctx, &args, Split { partials: &partials, max_keys: c.capacity }).unwrap();
            assert_eq!(d.len(), 2, "a split pass and a combine");
            assert_eq!(d[0].workgroups, [c.n_heads as u32, c.capacity.div_ceil(SPLIT_KEYS) as u32 + 1, 1], "one workgroup per head and split, plus the prefix's");
            run(ctx, &d);
        }
    }
    let got = read_f32(ctx, &out, c.n_queries * width);
    let want = reference::attention::decoder_attention(
        &q,
        &keys[..kv_len * width],
        &values[..kv_len * width],
        (c.prefix_len > 0).then_some((&pk[..], &pv[..], c.prefix_len, &gate[..], c.new_gate)),
        c.n_queries,
        c.n_heads,
        c.head_dim,
        c.start_pos,
    );
    let what = format!("decoder attention {pass:?} S={} H={} d={} start={} P={} capacity={}", c.n_queries, c.n_heads, c.head_dim, c.start_pos, c.prefix_len, c.capacity);
    assert_close(&what, &got, &want, |_| 2e-5 * 4.5);
}

#[test]
fn decoder_prefill_with_prefixes() {
    // Prefill: many rows from position 0, prefix lengths 0, 1, 10, 20, and a
    // prompt longer than one 128-key chunk.
    for (i, &(s, p)) in [(1, 0), (7, 1), (12, 10), (33, 20), (150, 10)].iter().enumerate() {
        check_decoder(&Case { n_queries: s, n_heads: 4, head_dim: 128, start_pos: 0, prefix_len: p, new_gate: 1.0, capacity: 160 }, i as u64);
    }
}

#[test]
fn decoder_decode_steps() {
    // Decode: one row at a later position, over 1..300 cache rows (several chunks).
    for (i, &(start, p, new_gate)) in [(0, 10, 1.0), (5, 10, 0.5), (127, 1, 1.0), (128, 20, -0.7), (299, 10, 1.0)].iter().enumerate() {
        check_decoder(&Case { n_queries: 1, n_heads: 32, head_dim: 128, start_pos: start, prefix_len: p, new_gate, capacity: 512 }, 50 + i as u64);
    }
}

/// Split-K decode (the shape real GPUs take): keys in one split, exactly
/// one, across a split boundary, many splits (a 2048-key context, most
/// splits empty or full), with and without a prefix, small heads; and a
/// capacity below one split.
#[test]
fn decoder_decode_split_k() {
    let cases = [
        (0, 10, 1.0, 32, 128, 512),
        (127, 1, 1.0, 8, 128, 512),
        (128, 20, -0.7, 8, 128, 512),
        (300, 0, 1.0, 4, 64, 512),
        (1999, 10, 0.5, 4, 128, 2048),
        (200, 3, 1.0, 16, 48, 256),
        (2, 3, 1.0, 2, 8, 3),
    ];
    for (i, &(start, p, new_gate, n_heads, head_dim, capacity)) in cases.iter().enumerate() {
        let case = Case { n_queries: 1, n_heads, head_dim, start_pos: start, prefix_len: p, new_gate, capacity };
        check_decoder_pass(&case, 300 + i as u64, Pass::SplitK);
    }
}

/// Split-K takes one query row over at most its capacity of keys.
#[test]
fn decoder_split_k_refusals() {
    let ctx = gpu();
    let buf = ctx.upload("x", &vec![0f32; 64 * 1024]);
    let rows = Rows { buffer: &buf, offset: 0, stride: 64 };
    let partials = ctx.upload("partials", &vec![0f32; split_partials_len(2, 32, 256)]);
    let args = |n_queries, start_pos| DecoderAttention { q: rows, keys: rows, values: rows, prefix: None, out: rows, n_queries, n_heads: 2, head_dim: 32, start_pos };
    assert!(decoder_attention_split(ctx, &args(2, 0), Split { partials: &partials, max_keys: 256 }).is_err(), "two query rows");
    assert!(decoder_attention_split(ctx, &args(1, 256), Split { partials: &partials, max_keys: 256 }).is_err(), "257 keys over a capacity of 256");
    assert!(decoder_attention_split(ctx, &args(1, 255), Split { partials: &partials, max_keys: 512 }).is_err(), "partials too small for 512 keys");
    assert!(decoder_attention_split(ctx, &args(1, 255), Split { partials: &partials, max_keys: 256 }).is_ok());
}

#[test]
fn decoder_continued_prefill_and_small_heads() {
    // Several rows at a non-zero start (chunked prompt), and head dims 64 / 48 / 8.
    check_decoder(&Case { n_queries: 9, n_heads: 3, head_dim: 64, start_pos: 40, prefix_len: 10, new_gate: 1.0, capacity: 64 }, 90);
    check_decoder(&Case { n_queries: 5, n_heads: 16, head_dim: 48, start_pos: 3, prefix_len: 0, new_gate: 1.0, capacity: 8 }, 91);
    check_decoder(&Case { n_queries: 3, n_heads: 2, head_dim: 8, start_pos: 0, prefix_len: 1, new_gate: 1.0, capacity: 3 }, 92);
    // Single rows (decode) with small heads, with and without a prefix.
    check_decoder(&Case { n_queries: 1, n_heads: 16, head_dim: 48, start_pos: 200, prefix_len: 0, new_gate: 1.0, capacity: 256 }, 93);
    check_decoder(&Case { n_queries: 1, n_heads: 2, head_dim: 8, start_pos: 0, prefix_len: 3, new_gate: 1.0, capacity: 3 }, 94);
}

/// The vision towers: CLIP ViT-L/14 (257 tokens, 16 heads × 64) and the
/// visual blocks (267 tokens, 16 heads × 48), q/k/v read from one fused qkv
/// buffer [tokens][q | k | v] as nn.MultiheadAttention / timm produce it.
#[test]
fn bidirectional_vision_shapes() {
    let ctx = gpu();
    for &(tokens, n_heads, head_dim) in &[(257, 16, 64), (267, 16, 48), (5, 2, 8)] {
        let mut rng = Rng::new(tokens as u64);
        let width = n_heads * head_dim;
        let qkv = rng.vec_normal(tokens * 3 * width, 1.0);
        let split = |part: usize| -> Vec<f32> { (0..tokens).flat_map(|t| qkv[t * 3 * width + part * width..t * 3 * width + (part + 1) * width].to_vec()).collect() };
        let (q, k, v) = (split(0), split(1), split(2));
        let buf = ctx.upload("qkv", &qkv);
        let out = ctx.storage("out", (tokens * width * 4) as u64);
        let view = |part: usize| Rows { buffer: &buf, offset: part * width, stride: 3 * width };
        let d = bidirectional_attention(ctx, view(0), view(1), view(2), Rows { buffer: &out, offset: 0, stride: width }, tokens, n_heads, head_dim).unwrap();
        run(ctx, &[d]);
        let want = reference::attention::bidirectional_attention(&q, &k, &v, tokens, n_heads, head_dim);
        assert_close(&format!("bidirectional tokens={tokens} d={head_dim}"), &read_f32(ctx, &out, tokens * width), &want, |_| 2e-5 * 4.5);
    }
}

#[test]
fn attention_rejects_bad_shapes() {
    let ctx = gpu();
    let b = ctx.storage("b", 64);
    let rows = Rows { buffer: &b, offset: 0, stride: 300 };
    assert!(bidirectional_attention(ctx, rows, rows, rows, rows, 1, 1, 300).is_err(), "head_dim over 256");
    let rows = Rows { buffer: &b, offset: 0, stride: 8 };
    assert!(bidirectional_attention(ctx, rows, rows, rows, rows, 4, 1, 8).is_err(), "buffer too small");
}
