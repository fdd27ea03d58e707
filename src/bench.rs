//! Kernel benchmarks (native): `llama-adapter bench kernels`.
//!
//! GPU time comes from timestamp queries around a compute pass holding
//! `reps` back-to-back dispatches, where the adapter has them; otherwise from
//! wall time around submit + wait. Figures go to stdout and docs/PERFORMANCE.md.

use std::time::Instant;

use crate::format::quant::{PackedMatrix, QuantFormat};
use crate::gpu::{Dispatch, GpuContext, GpuError};
use crate::kernels::matmul::{matmul, resolve_shape, GpuMatrix, MatmulArgs, MatmulShape};
use crate::util::Rng;

/// How a time was measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clock {
    GpuTimestamps,
    WallClock,
}

impl Clock {
    pub fn name(self) -> &'static str {
        match self {
            Clock::GpuTimestamps => "gpu-timestamps",
            Clock::WallClock => "wall-clock",
        }
    }
}

/// Seconds per repetition of `dispatches`, recorded `reps` times in one pass
/// (after one warm-up submission).
pub fn time_dispatches(ctx: &GpuContext, dispatches: &[Dispatch], reps: usize) -> Result<(f64, Clock), GpuError> {
    let record = |encoder: &mut wgpu::CommandEncoder, timestamps: Option<wgpu::ComputePassTimestampWrites>| {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("bench"), timestamp_writes: timestamps });
        for _ in 0..reps {
            for d in dispatches {
                d.record(&mut pass);
            }
        }
    };
    // Warm-up: pipeline first use, memory residency.
    let mut warm = ctx.device.create_command_encoder(&Default::default());
    record(&mut warm, None);
    ctx.queue.submit([warm.finish()]);
    ctx.wait_idle()?;

    if ctx.info.timestamps {
        let queries = ctx.device.create_query_set(&wgpu::QuerySetDescriptor { label: Some("bench"), ty: wgpu::QueryType::Timestamp, count: 2 });
        let resolved = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("timestamps"),
            size: 16,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let mut encoder = ctx.device.create_command_encoder(&Default::default());
        record(
            &mut encoder,
            Some(wgpu::ComputePassTimestampWrites { query_set: &queries, beginning_of_pass_write_index: Some(0), end_of_pass_write_index: Some(1) }),
        );
        encoder.resolve_query_set(&queries, 0..2, &resolved, 0);
        ctx.queue.submit([encoder.finish()]);
        let ticks: Vec<u64> = ctx.read_blocking(&resolved, 0, 2)?;
        let ns = ticks[1].saturating_sub(ticks[0]) as f64 * ctx.queue.get_timestamp_period() as f64;
        if ns > 0.0 {
            return Ok((ns * 1e-9 / reps as f64, Clock::GpuTimestamps));
        }
    }
    let start = Instant::now();
    let mut encoder = ctx.device.create_command_encoder(&Default::default());
    record(&mut encoder, None);
    ctx.queue.submit([encoder.finish()]);
    ctx.wait_idle()?;
    Ok((start.elapsed().as_secs_f64() / reps as f64, Clock::WallClock))
}

/// One measured matmul configuration.
#[derive(Debug, Clone)]
pub struct MatmulFigure {
    pub shape: &'static str,
    pub format: QuantFormat,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub blocks: usize,
    pub weight_bytes: u64,
    pub seconds: f64,
    pub clock: Clock,
}

impl MatmulFigure {
    pub fn gbps(&self) -> f64 {
        self.weight_bytes as f64 / self.seconds / 1e9
    }
    pub fn gflops(&self) -> f64 {
        2.0 * (self.m * self.n * self.k) as f64 / self.seconds / 1e9
    }
}

