// Quantised matrix multiply: y[t, :] = (x[t, :] · Wᵀ + bias) * scale  (+ y[t, :])
// for a weight block W of `n` rows (outputs) by `k` columns (inputs), stored
// as packed u32 words in one of the formats of quant_common.wgsl.
//
// Two shapes:
//   gemv: one workgroup = 8 output rows x 32 lanes; each lane takes whole
//         32-element groups, so every weight word is read exactly once.
//         Grid: (ceil(n/8), m). Used for decode (m = 1) and small m.
//   gemm: 64x64 output tiles, 16-deep K slices staged in workgroup memory,
//         4x4 outputs per invocation. Grid: (ceil(n/64), ceil(m/64)).
//
// A large matrix is split into row blocks (each a separate buffer no larger
// than the storage-binding limit); `out_offset` says where a block's outputs
// land in y, and bias/scale are indexed by that global column.

struct Params {
    m: u32,            // rows of x (tokens)
    n: u32,            // outputs in this weight block
    k: u32,            // inputs
    row_words: u32,    // u32 words per weight row (quants or raw values)
    groups: u32,       // scale groups per row (q8/q4)
    scale_base: u32,   // word index of the first f16 scale
    out_offset: u32,   // global output column of this block's row 0
    out_stride: u32,   // elements per row of y
    x_offset: u32,     // element index of x[0, 0]
    x_stride: u32,     // elements per row of x
    flags: u32,        // bit 0: add bias, bit 1: multiply by scale, bit 2: accumulate into y
    _pad: u32,
}

override FORMAT: u32 = 0u;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> weights: array<u32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read> out_scale: array<f32>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;

fn store_output(t: u32, j: u32, value: f32) {
    let col = params.out_offset + j;
    var v = value;
    if ((params.flags & 1u) != 0u) { v += bias[col]; }
    if ((params.flags & 2u) != 0u) { v *= out_scale[col]; }
    let i = t * params.out_stride + col;
    if ((params.flags & 4u) != 0u) { v += y[i]; }
    y[i] = v;
}

// Dot product of group `c` (32 inputs) of weight row `r` with x at `xb`.
fn group_dot(r: u32, c: u32, xb: u32) -> f32 {
    let k0 = c * QGROUP;
    if (k0 + QGROUP > params.k) {
        // Last, partial group: element by element, never reading past k.
        var acc = 0.0;
        for (var kk = k0; kk < params.k; kk++) {
            acc += weight_at(r, kk, params.row_words, params.groups, params.scale_base) * x[xb + kk];
        }
        return acc;
    }
    let xg = xb + k0;
    var acc = 0.0;
    if (FORMAT == FMT_F32) {
        let base = r * params.row_words + k0;
        for (var i = 0u; i < 32u; i++) {
            acc += bitcast<f32>(weights[base + i]) * x[xg + i];
        }
        return acc;
    }
    if (FORMAT == FMT_F16) {
        let base = r * params.row_words + k0 / 2u;
        for (var i = 0u; i < 16u; i++) {
            let w = unpack2x16float(weights[base + i]);
            acc += w.x * x[xg + 2u * i] + w.y * x[xg + 2u * i + 1u];
        }
        return acc;
    }
    if (FORMAT == FMT_Q8) {
        let base = r * params.row_words + c * 8u;
        for (var i = 0u; i < 8u; i++) {
            let w = weights[base + i];
            let xi = xg + 4u * i;
            acc += q8_at(w, 0u) * x[xi] + q8_at(w, 1u) * x[xi + 1u]
                 + q8_at(w, 2u) * x[xi + 2u] + q8_at(w, 3u) * x[xi + 3u];
        }
        return acc * group_scale(params.scale_base, r * params.groups + c);
    }
    // FMT_Q4
    let base = r * params.row_words + c * 4u;
    for (var i = 0u; i < 4u; i++) {
        let w = weights[base + i];
        let xi = xg + 8u * i;
        for (var nib = 0u; nib < 8u; nib++) {
            acc += q4_at(w, nib) * x[xi + nib];
        }
    }
    return acc * group_scale(params.scale_base, r * params.groups + c);
}

const GEMV_ROWS: u32 = 8u;
const GEMV_LANES: u32 = 32u;
var<workgroup> partial: array<f32, 256>;

