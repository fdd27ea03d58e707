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
pub mod layers;
pub mod loader;
pub mod plan;
pub mod vision;
pub mod weights;

use std::rc::Rc;

use crate::format::package::{FormatError, PackageKind};
use crate::gpu::{Dispatch, GpuContext, GpuError};
use crate::kernels::matmul::{gated_supported, matmul, GpuMatrix, LoraEpilogue, MatmulArgs, MatmulShape};
use crate::kernels::rope::RopeTable;
use crate::text::tokenizer::{Tokenizer, TokenizerError};

use config::{AdapterConfig, ClipConfig, LlamaConfig, ModelConfig};
use loader::{adapter_host_names, base_host_names, fit, verify_tokenizer, AdapterPlan, BasePlan, LoadError, PackagePlan, PackageUpload};
use layers::{GroupWeights, LinearGroup};
use weights::{GpuWeights, ModelLoadError};

/// Everything that can go wrong running the model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Load(#[from] ModelLoadError),
    #[error(transparent)]
    Gpu(#[from] GpuError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    DoesNotFit(Box<loader::DoesNotFit>),
    #[error("{0}")]
    BadInput(String),
    #[error("the prompt ({prompt} tokens) plus {new} new tokens exceed the model's context of {context} tokens")]
    ContextOverflow { prompt: usize, new: usize, context: usize },
    #[error("a generation is already running on this session; wait for it or stop it first")]
    Busy,
}

impl ModelError {
    /// The error's code in the JS API (`LlamaAdapterError.code`), one per
    /// thing a person can do about it.
    pub fn code(&self) -> &'static str {
        match self {
            ModelError::Load(ModelLoadError::Format(f)) => format_code(f),
            ModelError::Load(ModelLoadError::Gpu(g)) | ModelError::Gpu(g) => g.code(),
            ModelError::Tokenizer(TokenizerError::Load(_)) => "bad-format",
            ModelError::Tokenizer(TokenizerError::Encode(_)) => "bad-input",
            ModelError::DoesNotFit(_) => "does-not-fit",
            ModelError::BadInput(_) => "bad-input",
            ModelError::ContextOverflow { .. } => "context-overflow",
            ModelError::Busy => "busy",
        }
    }
}

/// The JS error code of a package problem.
pub fn format_code(e: &FormatError) -> &'static str {
    match e {
        FormatError::HashMismatch { .. } | FormatError::Truncated { .. } => "integrity",
        FormatError::WrongBase { .. } => "wrong-base",
        _ => "bad-format",
    }
}

impl From<LoadError> for ModelError {
    fn from(e: LoadError) -> Self {
        match e {
            LoadError::Format(f) => ModelError::Load(ModelLoadError::Format(f)),
            LoadError::Gpu(g) => ModelError::Gpu(g),
            LoadError::DoesNotFit(d) => ModelError::DoesNotFit(d),
        }
    }
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

/// Whether a LoRA's L2 (`rows` × `rank`) can ride in the main matmul's
/// epilogue: dense f32 rows in one buffer (the converter keeps LoRA in f32).
pub(crate) fn lora_up_foldable(l2: &GpuMatrix, rank: usize, rows: usize) -> bool {
    l2.format == crate::format::quant::QuantFormat::F32 && l2.blocks.len() == 1 && l2.cols == rank && l2.rows == rows
}

/// A LoRA whose u = x·L1ᵀ has been computed (into the session's u buffer)
/// and whose L2 rides in the main matmul's epilogue.
struct FoldedLora<'a> {
    u: wgpu::Buffer,
    /// L2, dense f32 [members·member_rows, rank].
    up: &'a GpuMatrix,
    /// L1 rows: every member's rank-wide slice of a u row.
    u_stride: usize,
    member_rows: usize,
}

impl FoldedLora<'_> {
    /// The epilogue for weights whose row 0 is member `member`'s row 0
    /// (0 for a single linear or a fused group).
    fn epilogue(&self, member: usize) -> LoraEpilogue<'_> {
        LoraEpilogue {
            u: &self.u,
            u_stride: self.u_stride,
            u_offset: member * self.up.cols,
            up: &self.up.blocks[0].buffer,
            up_row0: member * self.member_rows,
            rank: self.up.cols,
            member_rows: self.member_rows,
        }
    }
}