/// Measures one matmul of a random `n × k` weight in `format` on `m` x rows.
pub fn bench_matmul(ctx: &GpuContext, format: QuantFormat, m: usize, n: usize, k: usize, shape: MatmulShape, reps: usize) -> Result<MatmulFigure, GpuError> {
    let mut rng = Rng::new(0x5eed ^ (n * 31 + k) as u64);
    let weights: Vec<f32> = (0..n * k).map(|_| rng.symmetric(0.05)).collect();
    let packed = PackedMatrix::pack(format, n, k, &weights);
    drop(weights);
    let weight = GpuMatrix::upload(ctx, "bench weight", &packed)?;
    drop(packed);
    let x: Vec<f32> = (0..m * k).map(|_| rng.symmetric(1.0)).collect();
    let x = ctx.upload_activations("bench x", &x);
    let y = ctx.activations("bench y", (m * n * 4) as u64);
    let args = MatmulArgs { x: &x, x_offset: 0, x_stride: k, m, weight: &weight, bias: None, scale: None, y: &y, y_offset: 0, y_stride: n, accumulate: false, gated: false, lora: None };
    let dispatches = matmul(ctx, &args, shape)?;
    let (seconds, clock) = time_dispatches(ctx, &dispatches, reps)?;
    Ok(MatmulFigure {
        shape: match resolve_shape(ctx, shape, m) { MatmulShape::Gemm => "gemm", MatmulShape::Rowwise => "rowwise", _ => "gemv" },
        format,
        m,
        n,
        k,
        blocks: weight.blocks.len(),
        weight_bytes: weight.bytes(),
        seconds,
        clock,
    })
}

/// Host memory bandwidth (GB/s) by copying a 256 MiB buffer on all cores: the
/// roofline of a CPU-backed adapter, whose "device memory" is host memory.
pub fn host_copy_bandwidth() -> f64 {
    const BYTES: usize = 256 << 20;
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let src = vec![1u8; BYTES];
    let mut dst = vec![0u8; BYTES];
    let chunk = BYTES / threads;
    let mut best = f64::MAX;
    for _ in 0..3 {
        let start = Instant::now();
        std::thread::scope(|scope| {
            for (d, s) in dst.chunks_mut(chunk).zip(src.chunks(chunk)) {
                scope.spawn(move || d.copy_from_slice(s));
            }
        });
        best = best.min(start.elapsed().as_secs_f64());
    }
    std::hint::black_box(&dst);
    // A copy reads and writes every byte.
    2.0 * BYTES as f64 / best / 1e9
}

// ---------------------------------------------------------------------------
// `bench model`: a seeded random model of any shape, end to end.

use std::rc::Rc;

use crate::format::package::{sha256_hex, PackageKind, PackageWriter};
use crate::model::config::{AdapterConfig, ChannelOrder, ClipConfig, Fusion, LlamaConfig, ModelConfig};
use crate::model::weights::{adapter_specs, base_specs};
use crate::model::plan::{Pick, StepResult};
use crate::model::{MemorySource, Model, ModelError};
use crate::model::decoder::ImagePrefixes;

/// The shape of a benchmark model.
#[derive(Debug, Clone)]
pub struct BenchShape {
    pub dim: usize,
    pub layers: usize,
    pub heads: usize,
    pub ffn: usize,
    pub vocab: usize,
    pub quant: QuantFormat,
    pub clip_width: usize,
    pub clip_layers: usize,
    pub max_seq_len: usize,
    /// LoRA (rank 16) on every decoder linear, and new_gate.
    pub lora: bool,
}

impl BenchShape {
    /// LLaMA-7B with CLIP ViT-L/14 and the official adapter sizes.
    pub fn seven_b(quant: QuantFormat) -> BenchShape {
        BenchShape { dim: 4096, layers: 32, heads: 32, ffn: 11008, vocab: 32000, quant, clip_width: 1024, clip_layers: 24, max_seq_len: 512, lora: false }
    }

