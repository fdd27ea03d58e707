//! The model: configuration, weights, and the forward passes.
//!
//! `Model::load` reads a base and an adapter package, checks them against
//! each other and the config, and uploads them. `encode_image` runs the
//! vision side once per image; `prepare_image` turns its visual tokens into
//! the per-layer prefix keys/values (cached across generate calls);
//! `forward` runs the decoder over new tokens at a start position, writing
//! the KV cache.

pub mod config;
pub mod decoder;
pub mod generate;
pub mod vision;
pub mod weights;

use std::rc::Rc;

use crate::format::package::{FormatError, LoadedPackage};
use crate::gpu::{Dispatch, GpuContext, GpuError};
use crate::kernels::matmul::{matmul, GpuMatrix, MatmulArgs, MatmulShape};
use crate::kernels::rope::RopeTable;
use crate::text::tokenizer::{Tokenizer, TokenizerError};

use config::{AdapterConfig, ClipConfig, LlamaConfig, ModelConfig};
use weights::{adapter_specs, base_specs, GpuWeights, ModelLoadError};

/// Everything that can go wrong running the model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Load(#[from] ModelLoadError),
    #[error(transparent)]
    Gpu(#[from] GpuError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error("{0}")]
    BadInput(String),
    #[error("the prompt ({prompt} tokens) plus {new} new tokens exceed the model's context of {context} tokens")]
    ContextOverflow { prompt: usize, new: usize, context: usize },
}

impl From<FormatError> for ModelError {
    fn from(e: FormatError) -> Self {
        ModelError::Load(ModelLoadError::Format(e))
    }
}

/// A linear layer: y = s ⊙ (x·Wᵀ + b + (x·L1ᵀ)·L2ᵀ).
pub struct Linear<'a> {
    pub weight: &'a GpuMatrix,
    pub bias: Option<&'a wgpu::Buffer>,
    pub scale: Option<&'a wgpu::Buffer>,
    pub lora: Option<(&'a GpuMatrix, &'a GpuMatrix)>,
}

impl<'a> Linear<'a> {
    pub fn plain(weight: &'a GpuMatrix) -> Linear<'a> {
        Linear { weight, bias: None, scale: None, lora: None }
    }
}

pub struct Model {
    pub ctx: Rc<GpuContext>,
    pub config: ModelConfig,
    pub tokenizer: Tokenizer,
    pub base: GpuWeights,
    pub adapter: GpuWeights,
    pub rope: RopeTable,
    /// Host copies of small tensors the host writes into activations.
    class_embedding: Vec<f32>,
    visual_query: Vec<f32>,
    /// `new_gate` per layer (1.0 without LoRA).
    new_gates: Vec<f32>,
    /// Per layer: keys and values, [max_seq_len, dim].
    cache_k: Vec<wgpu::Buffer>,
    cache_v: Vec<wgpu::Buffer>,
    /// Bytes of weights and caches on the GPU.
    pub gpu_bytes: u64,
    /// Dispatches in the last submitted forward pass (bench figure).
    pub last_dispatches: std::cell::Cell<usize>,
}

impl Model {
    /// Loads and checks a base + adapter pair of packages (native: from folders).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn load_dirs(ctx: Rc<GpuContext>, base_dir: &std::path::Path, adapter_dir: &std::path::Path) -> Result<Model, ModelError> {
        let base = LoadedPackage::read_dir(base_dir, crate::format::package::PackageKind::Base)?;
        let adapter = LoadedPackage::read_dir(adapter_dir, crate::format::package::PackageKind::Adapter)?;
        let tokenizer_file = base.manifest.tokenizer.clone().ok_or_else(|| FormatError::Io("the base package names no tokenizer".into()))?;
        let tokenizer_bytes = std::fs::read(base_dir.join(&tokenizer_file.file)).map_err(|e| FormatError::Io(format!("{}: {e}", tokenizer_file.file)))?;
        if crate::format::package::sha256_hex(&tokenizer_bytes) != tokenizer_file.sha256 {
            return Err(FormatError::HashMismatch {
                file: tokenizer_file.file.clone(),
                found: crate::format::package::sha256_hex(&tokenizer_bytes),
                expected: tokenizer_file.sha256.clone(),
            }
            .into());
        }
        Model::from_packages(ctx, &base, &adapter, &tokenizer_bytes)
    }

