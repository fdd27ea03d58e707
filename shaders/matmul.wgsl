// Quantised matrix multiply: y[t, :] = (x[t, :] · Wᵀ + bias) * scale  (+ y[t, :])
// for a weight block W of `n` rows (outputs) by `k` columns (inputs), stored
// as packed u32 words in one of the formats of quant_common.wgsl.
//
// Three shapes:
//   rowwise: for CPU-backed adapters (see the note above `rowwise`).
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
    t_first: u32,      // rowwise: first x row of this dispatch (x_offset is relative to it)
    y_offset: u32,     // element index of y[0, 0]
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

override FORMAT: u32 = 0u;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> weights: array<u32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read> out_scale: array<f32>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;
// rowwise only: the same x through a uniform binding (a 64 KiB window), and
// the same weights viewed as 16-byte words.
@group(0) @binding(6) var<uniform> x_window: array<vec4<f32>, 4096>;
@group(0) @binding(7) var<storage, read> weights4: array<vec4<u32>>;

fn store_output(t: u32, j: u32, value: f32) {
    let col = params.out_offset + j;
    var v = value;
    if ((params.flags & 1u) != 0u) { v += bias[col]; }
    if ((params.flags & 2u) != 0u) { v *= out_scale[col]; }
    let i = params.y_offset + t * params.out_stride + col;
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

// ---------------------------------------------------------------------------
// rowwise: the shape for CPU-backed adapters (Mesa lavapipe, SwiftShader).
// They run invocations as SIMD lanes, and a storage-buffer load costs a loop
// over the lanes, while a uniform-buffer load at an address that is the same
// in every lane is one scalar load. So here each invocation owns one output
// feature j (one weight row) and ROWWISE_TOKENS x rows, the k loop is the
// same in every lane, x comes through the uniform window (X_UNIFORM) when it
// fits, and weights come in 16-byte loads (32 q4 weights per load).
// Grid: (ceil(n/64), ceil(rows of this dispatch / ROWWISE_TOKENS)).

override X_UNIFORM: bool = false;
// x rows per invocation: 4, or 1 for a single row (decode), so that no lane
// computes dot products it throws away.
override ROWWISE_TOKENS: u32 = 4u;

// x[row t (counted from t_first), columns c .. c+3]; c is a multiple of 4 and,
// with X_UNIFORM, x_offset and x_stride are too (the wrapper checks).
fn x_vec4(t: u32, c: u32) -> vec4<f32> {
    let i = params.x_offset + t * params.x_stride + c;
    if (X_UNIFORM) {
        return x_window[i / 4u];
    }
    return vec4<f32>(x[i], x[i + 1u], x[i + 2u], x[i + 3u]);
}

fn x_scalar(t: u32, c: u32) -> f32 {
    let i = params.x_offset + t * params.x_stride + c;
    if (X_UNIFORM) {
        return x_window[i / 4u][i % 4u];
    }
    return x[i];
}

// 8 weights (columns 8i .. 8i+7 of a group) from one packed word: q4 nibbles.
fn q4_lo(word: u32) -> vec4<f32> {
    return vec4<f32>((vec4<u32>(word) >> vec4<u32>(0u, 4u, 8u, 12u)) & vec4<u32>(15u)) - 8.0;
}
fn q4_hi(word: u32) -> vec4<f32> {
    return vec4<f32>((vec4<u32>(word) >> vec4<u32>(16u, 20u, 24u, 28u)) & vec4<u32>(15u)) - 8.0;
}
fn q8_4(word: u32) -> vec4<f32> {
    // Move each byte to the top, then shift back arithmetically (sign-extends).
    return vec4<f32>((vec4<i32>(bitcast<i32>(word)) << vec4<u32>(24u, 16u, 8u, 0u)) >> vec4<u32>(24u));
}

// Dot of four weights with the same four columns of x rows t0 .. t0+3:
// component t of the result belongs to row t0 + t (rows past t0 + t_last
// repeat the last one and are not stored).
fn dot4(w: vec4<f32>, t0: u32, t_last: u32, c: u32) -> vec4<f32> {
    if (ROWWISE_TOKENS == 1u) {
        return vec4<f32>(dot(w, x_vec4(t0, c)), 0.0, 0.0, 0.0);
    }
    return vec4<f32>(
        dot(w, x_vec4(t0, c)),
        dot(w, x_vec4(t0 + min(1u, t_last), c)),
        dot(w, x_vec4(t0 + min(2u, t_last), c)),
        dot(w, x_vec4(t0 + min(3u, t_last), c)));
}

@compute @workgroup_size(64)
fn rowwise(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    // Lanes past n compute row n-1 and do not store: keeping every lane
    // active keeps the uniform x loads scalar.
    let j = min(gid.x, params.n - 1u);
    let t0 = wid.y * ROWWISE_TOKENS;             // relative to t_first
    let t_last = min(ROWWISE_TOKENS, params.m - t0) - 1u;
    var acc = vec4<f32>(0.0);
    let full_groups = params.k / QGROUP;
    let aligned = (params.row_words % 4u) == 0u;
    // With a multiple of 8 groups per row, the f16 scales of 8 groups come
    // in one 16-byte load (the scale region starts 16-byte aligned).
    let scales8 = (params.groups % 8u) == 0u;
    var scale_words = vec4<u32>(0u);
    for (var c = 0u; c < full_groups; c++) {
        let k0 = c * QGROUP;
        var part = vec4<f32>(0.0);
        var s = 0.0;
        if (FORMAT == FMT_Q4 || FORMAT == FMT_Q8) {
            if (scales8) {
                if (c % 8u == 0u) {
                    scale_words = weights4[(params.scale_base + (j * params.groups + c) / 2u) / 4u];
                }
                s = unpack2x16float(scale_words[(c % 8u) / 2u])[c % 2u];
            } else {
                s = group_scale(params.scale_base, j * params.groups + c);
            }
        }
        if (FORMAT == FMT_Q4) {
            let q = weights4[(j * params.row_words + c * 4u) / 4u];
            for (var i = 0u; i < 4u; i++) {
                part += dot4(q4_lo(q[i]), t0, t_last, k0 + 8u * i) + dot4(q4_hi(q[i]), t0, t_last, k0 + 8u * i + 4u);
            }
            acc += part * s;
        } else if (FORMAT == FMT_Q8) {
            for (var h = 0u; h < 2u; h++) {
                let q = weights4[(j * params.row_words + c * 8u) / 4u + h];
                for (var i = 0u; i < 4u; i++) {
                    part += dot4(q8_4(q[i]), t0, t_last, k0 + 16u * h + 4u * i);
                }
            }
            acc += part * s;
        } else if (FORMAT == FMT_F16) {
            let base = j * params.row_words + c * 16u;
            for (var h = 0u; h < 4u; h++) {
                var q: vec4<u32>;
                if (aligned) {
                    q = weights4[base / 4u + h];
                } else {
                    q = vec4<u32>(weights[base + 4u * h], weights[base + 4u * h + 1u], weights[base + 4u * h + 2u], weights[base + 4u * h + 3u]);
                }
                for (var i = 0u; i < 2u; i++) {
                    let w = vec4<f32>(unpack2x16float(q[2u * i]), unpack2x16float(q[2u * i + 1u]));
                    part += dot4(w, t0, t_last, k0 + 8u * h + 4u * i);
                }
            }
            acc += part;
        } else {
            let base = j * params.row_words + k0;
            for (var h = 0u; h < 8u; h++) {
                var q: vec4<u32>;
                if (aligned) {
                    q = weights4[base / 4u + h];
                } else {
                    q = vec4<u32>(weights[base + 4u * h], weights[base + 4u * h + 1u], weights[base + 4u * h + 2u], weights[base + 4u * h + 3u]);
                }
                part += dot4(bitcast<vec4<f32>>(q), t0, t_last, k0 + 4u * h);
            }
            acc += part;
        }
    }
    // Last, partial group: element by element, never reading past k.
    for (var kk = full_groups * QGROUP; kk < params.k; kk++) {
        let w = weight_at(j, kk, params.row_words, params.groups, params.scale_base);
        if (ROWWISE_TOKENS == 1u) {
            acc.x += w * x_scalar(t0, kk);
            continue;
        }
        acc += w * vec4<f32>(
            x_scalar(t0, kk),
            x_scalar(t0 + min(1u, t_last), kk),
            x_scalar(t0 + min(2u, t_last), kk),
            x_scalar(t0 + min(3u, t_last), kk));
    }
    if (gid.x < params.n) {
        for (var t = 0u; t <= t_last; t++) {
            store_output(params.t_first + t0 + t, j, acc[t]);
        }
    }
}
