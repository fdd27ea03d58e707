//! Quantised matrix multiply (`shaders/matmul.wgsl`): y = (x·Wᵀ + b) ⊙ s.
//!
//! A weight matrix lives on the GPU as row blocks, each a buffer no larger
//! than the device's storage-binding limit (128 MiB by default). A 7B model
//! splits only its largest tensors: the 32000×4096 token embedding and output
//! head are one block in q4 (73.7 MB), two in q8 (139 MB) and f16 (262 MB),
//! four in f32; the 11008×4096 FFN matrices are one block except in f32 (two).

use crate::format::quant::{PackedMatrix, QuantFormat};
use crate::gpu::{Dispatch, GpuContext, GpuError, Slot};

use super::{require, to_u32};

const SOURCE: &str = concat!(include_str!("../../shaders/quant_common.wgsl"), include_str!("../../shaders/matmul.wgsl"));
const SLOTS: [Slot; 6] = [Slot::Uniform, Slot::Read, Slot::Read, Slot::Read, Slot::Read, Slot::ReadWrite];

/// Rows per GEMV workgroup and the GEMM tile edge (must match the shader).
pub const GEMV_ROWS: usize = 8;
pub const GEMM_TILE: usize = 64;

/// One row block of a weight matrix on the GPU.
pub struct GpuBlock {
    pub buffer: wgpu::Buffer,
    pub row_start: usize,
    pub rows: usize,
}

/// A packed weight matrix on the GPU (`rows` outputs × `cols` inputs).
pub struct GpuMatrix {
    pub format: QuantFormat,
    pub rows: usize,
    pub cols: usize,
    pub blocks: Vec<GpuBlock>,
}

impl GpuMatrix {
    /// Uploads `matrix`, split into row blocks that fit the device's binding limit.
    pub fn upload(ctx: &GpuContext, label: &str, matrix: &PackedMatrix) -> Result<GpuMatrix, GpuError> {
        Self::upload_with_limit(ctx, label, matrix, ctx.info.max_storage_binding)
    }

    /// Like [`GpuMatrix::upload`] with an explicit per-block byte limit.
    pub fn upload_with_limit(ctx: &GpuContext, label: &str, matrix: &PackedMatrix, max_block_bytes: u64) -> Result<GpuMatrix, GpuError> {
        if matrix.rows == 0 || matrix.cols == 0 {
            return Err(GpuError::InvalidArgument(format!("{label}: empty matrix {}×{}", matrix.rows, matrix.cols)));
        }
        let one_row = matrix.format.bytes(1, matrix.cols);
        if one_row > max_block_bytes {
            return Err(GpuError::BindingTooLarge { what: format!("{label} (one row)"), needed: one_row, limit: max_block_bytes });
        }
        let blocks = matrix
            .split_rows(max_block_bytes)
            .into_iter()
            .map(|(row_start, block)| GpuBlock {
                buffer: ctx.upload(label, &block.words),
                row_start,
                rows: block.rows,
            })
            .collect();
        Ok(GpuMatrix { format: matrix.format, rows: matrix.rows, cols: matrix.cols, blocks })
    }

    /// Bytes of weight data on the GPU.
    pub fn bytes(&self) -> u64 {
        self.blocks.iter().map(|b| self.format.bytes(b.rows, self.cols)).sum()
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    m: u32,
    n: u32,
    k: u32,
    row_words: u32,
    groups: u32,
    scale_base: u32,
    out_offset: u32,
    out_stride: u32,
    x_offset: u32,
    x_stride: u32,
    flags: u32,
    _pad: u32,
}

/// Which kernel shape to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatmulShape {
    /// One pass over the weights per x row: decode.
    Gemv,
    /// Tiled: many x rows (prefill, vision).
    Gemm,
    /// GEMV below [`GEMM_MIN_ROWS`] x rows, else GEMM.
    Auto,
}

/// From this many x rows on, `Auto` picks the tiled GEMM.
pub const GEMM_MIN_ROWS: usize = 8;

