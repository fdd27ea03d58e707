//! Rotary position embedding, interleaved pairs (`shaders/rope.wgsl`).

use crate::gpu::{grid_1d, Dispatch, GpuContext, GpuError, Slot};
use crate::reference::rope::rope_table;

use super::{require, to_u32};

const SOURCE: &str = include_str!("../../shaders/rope.wgsl");

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    n_heads: u32,
    head_dim: u32,
    start_pos: u32,
    row_stride: u32,
    offset: u32,
    table_len: u32,
    _pad: u32,
}

/// The (cos, sin) table of `positions` positions on the GPU.
pub struct RopeTable {
    pub buffer: wgpu::Buffer,
    pub positions: usize,
    pub head_dim: usize,
}

impl RopeTable {
    pub fn new(ctx: &GpuContext, positions: usize, head_dim: usize, theta: f32) -> RopeTable {
        let table = rope_table(positions, head_dim, theta);
        RopeTable { buffer: ctx.upload("rope table", &table), positions, head_dim }
    }
}

/// Where the vectors to rotate live: `rows` token rows of `n_heads` heads,
/// row `t` head `h` at element `offset + t·row_stride + h·head_dim`.
pub struct RopeArgs<'a> {
    pub data: &'a wgpu::Buffer,
    pub rows: usize,
    pub n_heads: usize,
    pub row_stride: usize,
    pub offset: usize,
    /// Absolute position of row 0.
    pub start_pos: usize,
}

/// The table covers positions `start_pos .. start_pos + rows` and pairs up a head.
fn check_positions(what: &str, table: &RopeTable, start_pos: usize, rows: usize) -> Result<(), GpuError> {
    if table.head_dim % 2 != 0 {
        return Err(GpuError::InvalidArgument(format!("{what}: head_dim {} is odd", table.head_dim)));
    }
    if start_pos + rows > table.positions {
        return Err(GpuError::InvalidArgument(format!("{what}: positions {start_pos}..{} exceed the table's {} positions", start_pos + rows, table.positions)));
    }
    Ok(())
}

/// Rotates the vectors in place.
pub fn rope(ctx: &GpuContext, table: &RopeTable, args: &RopeArgs) -> Result<Dispatch, GpuError> {
    let d = table.head_dim;
    check_positions("rope", table, args.start_pos, args.rows)?;
    if args.rows > 0 {
        require(args.data, (args.offset + (args.rows - 1) * args.row_stride + args.n_heads * d) as u64, "rope data")?;
    }
    let kernel = ctx.kernel("rope", SOURCE, "rope", &[Slot::Uniform, Slot::Read, Slot::ReadWrite], &[])?;
    let params = Params {
        rows: to_u32(args.rows, "rows")?,
        n_heads: to_u32(args.n_heads, "n_heads")?,
        head_dim: to_u32(d, "head_dim")?,
        start_pos: to_u32(args.start_pos, "start_pos")?,
        row_stride: to_u32(args.row_stride, "row_stride")?,
        offset: to_u32(args.offset, "offset")?,
        table_len: to_u32(table.positions, "positions")?,
        _pad: 0,
    };
    let uniform = ctx.uniform("rope params", &params);
    let pairs = args.rows * args.n_heads * d / 2;
    Ok(ctx.dispatch(&kernel, uniform, &[&table.buffer, args.data], grid_1d(to_u32(pairs.div_ceil(256), "grid")?)))
}

/// The decoder's fused q/k/v rows after their matmul: `rows` rows of
/// [q | k | v] (each `n_heads·head_dim` wide) in `qkv`, row `t` at element
/// `t·row_stride`, at absolute positions `start_pos ..`.
pub struct QkvArgs<'a> {
    pub qkv: &'a wgpu::Buffer,
    pub rows: usize,
    pub n_heads: usize,
    pub row_stride: usize,
    pub start_pos: usize,
    /// Key and value caches: rows of `n_heads·head_dim`, one per position.
    pub cache_k: &'a wgpu::Buffer,
    pub cache_v: &'a wgpu::Buffer,
}

/// Rotates q in place, writes rotated k and plain v into the caches' rows
/// `start_pos ..` (one dispatch for what were two RoPEs and two cache writes).
pub fn rope_qkv(ctx: &GpuContext, table: &RopeTable, args: &QkvArgs) -> Result<Dispatch, GpuError> {
    let d = table.head_dim;
    let width = args.n_heads * d;
    check_positions("rope_qkv", table, args.start_pos, args.rows)?;
    if args.rows == 0 || args.row_stride < 3 * width {
        return Err(GpuError::InvalidArgument(format!("rope_qkv: {} rows of stride {} for q|k|v of {width} each", args.rows, args.row_stride)));
    }
    require(args.qkv, ((args.rows - 1) * args.row_stride + 3 * width) as u64, "rope_qkv qkv")?;
    require(args.cache_k, ((args.start_pos + args.rows) * width) as u64, "rope_qkv key cache")?;
    require(args.cache_v, ((args.start_pos + args.rows) * width) as u64, "rope_qkv value cache")?;
    let slots = [Slot::Uniform, Slot::Read, Slot::ReadWrite, Slot::ReadWrite, Slot::ReadWrite];
    let kernel = ctx.kernel("rope", SOURCE, "rope_qkv", &slots, &[])?;
    let params = Params {
        rows: to_u32(args.rows, "rows")?,
        n_heads: to_u32(args.n_heads, "n_heads")?,
        head_dim: to_u32(d, "head_dim")?,
        start_pos: to_u32(args.start_pos, "start_pos")?,
        row_stride: to_u32(args.row_stride, "row_stride")?,
        offset: 0,
        table_len: to_u32(table.positions, "positions")?,
        _pad: 0,
    };
    let uniform = ctx.uniform("rope_qkv params", &params);
    let pairs = args.rows * width / 2;
    Ok(ctx.dispatch(&kernel, uniform, &[&table.buffer, args.qkv, args.cache_k, args.cache_v], grid_1d(to_u32(pairs.div_ceil(256), "grid")?)))
}
