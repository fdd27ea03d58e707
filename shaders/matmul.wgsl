// Quantised matrix multiply: y[t, :] = (x[t, :] · Wᵀ + bias) * scale  (+ y[t, :])
// for a weight block W of `n` rows (outputs) by `k` columns (inputs), stored
// as packed u32 words in one of the formats of quant_common.wgsl.
//
// Three shapes:
//   rowwise: for CPU-backed adapters (see the note above `rowwise`);
//            rowwise_one is its single-row (decode) form.
//   gemv: one workgroup = 8 output rows x 32 lanes; each lane takes whole
//         32-element groups, so every weight word is read exactly once.
//         Grid: (ceil(n/8), m). Used for decode (m = 1) and small m.
//   gemm: 64x64 output tiles, 16-deep K slices staged in workgroup memory,
//         4x4 outputs per invocation. Grid: (ceil(n/64), ceil(m/64)).
//
// A large matrix is split into row blocks (each a separate buffer no larger
// than the storage-binding limit); `out_offset` says where a block's outputs
// land in y, and bias/scale are indexed by that global column.
//
// With LORA, every output also gets its low-rank term before the bias and
// scale: y = (x·Wᵀ + u·L2ᵀ + bias) * scale, where u = x·L1ᵀ was computed by a
// small matmul before this one (see `lora_term`).

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
    lora_rank: u32,        // LORA: columns of L2 (and of each member's slice of u)
    lora_member_rows: u32, // LORA: weight rows per member (output column col is member col / this)
    lora_u_stride: u32,    // LORA: elements per row of u
    lora_u_offset: u32,    // LORA: element of u row 0 where member 0's slice starts
    lora_up_row0: u32,     // LORA: row of L2 that this weight's row 0 reads
    _pad0: u32,
    _pad1: u32,
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

// LORA only: u = x·L1ᵀ, [m rows, lora_u_stride] (member i's rank-wide slice
// at i·lora_rank), and L2 as dense f32 rows, [global weight rows, lora_rank].
@group(0) @binding(8) var<storage, read> lora_u: array<f32>;
@group(0) @binding(9) var<storage, read> lora_up: array<f32>;
override LORA: bool = false;

// The LoRA term of x row t, output column col (a global weight row): member
// col / lora_member_rows's slice of u dotted with L2 row col. The rank is
// small (16 in the released checkpoints), so this costs about rank/k of the
// main product and saves a dispatch and a pass over y.
fn lora_term(t: u32, col: u32) -> f32 {
    let u0 = t * params.lora_u_stride + params.lora_u_offset + (col / params.lora_member_rows) * params.lora_rank;
    let w0 = (params.lora_up_row0 + col) * params.lora_rank;
    var acc = 0.0;
    for (var i = 0u; i < params.lora_rank; i++) {
        acc += lora_u[u0 + i] * lora_up[w0 + i];
    }
    return acc;
}

// The LoRA terms of output column col for x rows t0 .. t0 + t_last (at most
// 4; component t is row t0 + t): each L2 value is loaded once for all rows.
fn lora_tile(t0: u32, t_last: u32, col: u32) -> vec4<f32> {
    if (t_last == 0u) { return vec4<f32>(lora_term(t0, col)); }
    let slice = params.lora_u_offset + (col / params.lora_member_rows) * params.lora_rank;
    let s = params.lora_u_stride;
    let u0 = t0 * s + slice;
    let u1 = (t0 + min(1u, t_last)) * s + slice;
    let u2 = (t0 + min(2u, t_last)) * s + slice;
    let u3 = (t0 + min(3u, t_last)) * s + slice;
    let w0 = (params.lora_up_row0 + col) * params.lora_rank;
    var acc = vec4<f32>(0.0);
    for (var i = 0u; i < params.lora_rank; i++) {
        acc += lora_up[w0 + i] * vec4<f32>(lora_u[u0 + i], lora_u[u1 + i], lora_u[u2 + i], lora_u[u3 + i]);
    }
    return acc;
}

// With GATED (gemv and rowwise) the weights are [w1; w3], 2n rows, and the
// kernel stores silu(y1) ⊙ y3 for its n outputs: y1 from row j, y3 from row
// n + j (the FFN's gate in the matmul's epilogue). Bias and scale index the
// 2n rows the same way; accumulating into y is not supported with it.
override GATED: bool = false;

fn silu(v: f32) -> f32 {
    return v / (1.0 + exp(-v));
}

