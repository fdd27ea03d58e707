//! Attention with a gated prefix, and bidirectional attention. Tensors are
//! contiguous `[rows][n_heads·head_dim]`.

fn softmax_weighted(q: &[f32], keys: &[f32], values: &[f32], n_keys: usize, h: usize, n_heads: usize, d: usize, out: &mut [f64]) {
    let width = n_heads * d;
    let scale = 1.0 / (d as f64).sqrt();
    let scores: Vec<f64> = (0..n_keys)
        .map(|j| {
            let k = &keys[j * width + h * d..j * width + (h + 1) * d];
            q.iter().zip(k).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() * scale
        })
        .collect();
    let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let exps: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    for (e, o) in out.iter_mut().enumerate() {
        *o = (0..n_keys).map(|j| exps[j] * values[j * width + h * d + e] as f64).sum::<f64>() / sum;
    }
}

/// The decoder's attention for `n_queries` rows of q at absolute positions
/// `start_pos..`, over cache rows `0..start_pos + n_queries` (causal), plus
/// `tanh(gate[h])·new_gate·softmax(q·K_pᵀ/√d)·V_p` when a prefix is given.
#[allow(clippy::too_many_arguments)]
pub fn decoder_attention(
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    prefix: Option<(&[f32], &[f32], usize, &[f32], f32)>,
    n_queries: usize,
    n_heads: usize,
    head_dim: usize,
    start_pos: usize,
) -> Vec<f32> {
    let width = n_heads * head_dim;
    let mut out = vec![0f32; n_queries * width];
    let mut main = vec![0f64; head_dim];
    let mut extra = vec![0f64; head_dim];
    for i in 0..n_queries {
        for h in 0..n_heads {
            let qh = &q[i * width + h * head_dim..i * width + (h + 1) * head_dim];
            softmax_weighted(qh, keys, values, start_pos + i + 1, h, n_heads, head_dim, &mut main);
            if let Some((pk, pv, p_len, gate, new_gate)) = prefix {
                if p_len > 0 {
                    softmax_weighted(qh, pk, pv, p_len, h, n_heads, head_dim, &mut extra);
                    let g = (gate[h] as f64).tanh() * new_gate as f64;
                    for e in 0..head_dim {
                        main[e] += g * extra[e];
                    }
                }
            }
            for e in 0..head_dim {
                out[i * width + h * head_dim + e] = main[e] as f32;
            }
        }
    }
    out
}

/// Bidirectional multi-head attention over `tokens` rows.
pub fn bidirectional_attention(q: &[f32], keys: &[f32], values: &[f32], tokens: usize, n_heads: usize, head_dim: usize) -> Vec<f32> {
    let width = n_heads * head_dim;
    let mut out = vec![0f32; tokens * width];
    let mut o = vec![0f64; head_dim];
    for i in 0..tokens {
        for h in 0..n_heads {
            let qh = &q[i * width + h * head_dim..i * width + (h + 1) * head_dim];
            softmax_weighted(qh, keys, values, tokens, h, n_heads, head_dim, &mut o);
            for e in 0..head_dim {
                out[i * width + h * head_dim + e] = o[e] as f32;
            }
        }
    }
    out
}
