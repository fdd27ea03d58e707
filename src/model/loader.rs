//! Loading a model: one code path for the native tool, the tests and the
//! browser. Where the bytes come from (files, fetch, the Cache API, memory)
//! is the caller's business; the order is fixed here:
//!
//! 1. [`PackagePlan::parse`] each `manifest.json`, then [`BasePlan::new`] and
//!    [`AdapterPlan::new`] check them against their config and each other
//!    (no shard bytes needed);
//! 2. [`fit`] computes the GPU bytes and the largest binding from the
//!    manifests alone and refuses a model that cannot fit the device;
//! 3. [`PackageUpload::allocate`] creates the GPU buffers from the tensor table;
//! 4. [`PackageUpload::write_shard`] verifies one shard's size and sha256 and
//!    writes its pieces into their buffers; the caller then drops the bytes,
//!    so at most one shard is ever held in memory;
//! 5. [`PackageUpload::finish`] checks that every shard arrived.
//!
//! Every size that comes from a file is bounded ([`ModelConfig::validate`],
//! [`MAX_SHARD_BYTES`]) and checked by [`fit`] before anything is allocated.

use std::collections::{HashMap, HashSet};

use crate::format::package::{sha256_hex, verify_shard, FormatError, Manifest, PackageKind, ShardEntry};
use crate::format::quant::{PackedMatrix, QuantFormat};
use crate::gpu::{GpuContext, GpuError, GpuInfo};
use crate::kernels::matmul::{GpuBlock, GpuMatrix};

use super::config::{AdapterConfig, ClipConfig, LlamaConfig, ModelConfig};
use super::layers::FusedGroup;
use super::weights::{adapter_specs, base_specs, required_gate_layers, GpuTensor, GpuWeights};

// The bounds on what a manifest may ask for, with their reasons: src/limits.rs.
pub use crate::limits::{MAX_HOST_BYTES, MAX_MANIFEST_BYTES, MAX_SHARD_BYTES};
use crate::limits::{MAX_SHARDS, MAX_TOKENIZER_JSON_BYTES};

/// A manifest, parsed and structurally checked; no shard read yet.
#[derive(Debug, Clone)]
pub struct PackagePlan {
    /// Where it came from (a path or URL), for messages.
    pub label: String,
    pub manifest: Manifest,
    /// sha256 of the manifest's bytes: what an adapter names its base by.
    pub manifest_sha256: String,
}

impl PackagePlan {
    pub fn parse(label: &str, bytes: &[u8], kind: PackageKind) -> Result<PackagePlan, FormatError> {
        if bytes.len() as u64 > MAX_MANIFEST_BYTES {
            return Err(FormatError::NotAManifest { file: label.into(), reason: format!("{} bytes; a manifest is at most {MAX_MANIFEST_BYTES}", bytes.len()) });
        }
        let manifest = Manifest::parse(label, bytes)?;
        if manifest.kind != kind {
            return Err(FormatError::Kind { file: label.into(), expected: kind, found: manifest.kind });
        }
        let plain = |name: &str| !name.is_empty() && name.len() <= 255 && !name.contains('/') && !name.contains('\\') && !name.starts_with('.');
        if manifest.shards.len() > MAX_SHARDS {
            return Err(FormatError::NotAManifest { file: label.into(), reason: format!("\"shards\": {} shards; a package has at most {MAX_SHARDS}", manifest.shards.len()) });
        }
        for s in &manifest.shards {
            if !plain(&s.file) {
                return Err(FormatError::Shard { file: s.file.clone(), reason: "shard names must be plain file names".into() });
            }
            if s.bytes > MAX_SHARD_BYTES {
                return Err(FormatError::Shard { file: s.file.clone(), reason: format!("{} bytes; the loader takes shards of at most {MAX_SHARD_BYTES}", s.bytes) });
            }
        }
        if let Some(t) = &manifest.tokenizer {
            if !plain(&t.file) || t.bytes > MAX_TOKENIZER_JSON_BYTES {
                return Err(FormatError::Shard { file: t.file.clone(), reason: format!("\"tokenizer\": the tokenizer must be a plain file name of at most {MAX_TOKENIZER_JSON_BYTES} bytes ({} given)", t.bytes) });
            }
        }
        manifest.validate_structure()?;
        Ok(PackagePlan { label: label.into(), manifest, manifest_sha256: sha256_hex(bytes) })
    }

