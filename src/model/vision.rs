//! The vision side, run once per image (spec §2.1–2.2):
//! CLIP ViT (all tokens, ln_post, proj) → clip_proj + LayerNorm →
//! [visual_query ; tokens] → visual blocks → first query_len tokens →
//! visual_proj + LayerNorm = the visual tokens `vq`.

use crate::gpu::{Dispatch, GpuError};
use crate::kernels::attention::{bidirectional_attention, Rows};
use crate::kernels::elementwise;
use crate::kernels::layernorm::{layernorm_at, LAYERNORM_EPS};

use super::{Linear, Model, ModelError};

/// GPU buffers of one encoded image.
pub struct VisionOutput {
    /// CLIP features [tokens, embed_dim].
    pub clip_feats: wgpu::Buffer,
    /// Visual tokens [query_len, dim].
    pub visual_tokens: wgpu::Buffer,
}

/// Patches of a CHW image as rows [grid², 3·p·p], in conv1's (c, ky, kx) order.
pub fn im2col(image: &[f32], size: usize, patch: usize) -> Vec<f32> {
    let grid = size / patch;
    let mut out = Vec::with_capacity(grid * grid * 3 * patch * patch);
    for gy in 0..grid {
        for gx in 0..grid {
            for c in 0..3 {
                for ky in 0..patch {
                    let row = (c * size + gy * patch + ky) * size + gx * patch;
                    out.extend_from_slice(&image[row..row + patch]);
                }
            }
        }
    }
    out
}

/// Pre-LN transformer block on `x` [tokens, width] in place: x += Attn(LN1(x)); x += MLP(LN2(x)).
struct BlockNames<'a> {
    ln1: (&'a str, &'a str),
    qkv: Linear<'a>,
    out: Linear<'a>,
    ln2: (&'a str, &'a str),
    fc1: Linear<'a>,
    fc2: Linear<'a>,
    quick_gelu: bool,
}

impl Model {
    /// Encodes a preprocessed image (CHW f32, `image_size`²·3 values).
    pub fn encode_image(&self, image: &[f32]) -> Result<VisionOutput, ModelError> {
        self.encode_image_with(image, true)
    }

    /// [`Model::encode_image`]; with `submit` false the work is built (its
    /// pipelines compiled) but not run.
    pub(crate) fn encode_image_with(&self, image: &[f32], submit: bool) -> Result<VisionOutput, ModelError> {
        let ctx = &self.ctx;
        ctx.check()?;
        let c = &self.config.clip;
        let a = &self.config.adapter;
        let size = c.image_size;
        if image.len() != 3 * size * size {
            return Err(ModelError::BadInput(format!("image tensor has {} values, the model needs 3×{size}×{size}", image.len())));
        }
        let tokens = c.tokens();
        let width = c.width;
        let mut d: Vec<Dispatch> = Vec::new();

        // Patch embedding as a matmul, class token in row 0, positions added.
        let patches = im2col(image, size, c.patch);
        let patch_buf = ctx.upload_activations("patches", &patches);
        let x = ctx.activations("clip x", (tokens * width * 4) as u64);
        ctx.queue.write_buffer(&x, 0, bytemuck::cast_slice(&self.base.class_embedding));
        let conv = Linear::plain(self.base.weights.matrix("clip.conv1.weight")?);
        d.extend(self.linear_at(&conv, &patch_buf, 0, tokens - 1, &x, width, width, false)?);
        d.push(elementwise::add(ctx, self.base.weights.f32_buffer("clip.positional_embedding")?, &x, tokens * width)?);
        let xn = ctx.activations("clip xn", (tokens * width * 4) as u64);
        d.push(layernorm_at(ctx, &x, 0, self.base.weights.vector("clip.ln_pre.weight")?, self.base.weights.vector("clip.ln_pre.bias")?, &xn, 0, tokens, width, LAYERNORM_EPS)?);
        let x = xn;

        let qkv = ctx.activations("qkv", (tokens.max(a.query_len + tokens) * 3 * width.max(a.v_embed_dim) * 4) as u64);
        let attn = ctx.activations("attn", (tokens.max(a.query_len + tokens) * width.max(a.v_embed_dim) * 4) as u64);
        let hidden_w = (4 * width).max(a.v_mlp_hidden);
        let hidden = ctx.activations("mlp", (tokens.max(a.query_len + tokens) * hidden_w * 4) as u64);
        let norm = ctx.activations("ln", (tokens.max(a.query_len + tokens) * width.max(a.v_embed_dim) * 4) as u64);

        let names: Vec<String> = (0..c.layers).map(|i| format!("clip.transformer.resblocks.{i}")).collect();
        for p in &names {
            let w = |s: &str| format!("{p}.{s}");
            let (ln1w, ln1b, ln2w, ln2b) = (w("ln_1.weight"), w("ln_1.bias"), w("ln_2.weight"), w("ln_2.bias"));
            let block = BlockNames {
                ln1: (&ln1w, &ln1b),
                qkv: Linear { weight: self.base.weights.matrix(&w("attn.in_proj_weight"))?, bias: Some(self.base.weights.vector(&w("attn.in_proj_bias"))?), scale: None, lora: None },
                out: Linear { weight: self.base.weights.matrix(&w("attn.out_proj.weight"))?, bias: Some(self.base.weights.vector(&w("attn.out_proj.bias"))?), scale: None, lora: None },
                ln2: (&ln2w, &ln2b),
                fc1: Linear { weight: self.base.weights.matrix(&w("mlp.c_fc.weight"))?, bias: Some(self.base.weights.vector(&w("mlp.c_fc.bias"))?), scale: None, lora: None },
                fc2: Linear { weight: self.base.weights.matrix(&w("mlp.c_proj.weight"))?, bias: Some(self.base.weights.vector(&w("mlp.c_proj.bias"))?), scale: None, lora: None },
                quick_gelu: true,
            };
            d.extend(self.transformer_block(&block, true, &x, tokens, width, c.heads, &norm, &qkv, &attn, &hidden)?);
        }
        // ln_post on all tokens, then proj: clip_feats [tokens, embed_dim].
        d.push(layernorm_at(ctx, &x, 0, self.base.weights.vector("clip.ln_post.weight")?, self.base.weights.vector("clip.ln_post.bias")?, &norm, 0, tokens, width, LAYERNORM_EPS)?);
        let clip_feats = ctx.activations("clip feats", (tokens * c.embed_dim * 4) as u64);
        d.extend(self.linear(&Linear::plain(self.base.weights.matrix("clip.proj_t")?), &norm, 0, tokens, &clip_feats, c.embed_dim, false)?);

        // Visual adapter: z = [visual_query ; LN(clip_proj(clip_feats))].
        let v = a.v_embed_dim;
        let n = a.query_len + tokens;
        let z = ctx.activations("z", (n * v * 4) as u64);
        ctx.queue.write_buffer(&z, 0, bytemuck::cast_slice(&self.adapter.visual_query));
        let proj = self.adapter_linear("clip_proj")?;
        d.extend(self.linear(&proj, &clip_feats, 0, tokens, &attn, v, false)?);
        d.push(layernorm_at(ctx, &attn, 0, self.adapter.weights.vector("clip_proj_norm.weight")?, self.adapter.weights.vector("clip_proj_norm.bias")?, &z, a.query_len * v, tokens, v, LAYERNORM_EPS)?);
        for i in 0..a.v_depth {
            let p = format!("visual_blocks.{i}");
            let w = |s: &str| format!("{p}.{s}");
            let (ln1w, ln1b, ln2w, ln2b) = (w("norm1.weight"), w("norm1.bias"), w("norm2.weight"), w("norm2.bias"));
            let block = BlockNames {
                ln1: (&ln1w, &ln1b),
                qkv: self.adapter_linear(&w("attn.qkv"))?,
                out: self.adapter_linear(&w("attn.proj"))?,
                ln2: (&ln2w, &ln2b),
                fc1: self.adapter_linear(&w("mlp.fc1"))?,
                fc2: self.adapter_linear(&w("mlp.fc2"))?,
                quick_gelu: false,
            };
            d.extend(self.transformer_block(&block, false, &z, n, v, a.v_num_heads, &norm, &qkv, &attn, &hidden)?);
        }
        // vq = LN(visual_proj(z[:query_len])).
        let dim = self.config.llama.dim;
        let vp = self.adapter_linear("visual_proj")?;
        d.extend(self.linear(&vp, &z, 0, a.query_len, &hidden, dim, false)?);
        let visual_tokens = ctx.activations("visual tokens", (a.query_len * dim * 4) as u64);
        d.push(layernorm_at(ctx, &hidden, 0, self.adapter.weights.vector("visual_proj_norm.weight")?, self.adapter.weights.vector("visual_proj_norm.bias")?, &visual_tokens, 0, a.query_len, dim, LAYERNORM_EPS)?);
        if submit {
            self.run(&d)?;
        }
        Ok(VisionOutput { clip_feats, visual_tokens })
    }

