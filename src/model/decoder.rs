//! The LLaMA decoder with adapters (spec §2.3), as an explicit sequence of
//! kernel calls per layer:
//!
//! ```text
//! h = embed(tokens)
//! for each layer l:
//!     xn = RMSNorm(h)·attention_norm
//!     [q | k | v] = [wq; wk; wv](xn)     (one matmul where the loader fused them)
//!     RoPE(q); RoPE(k), v → KV cache rows [P, P+S)   (one kernel, positions P..P+S)
//!     a = softmax(qKᵀ/√d + mask)V + tanh(gate)·new_gate·softmax(qK_pᵀ/√d)V_p
//!     h += wo(a)
//!     xn = RMSNorm(h)·ffn_norm
//!     h += w2(silu(w1(xn)) ⊙ w3(xn))     (w1 | w3 and the gate in one matmul where fused)
//! logits = output(RMSNorm(h)·norm)
//! ```
//!
//! Every linear carries its optional bias, scale and LoRA (see `Linear`); the
//! tensors are resolved once per model into `layers::DecoderWeights`.

use crate::gpu::profile::{time_each_dispatch, KernelTime};
use crate::gpu::Dispatch;
use crate::kernels::attention::{decoder_attention, decoder_attention_split, split_partials_len, DecoderAttention, Prefix, Rows, Split, SPLIT_KEYS};
use crate::kernels::elementwise;
use crate::kernels::embedding::embedding;
use crate::kernels::rmsnorm::rmsnorm_at;
use crate::kernels::rope::{rope_qkv, QkvArgs};
use crate::kernels::sampling;

use super::config::Fusion;
use super::vision::VisionOutput;
use super::{Linear, Model, ModelError};

/// The gated prefix of one layer for one image: rows [q | k | v] of
/// [query_len, 3·dim] (the q part unused), computed once per image and reused
/// every step.
pub struct LayerPrefix {
    pub qkv: wgpu::Buffer,
    /// The gate that multiplies it (raw, per head).
    gate: wgpu::Buffer,
}

/// Per-layer prefixes for one image (None: no adapter in that layer).
pub struct ImagePrefixes {
    pub layers: Vec<Option<LayerPrefix>>,
    /// The adapter that made them ([`super::AdapterModel::id`]): prefixes
    /// come from the adapter's visual branch, prompts and wk/wv scales.
    pub adapter_id: u64,
    /// Unique per prepared image (a decode plan is built for one).
    pub id: u64,
}

static NEXT_PREFIXES_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Prompt rows per forward pass: a longer prompt runs in chunks of this many
/// rows (each attending to the cache the chunks before it filled), so its
/// activations stay within a fixed size (the session's [`Scratch`]) however
/// long the context is.
pub const PREFILL_CHUNK: usize = 256;

/// A forward pass's activations for up to `rows` rows, kept by the session
/// and shared by every pass (prefill chunks, one-off forwards, the decode
/// plan): they run one after another on the queue, and each writes every
/// activation before reading it. Clones share the buffers.
#[derive(Clone)]
pub(crate) struct Scratch {
    rows: usize,
    h: wgpu::Buffer,
    xn: wgpu::Buffer,
    qkv: wgpu::Buffer,
    att: wgpu::Buffer,
    /// w1 | w3 outputs, where the gate is not in the matmul's epilogue.
    a13: wgpu::Buffer,
    gated: wgpu::Buffer,
    /// LoRA's u = x·L1ᵀ ([rows, lora_width]), made when first needed.
    lora_u: Option<(wgpu::Buffer, usize)>,
    /// Split-K attention's partials, made when first needed.
    partials: Option<wgpu::Buffer>,
}

/// What `forward` returns on the GPU.
/// Inputs wider than this keep only the diagonal of x xᵀ (a full matrix of
/// f64 for LLaMA-7B's 11008-wide FFN input would be 970 MB per layer).
pub const MAX_GRAM_COLS: usize = 1024;

/// Sums over calibration tokens of one linear input's x xᵀ.
pub struct InputMoments {
    /// The weights that read this input.
    pub names: Vec<String>,
    pub cols: usize,
    /// `sums` is the full `cols × cols` matrix (else its diagonal only).
    pub full: bool,
    pub sums: Vec<f64>,
}

