//! Rotary embedding in LLaMA's interleaved-pair layout.

/// The (cos, sin) table, `positions × head_dim/2` pairs, flattened. It follows
/// PyTorch's `precompute_freqs_cis` step by step in f32 (freq = 1/θ^(2i/d),
/// angle = t·freq, both rounded to f32), then takes cos/sin of that f32 angle
/// in f64, so the GPU never evaluates sin/cos of a large angle itself.
pub fn rope_table(positions: usize, head_dim: usize, theta: f32) -> Vec<f32> {
    let half = head_dim / 2;
    let freqs: Vec<f32> = (0..half)
        .map(|i| 1.0f32 / theta.powf((2 * i) as f32 / head_dim as f32))
        .collect();
    let mut table = Vec::with_capacity(positions * half * 2);
    for t in 0..positions {
        for f in &freqs {
            let angle = (t as f32 * f) as f64;
            table.push(angle.cos() as f32);
            table.push(angle.sin() as f32);
        }
    }
    table
}

/// Rotates `rows × n_heads × head_dim` vectors (contiguous) in place, row `t`
/// at absolute position `start_pos + t`.
pub fn rope(data: &mut [f32], n_heads: usize, head_dim: usize, start_pos: usize, theta: f32) {
    let rows = data.len() / (n_heads * head_dim);
    let table = rope_table(start_pos + rows, head_dim, theta);
    let half = head_dim / 2;
    for t in 0..rows {
        for h in 0..n_heads {
            for i in 0..half {
                let at = (t * n_heads + h) * head_dim + 2 * i;
                let (c, s) = (table[((start_pos + t) * half + i) * 2], table[((start_pos + t) * half + i) * 2 + 1]);
                let (a, b) = (data[at], data[at + 1]);
                data[at] = a * c - b * s;
                data[at + 1] = a * s + b * c;
            }
        }
    }
}
