//! Embedding gather.

use crate::format::quant::PackedMatrix;

pub fn embedding(table: &PackedMatrix, tokens: &[u32]) -> Vec<f32> {
    let mut out = Vec::with_capacity(tokens.len() * table.cols);
    for &t in tokens {
        for c in 0..table.cols {
            out.push(table.get(t as usize, c));
        }
    }
    out
}
