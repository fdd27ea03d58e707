//! Attention (`shaders/attention.wgsl`): the decoder's causal attention over a
//! KV cache with a gated prefix (adapter prompts / visual tokens), and the
//! vision towers' bidirectional multi-head attention.

use crate::gpu::{Dispatch, GpuContext, GpuError, Slot, MAX_GRID_DIM};

use super::{require, to_u32};

const SOURCE: &str = include_str!("../../shaders/attention.wgsl");
/// params, q, keys, values, prefix keys, prefix values, gate, out, and the
/// split-K partials (a dummy where there are none).
const SLOTS: [Slot; 9] = [
    Slot::Uniform,
    Slot::Read,
    Slot::Read,
    Slot::Read,
    Slot::Read,
    Slot::Read,
    Slot::Read,
    Slot::ReadWrite,
    Slot::ReadWrite,
];

/// Keys per split of the split-K decode (one 128-key chunk; must match the shader).
pub const SPLIT_KEYS: usize = 128;

/// Largest head dimension the kernel handles (four output dims per invocation).
pub const MAX_HEAD_DIM: usize = 256;

/// Query rows per workgroup when there are several (prefill, vision).
pub const QUERIES_PER_WORKGROUP: usize = 4;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n_queries: u32,
    n_heads: u32,
    head_dim: u32,
    start_pos: u32,
    kv_len: u32,
    causal: u32,
    prefix_len: u32,
    use_gate: u32,
    q_offset: u32,
    q_stride: u32,
    k_offset: u32,
    v_offset: u32,
    kv_stride: u32,
    pk_offset: u32,
    pv_offset: u32,
    p_stride: u32,
    out_offset: u32,
    out_stride: u32,
    scale: f32,
    new_gate: f32,
    splits: u32,
    _pad: [u32; 3],
}

/// A matrix of rows inside a buffer: row `i` starts at element `offset + i·stride`.
#[derive(Clone, Copy)]
pub struct Rows<'a> {
    pub buffer: &'a wgpu::Buffer,
    pub offset: usize,
    pub stride: usize,
}

/// The gated prefix of one decoder layer.
pub struct Prefix<'a> {
    pub keys: Rows<'a>,
    pub values: Rows<'a>,
    pub len: usize,
    /// Raw per-head gate values (`n_heads` f32); the kernel applies tanh.
    pub gate: &'a wgpu::Buffer,
    /// The LoRA checkpoints' extra scalar gate (1.0 when absent).
    pub new_gate: f32,
}

/// Decoder attention for `n_queries` new rows at absolute positions
/// `start_pos ..`, over cache rows `0 .. start_pos + n_queries`.
pub struct DecoderAttention<'a> {
    pub q: Rows<'a>,
    pub keys: Rows<'a>,
    pub values: Rows<'a>,
    pub prefix: Option<Prefix<'a>>,
    pub out: Rows<'a>,
    pub n_queries: usize,
    pub n_heads: usize,
    pub head_dim: usize,
    pub start_pos: usize,
}

fn check_rows(rows: &Rows, count: usize, width: usize, what: &str) -> Result<(), GpuError> {
    if count == 0 {
        return Ok(());
    }
    require(rows.buffer, (rows.offset + (count - 1) * rows.stride + width) as u64, what)
}

