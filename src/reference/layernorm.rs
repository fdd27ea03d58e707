//! LayerNorm with weight and bias.

pub fn layernorm(x: &[f32], weight: &[f32], bias: &[f32], dim: usize, eps: f32) -> Vec<f32> {
    let mut y = Vec::with_capacity(x.len());
    for row in x.chunks_exact(dim) {
        let mean = row.iter().map(|v| *v as f64).sum::<f64>() / dim as f64;
        let var = row.iter().map(|v| (*v as f64 - mean).powi(2)).sum::<f64>() / dim as f64;
        let inv = 1.0 / (var + eps as f64).sqrt();
        for i in 0..dim {
            y.push((((row[i] as f64 - mean) * inv) * weight[i] as f64 + bias[i] as f64) as f32);
        }
    }
    y
}
