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
    x_offset: u32,
    y_offset: u32,
    _pad: [u32; 3],
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
    rmsnorm_at(ctx, x, 0, weight, y, 0, rows, dim, eps)
}

/// [`rmsnorm`] on rows starting at element `x_offset` of x, written from
/// element `y_offset` of y.
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm_at(
    ctx: &GpuContext,
    x: &wgpu::Buffer,
    x_offset: usize,
    weight: &wgpu::Buffer,
    y: &wgpu::Buffer,
    y_offset: usize,
    rows: usize,
    dim: usize,
    eps: f32,
) -> Result<Dispatch, GpuError> {
    require(x, (x_offset + rows * dim) as u64, "rmsnorm x")?;
    require(y, (y_offset + rows * dim) as u64, "rmsnorm y")?;
    require(weight, dim as u64, "rmsnorm weight")?;
    let kernel = ctx.kernel(
        "rmsnorm",
        SOURCE,
        "rmsnorm",
        &[Slot::Uniform, Slot::Read, Slot::Read, Slot::ReadWrite],
        &[],
    )?;
    let params = Params {
        rows: to_u32(rows, "rows")?,
        dim: to_u32(dim, "dim")?,
        eps,
        x_offset: to_u32(x_offset, "x_offset")?,
        y_offset: to_u32(y_offset, "y_offset")?,
        _pad: [0; 3],
    };
    let uniform = ctx.uniform("rmsnorm params", &params);
    Ok(ctx.dispatch(&kernel, uniform, &[x, weight, y], grid_1d(params.rows)))
}
