//! Quantised matrix multiply (`shaders/matmul.wgsl`): y = (x·Wᵀ + b) ⊙ s.
//!
//! A weight matrix lives on the GPU as row blocks, each a buffer no larger
//! than the device's storage-binding limit (128 MiB by default). A 7B model
//! splits only its largest tensors: the 32000×4096 token embedding and output
//! head are one block in q4 (73.7 MB), two in q8 (139 MB) and f16 (262 MB),
//! four in f32; the 11008×4096 FFN matrices are one block except in f32 (two).

use crate::format::quant::{PackedMatrix, QuantFormat};
use crate::gpu::{Dispatch, GpuContext, GpuError, Slot, MAX_GRID_DIM, UNIFORM_WINDOW_BYTES};

use super::{require, to_u32};

const SOURCE: &str = concat!(include_str!("../../shaders/quant_common.wgsl"), include_str!("../../shaders/matmul.wgsl"));
/// params, x, weights, bias, scale, y, x window, weights as 16-byte words
/// (rowwise only), LoRA's u and L2 (with LORA only): 8 storage bindings,
/// WebGPU's default per-stage limit.
const SLOTS: [Slot; 10] = [Slot::Uniform, Slot::Read, Slot::Read, Slot::Read, Slot::Read, Slot::ReadWrite, Slot::Uniform, Slot::Read, Slot::Read, Slot::Read];

/// Rows per GEMV workgroup and the GEMM tile edge (must match the shader).
pub const GEMV_ROWS: usize = 8;
pub const GEMM_TILE: usize = 64;

/// One row block of a weight matrix on the GPU (clones share the buffer).
#[derive(Clone)]
pub struct GpuBlock {
    pub buffer: wgpu::Buffer,
    pub row_start: usize,
    pub rows: usize,
}

/// A packed weight matrix on the GPU (`rows` outputs × `cols` inputs; clones share the buffers).
#[derive(Clone)]
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
    t_first: u32,
    y_offset: u32,
    lora_rank: u32,
    lora_member_rows: u32,
    lora_u_stride: u32,
    lora_u_offset: u32,
    lora_up_row0: u32,
    _pad: [u32; 2],
}

/// Which kernel shape to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatmulShape {
    /// Lanes split each weight row, coalesced reads: decode on real GPUs.
    Gemv,
    /// 64×64 tiles through workgroup memory: many x rows on real GPUs.
    Gemm,
    /// One invocation per output feature and 4 x rows, x through a uniform
    /// window: the fast shape on CPU-backed adapters (lavapipe, SwiftShader).
    Rowwise,
    /// `Rowwise` on CPU adapters; elsewhere GEMV below [`GEMM_MIN_ROWS`] x
    /// rows, else GEMM.
    Auto,
}

/// From this many x rows on, `Auto` picks the tiled GEMM on real GPUs.
pub const GEMM_MIN_ROWS: usize = 8;
/// x rows per invocation of the rowwise shape (`rowwise_one` takes a single row).
pub const ROWWISE_TOKENS: usize = 4;
const ROWWISE_WORKGROUP: usize = 64;

/// Operands of one matmul. x is `m` rows of `weight.cols` inputs, row `t` at
/// element `x_offset + t·x_stride`; y row `t` gets `weight.rows` outputs at
/// element `y_offset + t·y_stride`.
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
    pub y_offset: usize,
    pub y_stride: usize,
    /// Add into y instead of overwriting it (fuses a residual add).
    pub accumulate: bool,
    /// The weights are `[w1; w3]` (2n rows): store `silu(x·w1ᵀ) ⊙ (x·w3ᵀ)`
    /// (each with its bias and scale), n outputs per row of x. GEMV and
    /// rowwise only ([`gated_supported`]), not with `accumulate`.
    pub gated: bool,
    /// A LoRA term in the epilogue (every shape).
    pub lora: Option<LoraEpilogue<'a>>,
}

