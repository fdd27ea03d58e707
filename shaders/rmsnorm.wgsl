// RMSNorm with a learned per-channel scale, in f32:
//   y[r, :] = x[r, :] * inverseSqrt(mean(x[r, :]^2) + eps) * weight
// One workgroup of 64 per row (rows folded into a 2-D grid): CPU-backed
// adapters run a workgroup's SIMD slices in turn at every barrier, and 256
// invocations made a decode step's 17 RMSNorms cost more than their reads.

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
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

const WG: u32 = 64u;
var<workgroup> red: array<f32, 64>;

@compute @workgroup_size(64)
fn rmsnorm(@builtin(local_invocation_index) lid: u32,
           @builtin(workgroup_id) wid: vec3<u32>,
           @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = wid.y * nwg.x + wid.x;
    if (row >= params.rows) { return; }  // uniform per workgroup
    let xb = params.x_offset + row * params.dim;
    let yb = params.y_offset + row * params.dim;
    var ss = 0.0;
    for (var i = lid; i < params.dim; i += WG) {
        let v = x[xb + i];
        ss += v * v;
    }
    red[lid] = ss;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) { red[lid] += red[lid + s]; }
        workgroupBarrier();
    }
    let inv = inverseSqrt(red[0] / f32(params.dim) + params.eps);
    for (var i = lid; i < params.dim; i += WG) {
        y[yb + i] = x[xb + i] * inv * weight[i];
    }
}