/// The frozen part, loaded once: LLaMA + CLIP weights, tokenizer, RoPE table.
/// Shared (`Rc`) by every model built on it, so swapping adapters never
/// touches it.
pub struct BaseModel {
    pub llama: LlamaConfig,
    pub clip: ClipConfig,
    pub tokenizer: Tokenizer,
    pub weights: GpuWeights,
    pub rope: RopeTable,
    /// sha256 of the base manifest (what adapters name their base by).
    pub manifest_sha256: String,
    /// Host copy of the class embedding, written into the first CLIP row per image.
    class_embedding: Vec<f32>,
}

/// One adapter: its config and weights (biases, scales, norms, gates,
/// prompts, visual branch, LoRA). Replaceable without touching the base.
pub struct AdapterModel {
    pub config: AdapterConfig,
    pub weights: GpuWeights,
    pub manifest_sha256: String,
    /// Unique per loaded adapter: image prefixes carry it, so that a prefix
    /// made by another adapter is never used.
    pub id: u64,
    visual_query: Vec<f32>,
    /// `new_gate` per layer (1.0 without LoRA).
    new_gates: Vec<f32>,
}

/// A conversation's state: the KV cache. Sized by the base (context length),
/// independent of the adapter, so it survives an adapter swap.
pub struct Session {
    /// Per layer: keys and values, [max_seq_len, dim].
    cache_k: Vec<wgpu::Buffer>,
    cache_v: Vec<wgpu::Buffer>,
    pub bytes: u64,
    /// Set while a generation runs: a second one is refused, never interleaved.
    busy: std::cell::Cell<bool>,
    /// The decode plan of the last generation (reused while adapter and picture stay).
    plan: std::cell::RefCell<Option<plan::DecodePlan>>,
    /// The forward passes' activation buffers, made once and reused by every
    /// prefill chunk and by the decode plan (see [`decoder::Scratch`]).
    pub(crate) scratch: std::cell::RefCell<Option<decoder::Scratch>>,
}

impl Session {
    pub fn new(ctx: &GpuContext, llama: &LlamaConfig) -> Session {
        let cache_bytes = (llama.max_seq_len * llama.dim * 4) as u64;
        let mut cache_k = Vec::with_capacity(llama.n_layers);
        let mut cache_v = Vec::with_capacity(llama.n_layers);
        for _ in 0..llama.n_layers {
            cache_k.push(ctx.activations("cache k", cache_bytes));
            cache_v.push(ctx.activations("cache v", cache_bytes));
        }
        Session {
            cache_k,
            cache_v,
            bytes: 2 * cache_bytes * llama.n_layers as u64,
            busy: std::cell::Cell::new(false),
            plan: Default::default(),
            scratch: Default::default(),
        }
    }

    /// The plan for this adapter and these prefixes: the kept one, or a new one.
    pub fn take_plan(&self, model: &Model, image: &decoder::ImagePrefixes) -> Result<plan::DecodePlan, ModelError> {
        let key = (model.adapter.id, image.id);
        match self.plan.borrow_mut().take() {
            Some(p) if p.key == key => Ok(p),
            _ => plan::DecodePlan::new(model, image),
        }
    }

    pub fn put_plan(&self, plan: plan::DecodePlan) {
        *self.plan.borrow_mut() = Some(plan);
    }

    /// Marks the session busy until the guard drops; `Busy` if it already is.
    pub(crate) fn claim(&self) -> Result<SessionGuard<'_>, ModelError> {
        if self.busy.replace(true) {
            return Err(ModelError::Busy);
        }
        Ok(SessionGuard(self))
    }
}

pub(crate) struct SessionGuard<'a>(&'a Session);

impl Drop for SessionGuard<'_> {
    fn drop(&mut self) {
        self.0.busy.set(false);
    }
}

static NEXT_ADAPTER_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// A base, an adapter and a session: what the forward passes run on.
pub struct Model {
    pub ctx: Rc<GpuContext>,
    pub config: ModelConfig,
    pub base: Rc<BaseModel>,
    pub adapter: Rc<AdapterModel>,
    pub session: Rc<Session>,
    /// The decoder's tensors of this base + adapter pair, resolved once.
    pub decoder: layers::DecoderWeights,
    /// Bytes of weights and caches on the GPU.
    pub gpu_bytes: u64,
    /// Rows per prefill pass ([`decoder::PREFILL_CHUNK`]; tests set fewer).
    pub prefill_chunk: std::cell::Cell<usize>,
}

