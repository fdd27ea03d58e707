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