/// Operands of one matmul. x is `m` rows of `weight.cols` inputs, row `t` at
/// element `x_offset + t·x_stride`; y row `t` gets `weight.rows` outputs at
/// element `t·y_stride`.
pub struct MatmulArgs<'a> {
    pub x: &'a wgpu::Buffer,
    pub x_offset: usize,
    pub x_stride: usize,
    pub m: usize,
    pub weight: &'a GpuMatrix,
    /// Per-output bias (`weight.rows` f32), added before the scale.
    pub bias: Option<&'a wgpu::Buffer>,
    /// Per-output scale (`weight.rows` f32).
    pub scale: Option<&'a wgpu::Buffer>,
    pub y: &'a wgpu::Buffer,
    pub y_stride: usize,
    /// Add into y instead of overwriting it (fuses a residual add).
    pub accumulate: bool,
}

/// Prepares the dispatches (one per row block) of y = (x·Wᵀ + b) ⊙ s.
pub fn matmul(ctx: &GpuContext, args: &MatmulArgs, shape: MatmulShape) -> Result<Vec<Dispatch>, GpuError> {
    let w = args.weight;
    if args.m == 0 {
        return Ok(Vec::new());
    }
    require(args.x, (args.x_offset + (args.m - 1) * args.x_stride + w.cols) as u64, "matmul x")?;
    require(args.y, ((args.m - 1) * args.y_stride + w.rows) as u64, "matmul y")?;
    if args.y_stride < w.rows {
        return Err(GpuError::InvalidArgument(format!("matmul: y stride {} < {} outputs", args.y_stride, w.rows)));
    }
    if let Some(b) = args.bias {
        require(b, w.rows as u64, "matmul bias")?;
    }
    if let Some(s) = args.scale {
        require(s, w.rows as u64, "matmul scale")?;
    }
    let use_gemm = match shape {
        MatmulShape::Gemv => false,
        MatmulShape::Gemm => true,
        MatmulShape::Auto => args.m >= GEMM_MIN_ROWS,
    };
    let entry = if use_gemm { "gemm" } else { "gemv" };
    let kernel = ctx.kernel("matmul", SOURCE, entry, &SLOTS, &[("FORMAT", w.format.shader_code() as f64)])?;
    let flags = args.bias.is_some() as u32 | (args.scale.is_some() as u32) << 1 | (args.accumulate as u32) << 2;
    let mut dispatches = Vec::with_capacity(w.blocks.len());
    for block in &w.blocks {
        let params = Params {
            m: to_u32(args.m, "m")?,
            n: to_u32(block.rows, "n")?,
            k: to_u32(w.cols, "k")?,
            row_words: to_u32(w.format.row_words(w.cols), "row_words")?,
            groups: to_u32(w.format.groups(w.cols), "groups")?,
            scale_base: to_u32(block.rows * w.format.row_words(w.cols), "scale_base")?,
            out_offset: to_u32(block.row_start, "out_offset")?,
            out_stride: to_u32(args.y_stride, "y_stride")?,
            x_offset: to_u32(args.x_offset, "x_offset")?,
            x_stride: to_u32(args.x_stride, "x_stride")?,
            flags,
            _pad: 0,
        };
        let uniform = ctx.uniform("matmul params", &params);
        let grid = if use_gemm {
            [block.rows.div_ceil(GEMM_TILE) as u32, args.m.div_ceil(GEMM_TILE) as u32, 1]
        } else {
            [block.rows.div_ceil(GEMV_ROWS) as u32, to_u32(args.m, "m")?, 1]
        };
        if grid[0] > crate::gpu::MAX_GRID_DIM || grid[1] > crate::gpu::MAX_GRID_DIM {
            return Err(GpuError::InvalidArgument(format!("matmul grid {grid:?} exceeds 65535 workgroups per dimension")));
        }
        let bias = args.bias.unwrap_or(ctx.dummy());
        let scale = args.scale.unwrap_or(ctx.dummy());
        dispatches.push(ctx.dispatch(&kernel, &[&uniform, args.x, &block.buffer, bias, scale, args.y], grid));
    }
    Ok(dispatches)
}