/// Bytes of one package, handed over by whatever reads them (files, fetch, memory).
pub trait ShardSource {
    /// The bytes of shard `index` (`entry` says its file name and size).
    fn shard(&mut self, index: usize, entry: &crate::format::package::ShardEntry) -> Result<Vec<u8>, FormatError>;
}

/// Shards read from a folder, one at a time.
#[cfg(not(target_arch = "wasm32"))]
pub struct DirSource(pub std::path::PathBuf);

#[cfg(not(target_arch = "wasm32"))]
impl ShardSource for DirSource {
    fn shard(&mut self, _index: usize, entry: &crate::format::package::ShardEntry) -> Result<Vec<u8>, FormatError> {
        // A file longer than its manifest entry is refused without reading it whole.
        crate::format::package::read_bounded(&self.0.join(&entry.file), entry.bytes).map_err(|e| FormatError::Shard { file: entry.file.clone(), reason: e.to_string() })
    }
}

/// Shards already in memory (the benchmark's generated model).
pub struct MemorySource(pub Vec<Vec<u8>>);

impl ShardSource for MemorySource {
    fn shard(&mut self, index: usize, entry: &crate::format::package::ShardEntry) -> Result<Vec<u8>, FormatError> {
        self.0.get_mut(index).map(std::mem::take).ok_or_else(|| FormatError::Shard { file: entry.file.clone(), reason: "not in memory".into() })
    }
}

/// Streams every shard of `plan` from `source` into a fresh upload.
async fn stream_package(
    ctx: &GpuContext,
    plan: &PackagePlan,
    host: &std::collections::HashSet<String>,
    fusions: &[layers::FusedGroup],
    source: &mut dyn ShardSource,
) -> Result<PackageUpload, ModelError> {
    let mut upload = PackageUpload::allocate(ctx, plan, host, fusions).await?;
    for (i, entry) in plan.manifest.shards.iter().enumerate() {
        let bytes = source.shard(i, entry)?;
        upload.write_shard(ctx, i, &bytes)?;
    }
    Ok(upload)
}

impl BaseModel {
    /// Builds the base from a finished upload and its tokenizer file.
    pub fn new(ctx: &GpuContext, plan: &BasePlan, upload: PackageUpload, tokenizer_json: &[u8]) -> Result<BaseModel, ModelError> {
        verify_tokenizer(plan, tokenizer_json)?;
        let tokenizer = Tokenizer::from_json(tokenizer_json)?;
        if tokenizer.vocab_size() != plan.llama.vocab_size {
            return Err(FormatError::Config {
                file: "tokenizer.json".into(),
                reason: format!("{} tokens, the model has {}", tokenizer.vocab_size(), plan.llama.vocab_size),
            }
            .into());
        }
        let (weights, mut host) = upload.finish()?;
        let rope = RopeTable::new(ctx, plan.llama.max_seq_len, plan.llama.head_dim(), plan.llama.rope_theta);
        ctx.check()?;
        Ok(BaseModel {
            llama: plan.llama.clone(),
            clip: plan.clip.clone(),
            tokenizer,
            weights,
            rope,
            manifest_sha256: plan.package.manifest_sha256.clone(),
            class_embedding: host.remove("clip.class_embedding").unwrap_or_default(),
        })
    }
}

impl AdapterModel {
    pub fn new(plan: &AdapterPlan, upload: PackageUpload) -> Result<AdapterModel, ModelError> {
        let (weights, mut host) = upload.finish()?;
        let n = plan.config.llama.n_layers;
        let new_gates = (0..n).map(|i| host.get(&format!("llama.layers.{i}.attention.new_gate")).and_then(|v| v.first().copied()).unwrap_or(1.0)).collect();
        Ok(AdapterModel {
            config: plan.config.adapter.clone(),
            weights,
            manifest_sha256: plan.package.manifest_sha256.clone(),
            id: NEXT_ADAPTER_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            visual_query: host.remove("visual_query.weight").unwrap_or_default(),
            new_gates,
        })
    }
}

impl Model {
    /// Pairs a base and an adapter (checked against each other) with a session.
    pub fn assemble(ctx: Rc<GpuContext>, base: Rc<BaseModel>, adapter: Rc<AdapterModel>, session: Option<Rc<Session>>) -> Result<Model, ModelError> {
        let config = ModelConfig { llama: base.llama.clone(), clip: base.clip.clone(), adapter: adapter.config.clone() };
        config.validate().map_err(|reason| FormatError::Config { file: "manifests".into(), reason })?;
        let session = match session {
            Some(s) => s,
            None => Rc::new(Session::new(&ctx, &base.llama)),
        };
        let decoder = layers::DecoderWeights::resolve(&ctx, &config, &base.weights, &adapter.weights, &adapter.new_gates)?;
        ctx.check()?;
        Ok(Model {
            decoder,
            gpu_bytes: base.weights.bytes + adapter.weights.bytes + session.bytes,
            prefill_chunk: std::cell::Cell::new(decoder::PREFILL_CHUNK),
            ctx,
            config,
            base,
            adapter,
            session,
        })
    }

