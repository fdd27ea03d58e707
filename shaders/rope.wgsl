// Rotary position embedding, LLaMA's interleaved layout: each head vector is
// 64 complex numbers (x[2i], x[2i+1]), multiplied in place by
// (cos θ, sin θ) with θ = pos · theta^(-2i/d) at absolute position
// pos = start_pos + row. The (cos, sin) table is computed on the CPU (see
// reference/rope.rs) exactly as PyTorch's freqs_cis, so large angles carry no
// GPU sin/cos error.

struct Params {
    rows: u32,        // tokens
    n_heads: u32,
    head_dim: u32,
    start_pos: u32,
    row_stride: u32,  // elements per token row of data
    offset: u32,      // element index of head 0 of row 0
    table_len: u32,   // positions in the table
    _pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> table: array<vec2<f32>>;   // [table_len][head_dim/2]
@group(0) @binding(2) var<storage, read_write> data: array<f32>;

// Invocation p's pair: (row, head, pair index i) over rows x heads x half_dim.
struct Pair {
    valid: bool,
    row: u32,
    h: u32,
    i: u32,
    pos: u32,
    cs: vec2<f32>,   // (cos, sin) at position pos for pair i
}

fn pair_of(gid: vec3<u32>, nwg: vec3<u32>) -> Pair {
    let half_dim = params.head_dim / 2u;
    let p = gid.y * nwg.x * 256u + gid.x;
    var pair = Pair(false, 0u, 0u, 0u, 0u, vec2<f32>(0.0));
    // Past the end, or past the table (the wrapper rejects that; never write garbage).
    if (p >= params.rows * params.n_heads * half_dim) { return pair; }
    pair.i = p % half_dim;
    pair.h = (p / half_dim) % params.n_heads;
    pair.row = p / (half_dim * params.n_heads);
    pair.pos = params.start_pos + pair.row;
    if (pair.pos >= params.table_len) { return pair; }
    pair.cs = table[pair.pos * half_dim + pair.i];
    pair.valid = true;
    return pair;
}

// (a, b) as a complex number times (cos, sin).
fn rotate(a: f32, b: f32, cs: vec2<f32>) -> vec2<f32> {
    return vec2<f32>(a * cs.x - b * cs.y, a * cs.y + b * cs.x);
}

@compute @workgroup_size(256)
fn rope(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let pair = pair_of(gid, nwg);
    if (!pair.valid) { return; }
    let at = params.offset + pair.row * params.row_stride + pair.h * params.head_dim + 2u * pair.i;
    let r = rotate(data[at], data[at + 1u], pair.cs);
    data[at] = r.x;
    data[at + 1u] = r.y;
}

// rope_qkv: the decoder's fused q/k/v output, `rows` rows of [q | k | v]
// (each n_heads·head_dim wide, row t at element offset + t·row_stride):
// q is rotated in place, k is rotated into the key cache row start_pos + t,
// and v is copied into the value cache row (the caches are rows of
// n_heads·head_dim). One invocation per (row, head, pair), as in `rope`.
@group(0) @binding(3) var<storage, read_write> cache_k: array<f32>;
@group(0) @binding(4) var<storage, read_write> cache_v: array<f32>;

@compute @workgroup_size(256)
fn rope_qkv(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let pair = pair_of(gid, nwg);
    if (!pair.valid) { return; }
    let width = params.n_heads * params.head_dim;
    let in_row = pair.h * params.head_dim + 2u * pair.i;
    let q_at = params.offset + pair.row * params.row_stride + in_row;
    let k_at = q_at + width;
    let v_at = q_at + 2u * width;
    let cache_at = pair.pos * width + in_row;
    let q = rotate(data[q_at], data[q_at + 1u], pair.cs);
    data[q_at] = q.x;
    data[q_at + 1u] = q.y;
    let k = rotate(data[k_at], data[k_at + 1u], pair.cs);
    cache_k[cache_at] = k.x;
    cache_k[cache_at + 1u] = k.y;
    cache_v[cache_at] = data[v_at];
    cache_v[cache_at + 1u] = data[v_at + 1u];
}