// Bias and scale of output column `col` (a global row of the weights).
fn epilogue(col: u32, value: f32) -> f32 {
    var v = value;
    if ((params.flags & 1u) != 0u) { v += bias[col]; }
    if ((params.flags & 2u) != 0u) { v *= out_scale[col]; }
    return v;
}

// `value` plus, with LORA, its LoRA term (x row t, output column col).
fn with_lora(t: u32, col: u32, value: f32) -> f32 {
    if (LORA) { return value + lora_term(t, col); }
    return value;
}

// GATED: y[t, j] = silu(y1) ⊙ y3, each with its bias and scale; the values
// already hold their LoRA terms.
fn store_gated_sums(t: u32, j: u32, gate: f32, up: f32) {
    let col = params.out_offset + j;
    y[params.y_offset + t * params.out_stride + col] = silu(epilogue(col, gate)) * epilogue(col + params.n, up);
}

// y[t, j] (+)= the value (its LoRA term already in) with bias and scale.
fn store_output_sum(t: u32, j: u32, value: f32) {
    let col = params.out_offset + j;
    var v = epilogue(col, value);
    let i = params.y_offset + t * params.out_stride + col;
    if ((params.flags & 4u) != 0u) { v += y[i]; }
    y[i] = v;
}

fn store_gated(t: u32, j: u32, gate: f32, up: f32) {
    let col = params.out_offset + j;
    store_gated_sums(t, j, with_lora(t, col, gate), with_lora(t, col + params.n, up));
}