/// The up half of a LoRA path, applied in the matmul's epilogue: output
/// column `col` (a global weight row) of x row t gets
/// `u[t·u_stride + u_offset + member·rank ..][..rank] · up[up_row0 + col, ..rank]`
/// before the bias and scale, with `member = col / member_rows`. `u = x·L1ᵀ`
/// comes from an earlier matmul (one for all members, their L1 rows stacked).
pub struct LoraEpilogue<'a> {
    /// [m, u_stride] f32: each member's rank-wide slice side by side.
    pub u: &'a wgpu::Buffer,
    pub u_stride: usize,
    /// Where member 0's slice starts in each row of u (a separately stored
    /// member i of a group reads its own slice: i·rank).
    pub u_offset: usize,
    /// The L2 row of this weight's row 0 (member i of a group: i·rows).
    pub up_row0: usize,
    /// L2 as dense f32, [weight rows, rank] (the members' rows stacked as the weights are).
    pub up: &'a wgpu::Buffer,
    pub rank: usize,
    /// Weight rows per member (all of them for a single linear).
    pub member_rows: usize,
}

/// Whether the shape `Auto` picks for `m` x rows has the gated epilogue
/// (the tiled GEMM does not: its callers run a separate SiLU-gate).
pub fn gated_supported(ctx: &GpuContext, m: usize) -> bool {
    resolve_shape(ctx, MatmulShape::Auto, m) != MatmulShape::Gemm
}

/// Weight rows per invocation of the rowwise shape (its register tile; with
/// `gated` half are w1 rows, half w3): each x load then feeds that many
/// rows. Fewer for a small matrix, so that every core still gets
/// workgroups.
fn rowwise_rows(outputs: usize, gated: bool) -> usize {
    // Measured on lavapipe (dim 512 × 8 layers, q4): 4 rows halve the
    // prefill matmuls' time against 1 and cut decode's output head by 30 %.
    let per_output = if outputs >= 2 * ROWWISE_WORKGROUP * 4 { 4 } else if outputs >= 2 * ROWWISE_WORKGROUP * 2 { 2 } else { 1 };
    if gated { (2 * per_output).min(4) } else { per_output }
}

/// The shape `Auto` resolves to on this device.
pub fn resolve_shape(ctx: &GpuContext, shape: MatmulShape, m: usize) -> MatmulShape {
    match shape {
        MatmulShape::Auto if ctx.cpu_kernel_shapes => MatmulShape::Rowwise,
        MatmulShape::Auto if m >= GEMM_MIN_ROWS => MatmulShape::Gemm,
        MatmulShape::Auto => MatmulShape::Gemv,
        other => other,
    }
}

/// A run of x rows for one rowwise dispatch, read through a uniform window
/// (`window`: byte offset in x) or straight from storage (`None`).
struct RowChunk {
    t_first: usize,
    rows: usize,
    window: Option<u64>,
}

/// Splits x's rows into chunks whose rows fit one 64 KiB uniform window, or
/// returns one storage-read chunk when the window cannot be used.
fn rowwise_chunks(ctx: &GpuContext, args: &MatmulArgs) -> Vec<RowChunk> {
    let k = args.weight.cols;
    let window_elems = (UNIFORM_WINDOW_BYTES / 4) as usize;
    let usable = args.x.usage().contains(wgpu::BufferUsages::UNIFORM)
        && args.x.size() >= UNIFORM_WINDOW_BYTES
        && args.x_offset % 4 == 0
        && (args.x_stride % 4 == 0 || args.m == 1)
        && k % 4 == 0;
    let storage = vec![RowChunk { t_first: 0, rows: args.m, window: None }];
    if !usable {
        return storage;
    }
    let align = ctx.uniform_offset_alignment.max(4);
    let last_start = (args.x.size() - UNIFORM_WINDOW_BYTES) / align * align;
    let mut chunks = Vec::new();
    let mut t = 0;
    while t < args.m {
        let first = ((args.x_offset + t * args.x_stride) * 4) as u64;
        let window = (first / align * align).min(last_start);
        let residual = ((first - window) / 4) as usize;
        if residual + k > window_elems {
            return storage;
        }
        let fit = if args.x_stride == 0 { args.m - t } else { (window_elems - residual - k) / args.x_stride + 1 };
        let rows = fit.min(args.m - t).min(ROWWISE_TOKENS * crate::gpu::MAX_GRID_DIM as usize);
        chunks.push(RowChunk { t_first: t, rows, window: Some(window) });
        t += rows;
    }
    chunks
}