    pub fn config(&self) -> ModelConfig {
        let query_layer = self.layers.saturating_sub(1).max(1);
        ModelConfig {
            llama: LlamaConfig {
                dim: self.dim,
                n_layers: self.layers,
                n_heads: self.heads,
                vocab_size: self.vocab,
                ffn_hidden: self.ffn,
                norm_eps: 1e-6,
                rope_theta: 10000.0,
                max_seq_len: self.max_seq_len,
            },
            clip: ClipConfig { width: self.clip_width, layers: self.clip_layers, heads: (self.clip_width / 64).max(1), patch: 14, image_size: 224, embed_dim: 768.min(self.clip_width) },
            adapter: AdapterConfig {
                query_len: 10,
                query_layer,
                v_embed_dim: 768.min(self.clip_width),
                v_depth: if self.clip_width >= 768 { 8 } else { 2 },
                v_num_heads: if self.clip_width >= 768 { 16 } else { 4 },
                v_mlp_hidden: 4 * 768.min(self.clip_width),
                w_bias: true,
                w_lora: self.lora,
                lora_rank: 16,
                w_new_gate: self.lora,
                w_scale: false,
                fusion: Fusion::LateAdd,
                early_layers: 0,
                channel_order: ChannelOrder::Rgb,
            },
        }
    }
}

/// A word-level tokenizer of `vocab` entries (the bench feeds ids directly).
fn bench_tokenizer(vocab: usize) -> Vec<u8> {
    let entries: serde_json::Map<String, serde_json::Value> = (0..vocab).map(|i| (format!("t{i}"), serde_json::json!(i))).collect();
    serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [], "normalizer": null,
        "pre_tokenizer": {"type": "WhitespaceSplit"}, "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": entries, "unk_token": "t0"}
    })
    .to_string()
    .into_bytes()
}

/// A package in memory: manifest.json bytes and (file name, bytes) shards.
pub struct MemoryPackage {
    pub manifest_json: Vec<u8>,
    pub files: Vec<(String, Vec<u8>)>,
}

/// Seeded random base and adapter packages of this shape (the tokenizer is a
/// word-level one of `vocab` entries, `tokenizer.json` in the base).
pub fn random_packages(shape: &BenchShape, seed: u64, shard_bytes: u64) -> Result<(MemoryPackage, MemoryPackage, Vec<u8>), ModelError> {
    let config = shape.config();
    config.validate().map_err(ModelError::BadInput)?;
    let tokenizer = bench_tokenizer(config.llama.vocab_size);
    let mut rng = Rng::new(seed);
    let mut package = |specs: crate::model::weights::TensorSpecs, kind: PackageKind, cfg: serde_json::Value, base_sha: Option<String>| {
        let mut w = PackageWriter::new(shard_bytes, 64 << 20);
        let mut names: Vec<&String> = specs.keys().collect();
        names.sort();
        for name in names {
            let (dims, _) = &specs[name];
            let n: usize = dims.iter().product();
            let (data, format) = if dims.len() == 1 {
                let centre = if name.contains("norm") && name.ends_with("weight") { 1.0 } else { 0.0 };
                ((0..n).map(|_| centre + rng.symmetric(0.1)).collect::<Vec<f32>>(), QuantFormat::F32)
            } else {
                let scale = 1.0 / (dims[dims.len() - 1] as f32).sqrt();
                // As the converter stores them: LoRA factors and prompts stay f32.
                let quantised = !(name.contains("positional") || name.contains("adapter_query") || name.contains("visual_query") || name.contains(".lora_"));
                ((0..n).map(|_| rng.symmetric(scale)).collect::<Vec<f32>>(), if quantised { shape.quant } else { QuantFormat::F32 })
            };
            w.add(name, dims, format, &data);
        }
        let (mut manifest, files) = w.finish(kind, cfg);
        manifest.base_sha256 = base_sha;
        if kind == PackageKind::Base {
            manifest.tokenizer = Some(crate::format::package::FileEntry { file: "tokenizer.json".into(), bytes: tokenizer.len() as u64, sha256: sha256_hex(&tokenizer) });
        }
        MemoryPackage { manifest_json: serde_json::to_vec_pretty(&manifest).expect("manifest serialises"), files }
    };
    let base = package(
        base_specs(&config.llama, &config.clip),
        PackageKind::Base,
        serde_json::json!({"llama": config.llama, "clip": config.clip}),
        None,
    );
    let base_sha = sha256_hex(&base.manifest_json);
    let adapter = package(
        adapter_specs(&config.llama, &config.clip, &config.adapter),
        PackageKind::Adapter,
        serde_json::json!({"adapter": config.adapter}),
        Some(base_sha),
    );
    Ok((base, adapter, tokenizer))
}