    /// Bytes to transfer: every shard (and the tokenizer of a base).
    pub fn transfer_bytes(&self) -> u64 {
        self.manifest.shards.iter().map(|s| s.bytes).sum::<u64>() + self.manifest.tokenizer.as_ref().map_or(0, |t| t.bytes)
    }

    /// Bytes of the tensors once on the GPU.
    pub fn gpu_bytes(&self) -> u64 {
        self.manifest.tensors.iter().flat_map(|t| &t.pieces).map(|p| p.length.next_multiple_of(16)).sum()
    }

    /// The largest tensor piece (one GPU binding) and its tensor's name.
    pub fn largest_piece(&self) -> (u64, String) {
        let mut best = (0, String::new());
        for t in &self.manifest.tensors {
            for p in &t.pieces {
                if p.length > best.0 {
                    best = (p.length, t.name.clone());
                }
            }
        }
        best
    }
}

fn config_of<T: serde::de::DeserializeOwned>(plan: &PackagePlan, key: &str) -> Result<T, FormatError> {
    let value = plan.manifest.config.get(key).cloned().ok_or_else(|| FormatError::Config { file: plan.label.clone(), reason: format!("no \"{key}\" section") })?;
    serde_json::from_value(value).map_err(|e| FormatError::Config { file: plan.label.clone(), reason: format!("\"{key}\": {e}") })
}

/// A base package checked against its own config.
#[derive(Debug, Clone)]
pub struct BasePlan {
    pub package: PackagePlan,
    pub llama: LlamaConfig,
    pub clip: ClipConfig,
}

impl BasePlan {
    pub fn new(package: PackagePlan) -> Result<BasePlan, FormatError> {
        let llama: LlamaConfig = config_of(&package, "llama")?;
        let clip: ClipConfig = config_of(&package, "clip")?;
        let bad = |reason: String| FormatError::Config { file: package.label.clone(), reason };
        llama.validate().map_err(bad)?;
        clip.validate().map_err(bad)?;
        if package.manifest.tokenizer.is_none() {
            return Err(FormatError::Config { file: package.label.clone(), reason: "the base package names no tokenizer".into() });
        }
        package.manifest.validate_tensors(&base_specs(&llama, &clip))?;
        Ok(BasePlan { package, llama, clip })
    }
}

/// An adapter package checked against its config and the base it is for.
#[derive(Debug, Clone)]
pub struct AdapterPlan {
    pub package: PackagePlan,
    pub config: ModelConfig,
}

impl AdapterPlan {
    pub fn new(package: PackagePlan, base: &BasePlan) -> Result<AdapterPlan, FormatError> {
        Self::for_base(package, &base.llama, &base.clip, &base.package.manifest_sha256)
    }

    /// Checks an adapter against a base described by its configs and manifest hash
    /// (the base may already be on the GPU).
    pub fn for_base(package: PackagePlan, llama: &LlamaConfig, clip: &ClipConfig, base_sha256: &str) -> Result<AdapterPlan, FormatError> {
        if let Some(want) = &package.manifest.base_sha256 {
            if want != base_sha256 {
                return Err(FormatError::WrongBase { expected: want.clone(), found: base_sha256.into() });
            }
        }
        let adapter: AdapterConfig = config_of(&package, "adapter")?;
        let config = ModelConfig { llama: llama.clone(), clip: clip.clone(), adapter };
        config.validate().map_err(|reason| FormatError::Config { file: package.label.clone(), reason })?;
        package.manifest.validate_tensors(&adapter_specs(&config.llama, &config.clip, &config.adapter))?;
        for l in required_gate_layers(&config) {
            let name = format!("llama.layers.{l}.attention.gate");
            if !package.manifest.tensors.iter().any(|t| t.name == name) {
                return Err(FormatError::MissingTensor { name });
            }
        }
        Ok(AdapterPlan { package, config })
    }
}