    #[allow(clippy::too_many_arguments)]
    fn transformer_block(
        &self,
        b: &BlockNames,
        base: bool,
        x: &wgpu::Buffer,
        tokens: usize,
        width: usize,
        heads: usize,
        norm: &wgpu::Buffer,
        qkv: &wgpu::Buffer,
        attn: &wgpu::Buffer,
        hidden: &wgpu::Buffer,
    ) -> Result<Vec<Dispatch>, ModelError> {
        let ctx = &self.ctx;
        let weights = if base { &self.base.weights } else { &self.adapter.weights };
        let mut d = Vec::new();
        d.push(layernorm_at(ctx, x, 0, weights.vector(b.ln1.0)?, weights.vector(b.ln1.1)?, norm, 0, tokens, width, LAYERNORM_EPS)?);
        d.extend(self.linear(&b.qkv, norm, 0, tokens, qkv, 3 * width, false)?);
        let view = |part: usize| Rows { buffer: qkv, offset: part * width, stride: 3 * width };
        d.push(bidirectional_attention(ctx, view(0), view(1), view(2), Rows { buffer: attn, offset: 0, stride: width }, tokens, heads, width / heads)?);
        d.extend(self.linear(&b.out, attn, 0, tokens, x, width, true)?);
        d.push(layernorm_at(ctx, x, 0, weights.vector(b.ln2.0)?, weights.vector(b.ln2.1)?, norm, 0, tokens, width, LAYERNORM_EPS)?);
        let hidden_w = b.fc1.weight.rows;
        d.extend(self.linear(&b.fc1, norm, 0, tokens, hidden, hidden_w, false)?);
        d.push(if b.quick_gelu {
            elementwise::quick_gelu(ctx, hidden, tokens * hidden_w)?
        } else {
            elementwise::gelu(ctx, hidden, tokens * hidden_w)?
        });
        d.extend(self.linear(&b.fc2, hidden, 0, tokens, x, width, true)?);
        Ok(d)
    }

    /// Reads the first `count` f32s of a GPU buffer back.
    pub async fn read_f32_async(&self, buffer: &wgpu::Buffer, count: usize) -> Result<Vec<f32>, GpuError> {
        self.ctx.read(buffer, 0, count).await
    }

    /// Native convenience: blocks on [`Model::read_f32_async`] (tests, tools).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_f32(&self, buffer: &wgpu::Buffer, count: usize) -> Result<Vec<f32>, GpuError> {
        self.ctx.read_blocking(buffer, 0, count)
    }
}
