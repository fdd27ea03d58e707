// Multi-head attention with an optional gated prefix, one workgroup per
// (head, QUERIES query rows). Per head h and query row i:
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
// Decode (one query row) on a GPU with many cores splits the keys instead
// (`attention_split`, then `attention_combine`): see the note above them.
//
// Keys are consumed in chunks of 128 (two per invocation) with an online
// softmax (running max and sum, rescaled accumulators), so any context length
// fits in 7 KiB of workgroup memory. Every load is a 16-byte vec4 (CPU-backed
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
    splits: u32,      // split-K: key splits of SPLIT_KEYS (the prefix takes one slot more)
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> q: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> keys: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> values: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> prefix_keys: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> prefix_values: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read> gate: array<f32>;
@group(0) @binding(7) var<storage, read_write> out: array<vec4<f32>>;
// split-K only: per head, splits + 1 slots of head_dim/4 + 1 vec4s (see attention_split).
@group(0) @binding(8) var<storage, read_write> partials: array<vec4<f32>>;

const WG: u32 = 64u;
const CHUNK: u32 = 128u;
const NEG_BIG: f32 = -3.0e38;  // finite "minus infinity": exp(NEG_BIG - m) is 0, never NaN

// Query rows per workgroup: 1, or up to 4 for many rows (prefill, vision),
// which then share every key and value load. Per-query values travel as the
// components of a vec4 (component r: query row i0 + r).
override QUERIES: u32 = 1u;

var<workgroup> q_sh: array<vec4<f32>, 256>;   // [query r][dims 4e..4e+3] at r·64 + e
var<workgroup> p_sh: array<vec4<f32>, 128>;   // [key in chunk] -> p per query
var<workgroup> red: array<vec4<f32>, 64>;
var<workgroup> red8: array<vec4<f32>, 8>;

const SRC_CACHE: u32 = 0u;
const SRC_PREFIX: u32 = 1u;

// Index (in vec4s) of row j, head h of a tensor at `offset` with `stride` (in floats).
fn row4(offset: u32, stride: u32, j: u32, h: u32) -> u32 {
    return (offset + j * stride + h * params.head_dim) / 4u;
}

fn key4(src: u32, j: u32, h: u32, e: u32) -> vec4<f32> {
    if (src == SRC_CACHE) {
        return keys[row4(params.k_offset, params.kv_stride, j, h) + e];
    }
    return prefix_keys[row4(params.pk_offset, params.p_stride, j, h) + e];
}

// q·k_j for each query of the workgroup (one key load serves them all).
fn score(src: u32, j: u32, h: u32) -> vec4<f32> {
    let d4 = params.head_dim / 4u;
    var acc = vec4<f32>(0.0);
    for (var e = 0u; e < d4; e++) {
        let k = key4(src, j, h, e);
        acc.x += dot(q_sh[e], k);
        if (QUERIES > 1u) {
            acc.y += dot(q_sh[64u + e], k);
            acc.z += dot(q_sh[128u + e], k);
            acc.w += dot(q_sh[192u + e], k);
        }
    }
    return acc * params.scale;
}

fn value4(src: u32, j: u32, h: u32, e: u32) -> vec4<f32> {
    if (src == SRC_CACHE) {
        return values[row4(params.v_offset, params.kv_stride, j, h) + e];
    }
    return prefix_values[row4(params.pv_offset, params.p_stride, j, h) + e];
}

// Reductions over the 64 lanes in two barriers (a tree takes seven, and
// CPU-backed adapters pay dearly for each): 8 lanes fold 8 values each, then
// every lane folds those 8. The next reduction's writes come after its own
// first barrier, so they cannot race with this one's reads.
fn reduce_max(lid: u32, v: vec4<f32>) -> vec4<f32> {
    red[lid] = v;
    workgroupBarrier();
    if (lid < 8u) {
        var m = red[8u * lid];
        for (var i = 1u; i < 8u; i++) { m = max(m, red[8u * lid + i]); }
        red8[lid] = m;
    }
    workgroupBarrier();
    var r = red8[0];
    for (var i = 1u; i < 8u; i++) { r = max(r, red8[i]); }
    return r;
}

fn reduce_sum(lid: u32, v: vec4<f32>) -> vec4<f32> {
    red[lid] = v;
    workgroupBarrier();
    if (lid < 8u) {
        var t = red[8u * lid];
        for (var i = 1u; i < 8u; i++) { t += red[8u * lid + i]; }
        red8[lid] = t;
    }
    workgroupBarrier();
    var r = red8[0];
    for (var i = 1u; i < 8u; i++) { r += red8[i]; }
    return r;
}