/// What a model needs of the GPU, from its manifests alone.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FitReport {
    /// Tensors of the packages being loaded (the base's are counted when it is loaded).
    pub weight_bytes: u64,
    /// Keys and values of every layer for the whole context.
    pub kv_cache_bytes: u64,
    /// Activations of a prefill over the whole context plus the vision side (an upper bound).
    pub activation_bytes: u64,
    pub total_bytes: u64,
    /// The largest single buffer binding the model creates, and what it holds.
    pub largest_binding: u64,
    pub largest_binding_what: String,
    /// The largest host-side allocation (a shard, the RoPE table).
    pub largest_host_bytes: u64,
    pub max_storage_binding: u64,
    pub max_buffer_size: u64,
}

/// Why a model cannot run on this device.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("the model does not fit this GPU: {reason} (needs {total_mb:.1} MB of GPU memory in all; the largest binding is {largest_mb:.1} MB for {what}, and this device allows {limit_mb:.1} MB per binding and {buffer_mb:.1} MB per buffer)")]
pub struct DoesNotFit {
    pub reason: String,
    pub total_mb: f64,
    pub largest_mb: f64,
    pub what: String,
    pub limit_mb: f64,
    pub buffer_mb: f64,
    pub report: FitReport,
}

/// Checks that `config` (with the packages being loaded) fits a device with
/// `info`'s limits, and within `budget` bytes of GPU memory if given.
pub fn fit(config: &ModelConfig, packages: &[&PackagePlan], info: &GpuInfo, budget: Option<u64>) -> Result<FitReport, Box<DoesNotFit>> {
    let l = &config.llama;
    let c = &config.clip;
    let a = &config.adapter;
    // The sizes below are bounded by ModelConfig::validate, so u64 cannot overflow.
    let (dim, ffn, vocab, ctx_len) = (l.dim as u64, l.ffn_hidden as u64, l.vocab_size as u64, l.max_seq_len as u64);
    let kv_layer = ctx_len * dim * 4;
    let kv_cache_bytes = 2 * kv_layer * l.n_layers as u64;
    let rope = ctx_len * l.head_dim() as u64 * 4;
    let tokens = c.tokens() as u64;
    let vision_rows = tokens + a.query_len as u64;
    let vision_width = (c.width.max(a.v_embed_dim) as u64).max(dim);
    let vision_hidden = (4 * c.width).max(a.v_mlp_hidden) as u64;
    // A prompt runs in chunks of at most PREFILL_CHUNK rows through the
    // session's activations (h, xn, attn, qkv: 6·dim; w1|w3 and the gate: 3·ffn).
    let rows = ctx_len.min(super::decoder::PREFILL_CHUNK as u64);
    let prefill = 4 * (6 * rows * dim + 3 * rows * ffn + vocab);
    let vision = 4 * (vision_rows * (5 * vision_width + vision_hidden) + tokens * 3 * c.patch as u64 * c.patch as u64);
    let activation_bytes = prefill + vision + rope;
    let weight_bytes: u64 = packages.iter().map(|p| p.gpu_bytes()).sum();
    let total_bytes = weight_bytes + kv_cache_bytes + activation_bytes;

    // (bytes, what, what to do when it is too large)
    let shorter_context = format!("convert with a smaller --max-seq-len (the context is {} tokens)", l.max_seq_len);
    let mut bindings: Vec<(u64, String, String)> =
        packages.iter().map(|p| p.largest_piece()).map(|(bytes, name)| (bytes, name, "convert with a smaller --quant format".to_string())).collect();
    bindings.push((kv_layer, "one layer's KV cache".into(), shorter_context.clone()));
    let chunk_advice = if ctx_len > rows { "this model's FFN is too wide for the device".to_string() } else { shorter_context.clone() };
    bindings.push((4 * 2 * rows * ffn, "the FFN activations of a prefill chunk".into(), chunk_advice));
    bindings.push((rope, "the RoPE table".into(), shorter_context));
    bindings.push((4 * vision_rows * vision_hidden, "the vision MLP activations".into(), "this model's vision side is too wide for the device".into()));
    let (largest_binding, what, advice) = bindings.into_iter().max_by_key(|b| b.0).unwrap_or_default();
    let largest_shard = packages.iter().flat_map(|p| &p.manifest.shards).map(|s| s.bytes).max().unwrap_or(0);
    let largest_host_bytes = largest_shard.max(rope);

    let report = FitReport {
        weight_bytes,
        kv_cache_bytes,
        activation_bytes,
        total_bytes,
        largest_binding,
        largest_binding_what: what.clone(),
        largest_host_bytes,
        max_storage_binding: info.max_storage_binding,
        max_buffer_size: info.max_buffer_size,
    };
    let mb = |b: u64| b as f64 / 1e6;
    let refuse = |reason: String| Box::new(DoesNotFit {
        reason,
        total_mb: mb(total_bytes),
        largest_mb: mb(largest_binding),
        what: what.clone(),
        limit_mb: mb(info.max_storage_binding),
        buffer_mb: mb(info.max_buffer_size),
        report: report.clone(),
    });
    if largest_binding > info.max_storage_binding.min(info.max_buffer_size) {
        return Err(refuse(format!("{what} needs one binding of {:.1} MB; {advice}", mb(largest_binding))));
    }
    if largest_host_bytes > MAX_HOST_BYTES {
        return Err(refuse(format!("one host allocation of {:.1} MB (a shard or the RoPE table) exceeds the loader's {:.0} MB", mb(largest_host_bytes), mb(MAX_HOST_BYTES))));
    }
    if let Some(budget) = budget {
        if total_bytes > budget {
            return Err(refuse(format!("{:.1} MB are needed and the budget given is {:.1} MB", mb(total_bytes), mb(budget))));
        }
    }
    Ok(report)
}

