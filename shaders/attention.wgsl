// Multi-head attention with an optional gated prefix, one workgroup per
// (head, query row). Per head h and query row i:
//
//   out = softmax(q·Kᵀ·scale + mask)·V
//       + tanh(gate[h]) · new_gate · softmax(q·K_pᵀ·scale)·V_p
//
// * K/V: rows 0 .. kv_len of a cache; with `causal`, query i (absolute
//   position start_pos + i) sees keys j <= start_pos + i.
// * K_p/V_p: `prefix_len` prefix rows (adapter prompts or visual tokens):
//   no mask, no RoPE, their own softmax. prefix_len = 0 turns the branch off.
// * Decoder prefill (many rows), decode (one row) and the vision towers
//   (causal = 0, prefix_len = 0, q/k/v read from one fused qkv buffer through
//   offsets and strides) all use this kernel.
//
// Keys are consumed in chunks of 128 with an online softmax (running max and
// sum, rescaled accumulators), so any context length fits in 1.5 KiB of
// workgroup memory. head_dim <= 256: each invocation owns output dims lid and
// lid + 128.

struct Params {
    n_queries: u32,
    n_heads: u32,
    head_dim: u32,
    start_pos: u32,
    kv_len: u32,
    causal: u32,
    prefix_len: u32,
    use_gate: u32,    // 1: multiply the prefix branch by tanh(gate[h])
    q_offset: u32,
    q_stride: u32,
    k_offset: u32,
    v_offset: u32,
    kv_stride: u32,
    pk_offset: u32,
    pv_offset: u32,
    p_stride: u32,
    out_offset: u32,
    out_stride: u32,
    scale: f32,       // 1/sqrt(head_dim)
    new_gate: f32,    // 1.0 when the checkpoint has no new_gate
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> keys: array<f32>;
@group(0) @binding(3) var<storage, read> values: array<f32>;
@group(0) @binding(4) var<storage, read> prefix_keys: array<f32>;
@group(0) @binding(5) var<storage, read> prefix_values: array<f32>;
@group(0) @binding(6) var<storage, read> gate: array<f32>;
@group(0) @binding(7) var<storage, read_write> out: array<f32>;

const WG: u32 = 128u;
const NEG_BIG: f32 = -3.0e38;  // finite "minus infinity": exp(NEG_BIG - m) is 0, never NaN

var<workgroup> q_sh: array<f32, 256>;
var<workgroup> p_sh: array<f32, 128>;
var<workgroup> red: array<f32, 128>;

const SRC_CACHE: u32 = 0u;
const SRC_PREFIX: u32 = 1u;

fn score(src: u32, j: u32, h: u32) -> f32 {
    let d = params.head_dim;
    var acc = 0.0;
    if (src == SRC_CACHE) {
        let base = params.k_offset + j * params.kv_stride + h * d;
        for (var e = 0u; e < d; e++) { acc += q_sh[e] * keys[base + e]; }
    } else {
        let base = params.pk_offset + j * params.p_stride + h * d;
        for (var e = 0u; e < d; e++) { acc += q_sh[e] * prefix_keys[base + e]; }
    }
    return acc * params.scale;
}

fn value(src: u32, j: u32, h: u32, e: u32) -> f32 {
    let d = params.head_dim;
    if (src == SRC_CACHE) {
        return values[params.v_offset + j * params.kv_stride + h * d + e];
    }
    return prefix_values[params.pv_offset + j * params.p_stride + h * d + e];
}

fn reduce_max(lid: u32, v: f32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) { red[lid] = max(red[lid], red[lid + s]); }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

fn reduce_sum(lid: u32, v: f32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) { red[lid] += red[lid + s]; }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

// softmax(q·Kᵀ)·V over keys 0 .. n_keys of `src`; returns output dims
// (lid, lid + WG) of head h.
fn attend(lid: u32, src: u32, n_keys: u32, h: u32) -> vec2<f32> {
    let d = params.head_dim;
    var m_run = NEG_BIG;
    var l_run = 0.0;
    var o = vec2<f32>(0.0, 0.0);
    for (var base = 0u; base < n_keys; base += WG) {
        let j = base + lid;
        var s = NEG_BIG;
        if (j < n_keys) { s = score(src, j, h); }
        let m_new = max(m_run, reduce_max(lid, s));
        var p = 0.0;
        if (j < n_keys) { p = exp(s - m_new); }
        p_sh[lid] = p;
        let chunk_sum = reduce_sum(lid, p);  // its barriers also publish p_sh
        let corr = exp(m_run - m_new);
        l_run = l_run * corr + chunk_sum;
        o = o * corr;
        let count = min(WG, n_keys - base);
        for (var jj = 0u; jj < count; jj++) {
            let pj = p_sh[jj];
            if (lid < d) { o.x += pj * value(src, base + jj, h, lid); }
            if (lid + WG < d) { o.y += pj * value(src, base + jj, h, lid + WG); }
        }
        m_run = m_new;
        workgroupBarrier();  // p_sh is rewritten by the next chunk
    }
    if (n_keys == 0u) { return vec2<f32>(0.0, 0.0); }
    return o / l_run;
}

@compute @workgroup_size(128)
fn attention(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let h = wid.x;
    let i = wid.y;
    let d = params.head_dim;
    let qb = params.q_offset + i * params.q_stride + h * d;
    for (var e = lid; e < d; e += WG) { q_sh[e] = q[qb + e]; }
    workgroupBarrier();

    var n_keys = params.kv_len;
    if (params.causal != 0u) { n_keys = min(n_keys, params.start_pos + i + 1u); }
    var o = attend(lid, SRC_CACHE, n_keys, h);
    if (params.prefix_len > 0u) {
        var g = params.new_gate;
        if (params.use_gate != 0u) { g = g * tanh(clamp(gate[h], -15.0, 15.0)); }
        o += g * attend(lid, SRC_PREFIX, params.prefix_len, h);
    }
    let ob = params.out_offset + i * params.out_stride + h * d;
    if (lid < d) { out[ob + lid] = o.x; }
    if (lid + WG < d) { out[ob + lid + WG] = o.y; }
}