fn store_output(t: u32, j: u32, value: f32) {
    store_output_sum(t, j, with_lora(t, params.out_offset + j, value));
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
var<workgroup> partial_up: array<f32, 256>;

@compute @workgroup_size(256)
fn gemv(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let lane = lid % GEMV_LANES;
    let r = wid.x * GEMV_ROWS + lid / GEMV_LANES;
    let t = wid.y;
    var acc = 0.0;
    var acc_up = 0.0;   // GATED: row n + r
    if (r < params.n) {
        let xb = params.x_offset + t * params.x_stride;
        let chunks = (params.k + QGROUP - 1u) / QGROUP;
        for (var c = lane; c < chunks; c += GEMV_LANES) {
            acc += group_dot(r, c, xb);
            if (GATED) { acc_up += group_dot(r + params.n, c, xb); }
        }
    }
    partial[lid] = acc;
    partial_up[lid] = acc_up;
    workgroupBarrier();
    for (var s = GEMV_LANES / 2u; s > 0u; s >>= 1u) {
        if (lane < s) {
            partial[lid] += partial[lid + s];
            if (GATED) { partial_up[lid] += partial_up[lid + s]; }
        }
        workgroupBarrier();
    }
    if (lane == 0u && r < params.n) {
        if (GATED) {
            store_gated(t, r, partial[lid], partial_up[lid]);
        } else {
            store_output(t, r, partial[lid]);
        }
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
// They run invocations as SIMD lanes, and a load whose address differs per
// lane costs a loop over the lanes, while the k loop here is the same in
// every lane. Reading x is what costs most (measured: with x replaced by a
// constant the kernel runs 3-4x faster), so each invocation owns a register
// tile of ROWWISE_ROWS weight rows (rows j, j+64, ..) by ROWWISE_TOKENS x
// rows: every x load feeds ROWWISE_ROWS rows and every unpacked weight feeds
// ROWWISE_TOKENS tokens. x comes through the uniform window (X_UNIFORM) when
// it fits, and weights come in 16-byte loads (32 q4 weights per load).
// Grid: (ceil(n / (64·ROWWISE_ROWS)), ceil(rows of this dispatch / ROWWISE_TOKENS)).

override X_UNIFORM: bool = false;
// x rows per invocation of `rowwise` (a single row goes to `rowwise_one`).
const ROWWISE_TOKENS: u32 = 4u;
// Weight rows per invocation: 1, 2 or 4 (with GATED: 2 or 4, half w1, half w3).
override ROWWISE_ROWS: u32 = 1u;
const ROWWISE_WG: u32 = 64u;

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

// Columns c .. c+3 of x rows t0 .. t0+3 (rows past t0 + t_last repeat the
// last one and are not stored).
fn x_tile(t0: u32, t_last: u32, c: u32) -> array<vec4<f32>, 4> {
    var xt: array<vec4<f32>, 4>;
    xt[0] = x_vec4(t0, c);
    xt[1] = x_vec4(t0 + min(1u, t_last), c);
    xt[2] = x_vec4(t0 + min(2u, t_last), c);
    xt[3] = x_vec4(t0 + min(3u, t_last), c);
    return xt;
}

// Four weights dotted with the same four columns of each x row of the tile:
// component t belongs to token t0 + t.
fn dot_tile(w: vec4<f32>, xt: array<vec4<f32>, 4>) -> vec4<f32> {
    return vec4<f32>(dot(w, xt[0]), dot(w, xt[1]), dot(w, xt[2]), dot(w, xt[3]));
}

// 8 weights (columns 8i .. 8i+7 of a group) from one packed word: q4 nibbles.
fn q4_lo(word: u32) -> vec4<f32> {
    return vec4<f32>((vec4<u32>(word) >> vec4<u32>(0u, 4u, 8u, 12u)) & vec4<u32>(15u)) - 8.0;
}
fn q4_hi(word: u32) -> vec4<f32> {
    return vec4<f32>((vec4<u32>(word) >> vec4<u32>(16u, 20u, 24u, 28u)) & vec4<u32>(15u)) - 8.0;
}
// The same nibbles as stored (q + 8, 0 .. 15), converted as signed integers
// (one instruction on CPU-backed adapters; unsigned conversion is several).
fn q4_lo_biased(word: u32) -> vec4<f32> {
    return vec4<f32>(bitcast<vec4<i32>>((vec4<u32>(word) >> vec4<u32>(0u, 4u, 8u, 12u)) & vec4<u32>(15u)));
}
fn q4_hi_biased(word: u32) -> vec4<f32> {
    return vec4<f32>(bitcast<vec4<i32>>((vec4<u32>(word) >> vec4<u32>(16u, 20u, 24u, 28u)) & vec4<u32>(15u)));
}
fn q8_4(word: u32) -> vec4<f32> {
    // Move each byte to the top, then shift back arithmetically (sign-extends).
    return vec4<f32>((vec4<i32>(bitcast<i32>(word)) << vec4<u32>(24u, 16u, 8u, 0u)) >> vec4<u32>(24u));
}

// A group's weights come in 16-byte loads ("units"): q4 one, q8 two, f16
// four, f32 eight; each unit holds 32 / units columns, 4 per step.
fn group_units() -> u32 {
    if (FORMAT == FMT_Q4) { return 1u; }
    if (FORMAT == FMT_Q8) { return 2u; }
    if (FORMAT == FMT_F16) { return 4u; }
    return 8u;
}

// Unit u of group c of weight row j.
fn load_unit(j: u32, c: u32, u: u32, aligned: bool) -> vec4<u32> {
    let base = j * params.row_words + c * (4u * group_units()) + 4u * u;
    if (aligned) {
        return weights4[base / 4u];
    }
    return vec4<u32>(weights[base], weights[base + 1u], weights[base + 2u], weights[base + 3u]);
}

// The four weights of step s of a unit.
fn unit_four(w: vec4<u32>, s: u32) -> vec4<f32> {
    if (FORMAT == FMT_Q4) {
        if (s % 2u == 0u) { return q4_lo(w[s / 2u]); }
        return q4_hi(w[s / 2u]);
    }
    if (FORMAT == FMT_Q8) { return q8_4(w[s]); }
    if (FORMAT == FMT_F16) { return vec4<f32>(unpack2x16float(w[2u * s]), unpack2x16float(w[2u * s + 1u])); }
    return bitcast<vec4<f32>>(w);
}

// The f16 scale of group c of row j (1 for the float formats). Read
// directly: keeping a 16-byte word of 8 scales across groups and picking one
// out of it cost SwiftShader a third of the output head's time (measured).
fn row_scale(j: u32, c: u32) -> f32 {
    if (FORMAT != FMT_Q4 && FORMAT != FMT_Q8) { return 1.0; }
    return group_scale(params.scale_base, j * params.groups + c);
}

// Weight row i of the invocation's tile (i < ROWWISE_ROWS): rows first,
// first + 64, .. and, with GATED, the first half are w1 rows and the second
// half the w3 rows (n + ..) of the same outputs. Lanes past n compute row
// n-1 and do not store: keeping every lane active keeps the x loads the same
// in every lane.
fn tile_row(first: u32, i: u32) -> u32 {
    if (GATED) {
        let half = ROWWISE_ROWS / 2u;
        if (i >= half) { return min(first + ROWWISE_WG * (i - half), params.n - 1u) + params.n; }
    }
    return min(first + ROWWISE_WG * i, params.n - 1u);
}

// Outputs per invocation.
fn tile_outputs() -> u32 {
    return select(ROWWISE_ROWS, ROWWISE_ROWS / 2u, GATED);
}

@compute @workgroup_size(64)
fn rowwise(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let first = wid.x * ROWWISE_WG * tile_outputs() + lid;
    let r0 = tile_row(first, 0u);
    let r1 = tile_row(first, 1u);
    let r2 = tile_row(first, 2u);
    let r3 = tile_row(first, 3u);
    let t0 = wid.y * ROWWISE_TOKENS;             // relative to t_first
    let t_last = min(ROWWISE_TOKENS, params.m - t0) - 1u;
    // acc_i: row r_i, component t: token t0 + t.
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    let full_groups = params.k / QGROUP;
    let aligned = (params.row_words % 4u) == 0u;
    let units = group_units();
    let steps = 8u / units;
    for (var c = 0u; c < full_groups; c++) {
        var p0 = vec4<f32>(0.0);
        var p1 = vec4<f32>(0.0);
        var p2 = vec4<f32>(0.0);
        var p3 = vec4<f32>(0.0);
        if (FORMAT == FMT_Q4) {
            // One 16-byte load per row holds the whole group: word i has columns 8i .. 8i+7.
            let w0 = load_unit(r0, c, 0u, true);
            var w1 = vec4<u32>(0u);
            var w2 = vec4<u32>(0u);
            var w3 = vec4<u32>(0u);
            if (ROWWISE_ROWS > 1u) { w1 = load_unit(r1, c, 0u, true); }
            if (ROWWISE_ROWS > 2u) { w2 = load_unit(r2, c, 0u, true); w3 = load_unit(r3, c, 0u, true); }
            // The nibbles hold q + 8: sum (q + 8)·x here and take 8·Σx off
            // once per group (Σx is shared by every row of the tile).
            var x_sum = vec4<f32>(0.0);
            for (var i = 0u; i < 4u; i++) {
                // One x tile feeds every row of the tile.
                let xl = x_tile(t0, t_last, c * QGROUP + 8u * i);
                let xh = x_tile(t0, t_last, c * QGROUP + 8u * i + 4u);
                x_sum += dot_tile(vec4<f32>(1.0), xl) + dot_tile(vec4<f32>(1.0), xh);
                p0 += dot_tile(q4_lo_biased(w0[i]), xl) + dot_tile(q4_hi_biased(w0[i]), xh);
                if (ROWWISE_ROWS > 1u) { p1 += dot_tile(q4_lo_biased(w1[i]), xl) + dot_tile(q4_hi_biased(w1[i]), xh); }
                if (ROWWISE_ROWS > 2u) {
                    p2 += dot_tile(q4_lo_biased(w2[i]), xl) + dot_tile(q4_hi_biased(w2[i]), xh);
                    p3 += dot_tile(q4_lo_biased(w3[i]), xl) + dot_tile(q4_hi_biased(w3[i]), xh);
                }
            }
            let bias8 = 8.0 * x_sum;
            p0 -= bias8;
            p1 -= bias8;
            p2 -= bias8;
            p3 -= bias8;
        }
        for (var u = 0u; u < select(units, 0u, FORMAT == FMT_Q4); u++) {
            let w0 = load_unit(r0, c, u, aligned);
            var w1 = vec4<u32>(0u);
            var w2 = vec4<u32>(0u);
            var w3 = vec4<u32>(0u);
            if (ROWWISE_ROWS > 1u) { w1 = load_unit(r1, c, u, aligned); }
            if (ROWWISE_ROWS > 2u) { w2 = load_unit(r2, c, u, aligned); w3 = load_unit(r3, c, u, aligned); }
            for (var s = 0u; s < steps; s++) {
                let xt = x_tile(t0, t_last, c * QGROUP + 4u * (u * steps + s));
                p0 += dot_tile(unit_four(w0, s), xt);
                if (ROWWISE_ROWS > 1u) { p1 += dot_tile(unit_four(w1, s), xt); }
                if (ROWWISE_ROWS > 2u) {
                    p2 += dot_tile(unit_four(w2, s), xt);
                    p3 += dot_tile(unit_four(w3, s), xt);
                }
            }
        }
        acc0 += p0 * row_scale(r0, c);
        if (ROWWISE_ROWS > 1u) { acc1 += p1 * row_scale(r1, c); }
        if (ROWWISE_ROWS > 2u) {
            acc2 += p2 * row_scale(r2, c);
            acc3 += p3 * row_scale(r3, c);
        }
    }
    // Last, partial group: element by element, never reading past k.
    for (var kk = full_groups * QGROUP; kk < params.k; kk++) {
        let xv = vec4<f32>(x_scalar(t0, kk), x_scalar(t0 + min(1u, t_last), kk), x_scalar(t0 + min(2u, t_last), kk), x_scalar(t0 + min(3u, t_last), kk));
        acc0 += weight_at(r0, kk, params.row_words, params.groups, params.scale_base) * xv;
        if (ROWWISE_ROWS > 1u) { acc1 += weight_at(r1, kk, params.row_words, params.groups, params.scale_base) * xv; }
        if (ROWWISE_ROWS > 2u) {
            acc2 += weight_at(r2, kk, params.row_words, params.groups, params.scale_base) * xv;
            acc3 += weight_at(r3, kk, params.row_words, params.groups, params.scale_base) * xv;
        }
    }
    if (GATED) {
        // (w1 row, w3 row) pairs: (0, 1) with two tile rows, (0, 2) and (1, 3) with four.
        if (ROWWISE_ROWS == 2u) {
            store_tile(first, t0, t_last, acc0, acc1);
        } else {
            store_tile(first, t0, t_last, acc0, acc2);
            store_tile(first + ROWWISE_WG, t0, t_last, acc1, acc3);
        }
        return;
    }
    store_tile(first, t0, t_last, acc0, acc0);
    if (ROWWISE_ROWS > 1u) { store_tile(first + ROWWISE_WG, t0, t_last, acc1, acc1); }
    if (ROWWISE_ROWS > 2u) {
        store_tile(first + 2u * ROWWISE_WG, t0, t_last, acc2, acc2);
        store_tile(first + 3u * ROWWISE_WG, t0, t_last, acc3, acc3);
    }
}

// Stores the tile's results for output j (nothing past n); with GATED,
// `acc_up` holds the w3 row's.
fn store_tile(j: u32, t0: u32, t_last: u32, acc: vec4<f32>, acc_up: vec4<f32>) {
    if (j >= params.n) { return; }
    let row0 = params.t_first + t0;
    var sums = acc;
    var sums_up = acc_up;
    if (LORA) {
        let col = params.out_offset + j;
        sums += lora_tile(row0, t_last, col);
        if (GATED) { sums_up += lora_tile(row0, t_last, col + params.n); }
    }
    for (var t = 0u; t <= t_last; t++) {
        if (GATED) {
            store_gated_sums(row0 + t, j, sums[t], sums_up[t]);
        } else {
            store_output_sum(row0 + t, j, sums[t]);
        }
    }
}

// rowwise_one: the rowwise shape for a single x row (decode). The same
// register tile of ROWWISE_ROWS weight rows, with scalar accumulators:
// SwiftShader's shader compiler keeps a 4-token tile's unused lanes, and the
// shared kernel with one token ran the decode matmuls 1.2-1.4x slower (measured).
// Grid: (ceil(n / (64·ROWWISE_ROWS)), 1).
@compute @workgroup_size(64)
fn rowwise_one(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let first = wid.x * ROWWISE_WG * tile_outputs() + lid;
    let r0 = tile_row(first, 0u);
    let r1 = tile_row(first, 1u);
    let r2 = tile_row(first, 2u);
    let r3 = tile_row(first, 3u);
    var acc0 = 0.0;
    var acc1 = 0.0;
    var acc2 = 0.0;
    var acc3 = 0.0;
    let full_groups = params.k / QGROUP;
    let aligned = (params.row_words % 4u) == 0u;
    let units = group_units();
    let steps = 8u / units;
    for (var c = 0u; c < full_groups; c++) {
        var p0 = 0.0;
        var p1 = 0.0;
        var p2 = 0.0;
        var p3 = 0.0;
        if (FORMAT == FMT_Q4) {
            let w0 = load_unit(r0, c, 0u, true);
            var w1 = vec4<u32>(0u);
            var w2 = vec4<u32>(0u);
            var w3 = vec4<u32>(0u);
            if (ROWWISE_ROWS > 1u) { w1 = load_unit(r1, c, 0u, true); }
            if (ROWWISE_ROWS > 2u) { w2 = load_unit(r2, c, 0u, true); w3 = load_unit(r3, c, 0u, true); }
            // Biased nibbles as in `rowwise`: 8·Σx comes off once per group.
            var x_sum = vec4<f32>(0.0);
            for (var i = 0u; i < 4u; i++) {
                let xl = x_vec4(0u, c * QGROUP + 8u * i);
                let xh = x_vec4(0u, c * QGROUP + 8u * i + 4u);
                x_sum += xl + xh;
                p0 += dot(q4_lo_biased(w0[i]), xl) + dot(q4_hi_biased(w0[i]), xh);
                if (ROWWISE_ROWS > 1u) { p1 += dot(q4_lo_biased(w1[i]), xl) + dot(q4_hi_biased(w1[i]), xh); }
                if (ROWWISE_ROWS > 2u) {
                    p2 += dot(q4_lo_biased(w2[i]), xl) + dot(q4_hi_biased(w2[i]), xh);
                    p3 += dot(q4_lo_biased(w3[i]), xl) + dot(q4_hi_biased(w3[i]), xh);
                }
            }
            let bias8 = 8.0 * ((x_sum.x + x_sum.y) + (x_sum.z + x_sum.w));
            p0 -= bias8;
            p1 -= bias8;
            p2 -= bias8;
            p3 -= bias8;
        }
        for (var u = 0u; u < select(units, 0u, FORMAT == FMT_Q4); u++) {
            let w0 = load_unit(r0, c, u, aligned);
            var w1 = vec4<u32>(0u);
            var w2 = vec4<u32>(0u);
            var w3 = vec4<u32>(0u);
            if (ROWWISE_ROWS > 1u) { w1 = load_unit(r1, c, u, aligned); }
            if (ROWWISE_ROWS > 2u) { w2 = load_unit(r2, c, u, aligned); w3 = load_unit(r3, c, u, aligned); }
            for (var s = 0u; s < steps; s++) {
                let xv = x_vec4(0u, c * QGROUP + 4u * (u * steps + s));
                p0 += dot(unit_four(w0, s), xv);
                if (ROWWISE_ROWS > 1u) { p1 += dot(unit_four(w1, s), xv); }
                if (ROWWISE_ROWS > 2u) {
                    p2 += dot(unit_four(w2, s), xv);
                    p3 += dot(unit_four(w3, s), xv);
                }
            }
        }
        acc0 += p0 * row_scale(r0, c);
        if (ROWWISE_ROWS > 1u) { acc1 += p1 * row_scale(r1, c); }
        if (ROWWISE_ROWS > 2u) {
            acc2 += p2 * row_scale(r2, c);
            acc3 += p3 * row_scale(r3, c);
        }
    }
    for (var kk = full_groups * QGROUP; kk < params.k; kk++) {
        let xv = x_scalar(0u, kk);
        acc0 += weight_at(r0, kk, params.row_words, params.groups, params.scale_base) * xv;
        if (ROWWISE_ROWS > 1u) { acc1 += weight_at(r1, kk, params.row_words, params.groups, params.scale_base) * xv; }
        if (ROWWISE_ROWS > 2u) {
            acc2 += weight_at(r2, kk, params.row_words, params.groups, params.scale_base) * xv;
            acc3 += weight_at(r3, kk, params.row_words, params.groups, params.scale_base) * xv;
        }
    }
    // Only component 0 of each tile is stored (t_last = 0).
    if (GATED) {
        if (ROWWISE_ROWS == 2u) {
            store_tile(first, 0u, 0u, vec4<f32>(acc0), vec4<f32>(acc1));
        } else {
            store_tile(first, 0u, 0u, vec4<f32>(acc0), vec4<f32>(acc2));
            store_tile(first + ROWWISE_WG, 0u, 0u, vec4<f32>(acc1), vec4<f32>(acc3));
        }
        return;
    }
    store_tile(first, 0u, 0u, vec4<f32>(acc0), vec4<f32>(acc0));
    if (ROWWISE_ROWS > 1u) { store_tile(first + ROWWISE_WG, 0u, 0u, vec4<f32>(acc1), vec4<f32>(acc1)); }
    if (ROWWISE_ROWS > 2u) {
        store_tile(first + 2u * ROWWISE_WG, 0u, 0u, vec4<f32>(acc2), vec4<f32>(acc2));
        store_tile(first + 3u * ROWWISE_WG, 0u, 0u, vec4<f32>(acc3), vec4<f32>(acc3));
    }
}