/// Where one piece of a shard goes.
struct Target {
    tensor: String,
    buffer: wgpu::Buffer,
    /// Byte range in the shard.
    start: usize,
    len: usize,
    /// Byte offset in the buffer.
    dst: u64,
    /// Kept on the host too (dequantised): small tensors the host writes into activations.
    host: Option<(QuantFormat, usize, usize)>,
}

/// A package's GPU buffers, filled shard by shard.
pub struct PackageUpload {
    label: String,
    shards: Vec<ShardEntry>,
    targets: Vec<Vec<Target>>,
    written: Vec<bool>,
    tensors: HashMap<String, GpuTensor>,
    host: HashMap<String, Vec<f32>>,
    bytes: u64,
}

impl PackageUpload {
    /// Creates a zeroed buffer for every tensor piece. `host_names`: tensors
    /// to keep a dequantised host copy of as they stream past. `fusions`:
    /// groups of matrices to store as one (see [`fusable`]); a group that
    /// cannot be fused is stored as its members.
    pub async fn allocate(ctx: &GpuContext, plan: &PackagePlan, host_names: &HashSet<String>, fusions: &[FusedGroup]) -> Result<PackageUpload, GpuError> {
        ctx.check()?;
        let manifest = &plan.manifest;
        let scope = ctx.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let mut targets: Vec<Vec<Target>> = manifest.shards.iter().map(|_| Vec::new()).collect();
        let mut tensors = HashMap::new();
        let mut bytes = 0;
        // Member name -> (its group's buffer, the group's rows, the member's first row).
        let mut fused_rows: HashMap<&str, (wgpu::Buffer, usize, usize)> = HashMap::new();
        for group in fusions {
            let Some((format, rows, cols)) = fusable(ctx, manifest, group) else { continue };
            let buffer = ctx.storage(&group.name, format.bytes(rows, cols));
            bytes += buffer.size();
            let mut row0 = 0;
            for member in &group.members {
                let t = manifest.tensors.iter().find(|t| &t.name == member).expect("fusable checked the members");
                fused_rows.insert(member, (buffer.clone(), rows, row0));
                row0 += t.rows();
            }
            tensors.insert(group.name.clone(), GpuTensor::Matrix(GpuMatrix { format, rows, cols, blocks: vec![GpuBlock { buffer, row_start: 0, rows }] }));
        }
        for t in &manifest.tensors {
            // validate_structure has checked the format names.
            let format = t.quant().ok_or_else(|| GpuError::InvalidArgument(format!("tensor {}: format {}", t.name, t.format)))?;
            let host = host_names.contains(&t.name);
            if t.shape.len() == 1 && format != QuantFormat::F32 {
                return Err(GpuError::InvalidArgument(format!("tensor {}: vectors must be stored as f32", t.name)));
            }
            if let Some((buffer, group_rows, row0)) = fused_rows.get(t.name.as_str()) {
                // Each piece holds its rows' quants, then their scales: the
                // quants go after the group's earlier rows, the scales after
                // the group's earlier scales.
                let row_bytes = (format.row_words(t.cols()) * 4) as u64;
                let scale_region = *group_rows as u64 * row_bytes;
                for p in &t.pieces {
                    let first = (row0 + p.row_start) as u64;
                    let quant_bytes = p.rows as u64 * row_bytes;
                    let mut place = |start: u64, len: u64, dst: u64| {
                        targets[p.shard].push(Target { tensor: t.name.clone(), buffer: buffer.clone(), start: start as usize, len: len as usize, dst, host: None });
                    };
                    place(p.offset, quant_bytes, first * row_bytes);
                    if p.length > quant_bytes {
                        // f16 scales, two per word; fusable checked that every piece starts and ends on a word.
                        place(p.offset + quant_bytes, p.length - quant_bytes, scale_region + first * format.groups(t.cols()) as u64 * 2);
                    }
                }
                continue;
            }
            let mut blocks = Vec::new();
            // f32 rows have a fixed size, so a tensor cut into pieces (small
            // shards) goes back into one buffer when it fits one binding:
            // the kernels that read plain f32 data (positional embedding,
            // prompts) need it whole. Quantised pieces keep their own
            // buffers (each holds its rows' quants, then their scales).
            let whole = format.bytes(t.rows(), t.cols());
            if format == QuantFormat::F32 && t.pieces.len() > 1 && whole <= ctx.info.max_storage_binding {
                let buffer = ctx.storage(&t.name, whole);
                bytes += buffer.size();
                for p in &t.pieces {
                    targets[p.shard].push(Target {
                        tensor: t.name.clone(),
                        buffer: buffer.clone(),
                        start: p.offset as usize,
                        len: p.length as usize,
                        dst: (p.row_start * t.cols() * 4) as u64,
                        host: host.then_some((format, p.rows, t.cols())),
                    });
                }
                blocks.push(GpuBlock { buffer, row_start: 0, rows: t.rows() });
            } else {
                for p in &t.pieces {
                    if p.length > ctx.info.max_storage_binding {
                        return Err(GpuError::BindingTooLarge { what: t.name.clone(), needed: p.length, limit: ctx.info.max_storage_binding });
                    }
                    let buffer = ctx.storage(&t.name, p.length);
                    bytes += buffer.size();
                    targets[p.shard].push(Target {
                        tensor: t.name.clone(),
                        buffer: buffer.clone(),
                        start: p.offset as usize,
                        len: p.length as usize,
                        dst: 0,
                        host: host.then_some((format, p.rows, t.cols())),
                    });
                    blocks.push(GpuBlock { buffer, row_start: p.row_start, rows: p.rows });
                }
            }
            let tensor = if t.shape.len() == 1 {
                GpuTensor::Vector(blocks.pop().map(|b| b.buffer).unwrap_or_else(|| ctx.storage(&t.name, 16)))
            } else {
                GpuTensor::Matrix(GpuMatrix { format, rows: t.rows(), cols: t.cols(), blocks })
            };
            tensors.insert(t.name.clone(), tensor);
        }
        if let Some(e) = scope.pop().await {
            return Err(GpuError::OutOfMemory(format!("{}: allocating {bytes} bytes of weights: {e}", plan.label)));
        }
        ctx.check()?;
        Ok(PackageUpload {
            label: plan.label.clone(),
            written: vec![false; manifest.shards.len()],
            shards: manifest.shards.clone(),
            targets,
            tensors,
            host: HashMap::new(),
            bytes,
        })
    }

