//! LayerNorm with weight and bias (`shaders/layernorm.wgsl`).

use crate::gpu::{grid_1d, Dispatch, GpuContext, GpuError, Slot};

use super::{require, to_u32};

const SOURCE: &str = include_str!("../../shaders/layernorm.wgsl");

/// PyTorch's default LayerNorm epsilon, used by CLIP and the visual adapter.
pub const LAYERNORM_EPS: f32 = 1e-5;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    dim: u32,
    eps: f32,
    _pad: u32,
}

/// y[r] = (x[r] − mean)·rsqrt(var + eps)·weight + bias, for `rows` rows of `dim`.
#[allow(clippy::too_many_arguments)]
pub fn layernorm(
    ctx: &GpuContext,
    x: &wgpu::Buffer,
    weight: &wgpu::Buffer,
    bias: &wgpu::Buffer,
    y: &wgpu::Buffer,
    rows: usize,
    dim: usize,
    eps: f32,
) -> Result<Dispatch, GpuError> {
    require(x, (rows * dim) as u64, "layernorm x")?;
    require(y, (rows * dim) as u64, "layernorm y")?;
    require(weight, dim as u64, "layernorm weight")?;
    require(bias, dim as u64, "layernorm bias")?;
    let kernel = ctx.kernel(
        "layernorm",
        SOURCE,
        "layernorm",
        &[Slot::Uniform, Slot::Read, Slot::Read, Slot::Read, Slot::ReadWrite],
        &[],
    )?;
    let params = Params { rows: to_u32(rows, "rows")?, dim: to_u32(dim, "dim")?, eps, _pad: 0 };
    let uniform = ctx.uniform("layernorm params", &params);
    Ok(ctx.dispatch(&kernel, &[&uniform, x, weight, bias, y], grid_1d(params.rows)))
}
