//! Sampling helpers (`shaders/sampling.wgsl`): greedy argmax and a top-k
//! summary, so that a decode step reads back a few bytes, not 32000 logits.

use crate::gpu::{Dispatch, GpuContext, GpuError, Slot};

use super::{require, to_u32};

const SOURCE: &str = include_str!("../../shaders/sampling.wgsl");
const SLOTS: [Slot; 3] = [Slot::Uniform, Slot::Read, Slot::ReadWrite];

/// Largest k the top-k helper accepts.
pub const MAX_TOP_K: usize = 256;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    offset: u32,
    k: u32,
    inv_temperature: f32,
}

/// Writes [index, bits(value)] of the largest of logits[offset .. offset+n]
/// into `result` (2 words; ties go to the lowest index, NaN counts as −∞).
pub fn argmax(ctx: &GpuContext, logits: &wgpu::Buffer, offset: usize, n: usize, result: &wgpu::Buffer) -> Result<Dispatch, GpuError> {
    require(logits, (offset + n) as u64, "argmax logits")?;
    require(result, 2, "argmax result")?;
    let kernel = ctx.kernel("sampling", SOURCE, "argmax", &SLOTS, &[])?;
    let params = Params { n: to_u32(n, "n")?, offset: to_u32(offset, "offset")?, k: 0, inv_temperature: 1.0 };
    let uniform = ctx.uniform("argmax params", &params);
    Ok(ctx.dispatch(&kernel, uniform, &[logits, result], [1, 1, 1]))
}

/// Number of u32 words [`top_k`] writes for a given k.
pub fn top_k_words(k: usize) -> usize {
    2 + 2 * k
}

/// Writes the top-k summary of logits[offset .. offset+n] into `result`:
/// [bits(max), bits(Z), then k × (bits(logit), index)], descending, where
/// Z = Σ exp((logit − max)/temperature) over the whole row.
pub fn top_k(
    ctx: &GpuContext,
    logits: &wgpu::Buffer,
    offset: usize,
    n: usize,
    k: usize,
    temperature: f32,
    result: &wgpu::Buffer,
) -> Result<Dispatch, GpuError> {
    if k == 0 || k > MAX_TOP_K {
        return Err(GpuError::InvalidArgument(format!("top_k: k = {k} not in 1..={MAX_TOP_K}")));
    }
    if !(temperature > 0.0 && temperature.is_finite()) {
        return Err(GpuError::InvalidArgument(format!("top_k: temperature {temperature} must be positive")));
    }
    require(logits, (offset + n) as u64, "top_k logits")?;
    require(result, top_k_words(k) as u64, "top_k result")?;
    let kernel = ctx.kernel("sampling", SOURCE, "topk", &SLOTS, &[])?;
    let params = Params { n: to_u32(n, "n")?, offset: to_u32(offset, "offset")?, k: to_u32(k, "k")?, inv_temperature: 1.0 / temperature };
    let uniform = ctx.uniform("top_k params", &params);
    Ok(ctx.dispatch(&kernel, uniform, &[logits, result], [1, 1, 1]))
}

/// The decoded top-k summary.
#[derive(Debug, Clone, PartialEq)]
pub struct TopK {
    pub max: f32,
    /// Σ exp((logit − max)/T) over the whole row.
    pub z: f32,
    /// (logit, token) in descending order.
    pub entries: Vec<(f32, u32)>,
}

impl TopK {
    pub fn from_words(words: &[u32]) -> TopK {
        let entries = words[2..].chunks_exact(2).map(|p| (f32::from_bits(p[0]), p[1])).collect();
        TopK { max: f32::from_bits(words[0]), z: f32::from_bits(words[1]), entries }
    }
}

impl TopK {
    /// Spec §5's temperature + top-p draw over these candidates, with their
    /// exact full-row probabilities exp((l − max)/T)/Z. `u` is uniform in
    /// [0, 1). Returns `None` when the k candidates hold no more than `top_p`
    /// of the mass, i.e. the nucleus may reach past them: ask for a larger k.
    pub fn sample_top_p(&self, temperature: f32, top_p: f64, u: f64) -> Option<u32> {
        let probs: Vec<f64> = self
            .entries
            .iter()
            .map(|(l, _)| ((*l as f64 - self.max as f64) / temperature as f64).exp() / self.z as f64)
            .collect();
        if probs.iter().sum::<f64>() <= top_p {
            return None;
        }
        let pick = crate::reference::sampling::sample_top_p_sorted(&probs, top_p, u);
        Some(self.entries[pick].1)
    }
}