    /// Verifies shard `index` and writes its pieces to their buffers.
    pub fn write_shard(&mut self, ctx: &GpuContext, index: usize, bytes: &[u8]) -> Result<(), LoadError> {
        let entry = self.shards.get(index).ok_or_else(|| FormatError::Shard { file: format!("#{index}"), reason: format!("{} has {} shards", self.label, self.shards.len()) })?;
        verify_shard(entry, bytes)?;
        ctx.check()?;
        for t in &self.targets[index] {
            let piece = &bytes[t.start..t.start + t.len];
            ctx.queue.write_buffer(&t.buffer, t.dst, piece);
            if let Some((format, rows, cols)) = t.host {
                let words: Vec<u32> = bytemuck::pod_collect_to_vec(piece);
                self.host.entry(t.tensor.clone()).or_default().extend(PackedMatrix { format, rows, cols, words }.dequantize());
            }
        }
        // Flush the staged copy now, so that staging memory never holds more than one shard.
        ctx.queue.submit([]);
        self.written[index] = true;
        Ok(())
    }

    /// Indices of the shards not yet written.
    pub fn missing(&self) -> Vec<usize> {
        (0..self.written.len()).filter(|i| !self.written[*i]).collect()
    }

    /// The filled weights and the host copies, once every shard is written.
    pub fn finish(self) -> Result<(GpuWeights, HashMap<String, Vec<f32>>), LoadError> {
        if let Some(i) = self.missing().first() {
            return Err(FormatError::Shard { file: self.shards[*i].file.clone(), reason: format!("{}: never written ({} of {} shards missing)", self.label, self.missing().len(), self.shards.len()) }.into());
        }
        Ok((GpuWeights { tensors: self.tensors, bytes: self.bytes }, self.host))
    }
}