/// Writes [`random_packages`] to `dir/base` and `dir/adapter` (the browser bench's model).
pub fn write_random_packages(dir: &std::path::Path, shape: &BenchShape, seed: u64, shard_bytes: u64) -> Result<(), Box<dyn std::error::Error>> {
    let (base, adapter, tokenizer) = random_packages(shape, seed, shard_bytes)?;
    for (sub, p) in [("base", &base), ("adapter", &adapter)] {
        let d = dir.join(sub);
        std::fs::create_dir_all(&d)?;
        std::fs::write(d.join("manifest.json"), &p.manifest_json)?;
        for (name, bytes) in &p.files {
            std::fs::write(d.join(name), bytes)?;
        }
    }
    std::fs::write(dir.join("base").join("tokenizer.json"), tokenizer)?;
    Ok(())
}

/// Builds a seeded random model of this shape in memory and uploads it
/// through the same loader as a real package.
pub fn random_model(ctx: Rc<GpuContext>, shape: &BenchShape, seed: u64) -> Result<Model, ModelError> {
    let (base, adapter, tokenizer) = random_packages(shape, seed, 1 << 30)?;
    let shards = |p: MemoryPackage| MemorySource(p.files.into_iter().map(|(_, b)| b).collect());
    let (base_json, adapter_json) = (base.manifest_json.clone(), adapter.manifest_json.clone());
    pollster::block_on(Model::load(
        ctx,
        ("bench base", &base_json),
        &mut shards(base),
        &tokenizer,
        ("bench adapter", &adapter_json),
        &mut shards(adapter),
    ))
}

/// What `bench model` measures.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelFigures {
    pub adapter: String,
    pub build_s: f64,
    /// Creating every pipeline a generation uses (as the browser's load does).
    pub compile_s: f64,
    pub vision_ms: f64,
    pub prompt_tokens: usize,
    pub prefill_tokens_per_s: f64,
    pub new_tokens: usize,
    pub decode_tokens_per_s: f64,
    pub host_ms_per_token: f64,
    pub dispatches_per_token: usize,
    pub submits_per_token: f64,
    pub gpu_objects_created_per_token: f64,
    pub weight_bytes_per_token: u64,
    pub kv_bytes_per_token: u64,
    pub gpu_weight_and_cache_bytes: u64,
    pub activation_bytes: u64,
}

/// Prints the GPU time of each kernel (label and grid) of a forward pass
/// over `tokens` tokens from `start_pos`, each dispatch timed alone.
fn print_profile(model: &Model, what: &str, tokens: usize, start_pos: usize, image: &ImagePrefixes) -> Result<(), ModelError> {
    let kernels = pollster::block_on(model.profile_forward(tokens, start_pos, image, 5))?;
    let (mut total, mut count) = (0.0, 0);
    for k in &kernels {
        eprintln!("profile {what}: {:<32} {:>4} dispatches {:>9.3} ms", format!("{} {:?}", k.label, k.workgroups), k.dispatches, k.ms);
        total += k.ms;
        count += k.dispatches;
    }
    eprintln!("profile {what}: total {total:.3} ms over {count} dispatches");
    Ok(())
}

