//! Activations and elementwise kernels (`shaders/elementwise.wgsl`).

use crate::gpu::{grid_1d, Dispatch, GpuContext, GpuError, Slot};

use super::{require, to_u32};

const SOURCE: &str = include_str!("../../shaders/elementwise.wgsl");
const SLOTS: [Slot; 4] = [Slot::Uniform, Slot::Read, Slot::Read, Slot::ReadWrite];

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    width: u32,
    _pad: [u32; 2],
}

fn build(ctx: &GpuContext, entry: &str, a: &wgpu::Buffer, b: &wgpu::Buffer, out: &wgpu::Buffer, n: usize) -> Result<Dispatch, GpuError> {
    build_rows(ctx, entry, a, b, out, n, 0)
}

fn build_rows(ctx: &GpuContext, entry: &str, a: &wgpu::Buffer, b: &wgpu::Buffer, out: &wgpu::Buffer, n: usize, width: usize) -> Result<Dispatch, GpuError> {
    require(out, n as u64, entry)?;
    let kernel = ctx.kernel("elementwise", SOURCE, entry, &SLOTS, &[])?;
    let params = Params { n: to_u32(n, "n")?, width: to_u32(width, "width")?, _pad: [0; 2] };
    let uniform = ctx.uniform("elementwise params", &params);
    Ok(ctx.dispatch(&kernel, uniform, &[a, b, out], grid_1d(to_u32(n.div_ceil(256), "grid")?)))
}

/// out[i] += a[i] (residual add), for the first n elements.
pub fn add(ctx: &GpuContext, a: &wgpu::Buffer, out: &wgpu::Buffer, n: usize) -> Result<Dispatch, GpuError> {
    require(a, n as u64, "add a")?;
    build(ctx, "add", a, ctx.dummy(), out, n)
}

/// out[i] = silu(a[i])·b[i] (the SwiGLU gate).
pub fn silu_gate(ctx: &GpuContext, a: &wgpu::Buffer, b: &wgpu::Buffer, out: &wgpu::Buffer, n: usize) -> Result<Dispatch, GpuError> {
    require(a, n as u64, "silu_gate a")?;
    require(b, n as u64, "silu_gate b")?;
    build(ctx, "silu_gate", a, b, out, n)
}

/// out[r, c] = silu(a[r, c])·a[r, width + c] for `rows` rows: the SwiGLU gate
/// of a fused [w1 | w3] matmul's output (rows of 2·width).
pub fn silu_gate_halves(ctx: &GpuContext, a: &wgpu::Buffer, rows: usize, width: usize, out: &wgpu::Buffer) -> Result<Dispatch, GpuError> {
    if width == 0 {
        return Err(GpuError::InvalidArgument("silu_gate_halves: zero width".into()));
    }
    require(a, (rows * 2 * width) as u64, "silu_gate_halves a")?;
    build_rows(ctx, "silu_gate_halves", a, ctx.dummy(), out, rows * width, width)
}

/// out[i] = gelu(out[i]), exact erf form, in place.
pub fn gelu(ctx: &GpuContext, out: &wgpu::Buffer, n: usize) -> Result<Dispatch, GpuError> {
    build(ctx, "gelu", ctx.dummy(), ctx.dummy(), out, n)
}

/// out[i] = out[i]·sigmoid(1.702·out[i]) (CLIP's QuickGELU), in place.
pub fn quick_gelu(ctx: &GpuContext, out: &wgpu::Buffer, n: usize) -> Result<Dispatch, GpuError> {
    build(ctx, "quick_gelu", ctx.dummy(), ctx.dummy(), out, n)
}
