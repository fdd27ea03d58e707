//! Embedding gather from a (possibly row-blocked, quantised) table
//! (`shaders/embedding.wgsl`).

use crate::gpu::{grid_1d, Dispatch, GpuContext, GpuError, Slot};

use super::matmul::GpuMatrix;
use super::{require, to_u32};

const SOURCE: &str = concat!(include_str!("../../shaders/quant_common.wgsl"), include_str!("../../shaders/embedding.wgsl"));

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
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

/// out[out_offset + t·dim ..] = table[tokens[t]] for `n_tokens` u32 token ids
/// in `tokens`. One dispatch per row block of the table. Token ids must be
/// below `table.rows` (the caller checks them on the CPU, where they come from).
pub fn embedding(
    ctx: &GpuContext,
    table: &GpuMatrix,
    tokens: &wgpu::Buffer,
    n_tokens: usize,
    out: &wgpu::Buffer,
    out_offset: usize,
) -> Result<Vec<Dispatch>, GpuError> {
    let dim = table.cols;
    require(tokens, n_tokens as u64, "embedding tokens")?;
    require(out, (out_offset + n_tokens * dim) as u64, "embedding out")?;
    let kernel = ctx.kernel(
        "embedding",
        SOURCE,
        "embedding",
        &[Slot::Uniform, Slot::Read, Slot::Read, Slot::ReadWrite],
        &[("FORMAT", table.format.shader_code() as f64)],
    )?;
    let groups = to_u32((n_tokens * dim).div_ceil(256), "grid")?;
    table
        .blocks
        .iter()
        .map(|block| {
            let params = Params {
                n_tokens: to_u32(n_tokens, "n_tokens")?,
                dim: to_u32(dim, "dim")?,
                row_start: to_u32(block.row_start, "row_start")?,
                rows: to_u32(block.rows, "rows")?,
                row_words: to_u32(table.format.row_words(dim), "row_words")?,
                groups: to_u32(table.format.groups(dim), "groups")?,
                scale_base: to_u32(block.rows * table.format.row_words(dim), "scale_base")?,
                out_offset: to_u32(out_offset, "out_offset")?,
            };
            let uniform = ctx.uniform("embedding params", &params);
            Ok(ctx.dispatch(&kernel, uniform, &[tokens, &block.buffer, out], grid_1d(groups)))
        })
        .collect()
}
