//! RMSNorm with a learned per-channel scale (`shaders/rmsnorm.wgsl`).

use crate::gpu::{grid_1d, Dispatch, GpuContext, GpuError, Slot};

use super::{require, to_u32};

const SOURCE: &str = include_str!("../../shaders/rmsnorm.wgsl");

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    dim: u32,
    eps: f32,
    _pad: u32,
}

/// y[r] = x[r] · rsqrt(mean(x[r]²) + eps) · weight, for `rows` rows of `dim`.
pub fn rmsnorm(
    ctx: &GpuContext,
    x: &wgpu::Buffer,
    weight: &wgpu::Buffer,
    y: &wgpu::Buffer,
    rows: usize,
    dim: usize,
    eps: f32,
) -> Result<Dispatch, GpuError> {
    require(x, (rows * dim) as u64, "rmsnorm x")?;
    require(y, (rows * dim) as u64, "rmsnorm y")?;
    require(weight, dim as u64, "rmsnorm weight")?;
    let kernel = ctx.kernel(
        "rmsnorm",
        SOURCE,
        "rmsnorm",
        &[Slot::Uniform, Slot::Read, Slot::Read, Slot::ReadWrite],
        &[],
    )?;
    let params = Params { rows: to_u32(rows, "rows")?, dim: to_u32(dim, "dim")?, eps, _pad: 0 };
    let uniform = ctx.uniform("rmsnorm params", &params);
    Ok(ctx.dispatch(&kernel, &[&uniform, x, weight, y], grid_1d(params.rows)))
}