// Output dims 4·lid .. 4·lid+3 of head h for each query (zero for lid >= head_dim/4).
struct Out4 {
    o0: vec4<f32>,
    o1: vec4<f32>,
    o2: vec4<f32>,
    o3: vec4<f32>,
}

// An online softmax's state: the outputs before dividing by the sum, the
// running max and the running sum of exp(score - max), per query.
struct Attended {
    o: Out4,
    m: vec4<f32>,
    l: vec4<f32>,
}

// softmax(q·Kᵀ)·V over keys 0 .. n_keys[r] of `src` for each query r.
fn attend(lid: u32, src: u32, n_keys: vec4<u32>, h: u32) -> Out4 {
    return normalised(attend_from(lid, src, 0u, n_keys, h));
}

// A query with no keys (sum 0) gets zeros.
fn normalised(a: Attended) -> Out4 {
    let inv = select(vec4<f32>(0.0), 1.0 / a.l, a.l > vec4<f32>(0.0));
    return Out4(a.o.o0 * inv.x, a.o.o1 * inv.y, a.o.o2 * inv.z, a.o.o3 * inv.w);
}

// The online softmax over keys first .. n_keys[r] of `src`, not yet divided
// by its sum.
fn attend_from(lid: u32, src: u32, first: u32, n_keys: vec4<u32>, h: u32) -> Attended {
    let d4 = params.head_dim / 4u;
    let most = max(max(n_keys.x, n_keys.y), max(n_keys.z, n_keys.w));
    var m_run = vec4<f32>(NEG_BIG);
    var l_run = vec4<f32>(0.0);
    var o = Out4(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
    for (var base = first; base < most; base += CHUNK) {
        let j0 = base + lid;
        let j1 = base + WG + lid;
        let in0 = vec4<u32>(j0) < n_keys;
        let in1 = vec4<u32>(j1) < n_keys;
        var s0 = vec4<f32>(NEG_BIG);
        var s1 = vec4<f32>(NEG_BIG);
        if (j0 < most) { s0 = select(vec4<f32>(NEG_BIG), score(src, j0, h), in0); }
        if (j1 < most) { s1 = select(vec4<f32>(NEG_BIG), score(src, j1, h), in1); }
        let m_new = max(m_run, reduce_max(lid, max(s0, s1)));
        let p0 = select(vec4<f32>(0.0), exp(s0 - m_new), in0);
        let p1 = select(vec4<f32>(0.0), exp(s1 - m_new), in1);
        p_sh[lid] = p0;
        p_sh[lid + WG] = p1;
        let chunk_sum = reduce_sum(lid, p0 + p1);  // its barriers also publish p_sh
        let corr = exp(m_run - m_new);
        l_run = l_run * corr + chunk_sum;
        o.o0 *= corr.x;
        o.o1 *= corr.y;
        o.o2 *= corr.z;
        o.o3 *= corr.w;
        let count = min(CHUNK, most - base);
        if (lid < d4) {
            for (var jj = 0u; jj < count; jj++) {
                let v = value4(src, base + jj, h, lid);
                let p = p_sh[jj];
                o.o0 += p.x * v;
                if (QUERIES > 1u) {
                    o.o1 += p.y * v;
                    o.o2 += p.z * v;
                    o.o3 += p.w * v;
                }
            }
        }
        m_run = m_new;
        workgroupBarrier();  // p_sh is rewritten by the next chunk
    }
    return Attended(o, m_run, l_run);
}

@compute @workgroup_size(64)
fn attention(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let h = wid.x;
    let i0 = wid.y * QUERIES;
    let d4 = params.head_dim / 4u;
    // Rows past the last query repeat it and are not stored.
    var rows = vec4<u32>(i0);
    if (QUERIES > 1u) { rows = min(vec4<u32>(i0) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(params.n_queries - 1u)); }
    if (lid < d4) {
        for (var r = 0u; r < QUERIES; r++) {
            q_sh[r * 64u + lid] = q[row4(params.q_offset, params.q_stride, rows[r], h) + lid];
        }
    }
    workgroupBarrier();

    var n_keys = vec4<u32>(params.kv_len);
    if (QUERIES == 1u) { n_keys = vec4<u32>(params.kv_len, 0u, 0u, 0u); }
    if (params.causal != 0u) { n_keys = min(n_keys, vec4<u32>(params.start_pos) + rows + vec4<u32>(1u)); }
    var o = attend(lid, SRC_CACHE, n_keys, h);
    if (params.prefix_len > 0u) {
        var g = params.new_gate;
        if (params.use_gate != 0u) { g = g * tanh(clamp(gate[h], -15.0, 15.0)); }
        var np = vec4<u32>(params.prefix_len);
        if (QUERIES == 1u) { np = vec4<u32>(params.prefix_len, 0u, 0u, 0u); }
        let p = attend(lid, SRC_PREFIX, np, h);
        o = Out4(o.o0 + g * p.o0, o.o1 + g * p.o1, o.o2 + g * p.o2, o.o3 + g * p.o3);
    }
    if (lid < d4) {
        let outs = array<vec4<f32>, 4>(o.o0, o.o1, o.o2, o.o3);
        for (var r = 0u; r < QUERIES; r++) {
            if (i0 + r < params.n_queries) {
                out[row4(params.out_offset, params.out_stride, i0 + r, h) + lid] = outs[r];
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Split-K decode: one query row, the cache's keys cut into splits of
// SPLIT_KEYS, one workgroup per (head, split), so a long context spreads over
// many workgroups instead of running on one per head. Grid: (n_heads,
// splits + 1); slot `splits` of each head holds the gated prefix branch.
// Each slot of `partials` is head_dim/4 vec4s of outputs (not yet divided by
// the sum; the prefix slot's final) and one vec4 (max, sum, 0, 0).
// `attention_combine` (grid: n_heads) then merges a head's slots:
//   M = max m_s,  L = Σ l_s·exp(m_s − M),  out = Σ o_s·exp(m_s − M) / L + prefix.
// The split count comes from the context length, not the position, so a
// decode plan's grid never changes; splits past the keys stay empty (sum 0).

const SPLIT_KEYS: u32 = 128u;

fn slot4(h: u32, s: u32) -> u32 {
    return (h * (params.splits + 1u) + s) * (params.head_dim / 4u + 1u);
}

@compute @workgroup_size(64)
fn attention_split(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let h = wid.x;
    let s = wid.y;
    let d4 = params.head_dim / 4u;
    if (lid < d4) {
        q_sh[lid] = q[row4(params.q_offset, params.q_stride, 0u, h) + lid];
    }
    workgroupBarrier();
    let slot = slot4(h, s);
    if (s == params.splits) {
        var o = vec4<f32>(0.0);
        if (params.prefix_len > 0u) {
            var g = params.new_gate;
            if (params.use_gate != 0u) { g = g * tanh(clamp(gate[h], -15.0, 15.0)); }
            o = g * attend(lid, SRC_PREFIX, vec4<u32>(params.prefix_len, 0u, 0u, 0u), h).o0;
        }
        if (lid < d4) { partials[slot + lid] = o; }
        return;
    }
    let first = s * SPLIT_KEYS;
    let end = min(params.kv_len, first + SPLIT_KEYS);
    // An empty split (first >= end) runs no chunk: max NEG_BIG, sum 0, outputs 0.
    let a = attend_from(lid, SRC_CACHE, first, vec4<u32>(end, 0u, 0u, 0u), h);
    if (lid < d4) { partials[slot + lid] = a.o.o0; }
    if (lid == 0u) { partials[slot + d4] = vec4<f32>(a.m.x, a.l.x, 0.0, 0.0); }
}

@compute @workgroup_size(64)
fn attention_combine(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let h = wid.x;
    let d4 = params.head_dim / 4u;
    var m = NEG_BIG;
    for (var s = 0u; s < params.splits; s++) {
        m = max(m, partials[slot4(h, s) + d4].x);
    }
    var l = 0.0;
    var o = vec4<f32>(0.0);
    for (var s = 0u; s < params.splits; s++) {
        let ml = partials[slot4(h, s) + d4];
        let w = exp(ml.x - m);
        l += ml.y * w;
        if (lid < d4) { o += w * partials[slot4(h, s) + lid]; }
    }
    let inv = select(0.0, 1.0 / l, l > 0.0);
    if (lid < d4) {
        out[row4(params.out_offset, params.out_stride, 0u, h) + lid] = o * inv + partials[slot4(h, params.splits) + lid];
    }
}