/// Whether `group` can be stored as one matrix: every member present as a
/// matrix in one format and width, the whole within one storage binding,
/// and (q8 / q4) every piece's scales starting and ending on a 4-byte word,
/// so that no two pieces write the same word. Returns (format, rows, cols).
pub fn fusable(ctx: &GpuContext, manifest: &Manifest, group: &FusedGroup) -> Option<(QuantFormat, usize, usize)> {
    let members: Vec<_> = group.members.iter().map(|m| manifest.tensors.iter().find(|t| &t.name == m)).collect::<Option<_>>()?;
    let first = members.first()?;
    let (format, cols) = (first.quant()?, first.cols());
    let mut rows = 0;
    for t in &members {
        if t.shape.len() != 2 || t.quant() != Some(format) || t.cols() != cols {
            return None;
        }
        for p in &t.pieces {
            let (start, end) = ((rows + p.row_start) * format.groups(cols), (rows + p.row_start + p.rows) * format.groups(cols));
            if start % 2 != 0 || end % 2 != 0 || p.length != format.bytes(p.rows, cols) {
                return None;
            }
        }
        if t.pieces.iter().map(|p| p.rows).sum::<usize>() != t.rows() {
            return None;
        }
        rows += t.rows();
    }
    (format.bytes(rows, cols) <= ctx.info.max_storage_binding).then_some((format, rows, cols))
}

/// Loading failed: a bad package, a model too large for the device, or the GPU.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error(transparent)]
    DoesNotFit(#[from] Box<DoesNotFit>),
    #[error(transparent)]
    Gpu(#[from] GpuError),
}

impl From<DoesNotFit> for LoadError {
    fn from(e: DoesNotFit) -> Self {
        LoadError::DoesNotFit(Box::new(e))
    }
}

/// Host copies the base keeps: the class embedding is written into activations per image.
pub fn base_host_names() -> HashSet<String> {
    ["clip.class_embedding".to_string()].into_iter().collect()
}

/// Host copies the adapter keeps: visual queries, and `new_gate` (a scalar the attention takes as a uniform).
pub fn adapter_host_names(config: &ModelConfig) -> HashSet<String> {
    let mut names: HashSet<String> = ["visual_query.weight".to_string()].into_iter().collect();
    for i in 0..config.llama.n_layers {
        names.insert(format!("llama.layers.{i}.attention.new_gate"));
    }
    names
}

/// Checks a tokenizer file against the base manifest's entry.
pub fn verify_tokenizer(plan: &BasePlan, bytes: &[u8]) -> Result<(), FormatError> {
    let entry = plan.package.manifest.tokenizer.as_ref().ok_or_else(|| FormatError::Config { file: plan.package.label.clone(), reason: "no tokenizer".into() })?;
    let shard = ShardEntry { file: entry.file.clone(), bytes: entry.bytes, sha256: entry.sha256.clone() };
    verify_shard(&shard, bytes)
}