    /// Checks the packages against each other and the config, and uploads them.
    pub fn from_packages(ctx: Rc<GpuContext>, base: &LoadedPackage, adapter: &LoadedPackage, tokenizer_json: &[u8]) -> Result<Model, ModelError> {
        if let Some(want) = &adapter.manifest.base_sha256 {
            if *want != base.manifest_sha256 {
                return Err(FormatError::WrongBase { expected: want.clone(), found: base.manifest_sha256.clone() }.into());
            }
        }
        let config_err = |file: &str, e: serde_json::Error| FormatError::Config { file: file.into(), reason: e.to_string() };
        let llama: LlamaConfig = serde_json::from_value(base.manifest.config["llama"].clone()).map_err(|e| config_err("base manifest", e))?;
        let clip: ClipConfig = serde_json::from_value(base.manifest.config["clip"].clone()).map_err(|e| config_err("base manifest", e))?;
        let adapter_cfg: AdapterConfig = serde_json::from_value(adapter.manifest.config["adapter"].clone()).map_err(|e| config_err("adapter manifest", e))?;
        let config = ModelConfig { llama, clip, adapter: adapter_cfg };
        config.validate().map_err(|reason| FormatError::Config { file: "manifests".into(), reason })?;
        base.manifest.validate_tensors(&base_specs(&config.llama, &config.clip))?;
        adapter.manifest.validate_tensors(&adapter_specs(&config.llama, &config.clip, &config.adapter))?;
        for l in weights::required_gate_layers(&config) {
            let name = format!("llama.layers.{l}.attention.gate");
            if adapter.tensor(&name).is_none() {
                return Err(FormatError::MissingTensor { name }.into());
            }
        }
        let tokenizer = Tokenizer::from_json(tokenizer_json)?;
        if tokenizer.vocab_size() != config.llama.vocab_size {
            return Err(FormatError::Config {
                file: "tokenizer.json".into(),
                reason: format!("{} tokens, the model has {}", tokenizer.vocab_size(), config.llama.vocab_size),
            }
            .into());
        }

        let base_gpu = GpuWeights::upload(&ctx, base)?;
        let adapter_gpu = GpuWeights::upload(&ctx, adapter)?;
        let l = &config.llama;
        let cache_bytes = (l.max_seq_len * l.dim * 4) as u64;
        let mut cache_k = Vec::with_capacity(l.n_layers);
        let mut cache_v = Vec::with_capacity(l.n_layers);
        for _ in 0..l.n_layers {
            cache_k.push(ctx.activations("cache k", cache_bytes));
            cache_v.push(ctx.activations("cache v", cache_bytes));
        }
        let new_gates = (0..l.n_layers)
            .map(|i| adapter.tensor_f32(&format!("llama.layers.{i}.attention.new_gate")).map_or(1.0, |v| v[0]))
            .collect();
        let rope = RopeTable::new(&ctx, l.max_seq_len, l.head_dim(), l.rope_theta);
        ctx.check()?;
        Ok(Model {
            gpu_bytes: base_gpu.bytes + adapter_gpu.bytes + 2 * cache_bytes * l.n_layers as u64,
            class_embedding: base.tensor_f32("clip.class_embedding").unwrap_or_default(),
            visual_query: adapter.tensor_f32("visual_query.weight").unwrap_or_default(),
            new_gates,
            ctx,
            config,
            tokenizer,
            base: base_gpu,
            adapter: adapter_gpu,
            rope,
            cache_k,
            cache_v,
            last_dispatches: std::cell::Cell::new(0),
        })
    }

    /// The adapter's linear `name` (weight + bias) of the visual branch.
    fn adapter_linear(&self, name: &str) -> Result<Linear<'_>, ModelError> {
        Ok(Linear {
            weight: self.adapter.matrix(&format!("{name}.weight"))?,
            bias: self.adapter.optional_vector(&format!("{name}.bias")),
            scale: None,
            lora: None,
        })
    }

    /// Dispatches of `y (+)= linear(x rows)` for `m` rows of x, y from element 0.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn linear(
        &self,
        l: &Linear,
        x: &wgpu::Buffer,
        x_offset: usize,
        m: usize,
        y: &wgpu::Buffer,
        y_width: usize,
        accumulate: bool,
    ) -> Result<Vec<Dispatch>, ModelError> {
        self.linear_at(l, x, x_offset, m, y, 0, y_width, accumulate)
    }

    /// Dispatches of `y[y_offset..] (+)= linear(x rows)`: y row t starts at
    /// element `y_offset + t·y_width` (the KV cache rows of a position, say).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn linear_at(
        &self,
        l: &Linear,
        x: &wgpu::Buffer,
        x_offset: usize,
        m: usize,
        y: &wgpu::Buffer,
        y_offset: usize,
        y_width: usize,
        accumulate: bool,
    ) -> Result<Vec<Dispatch>, ModelError> {
        let ctx = &self.ctx;
        let k = l.weight.cols;
        let mut d = Vec::new();
        let mut main_accumulates = accumulate;
        if let Some((l1, l2)) = l.lora {
            // LoRA first: y (+)= s ⊙ ((x·L1ᵀ)·L2ᵀ), then the main product adds on top.
            let tmp = ctx.activations("lora", (m * l1.rows * 4) as u64);
            let a1 = MatmulArgs { x, x_offset, x_stride: k, m, weight: l1, bias: None, scale: None, y: &tmp, y_offset: 0, y_stride: l1.rows, accumulate: false };
            d.extend(matmul(ctx, &a1, MatmulShape::Auto)?);
            let a2 = MatmulArgs { x: &tmp, x_offset: 0, x_stride: l1.rows, m, weight: l2, bias: None, scale: l.scale, y, y_offset, y_stride: y_width, accumulate };
            d.extend(matmul(ctx, &a2, MatmulShape::Auto)?);
            main_accumulates = true;
        }
        let args = MatmulArgs {
            x,
            x_offset,
            x_stride: k,
            m,
            weight: l.weight,
            bias: l.bias,
            scale: l.scale,
            y,
            y_offset,
            y_stride: y_width,
            accumulate: main_accumulates,
        };
        d.extend(matmul(ctx, &args, MatmulShape::Auto)?);
        Ok(d)
    }

    /// Submits dispatches in one pass.
    pub(crate) fn run(&self, dispatches: &[Dispatch]) -> Result<(), GpuError> {
        self.last_dispatches.set(dispatches.len());
        let refs: Vec<&Dispatch> = dispatches.iter().collect();
        self.ctx.submit(&refs)
    }
}
