// Sampling helpers over one row of logits; a single workgroup of 256 scans the
// row so that only a few bytes go back to the CPU.
//   argmax: result = [index, bits(value)]; ties go to the lowest index, NaN
//           counts as -inf.
//   topk:   result = [bits(max), bits(Z), then k pairs (bits(logit), index)]
//           in descending order (ties: lower index first), where
//           Z = sum_i exp((logit_i - max) * inv_temperature) over the whole
//           row, so the CPU can turn the k logits into exact full-vocabulary
//           probabilities for top-p.

struct Params {
    n: u32,
    offset: u32,
    k: u32,
    inv_temperature: f32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read_write> result: array<u32>;

const NEG_INF: f32 = -3.402823e38;
var<workgroup> best_v: array<f32, 256>;
var<workgroup> best_i: array<u32, 256>;
var<workgroup> red: array<f32, 256>;

fn logit(i: u32) -> f32 {
    let v = logits[params.offset + i];
    return select(v, NEG_INF, v != v);  // NaN -> -inf
}

// (av, ai) ranks before (bv, bi)?
fn before(av: f32, ai: u32, bv: f32, bi: u32) -> bool {
    return av > bv || (av == bv && ai < bi);
}

// Workgroup-wide best of each invocation's (v, i); result in best_*[0].
fn reduce_best(lid: u32, v: f32, i: u32) {
    best_v[lid] = v;
    best_i[lid] = i;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {
        if (lid < s && before(best_v[lid + s], best_i[lid + s], best_v[lid], best_i[lid])) {
            best_v[lid] = best_v[lid + s];
            best_i[lid] = best_i[lid + s];
        }
        workgroupBarrier();
    }
}

// Best element strictly after (pv, pi) in the ranking (or overall if !has_prev).
fn scan_best(lid: u32, has_prev: bool, pv: f32, pi: u32) {
    var bv = NEG_INF;
    var bi = 0xffffffffu;
    for (var i = lid; i < params.n; i += 256u) {
        let v = logit(i);
        let after_prev = !has_prev || before(pv, pi, v, i);
        if (after_prev && before(v, i, bv, bi)) {
            bv = v;
            bi = i;
        }
    }
    reduce_best(lid, bv, bi);
}

@compute @workgroup_size(256)
fn argmax(@builtin(local_invocation_index) lid: u32) {
    scan_best(lid, false, 0.0, 0u);
    if (lid == 0u) {
        result[0] = best_i[0];
        result[1] = bitcast<u32>(best_v[0]);
    }
}

@compute @workgroup_size(256)
fn topk(@builtin(local_invocation_index) lid: u32) {
    scan_best(lid, false, 0.0, 0u);
    let max_v = best_v[0];
    workgroupBarrier();
    var z = 0.0;
    for (var i = lid; i < params.n; i += 256u) {
        z += exp((logit(i) - max_v) * params.inv_temperature);
    }
    red[lid] = z;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {
        if (lid < s) { red[lid] += red[lid + s]; }
        workgroupBarrier();
    }
    if (lid == 0u) {
        result[0] = bitcast<u32>(max_v);
        result[1] = bitcast<u32>(red[0]);
    }
    var pv = 0.0;
    var pi = 0u;
    let k = min(params.k, params.n);
    for (var r = 0u; r < k; r++) {
        scan_best(lid, r > 0u, pv, pi);
        pv = best_v[0];
        pi = best_i[0];
        if (lid == 0u) {
            result[2u + 2u * r] = bitcast<u32>(pv);
            result[3u + 2u * r] = pi;
        }
        workgroupBarrier();
    }
}
