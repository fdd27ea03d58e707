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
// Keys are consumed in chunks of 128 (two per invocation) with an online
// softmax (running max and sum, rescaled accumulators), so any context length
// fits in 2 KiB of workgroup memory. Every load is a 16-byte vec4 (CPU-backed
// adapters pay per load instruction), so head_dim, offsets and strides are
// multiples of 4 (the wrapper checks); head_dim <= 256, and invocation t owns
// output dims 4t .. 4t+3.

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
@group(0) @binding(1) var<storage, read> q: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> keys: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> values: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> prefix_keys: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> prefix_values: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read> gate: array<f32>;
@group(0) @binding(7) var<storage, read_write> out: array<vec4<f32>>;

const WG: u32 = 64u;
const CHUNK: u32 = 128u;
const NEG_BIG: f32 = -3.0e38;  // finite "minus infinity": exp(NEG_BIG - m) is 0, never NaN

var<workgroup> q_sh: array<vec4<f32>, 64>;
var<workgroup> p_sh: array<f32, 128>;
var<workgroup> red: array<f32, 64>;

const SRC_CACHE: u32 = 0u;
const SRC_PREFIX: u32 = 1u;

// Index (in vec4s) of row j, head h of a tensor at `offset` with `stride` (in floats).
fn row4(offset: u32, stride: u32, j: u32, h: u32) -> u32 {
    return (offset + j * stride + h * params.head_dim) / 4u;
}

fn score(src: u32, j: u32, h: u32) -> f32 {
    let d4 = params.head_dim / 4u;
    var acc = 0.0;
    if (src == SRC_CACHE) {
        let base = row4(params.k_offset, params.kv_stride, j, h);
        for (var e = 0u; e < d4; e++) { acc += dot(q_sh[e], keys[base + e]); }
    } else {
        let base = row4(params.pk_offset, params.p_stride, j, h);
        for (var e = 0u; e < d4; e++) { acc += dot(q_sh[e], prefix_keys[base + e]); }
    }
    return acc * params.scale;
}

fn value4(src: u32, j: u32, h: u32, e: u32) -> vec4<f32> {
    if (src == SRC_CACHE) {
        return values[row4(params.v_offset, params.kv_stride, j, h) + e];
    }
    return prefix_values[row4(params.pv_offset, params.p_stride, j, h) + e];
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
// 4·lid .. 4·lid+3 of head h (zero for lid >= head_dim/4).
fn attend(lid: u32, src: u32, n_keys: u32, h: u32) -> vec4<f32> {
    let d4 = params.head_dim / 4u;
    var m_run = NEG_BIG;
    var l_run = 0.0;
    var o = vec4<f32>(0.0);
    for (var base = 0u; base < n_keys; base += CHUNK) {
        let j0 = base + lid;
        let j1 = base + WG + lid;
        var s0 = NEG_BIG;
        var s1 = NEG_BIG;
        if (j0 < n_keys) { s0 = score(src, j0, h); }
        if (j1 < n_keys) { s1 = score(src, j1, h); }
        let m_new = max(m_run, reduce_max(lid, max(s0, s1)));
        var p0 = 0.0;
        var p1 = 0.0;
        if (j0 < n_keys) { p0 = exp(s0 - m_new); }
        if (j1 < n_keys) { p1 = exp(s1 - m_new); }
        p_sh[lid] = p0;
        p_sh[lid + WG] = p1;
        let chunk_sum = reduce_sum(lid, p0 + p1);  // its barriers also publish p_sh
        let corr = exp(m_run - m_new);
        l_run = l_run * corr + chunk_sum;
        o = o * corr;
        let count = min(CHUNK, n_keys - base);
        if (lid < d4) {
            for (var jj = 0u; jj < count; jj++) {
                o += p_sh[jj] * value4(src, base + jj, h, lid);
            }
        }
        m_run = m_new;
        workgroupBarrier();  // p_sh is rewritten by the next chunk
    }
    if (n_keys == 0u) { return vec4<f32>(0.0); }
    return o / l_run;
}

@compute @workgroup_size(64)
fn attention(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let h = wid.x;
    let i = wid.y;
    let d4 = params.head_dim / 4u;
    let qb = row4(params.q_offset, params.q_stride, i, h);
    if (lid < d4) { q_sh[lid] = q[qb + lid]; }
    workgroupBarrier();

    var n_keys = params.kv_len;
    if (params.causal != 0u) { n_keys = min(n_keys, params.start_pos + i + 1u); }
    var o = attend(lid, SRC_CACHE, n_keys, h);
    if (params.prefix_len > 0u) {
        var g = params.new_gate;
        if (params.use_gate != 0u) { g = g * tanh(clamp(gate[h], -15.0, 15.0)); }
        o += g * attend(lid, SRC_PREFIX, params.prefix_len, h);
    }
    if (lid < d4) { out[row4(params.out_offset, params.out_stride, i, h) + lid] = o; }
}
