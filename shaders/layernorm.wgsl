// LayerNorm with weight and bias, in f32 (two passes: mean, then variance of
// the centred values, which stays accurate when |mean| >> std):
//   y[r, :] = (x[r, :] - mean) * inverseSqrt(var + eps) * weight + bias
// One workgroup per row (rows folded into a 2-D grid).

struct Params {
    rows: u32,
    dim: u32,
    eps: f32,
    x_offset: u32,   // element index of x[0, 0]
    y_offset: u32,   // element index of y[0, 0]
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

var<workgroup> red: array<f32, 256>;

fn workgroup_sum(lid: u32, value: f32) -> f32 {
    red[lid] = value;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {
        if (lid < s) { red[lid] += red[lid + s]; }
        workgroupBarrier();
    }
    let total = red[0];
    workgroupBarrier();  // red is reused by the next sum
    return total;
}

@compute @workgroup_size(256)
fn layernorm(@builtin(local_invocation_index) lid: u32,
             @builtin(workgroup_id) wid: vec3<u32>,
             @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = wid.y * nwg.x + wid.x;
    if (row >= params.rows) { return; }  // uniform per workgroup
    let xb = params.x_offset + row * params.dim;
    let yb = params.y_offset + row * params.dim;
    let n = f32(params.dim);
    var s1 = 0.0;
    for (var i = lid; i < params.dim; i += 256u) { s1 += x[xb + i]; }
    let mean = workgroup_sum(lid, s1) / n;
    var s2 = 0.0;
    for (var i = lid; i < params.dim; i += 256u) {
        let d = x[xb + i] - mean;
        s2 += d * d;
    }
    let inv = inverseSqrt(workgroup_sum(lid, s2) / n + params.eps);
    for (var i = lid; i < params.dim; i += 256u) {
        y[yb + i] = (x[xb + i] - mean) * inv * weight[i] + bias[i];
    }
}