pub struct ForwardOutput {
    /// Final-norm hidden states of the rows asked for, [rows, dim].
    pub hidden: wgpu::Buffer,
    /// Logits of those rows, [rows, vocab].
    pub logits: wgpu::Buffer,
    pub rows: usize,
    /// The token ids the pass embeds (a decode plan rewrites them each step).
    pub tokens: wgpu::Buffer,
    /// With capture: the input of every decoder linear, as (the weights
    /// that read it, buffer of [tokens, cols], cols). Calibration only.
    pub captured: Vec<(Vec<String>, wgpu::Buffer, usize)>,
}

impl Model {
    /// The prefix keys/values of every adapted layer for these visual tokens.
    /// Adapter keys/values use the base wk/wv (and their scale), no LoRA, no
    /// bias, no RoPE (spec §2.3 step 5).
    pub fn prepare_image(&self, vision: &VisionOutput) -> Result<ImagePrefixes, ModelError> {
        self.prepare_image_with(vision, true)
    }

    /// [`Model::prepare_image`]; with `submit` false the work is built (its
    /// pipelines compiled) but not run.
    pub(crate) fn prepare_image_with(&self, vision: &VisionOutput, submit: bool) -> Result<ImagePrefixes, ModelError> {
        let ctx = &self.ctx;
        ctx.check()?;
        let (n, dim) = (self.config.llama.n_layers, self.config.llama.dim);
        let a = &self.config.adapter;
        let q = a.query_len;
        let first_late = n - a.query_layer;
        let prompts = self.adapter.weights.f32_buffer("adapter_query.weight")?;
        let mut d: Vec<Dispatch> = Vec::new();
        let mut layers = Vec::with_capacity(n);
        let mut encoder = ctx.device.create_command_encoder(&Default::default());
        for l in 0..n {
            let late = l >= first_late;
            let early = a.fusion == Fusion::EarlyPrefix && l < a.early_layers;
            if !late && !early {
                layers.push(None);
                continue;
            }
            // The prefix tokens A: static prompts (+ vq in late_add), or vq alone (early layers).
            let input = ctx.activations("prefix input", (q * dim * 4) as u64);
            if late {
                let row0 = ((l - first_late) * q * dim * 4) as u64;
                encoder.copy_buffer_to_buffer(prompts, row0, &input, 0, (q * dim * 4) as u64);
                if a.fusion == Fusion::LateAdd {
                    d.push(elementwise::add(ctx, &vision.visual_tokens, &input, q * dim)?);
                }
            } else {
                encoder.copy_buffer_to_buffer(&vision.visual_tokens, 0, &input, 0, (q * dim * 4) as u64);
            }
            let qkv = ctx.activations("prefix qkv", (q * 3 * dim * 4) as u64);
            let layer = &self.decoder.layers[l];
            d.extend(self.linear_group(&layer.qkv, &input, q, &qkv, false)?);
            let gate = layer.prefix_gate.clone().ok_or_else(|| ModelError::BadInput(format!("layer {l} has a prefix but no gate")))?;
            layers.push(Some(LayerPrefix { qkv, gate }));
        }
        if submit {
            ctx.submit_encoder(encoder);
            self.run(&d)?;
        }
        Ok(ImagePrefixes { layers, adapter_id: self.adapter.id, id: NEXT_PREFIXES_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed) })
    }

    /// Runs the decoder over `tokens` at absolute positions `start_pos..`,
    /// filling the KV cache, and returns final hidden states and logits of
    /// the last row, or of every row with `all_rows`. A prompt longer than
    /// [`PREFILL_CHUNK`] rows runs in chunks (one pass with every row where
    /// `all_rows` asks for them all).
    pub fn forward(&self, tokens: &[u32], start_pos: usize, image: &ImagePrefixes, all_rows: bool) -> Result<ForwardOutput, ModelError> {
        self.forward_tail(tokens, start_pos, image, if all_rows { tokens.len() } else { 1 })
    }

    /// The session's activations for at least `rows` rows (made, or grown,
    /// here; a pass never needs more than [`PREFILL_CHUNK`] rows unless it
    /// asks for the logits of more).
    pub(crate) fn scratch(&self, rows: usize) -> Scratch {
        let cfg = &self.config.llama;
        let mut kept = self.session.scratch.borrow_mut();
        if let Some(s) = kept.as_ref().filter(|s| s.rows >= rows) {
            return s.clone();
        }
        let rows = rows.max(PREFILL_CHUNK.min(cfg.max_seq_len));
        let (dim, f) = (cfg.dim, cfg.ffn_hidden);
        let make = |label: &str, cols: usize| self.ctx.activations(label, (rows * cols * 4) as u64);
        let s = Scratch {
            rows,
            h: make("h", dim),
            xn: make("xn", dim),
            qkv: make("qkv", 3 * dim),
            att: make("attn", dim),
            a13: make("w1|w3", 2 * f),
            gated: make("silu gate", f),
            lora_u: None,
            partials: None,
        };
        *kept = Some(s.clone());
        s
    }

    /// A LoRA u buffer of `rows` × `width` (the session's, grown if needed).
    pub(crate) fn lora_scratch(&self, rows: usize, width: usize) -> wgpu::Buffer {
        let scratch = self.scratch(rows);
        if let Some((u, w)) = &scratch.lora_u {
            if *w >= width {
                return u.clone();
            }
        }
        let u = self.ctx.activations("lora u", (scratch.rows * width * 4) as u64);
        if let Some(kept) = self.session.scratch.borrow_mut().as_mut() {
            kept.lora_u = Some((u.clone(), width));
        }
        u
    }

    /// Split-K attention's partials (the session's, made once).
    fn partials_scratch(&self) -> wgpu::Buffer {
        let cfg = &self.config.llama;
        if let Some(p) = self.scratch(1).partials {
            return p;
        }
        let p = self.ctx.activations("attention partials", (split_partials_len(cfg.n_heads, cfg.head_dim(), cfg.max_seq_len) * 4) as u64);
        if let Some(kept) = self.session.scratch.borrow_mut().as_mut() {
            kept.partials = Some(p.clone());
        }
        p
    }

    /// The dispatches of [`Model::forward`], labelled by kernel, unsubmitted
    /// (the benchmark times them one by one).
    pub fn forward_dispatches(&self, tokens: &[u32], start_pos: usize, image: &ImagePrefixes, all_rows: bool) -> Result<(Vec<Dispatch>, ForwardOutput), ModelError> {
        self.forward_dispatches_tail(tokens, start_pos, image, if all_rows { tokens.len() } else { 1 }, false)
    }

    /// GPU time per kernel of a forward pass over `tokens` tokens (id 1)
    /// from `start_pos` (one token: a decode step's kernels; many: a
    /// prefill's), each dispatch timed alone ([`time_each_dispatch`]). The
    /// benchmarks' profile, natively and in the browser.
    pub async fn profile_forward(&self, tokens: usize, start_pos: usize, image: &ImagePrefixes, reps: usize) -> Result<Vec<KernelTime>, ModelError> {
        let context = self.config.llama.max_seq_len;
        if tokens == 0 || start_pos + tokens > context {
            return Err(ModelError::ContextOverflow { prompt: start_pos + tokens.max(1), new: 0, context });
        }
        let _busy = self.session.claim()?;
        let (steps, _) = self.forward_dispatches(&vec![1; tokens], start_pos, image, false)?;
        Ok(time_each_dispatch(&self.ctx, &steps, reps).await?)
    }

    /// Runs `tokens` from position 0 and returns, for every decoder linear
    /// (and the output head), the sum over the tokens of x xᵀ for its input
    /// x (`cols × cols`, row-major; only the diagonal, as a `cols`-long
    /// vector, where cols > [`MAX_GRAM_COLS`]): the activation statistics
    /// that activation-aware and error-compensating quantisation use.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn linear_input_moments(&self, tokens: &[u32], image: &ImagePrefixes) -> Result<Vec<InputMoments>, ModelError> {
        let _busy = self.session.claim()?;
        let (d, out) = self.forward_dispatches_tail(tokens, 0, image, tokens.len(), true)?;
        self.run(&d)?;
        let dim = self.config.llama.dim;
        let mut inputs = out.captured;
        inputs.push((vec![super::layers::names::OUTPUT.to_string()], out.hidden, dim));
        let mut moments = Vec::new();
        for (names, buffer, cols) in inputs {
            let values: Vec<f32> = self.ctx.read_blocking(&buffer, 0, tokens.len() * cols)?;
            let full = cols <= MAX_GRAM_COLS;
            let mut sums = vec![0f64; if full { cols * cols } else { cols }];
            for row in values.chunks(cols) {
                if full {
                    for (i, &a) in row.iter().enumerate() {
                        let line = &mut sums[i * cols..(i + 1) * cols];
                        for (s, &b) in line.iter_mut().zip(row) {
                            *s += a as f64 * b as f64;
                        }
                    }
                } else {
                    sums.iter_mut().zip(row).for_each(|(s, &v)| *s += (v as f64).powi(2));
                }
            }
            moments.push(InputMoments { names, cols, full, sums });
        }
        Ok(moments)
    }

    /// Like [`Model::forward`], with logits for the last `rows` rows only
    /// (forced decoding scores a continuation without paying the output
    /// head for every prompt row).
    pub fn forward_tail(&self, tokens: &[u32], start_pos: usize, image: &ImagePrefixes, rows: usize) -> Result<ForwardOutput, ModelError> {
        let cfg = &self.config.llama;
        if start_pos + tokens.len() > cfg.max_seq_len {
            return Err(ModelError::ContextOverflow { prompt: start_pos, new: tokens.len(), context: cfg.max_seq_len });
        }
        if rows == 0 {
            return Err(ModelError::BadInput("logits for 0 rows".into()));
        }
        // Checked once for the whole prompt, so that a bad id in a later
        // chunk is refused before an earlier chunk has written the cache.
        if image.adapter_id != self.adapter.id {
            return Err(ModelError::BadInput("these image prefixes were made by another adapter; encode the image again".into()));
        }
        if let Some(t) = tokens.iter().find(|t| **t as usize >= cfg.vocab_size) {
            return Err(ModelError::BadInput(format!("token id {t} is outside the vocabulary of {}", cfg.vocab_size)));
        }
        // The last pass holds the natural last chunk, or the rows asked for;
        // the passes before it only fill the cache (no final norm or head).
        let s = tokens.len();
        let chunk = self.prefill_chunk.get().max(1);
        let tail = if s == 0 { 0 } else { ((s - 1) % chunk + 1).max(rows).min(s) };
        let mut first = 0;
        while first + tail < s {
            let n = chunk.min(s - tail - first);
            let (d, _) = self.forward_dispatches_tail(&tokens[first..first + n], start_pos + first, image, 0, false)?;
            self.run(&d)?;
            first += n;
        }
        let (d, out) = self.forward_dispatches_tail(&tokens[first..], start_pos + first, image, rows, false)?;
        self.run(&d)?;
        Ok(out)
    }

    /// With `capture`, each layer's linear inputs get buffers of their own
    /// (instead of shared scratch) and are returned in `captured`.
    fn forward_dispatches_tail(&self, tokens: &[u32], start_pos: usize, image: &ImagePrefixes, rows: usize, capture: bool) -> Result<(Vec<Dispatch>, ForwardOutput), ModelError> {
        let ctx = &self.ctx;
        // A lost device (or an earlier GPU error) is reported before any new work is built.
        ctx.check()?;
        let cfg = &self.config.llama;
        let (s, dim, f) = (tokens.len(), cfg.dim, cfg.ffn_hidden);
        if s == 0 {
            return Err(ModelError::BadInput("no tokens to run".into()));
        }
        if start_pos + s > cfg.max_seq_len {
            return Err(ModelError::ContextOverflow { prompt: start_pos, new: s, context: cfg.max_seq_len });
        }
        if image.adapter_id != self.adapter.id {
            return Err(ModelError::BadInput("these image prefixes were made by another adapter; encode the image again".into()));
        }
        if let Some(t) = tokens.iter().find(|t| **t as usize >= cfg.vocab_size) {
            return Err(ModelError::BadInput(format!("token id {t} is outside the vocabulary of {}", cfg.vocab_size)));
        }
        let mut d: Vec<Dispatch> = Vec::new();
        let token_buf = ctx.upload("tokens", tokens);
        let scratch = self.scratch(s);
        let (h, mut xn, qkv, mut att, a13, mut gated) = (scratch.h, scratch.xn, scratch.qkv, scratch.att, scratch.a13, scratch.gated);
        let mut xn_ffn = xn.clone();
        let mut captured = Vec::new();
        // Decode on a GPU splits attention over the keys (split-K, then a
        // combine): one workgroup per head would leave most of its cores idle
        // over a long context. CPU-backed adapters already fill their cores
        // with the heads, and keep the single pass (8 dispatches per layer).
        let split_attention = s == 1 && !ctx.cpu_kernel_shapes && cfg.max_seq_len > SPLIT_KEYS;
        let partials = split_attention.then(|| self.partials_scratch());
        let w = &self.decoder;
        d.extend(embedding(ctx, &w.tok_embeddings, &token_buf, s, &h, 0)?);

        let head_dim = cfg.head_dim();
        for l in 0..cfg.n_layers {
            let layer = &w.layers[l];
            if capture {
                use super::layers::names::base_linear;
                let fresh = |label: &str, cols: usize| ctx.activations(label, (s * cols * 4) as u64);
                (xn, att, xn_ffn, gated) = (fresh("xn", dim), fresh("attn", dim), fresh("xn ffn", dim), fresh("silu gate", f));
                captured.push((vec![base_linear(l, "attention.wq"), base_linear(l, "attention.wk"), base_linear(l, "attention.wv")], xn.clone(), dim));
                captured.push((vec![base_linear(l, "attention.wo")], att.clone(), dim));
                captured.push((vec![base_linear(l, "feed_forward.w1"), base_linear(l, "feed_forward.w3")], xn_ffn.clone(), dim));
                captured.push((vec![base_linear(l, "feed_forward.w2")], gated.clone(), f));
            }
            d.push(rmsnorm_at(ctx, &h, 0, &layer.attention_norm, &xn, 0, s, dim, cfg.norm_eps)?);
            d.extend(self.linear_group(&layer.qkv, &xn, s, &qkv, true)?);
            let (cache_k, cache_v) = (&self.session.cache_k[l], &self.session.cache_v[l]);
            d.push(rope_qkv(ctx, &self.base.rope, &QkvArgs { qkv: &qkv, rows: s, n_heads: cfg.n_heads, row_stride: 3 * dim, start_pos, cache_k, cache_v })?);
            let prefix = match &image.layers[l] {
                Some(lp) => Some(Prefix {
                    keys: Rows { buffer: &lp.qkv, offset: dim, stride: 3 * dim },
                    values: Rows { buffer: &lp.qkv, offset: 2 * dim, stride: 3 * dim },
                    len: self.config.adapter.query_len,
                    gate: &lp.gate,
                    new_gate: layer.new_gate,
                }),
                None => None,
            };
            let attention = DecoderAttention {
                q: Rows { buffer: &qkv, offset: 0, stride: 3 * dim },
                keys: Rows { buffer: &self.session.cache_k[l], offset: 0, stride: dim },
                values: Rows { buffer: &self.session.cache_v[l], offset: 0, stride: dim },
                prefix,
                out: Rows { buffer: &att, offset: 0, stride: dim },
                n_queries: s,
                n_heads: cfg.n_heads,
                head_dim,
                start_pos,
            };
            match &partials {
                Some(partials) => d.extend(decoder_attention_split(ctx, &attention, Split { partials, max_keys: cfg.max_seq_len })?),
                None => d.push(decoder_attention(ctx, &attention)?),
            }
            d.extend(self.linear(&layer.wo.view(), &att, 0, s, &h, dim, true)?);
            d.push(rmsnorm_at(ctx, &h, 0, &layer.ffn_norm, &xn_ffn, 0, s, dim, cfg.norm_eps)?);
            d.extend(self.ffn_gate(&layer.w13, &xn_ffn, s, &gated, &a13)?);
            d.extend(self.linear(&layer.w2.view(), &gated, 0, s, &h, dim, true)?);
        }
        if rows > s {
            return Err(ModelError::BadInput(format!("logits for {rows} rows of a {s}-token run")));
        }
        if rows == 0 {
            // A prefill chunk before the last: its rows only fill the cache.
            let none = ctx.dummy().clone();
            return Ok((d, ForwardOutput { hidden: none.clone(), logits: none, rows: 0, tokens: token_buf, captured }));
        }
        let first = s - rows;
        let hidden = ctx.activations("final hidden", (rows * dim * 4) as u64);
        d.push(rmsnorm_at(ctx, &h, first * dim, &w.norm, &hidden, 0, rows, dim, cfg.norm_eps)?);
        let logits = ctx.activations("logits", (rows * cfg.vocab_size * 4) as u64);
        d.extend(self.linear(&Linear::plain(&w.output), &hidden, 0, rows, &logits, cfg.vocab_size, false)?);
        Ok((d, ForwardOutput { hidden, logits, rows, tokens: token_buf, captured }))
    }

    /// Greedy next token of the last row of `out` (reads back 8 bytes).
    pub async fn argmax_token(&self, out: &ForwardOutput) -> Result<u32, ModelError> {
        let ctx = &self.ctx;
        let vocab = self.config.llama.vocab_size;
        let result = ctx.storage("argmax", 8);
        let dsp = sampling::argmax(ctx, &out.logits, (out.rows - 1) * vocab, vocab, &result)?;
        ctx.submit(&[&dsp])?;
        let words: Vec<u32> = ctx.read(&result, 0, 2).await?;
        Ok(words[0])
    }

    /// Native convenience: blocks on [`Model::argmax_token`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn argmax_token_blocking(&self, out: &ForwardOutput) -> Result<u32, ModelError> {
        pollster::block_on(self.argmax_token(out))
    }
}