/// How many uniform windows the rowwise shape reads x through for these
/// operands, or `None` when it must read x from storage (x not created by
/// `GpuContext::activations`, or misaligned).
pub fn rowwise_windows(ctx: &GpuContext, args: &MatmulArgs) -> Option<usize> {
    let chunks = rowwise_chunks(ctx, args);
    chunks[0].window.map(|_| chunks.len())
}

/// Prepares the dispatches of y = (x·Wᵀ + b) ⊙ s: one per row block of the
/// weights (and, for the rowwise shape, per uniform window of x rows).
pub fn matmul(ctx: &GpuContext, args: &MatmulArgs, shape: MatmulShape) -> Result<Vec<Dispatch>, GpuError> {
    let w = args.weight;
    if args.m == 0 {
        return Ok(Vec::new());
    }
    require(args.x, (args.x_offset + (args.m - 1) * args.x_stride + w.cols) as u64, "matmul x")?;
    let outputs = if args.gated { w.rows / 2 } else { w.rows };
    require(args.y, (args.y_offset + (args.m - 1) * args.y_stride + outputs) as u64, "matmul y")?;
    if args.y_stride < outputs {
        return Err(GpuError::InvalidArgument(format!("matmul: y stride {} < {outputs} outputs", args.y_stride)));
    }
    if let Some(b) = args.bias {
        require(b, w.rows as u64, "matmul bias")?;
    }
    if let Some(s) = args.scale {
        require(s, w.rows as u64, "matmul scale")?;
    }
    let shape = resolve_shape(ctx, shape, args.m);
    if args.gated && (shape == MatmulShape::Gemm || args.accumulate || w.blocks.len() != 1 || w.rows % 2 != 0) {
        return Err(GpuError::InvalidArgument(format!(
            "gated matmul: needs the GEMV or rowwise shape (got {shape:?}), no accumulate, one weight block of an even row count ({} rows, {} blocks)",
            w.rows,
            w.blocks.len()
        )));
    }
    if let Some(l) = &args.lora {
        let members = if l.member_rows == 0 { 0 } else { w.rows.div_ceil(l.member_rows) };
        if l.rank == 0 || members == 0 || l.u_offset + members * l.rank > l.u_stride {
            return Err(GpuError::InvalidArgument(format!(
                "matmul LoRA: rank {}, {} rows per member of {}, u stride {} from {}",
                l.rank, l.member_rows, w.rows, l.u_stride, l.u_offset
            )));
        }
        require(l.u, (args.m * l.u_stride) as u64, "matmul LoRA u")?;
        require(l.up, ((l.up_row0 + w.rows) * l.rank) as u64, "matmul LoRA up")?;
    }
    let flags = args.bias.is_some() as u32 | (args.scale.is_some() as u32) << 1 | (args.accumulate as u32) << 2;
    let bias = args.bias.unwrap_or(ctx.dummy());
    let scale = args.scale.unwrap_or(ctx.dummy());
    let format = ("FORMAT", w.format.shader_code() as f64);
    let gated = ("GATED", args.gated as u8 as f64);
    let lora = ("LORA", args.lora.is_some() as u8 as f64);
    let (lora_u, lora_up) = match &args.lora {
        Some(l) => (l.u, l.up),
        None => (ctx.dummy(), ctx.dummy()),
    };
    let (lora_rank, lora_member_rows, lora_u_stride, lora_u_offset, lora_up_row0) =
        args.lora.as_ref().map_or((0, 1, 0, 0, 0), |l| (l.rank, l.member_rows, l.u_stride, l.u_offset, l.up_row0));
    let chunks = match shape {
        MatmulShape::Rowwise => rowwise_chunks(ctx, args),
        _ => vec![RowChunk { t_first: 0, rows: args.m, window: None }],
    };
    let mut dispatches = Vec::with_capacity(w.blocks.len() * chunks.len());
    for block in &w.blocks {
        for chunk in &chunks {
            let x_offset = match chunk.window {
                Some(window) => args.x_offset + chunk.t_first * args.x_stride - (window / 4) as usize,
                None => args.x_offset + chunk.t_first * args.x_stride,
            };
            let params = Params {
                m: to_u32(chunk.rows, "m")?,
                n: to_u32(if args.gated { outputs } else { block.rows }, "n")?,
                k: to_u32(w.cols, "k")?,
                row_words: to_u32(w.format.row_words(w.cols), "row_words")?,
                groups: to_u32(w.format.groups(w.cols), "groups")?,
                scale_base: to_u32(block.rows * w.format.row_words(w.cols), "scale_base")?,
                out_offset: to_u32(block.row_start, "out_offset")?,
                out_stride: to_u32(args.y_stride, "y_stride")?,
                x_offset: to_u32(x_offset, "x_offset")?,
                x_stride: to_u32(args.x_stride, "x_stride")?,
                flags,
                t_first: to_u32(chunk.t_first, "t_first")?,
                y_offset: to_u32(args.y_offset, "y_offset")?,
                lora_rank: to_u32(lora_rank, "lora rank")?,
                lora_member_rows: to_u32(lora_member_rows, "lora member rows")?,
                lora_u_stride: to_u32(lora_u_stride, "lora u stride")?,
                lora_u_offset: to_u32(lora_u_offset, "lora u offset")?,
                lora_up_row0: to_u32(lora_up_row0, "lora up row")?,
                _pad: [0; 2],
            };
            let uniform = ctx.uniform("matmul params", &params);
            // Bindings 1.. (the x window and 16-byte weights are the rowwise shape's).
            let window = match chunk.window {
                Some(offset) => wgpu::BufferBinding { buffer: args.x, offset, size: std::num::NonZeroU64::new(UNIFORM_WINDOW_BYTES) },
                None => wgpu::BufferBinding { buffer: ctx.dummy_window(), offset: 0, size: None },
            };
            let bindings = [
                args.x.as_entire_binding(),
                block.buffer.as_entire_binding(),
                bias.as_entire_binding(),
                scale.as_entire_binding(),
                args.y.as_entire_binding(),
                wgpu::BindingResource::Buffer(window),
                block.buffer.as_entire_binding(),
                lora_u.as_entire_binding(),
                lora_up.as_entire_binding(),
            ];
            let (grid, kernel) = match shape {
                MatmulShape::Rowwise => {
                    // One x row (decode) has its own entry point, with scalar accumulators.
                    let (entry, tokens) = if chunk.rows == 1 { ("rowwise_one", 1) } else { ("rowwise", ROWWISE_TOKENS) };
                    let n = if args.gated { outputs } else { block.rows };
                    let tile_rows = rowwise_rows(n, args.gated);
                    let outputs_per_invocation = if args.gated { tile_rows / 2 } else { tile_rows };
                    let grid = [n.div_ceil(ROWWISE_WORKGROUP * outputs_per_invocation) as u32, chunk.rows.div_ceil(tokens) as u32, 1];
                    let constants = [format, gated, lora, ("X_UNIFORM", chunk.window.is_some() as u8 as f64), ("ROWWISE_ROWS", tile_rows as f64)];
                    (grid, ctx.kernel("matmul", SOURCE, entry, &SLOTS, &constants)?)
                }
                MatmulShape::Gemm => {
                    let grid = [block.rows.div_ceil(GEMM_TILE) as u32, args.m.div_ceil(GEMM_TILE) as u32, 1];
                    (grid, ctx.kernel("matmul", SOURCE, "gemm", &SLOTS, &[format, lora])?)
                }
                _ => {
                    let n = if args.gated { outputs } else { block.rows };
                    let grid = [n.div_ceil(GEMV_ROWS) as u32, to_u32(args.m, "m")?, 1];
                    (grid, ctx.kernel("matmul", SOURCE, "gemv", &SLOTS, &[format, gated, lora])?)
                }
            };
            let dispatch = ctx.dispatch_bindings(&kernel, uniform, &bindings, grid);
            if grid[0] > MAX_GRID_DIM || grid[1] > MAX_GRID_DIM {
                return Err(GpuError::InvalidArgument(format!("matmul grid {grid:?} exceeds {MAX_GRID_DIM} workgroups per dimension")));
            }
            dispatches.push(dispatch);
        }
    }
    Ok(dispatches)
}