    /// The same base and session with another adapter.
    pub fn with_adapter(&self, adapter: Rc<AdapterModel>) -> Result<Model, ModelError> {
        Model::assemble(self.ctx.clone(), self.base.clone(), adapter, Some(self.session.clone()))
    }

    /// Loads a base + adapter pair of packages, one shard at a time, through
    /// the loader every target shares ([`loader`]).
    pub async fn load(
        ctx: Rc<GpuContext>,
        base_manifest: (&str, &[u8]),
        base_shards: &mut dyn ShardSource,
        tokenizer_json: &[u8],
        adapter_manifest: (&str, &[u8]),
        adapter_shards: &mut dyn ShardSource,
    ) -> Result<Model, ModelError> {
        let base_plan = BasePlan::new(PackagePlan::parse(base_manifest.0, base_manifest.1, PackageKind::Base)?)?;
        let adapter_plan = AdapterPlan::new(PackagePlan::parse(adapter_manifest.0, adapter_manifest.1, PackageKind::Adapter)?, &base_plan)?;
        fit(&adapter_plan.config, &[&base_plan.package, &adapter_plan.package], &ctx.info, None).map_err(LoadError::from)?;
        let base_upload = stream_package(&ctx, &base_plan.package, &base_host_names(), &layers::base_fusions(base_plan.llama.n_layers), base_shards).await?;
        let base = Rc::new(BaseModel::new(&ctx, &base_plan, base_upload, tokenizer_json)?);
        let adapter_fusions = layers::adapter_fusions(&ctx, &adapter_plan.package.manifest, &adapter_plan.config);
        let adapter_upload = stream_package(&ctx, &adapter_plan.package, &adapter_host_names(&adapter_plan.config), &adapter_fusions, adapter_shards).await?;
        let adapter = Rc::new(AdapterModel::new(&adapter_plan, adapter_upload)?);
        Model::assemble(ctx, base, adapter, None)
    }