#[allow(clippy::too_many_arguments)]
fn build(
    ctx: &GpuContext,
    q: Rows,
    keys: Rows,
    values: Rows,
    prefix: Option<&Prefix>,
    out: Rows,
    n_queries: usize,
    n_heads: usize,
    head_dim: usize,
    start_pos: usize,
    kv_len: usize,
    causal: bool,
    split: Option<Split>,
) -> Result<Vec<Dispatch>, GpuError> {
    if head_dim == 0 || head_dim > MAX_HEAD_DIM {
        return Err(GpuError::InvalidArgument(format!("attention: head_dim {head_dim} not in 1..={MAX_HEAD_DIM}")));
    }
    // The kernel moves 16-byte vectors: every offset and stride is a multiple of 4 floats.
    let mut aligned = vec![head_dim, q.offset, q.stride, keys.offset, keys.stride, values.offset, out.offset, out.stride];
    if let Some(p) = prefix {
        aligned.extend([p.keys.offset, p.keys.stride, p.values.offset]);
    }
    if aligned.iter().any(|v| v % 4 != 0) {
        return Err(GpuError::InvalidArgument(format!("attention: head_dim, offsets and strides must be multiples of 4 (got {aligned:?})")));
    }
    if keys.stride != values.stride {
        return Err(GpuError::InvalidArgument("attention: keys and values must share a row stride".into()));
    }
    if n_heads > MAX_GRID_DIM as usize || n_queries > MAX_GRID_DIM as usize {
        return Err(GpuError::InvalidArgument(format!("attention: {n_heads} heads × {n_queries} queries exceed the grid")));
    }
    let width = n_heads * head_dim;
    check_rows(&q, n_queries, width, "attention q")?;
    check_rows(&keys, kv_len, width, "attention keys")?;
    check_rows(&values, kv_len, width, "attention values")?;
    check_rows(&out, n_queries, width, "attention out")?;
    let (prefix_len, p_keys, p_values, gate, new_gate) = match prefix {
        Some(p) if p.len > 0 => {
            if p.keys.stride != p.values.stride {
                return Err(GpuError::InvalidArgument("attention: prefix keys and values must share a row stride".into()));
            }
            check_rows(&p.keys, p.len, width, "attention prefix keys")?;
            check_rows(&p.values, p.len, width, "attention prefix values")?;
            require(p.gate, n_heads as u64, "attention gate")?;
            (p.len, p.keys, p.values, p.gate, p.new_gate)
        }
        _ => {
            let none = Rows { buffer: ctx.dummy(), offset: 0, stride: 0 };
            (0, none, none, ctx.dummy(), 1.0)
        }
    };
    // Several query rows per workgroup share every key and value load.
    let queries = if n_queries > 1 { QUERIES_PER_WORKGROUP } else { 1 };
    let splits = match &split {
        Some(sp) => {
            if n_queries != 1 || kv_len > sp.max_keys {
                return Err(GpuError::InvalidArgument(format!("split-K attention: one query row over at most {} keys (got {n_queries} rows, {kv_len} keys)", sp.max_keys)));
            }
            require(sp.partials, split_partials_len(n_heads, head_dim, sp.max_keys) as u64, "attention partials")?;
            sp.max_keys.div_ceil(SPLIT_KEYS).max(1)
        }
        None => 0,
    };
    let params = Params {
        n_queries: to_u32(n_queries, "n_queries")?,
        n_heads: to_u32(n_heads, "n_heads")?,
        head_dim: to_u32(head_dim, "head_dim")?,
        start_pos: to_u32(start_pos, "start_pos")?,
        kv_len: to_u32(kv_len, "kv_len")?,
        causal: causal as u32,
        prefix_len: to_u32(prefix_len, "prefix_len")?,
        use_gate: 1,
        q_offset: to_u32(q.offset, "q offset")?,
        q_stride: to_u32(q.stride, "q stride")?,
        k_offset: to_u32(keys.offset, "k offset")?,
        v_offset: to_u32(values.offset, "v offset")?,
        kv_stride: to_u32(keys.stride, "kv stride")?,
        pk_offset: to_u32(p_keys.offset, "prefix k offset")?,
        pv_offset: to_u32(p_values.offset, "prefix v offset")?,
        p_stride: to_u32(p_keys.stride, "prefix stride")?,
        out_offset: to_u32(out.offset, "out offset")?,
        out_stride: to_u32(out.stride, "out stride")?,
        scale: 1.0 / (head_dim as f32).sqrt(),
        new_gate,
        splits: to_u32(splits, "splits")?,
        _pad: [0; 3],
    };
    let partials = split.as_ref().map_or(ctx.dummy_writable(), |sp| sp.partials);
    let buffers = [q.buffer, keys.buffer, values.buffer, p_keys.buffer, p_values.buffer, gate, out.buffer, partials];
    if split.is_none() {
        let kernel = ctx.kernel("attention", SOURCE, "attention", &SLOTS, &[("QUERIES", queries as f64)])?;
        let uniform = ctx.uniform("attention params", &params);
        return Ok(vec![ctx.dispatch(&kernel, uniform, &buffers, [n_heads as u32, n_queries.max(1).div_ceil(queries) as u32, 1])]);
    }
    // Both dispatches read the same parameters (the key count moves with a
    // decode plan's position in the first one only).
    let split_kernel = ctx.kernel("attention", SOURCE, "attention_split", &SLOTS, &[])?;
    let combine_kernel = ctx.kernel("attention", SOURCE, "attention_combine", &SLOTS, &[])?;
    Ok(vec![
        ctx.dispatch(&split_kernel, ctx.uniform("attention params", &params), &buffers, [n_heads as u32, splits as u32 + 1, 1]),
        ctx.dispatch(&combine_kernel, ctx.uniform("attention combine params", &Params { kv_len: 0, start_pos: 0, ..params }), &buffers, [n_heads as u32, 1, 1]),
    ])
}