/// Runs vision, a `prompt`-token prefill and `new_tokens` greedy decode steps.
pub fn bench_model(ctx: Rc<GpuContext>, shape: &BenchShape, prompt: usize, new_tokens: usize) -> Result<ModelFigures, ModelError> {
    let t = Instant::now();
    let model = random_model(ctx.clone(), shape, 7)?;
    ctx.wait_idle()?;
    let build_s = t.elapsed().as_secs_f64();
    // Compile up front, as a load does in the browser: the prefill below then
    // times kernels, not shader compilation.
    let t = Instant::now();
    model.compile_pipelines()?;
    let compile_s = t.elapsed().as_secs_f64();
    let cfg = model.config.clone();
    if prompt + new_tokens > cfg.llama.max_seq_len {
        return Err(ModelError::ContextOverflow { prompt, new: new_tokens, context: cfg.llama.max_seq_len });
    }
    let mut rng = Rng::new(11);
    let image: Vec<f32> = (0..3 * 224 * 224).map(|_| rng.symmetric(1.0)).collect();
    let t = Instant::now();
    let vision = model.encode_image(&image)?;
    let prefixes = model.prepare_image(&vision)?;
    ctx.wait_idle()?;
    let vision_ms = t.elapsed().as_secs_f64() * 1e3;

    let tokens: Vec<u32> = (0..prompt).map(|_| 3 + rng.below(cfg.llama.vocab_size - 3) as u32).collect();
    let t = Instant::now();
    let out = model.forward(&tokens, 0, &prefixes, false)?;
    let mut next = model.argmax_token_blocking(&out)?;
    let prefill_s = t.elapsed().as_secs_f64();

    // Decode through the session's plan, as `generate` does: the plan is
    // built on the first step (counted in decode time, as a user waits for it).
    let mut host = 0.0;
    let t = Instant::now();
    let mut plan = model.session.take_plan(&model, &prefixes)?;
    let submits_before = ctx.object_counts();
    for i in 0..new_tokens {
        let h = Instant::now();
        plan.submit(&model, next, prompt + i, Pick::Greedy)?;
        host += h.elapsed().as_secs_f64();
        next = match pollster::block_on(plan.finish(&model))? {
            StepResult::Token(t) => t,
            StepResult::Summary(_) => unreachable!("greedy steps read a token"),
        };
    }
    let decode_s = t.elapsed().as_secs_f64();
    let created = ctx.object_counts();
    let objects_per_token = ((created.buffers + created.bind_groups) - (submits_before.buffers + submits_before.bind_groups)) as f64 / new_tokens.max(1) as f64;
    let submits_per_token = (created.submits - submits_before.submits) as f64 / new_tokens.max(1) as f64;
    let dispatches = plan.dispatches_per_step();
    model.session.put_plan(plan);
    if std::env::var("LLAMA_ADAPTER_PROFILE").is_ok() {
        // GPU time per kernel of one decode step and of the prefill, each dispatch timed alone.
        print_profile(&model, "decode", 1, prompt + new_tokens, &prefixes)?;
        print_profile(&model, "prefill", tokens.len(), 0, &prefixes)?;
    }
    let l = &cfg.llama;
    // Weights a decode step reads: every layer matrix, the output head, one
    // embedding row (q4 and q8 include their scales).
    let layer_bytes = l.n_layers as u64 * (4 * shape.quant.bytes(l.dim, l.dim) + 3 * shape.quant.bytes(l.ffn_hidden, l.dim));
    let weight_bytes = layer_bytes + shape.quant.bytes(l.vocab_size, l.dim) + shape.quant.bytes(1, l.dim);
    // K and V of every cached position, at the middle of the decode run.
    let kv_bytes = (2 * l.n_layers * (prompt + new_tokens / 2) * l.dim * 4) as u64;
    // The session's activations: one prefill chunk's rows at most.
    let s = prompt.clamp(1, crate::model::decoder::PREFILL_CHUNK);
    let activation_bytes = (4 * (6 * s * l.dim + 3 * s * l.ffn_hidden + l.vocab_size)) as u64;
    Ok(ModelFigures {
        adapter: ctx.info.name.clone(),
        build_s,
        compile_s,
        vision_ms,
        prompt_tokens: prompt,
        prefill_tokens_per_s: prompt as f64 / prefill_s,
        new_tokens,
        decode_tokens_per_s: new_tokens as f64 / decode_s,
        host_ms_per_token: host * 1e3 / new_tokens.max(1) as f64,
        dispatches_per_token: dispatches,
        submits_per_token,
        gpu_objects_created_per_token: objects_per_token,
        weight_bytes_per_token: weight_bytes,
        kv_bytes_per_token: kv_bytes,
        gpu_weight_and_cache_bytes: model.gpu_bytes,
        activation_bytes,
    })
}