    /// Loads a base + adapter pair of packages from folders (native).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn load_dirs(ctx: Rc<GpuContext>, base_dir: &std::path::Path, adapter_dir: &std::path::Path) -> Result<Model, ModelError> {
        let read = |path: std::path::PathBuf, limit: u64| crate::format::package::read_bounded(&path, limit).map_err(|e| FormatError::Io(format!("{}: {e}", path.display())));
        let base_label = base_dir.join("manifest.json").display().to_string();
        let adapter_label = adapter_dir.join("manifest.json").display().to_string();
        let base_text = read(base_dir.join("manifest.json"), crate::limits::MAX_MANIFEST_BYTES)?;
        let adapter_text = read(adapter_dir.join("manifest.json"), crate::limits::MAX_MANIFEST_BYTES)?;
        // The tokenizer's name comes from the manifest; parse it once here for the path.
        let base_plan = PackagePlan::parse(&base_label, &base_text, PackageKind::Base)?;
        let tokenizer = base_plan.manifest.tokenizer.clone().ok_or_else(|| FormatError::Io("the base package names no tokenizer".into()))?;
        if tokenizer.file.contains('/') || tokenizer.file.contains('\\') || tokenizer.file.starts_with('.') {
            return Err(FormatError::Shard { file: tokenizer.file, reason: "file names must be plain".into() }.into());
        }
        let tokenizer_bytes = read(base_dir.join(&tokenizer.file), crate::limits::MAX_TOKENIZER_JSON_BYTES)?;
        pollster::block_on(Model::load(
            ctx,
            (&base_label, &base_text),
            &mut DirSource(base_dir.to_path_buf()),
            &tokenizer_bytes,
            (&adapter_label, &adapter_text),
            &mut DirSource(adapter_dir.to_path_buf()),
        ))
    }

    /// The adapter's linear `name` (weight + bias) of the visual branch.
    fn adapter_linear(&self, name: &str) -> Result<Linear<'_>, ModelError> {
        Ok(Linear {
            weight: self.adapter.weights.matrix(&format!("{name}.weight"))?,
            bias: self.adapter.weights.optional_vector(&format!("{name}.bias")),
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
        let mut folded = None;
        match l.lora {
            // L2 as dense f32 rows: u = x·L1ᵀ first, L2 in the main matmul's epilogue.
            Some((l1, l2)) if lora_up_foldable(l2, l1.rows, l.weight.rows) => {
                folded = Some(self.fold_lora(l1, l2, l.weight.rows, x, x_offset, m, &mut d)?);
            }
            Some((l1, l2)) => {
                // Any other format: the LoRA path first, then the main product adds on top.
                d.extend(self.lora_into((l1, l2), l.scale, x, x_offset, m, y, y_offset, y_width, accumulate)?);
                main_accumulates = true;
            }
            None => {}
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
            gated: false,
            lora: folded.as_ref().map(|f| f.epilogue(0)),
        };
        d.extend(matmul(ctx, &args, MatmulShape::Auto)?);
        Ok(d)
    }

    /// The down half of a folded LoRA: `u = x·L1ᵀ` into a new [m, L1 rows]
    /// buffer (every member's L1 rows stacked, for a group).
    fn lora_down(&self, l1: &GpuMatrix, x: &wgpu::Buffer, x_offset: usize, m: usize) -> Result<(Vec<Dispatch>, wgpu::Buffer), ModelError> {
        let u = self.lora_scratch(m, l1.rows);
        let args = MatmulArgs { x, x_offset, x_stride: l1.cols, m, weight: l1, bias: None, scale: None, y: &u, y_offset: 0, y_stride: l1.rows, accumulate: false, gated: false, lora: None };
        Ok((matmul(&self.ctx, &args, MatmulShape::Auto)?, u))
    }

    /// Pushes the down matmul of a folded LoRA (L1 → u) onto `d` and returns
    /// what the main matmul's epilogue needs.
    #[allow(clippy::too_many_arguments)]
    fn fold_lora<'a>(&self, l1: &GpuMatrix, l2: &'a GpuMatrix, member_rows: usize, x: &wgpu::Buffer, x_offset: usize, m: usize, d: &mut Vec<Dispatch>) -> Result<FoldedLora<'a>, ModelError> {
        let (down, u) = self.lora_down(l1, x, x_offset, m)?;
        d.extend(down);
        Ok(FoldedLora { u, up: l2, u_stride: l1.rows, member_rows })
    }

    /// Dispatches of `y[y_offset..] (+)= s ⊙ ((x·L1ᵀ)·L2ᵀ)`: a LoRA path, through a temporary.
    #[allow(clippy::too_many_arguments)]
    fn lora_into(
        &self,
        (l1, l2): (&GpuMatrix, &GpuMatrix),
        scale: Option<&wgpu::Buffer>,
        x: &wgpu::Buffer,
        x_offset: usize,
        m: usize,
        y: &wgpu::Buffer,
        y_offset: usize,
        y_width: usize,
        accumulate: bool,
    ) -> Result<Vec<Dispatch>, ModelError> {
        let (mut d, tmp) = self.lora_down(l1, x, x_offset, m)?;
        let a2 = MatmulArgs { x: &tmp, x_offset: 0, x_stride: l1.rows, m, weight: l2, bias: None, scale, y, y_offset, y_stride: y_width, accumulate, gated: false, lora: None };
        d.extend(matmul(&self.ctx, &a2, MatmulShape::Auto)?);
        Ok(d)
    }

    /// Dispatches of `y[t, :] = group(x[t, :])` for `m` rows of x: member
    /// i's outputs at columns `i·member_rows ..` of y rows `group.width()`
    /// wide. One matmul where the weights are fused; a stacked LoRA adds one
    /// matmul before it (u = x·L1ᵀ for every member) and its L2 rides in the
    /// epilogue; a member's own LoRA writes its slice first and the product
    /// adds on top. Without `adapted`, members get their scale only: no
    /// bias, no LoRA (the prefix keys and values, spec §2.3 step 5).
    pub(crate) fn linear_group(&self, g: &LinearGroup, x: &wgpu::Buffer, m: usize, y: &wgpu::Buffer, adapted: bool) -> Result<Vec<Dispatch>, ModelError> {
        let width = g.width();
        let mut d = Vec::new();
        let stacked = match (adapted, &g.stacked_lora) {
            (true, Some((l1, l2))) => Some(self.fold_lora(l1, l2, g.member_rows, x, 0, m, &mut d)?),
            _ => None,
        };
        // Member i's share of the stacked LoRA, for weights whose row 0 is member i's.
        let epilogue = |member: usize| stacked.as_ref().map(|f| f.epilogue(member));
        match &g.weights {
            GroupWeights::Fused { weight, bias, scale } => {
                let mut lora_written = false;
                for (i, p) in g.members.iter().enumerate() {
                    if let (true, Some((l1, l2))) = (adapted, &p.lora) {
                        d.extend(self.lora_into((l1, l2), p.scale.as_ref(), x, 0, m, y, i * g.member_rows, width, false)?);
                        lora_written = true;
                    }
                }
                if lora_written && g.members.iter().any(|p| p.lora.is_none()) {
                    return Err(ModelError::BadInput("LoRA on only some members of a fused group".into()));
                }
                let args = MatmulArgs {
                    x,
                    x_offset: 0,
                    x_stride: weight.cols,
                    m,
                    weight,
                    bias: if adapted { bias.as_ref() } else { None },
                    scale: scale.as_ref(),
                    y,
                    y_offset: 0,
                    y_stride: width,
                    accumulate: lora_written,
                    gated: false,
                    lora: epilogue(0),
                };
                d.extend(matmul(&self.ctx, &args, MatmulShape::Auto)?);
            }
            GroupWeights::Separate(weights) => {
                for (i, (weight, p)) in weights.iter().zip(&g.members).enumerate() {
                    let member_lora = if adapted { p.lora.as_ref() } else { None };
                    if stacked.is_some() {
                        let args = MatmulArgs {
                            x,
                            x_offset: 0,
                            x_stride: weight.cols,
                            m,
                            weight,
                            bias: p.bias.as_ref(),
                            scale: p.scale.as_ref(),
                            y,
                            y_offset: i * g.member_rows,
                            y_stride: width,
                            accumulate: false,
                            gated: false,
                            lora: epilogue(i),
                        };
                        d.extend(matmul(&self.ctx, &args, MatmulShape::Auto)?);
                        continue;
                    }
                    let l = Linear {
                        weight,
                        bias: if adapted { p.bias.as_ref() } else { None },
                        scale: p.scale.as_ref(),
                        lora: member_lora.map(|(a, b)| (a, b)),
                    };
                    d.extend(self.linear_at(&l, x, 0, m, y, i * g.member_rows, width, false)?);
                }
            }
        }
        Ok(d)
    }

    /// Dispatches of the FFN's gate, `gated[t, :] = silu(w1·x) ⊙ (w3·x)`: one
    /// gated matmul where w1 | w3 are fused, carry no LoRA and the kernel
    /// shape has the epilogue; else the group into `scratch` ([m, 2·ffn])
    /// and a SiLU-gate over its halves.
    pub(crate) fn ffn_gate(&self, g: &LinearGroup, x: &wgpu::Buffer, m: usize, gated: &wgpu::Buffer, scratch: &wgpu::Buffer) -> Result<Vec<Dispatch>, ModelError> {
        if let (GroupWeights::Fused { weight, bias, scale }, false, true) = (&g.weights, g.member_lora(), gated_supported(&self.ctx, m)) {
            let mut d = Vec::new();
            let stacked = match &g.stacked_lora {
                Some((l1, l2)) => Some(self.fold_lora(l1, l2, g.member_rows, x, 0, m, &mut d)?),
                None => None,
            };
            let args = MatmulArgs {
                x,
                x_offset: 0,
                x_stride: weight.cols,
                m,
                weight,
                bias: bias.as_ref(),
                scale: scale.as_ref(),
                y: gated,
                y_offset: 0,
                y_stride: g.member_rows,
                accumulate: false,
                gated: true,
                lora: stacked.as_ref().map(|f| f.epilogue(0)),
            };
            d.extend(matmul(&self.ctx, &args, MatmulShape::Auto)?);
            return Ok(d);
        }
        let mut d = self.linear_group(g, x, m, scratch, true)?;
        d.push(crate::kernels::elementwise::silu_gate_halves(&self.ctx, scratch, m, g.member_rows, gated)?);
        Ok(d)
    }

    /// Submits dispatches in one pass.
    pub(crate) fn run(&self, dispatches: &[Dispatch]) -> Result<(), GpuError> {
        let refs: Vec<&Dispatch> = dispatches.iter().collect();
        self.ctx.submit(&refs)
    }
}
