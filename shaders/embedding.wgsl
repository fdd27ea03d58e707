// Embedding gather: out[t, :] = dequant(E[tokens[t], :]) for the tokens that
// fall in this row block of the table [row_start, row_start + rows). A table
// split into several blocks (storage-binding limit) is gathered with one
// dispatch per block. One invocation per output element, 2-D folded grid.

struct Params {
    n_tokens: u32,
    dim: u32,
    row_start: u32,
    rows: u32,
    row_words: u32,
    groups: u32,
    scale_base: u32,
    out_offset: u32,
}

override FORMAT: u32 = 0u;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> tokens: array<u32>;
@group(0) @binding(2) var<storage, read> weights: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn embedding(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = (wid.y * nwg.x + wid.x) * 256u + lid;
    if (i >= params.n_tokens * params.dim) { return; }
    let t = i / params.dim;
    let e = i % params.dim;
    let token = tokens[t];
    if (token < params.row_start || token >= params.row_start + params.rows) { return; }
    out[params.out_offset + i] = weight_at(token - params.row_start, e, params.row_words, params.groups, params.scale_base);
}