@compute @workgroup_size(256)
fn gemv(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let lane = lid % GEMV_LANES;
    let r = wid.x * GEMV_ROWS + lid / GEMV_LANES;
    let t = wid.y;
    var acc = 0.0;
    if (r < params.n) {
        let xb = params.x_offset + t * params.x_stride;
        let chunks = (params.k + QGROUP - 1u) / QGROUP;
        for (var c = lane; c < chunks; c += GEMV_LANES) {
            acc += group_dot(r, c, xb);
        }
    }
    partial[lid] = acc;
    workgroupBarrier();
    for (var s = GEMV_LANES / 2u; s > 0u; s >>= 1u) {
        if (lane < s) {
            partial[lid] += partial[lid + s];
        }
        workgroupBarrier();
    }
    if (lane == 0u && r < params.n) {
        store_output(t, r, partial[lid]);
    }
}

const TILE: u32 = 64u;
const TK: u32 = 16u;
var<workgroup> tile_x: array<f32, 1024>;  // [TILE][TK]
var<workgroup> tile_w: array<f32, 1024>;  // [TILE][TK]

// Stages W[n0 .. n0+64, k0 .. k0+16] into tile_w (zeros outside the matrix).
fn load_weight_tile(lid: u32, n0: u32, k0: u32) {
    if (FORMAT == FMT_Q4 || FORMAT == FMT_Q8) {
        // k0 is a multiple of 16, so the slice is half of one group, one scale.
        let per_word = select(4u, 8u, FORMAT == FMT_Q4);
        let words_per_row = TK / per_word;          // 2 (q4) or 4 (q8)
        if (lid < TILE * words_per_row) {
            let rr = lid / words_per_row;
            let wi = lid % words_per_row;
            let r = n0 + rr;
            let dst = rr * TK + wi * per_word;
            if (r < params.n && k0 < params.k) {
                let c = k0 / QGROUP;
                let s = group_scale(params.scale_base, r * params.groups + c);
                let word = weights[r * params.row_words + (k0 / per_word) + wi];
                for (var e = 0u; e < per_word; e++) {
                    var q: f32;
                    if (FORMAT == FMT_Q4) { q = q4_at(word, e); } else { q = q8_at(word, e); }
                    tile_w[dst + e] = q * s;  // padding quants are zero
                }
            } else {
                for (var e = 0u; e < per_word; e++) { tile_w[dst + e] = 0.0; }
            }
        }
        return;
    }
    for (var e = lid; e < TILE * TK; e += 256u) {
        let rr = e / TK;
        let kk = e % TK;
        let r = n0 + rr;
        let c = k0 + kk;
        var v = 0.0;
        if (r < params.n && c < params.k) {
            v = weight_at(r, c, params.row_words, params.groups, params.scale_base);
        }
        tile_w[e] = v;
    }
}

@compute @workgroup_size(256)
fn gemm(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let n0 = wid.x * TILE;
    let m0 = wid.y * TILE;
    let tx = lid % 16u;   // output columns tx + 16j
    let ty = lid / 16u;   // output rows    ty + 16i
    var acc: array<array<f32, 4>, 4>;
    for (var i = 0u; i < 4u; i++) { for (var j = 0u; j < 4u; j++) { acc[i][j] = 0.0; } }

    for (var k0 = 0u; k0 < params.k; k0 += TK) {
        for (var e = lid; e < TILE * TK; e += 256u) {
            let t = m0 + e / TK;
            let c = k0 + e % TK;
            var v = 0.0;
            if (t < params.m && c < params.k) {
                v = x[params.x_offset + t * params.x_stride + c];
            }
            tile_x[e] = v;
        }
        load_weight_tile(lid, n0, k0);
        workgroupBarrier();
        for (var kk = 0u; kk < TK; kk++) {
            var a: array<f32, 4>;
            var b: array<f32, 4>;
            for (var i = 0u; i < 4u; i++) { a[i] = tile_x[(ty + 16u * i) * TK + kk]; }
            for (var j = 0u; j < 4u; j++) { b[j] = tile_w[(tx + 16u * j) * TK + kk]; }
            for (var i = 0u; i < 4u; i++) {
                for (var j = 0u; j < 4u; j++) { acc[i][j] += a[i] * b[j]; }
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        let t = m0 + ty + 16u * i;
        for (var j = 0u; j < 4u; j++) {
            let col = n0 + tx + 16u * j;
            if (t < params.m && col < params.n) {
                store_output(t, col, acc[i][j]);
            }
        }
    }
}