/// Where a split-K decode attention keeps its per-split results, and the
/// most keys it will see (the context length: the split count, and so the
/// grid, must not change with the position).
pub struct Split<'a> {
    pub partials: &'a wgpu::Buffer,
    pub max_keys: usize,
}

/// f32 elements of a split-K attention's partials: per head, one slot per
/// split plus the prefix's, each head_dim outputs and a (max, sum) vec4.
pub fn split_partials_len(n_heads: usize, head_dim: usize, max_keys: usize) -> usize {
    n_heads * (max_keys.div_ceil(SPLIT_KEYS).max(1) + 1) * (head_dim + 4)
}

/// Causal attention over the KV cache plus the gated prefix.
pub fn decoder_attention(ctx: &GpuContext, a: &DecoderAttention) -> Result<Dispatch, GpuError> {
    let mut d = decoder_attention_dispatches(ctx, a, None)?;
    Ok(d.remove(0))
}

/// Decode attention split over the keys (one query row): an `attention_split`
/// dispatch per (head, split of [`SPLIT_KEYS`] keys, plus the prefix) and an
/// `attention_combine` per head. For GPUs with many cores, where one
/// workgroup per head would leave most of them idle over a long context.
pub fn decoder_attention_split(ctx: &GpuContext, a: &DecoderAttention, split: Split) -> Result<Vec<Dispatch>, GpuError> {
    decoder_attention_dispatches(ctx, a, Some(split))
}

fn decoder_attention_dispatches(ctx: &GpuContext, a: &DecoderAttention, split: Option<Split>) -> Result<Vec<Dispatch>, GpuError> {
    build(
        ctx,
        a.q,
        a.keys,
        a.values,
        a.prefix.as_ref(),
        a.out,
        a.n_queries,
        a.n_heads,
        a.head_dim,
        a.start_pos,
        a.start_pos + a.n_queries,
        true,
        split,
    )
}

/// Bidirectional multi-head attention over `tokens` rows (vision towers).
/// q, k and v may be views into one fused qkv buffer.
#[allow(clippy::too_many_arguments)]
pub fn bidirectional_attention(
    ctx: &GpuContext,
    q: Rows,
    keys: Rows,
    values: Rows,
    out: Rows,
    tokens: usize,
    n_heads: usize,
    head_dim: usize,
) -> Result<Dispatch, GpuError> {
    Ok(build(ctx, q, keys, values, None, out, tokens, n_heads, head_dim, 0, tokens, false, None)?.remove(0))
}
