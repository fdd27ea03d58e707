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

@compute @workgroup_size(256)
fn rope(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let half_dim = params.head_dim / 2u;
    let p = gid.y * nwg.x * 256u + gid.x;  // pair index over rows x heads x half_dim
    if (p >= params.rows * params.n_heads * half_dim) { return; }
    let i = p % half_dim;
    let h = (p / half_dim) % params.n_heads;
    let row = p / (half_dim * params.n_heads);
    let pos = params.start_pos + row;
    if (pos >= params.table_len) { return; }  // the wrapper rejects this; never write garbage
    let cs = table[pos * half_dim + i];
    let at = params.offset + row * params.row_stride + h * params.head_dim + 2u * i;
    let a = data[at];
    let b = data[at + 1u];
    data[at] = a * cs.x - b * cs.y;
    data[at + 1u] = a * cs.y + b * cs.x;
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
    let half_dim = params.head_dim / 2u;
    let p = gid.y * nwg.x * 256u + gid.x;
    if (p >= params.rows * params.n_heads * half_dim) { return; }
    let i = p % half_dim;
    let h = (p / half_dim) % params.n_heads;
    let row = p / (half_dim * params.n_heads);
    let pos = params.start_pos + row;
    if (pos >= params.table_len) { return; }  // the wrapper rejects this; never write garbage
    let cs = table[pos * half_dim + i];
    let width = params.n_heads * params.head_dim;
    let in_row = h * params.head_dim + 2u * i;
    let q_at = params.offset + row * params.row_stride + in_row;
    let k_at = q_at + width;
    let v_at = q_at + 2u * width;
    let cache_at = pos * width + in_row;
    let qa = data[q_at];
    let qb = data[q_at + 1u];
    data[q_at] = qa * cs.x - qb * cs.y;
    data[q_at + 1u] = qa * cs.y + qb * cs.x;
    let ka = data[k_at];
    let kb = data[k_at + 1u];
    cache_k[cache_at] = ka * cs.x - kb * cs.y;
    cache_k[cache_at + 1u] = ka * cs.y + kb * cs.x;
    cache_v[cache_at] = data[v_at];
    cache_v[cache_at + 1u] = data[v_at + 1u];
}
