// Activations and elementwise kernels over `n` f32 elements. One invocation
// per element; the grid is folded into 2-D (index = (wid.y * nwg.x + wid.x) * 256 + lid).
//   add:        out = out + a              (residual add, in place)
//   silu_gate:  out = silu(a) * b          (SwiGLU: a = W1·x, b = W3·x)
//   silu_gate_halves: the same with a = [W1·x | W3·x] rows of 2·width:
//               out[r, c] = silu(a[r, c]) * a[r, width + c]
//   gelu:       out = gelu_erf(out)        (in place; exact erf form)
//   quick_gelu: out = out * sigmoid(1.702 * out)  (in place; CLIP)

struct Params {
    n: u32,
    width: u32,       // silu_gate_halves: outputs per row
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

fn element(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * 256u + lid;
}

// 1 + erf(x) by Abramowitz & Stegun 7.1.26 (|error| <= 1.5e-7); WGSL has no
// erf. For x < 0 it is erfc(|x|), computed directly to avoid cancellation.
fn one_plus_erf(x: f32) -> f32 {
    let ax = abs(x);
    let t = 1.0 / (1.0 + 0.3275911 * ax);
    let poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))));
    let erfc_ax = poly * exp(-ax * ax);
    return select(2.0 - erfc_ax, erfc_ax, x < 0.0);
}

@compute @workgroup_size(256)
fn add(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = element(wid, nwg, lid);
    if (i < params.n) { out[i] = out[i] + a[i]; }
}

@compute @workgroup_size(256)
fn silu_gate(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = element(wid, nwg, lid);
    if (i < params.n) {
        let v = a[i];
        out[i] = v / (1.0 + exp(-v)) * b[i];
    }
}

@compute @workgroup_size(256)
fn gelu(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = element(wid, nwg, lid);
    if (i < params.n) {
        let v = out[i];
        out[i] = 0.5 * v * one_plus_erf(v * 0.70710678118654752);
    }
}

@compute @workgroup_size(256)
fn quick_gelu(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = element(wid, nwg, lid);
    if (i < params.n) {
        let v = out[i];
        out[i] = v / (1.0 + exp(-1.702 * v));
    }
}

@compute @workgroup_size(256)
fn silu_gate_halves(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = element(wid, nwg, lid);
    if (i < params.n) {
        let at = (i / params.width) * 2u * params.width + i % params.width;
        let v = a[at];
        out[i] = v / (1.0 + exp(-v)) * a[at + params.width];
    }
}
