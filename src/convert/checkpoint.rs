//! `llama-adapter convert`: official checkpoints → base and adapter packages.
//!
//! Reads Meta's LLaMA folder (`params.json`, `consolidated.00.pth`,
//! `tokenizer.model`), OpenAI's CLIP state dict (`visual.*` keys, `.pth`),
//! and the official adapter `{model, config}` `.pth` (BIAS, LORA-BIAS and our
//! early-fusion extension). Hyperparameters the files do not carry come from
//! the shapes (query_len, query_layer, v_embed_dim, v_depth, CLIP's width,
//! layers and patch, heads = width/64 unless clip.pth holds our `vision_heads`
//! int), from the adapter's config when it has them, or from flags with the
//! official 7B defaults.

use std::path::{Path, PathBuf};

use serde_json::json;

use super::pickle::{PickleError, Value};
use super::sources::{HfClip, HfLlama, PthSource, SafetensorsSource, TensorSource};
use super::sentencepiece::{SentencePieceError, SentencePieceModel};
use crate::format::package::{read_bounded, sha256_hex, FileEntry, FormatError, Manifest, PackageKind, PackageWriter};
use crate::format::quant::QuantFormat;
use crate::model::config::{AdapterConfig, ChannelOrder, ClipConfig, Fusion, LlamaConfig, ModelConfig};
use crate::model::weights::{adapter_specs, base_specs};

#[derive(Debug, Clone)]
pub struct ConvertOptions {
    /// Storage of the large 2-D weights; norms, biases, gates, prompts stay f32.
    pub quant: QuantFormat,
    pub v_num_heads: Option<usize>,
    pub max_seq_len: usize,
    pub rope_theta: f32,
    pub channel_order: ChannelOrder,
    /// Largest shard file.
    pub shard_bytes: u64,
    /// Largest piece of one tensor (one GPU binding).
    pub piece_bytes: u64,
    /// Print a progress line per tensor to stderr (the CLI; large models take minutes).
    pub progress: bool,
}

impl Default for ConvertOptions {
    fn default() -> Self {
        ConvertOptions {
            quant: QuantFormat::Q4,
            v_num_heads: None,
            max_seq_len: 512,
            rope_theta: 10000.0,
            channel_order: ChannelOrder::Bgr,
            shard_bytes: 64 << 20,
            piece_bytes: 64 << 20,
            progress: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error(transparent)]
    Pickle(#[from] PickleError),
    #[error(transparent)]
    Tokenizer(#[from] SentencePieceError),
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error("{file}: {reason}")]
    BadInput { file: String, reason: String },
    #[error("{file}: unexpected keys (not part of LLaMA-Adapter V2): {keys}")]
    UnknownKeys { file: String, keys: String },
    #[error("{file}: missing keys: {keys}")]
    MissingKeys { file: String, keys: String },
    #[error("{0}")]
    Io(String),
}

fn bad(file: &str, reason: impl Into<String>) -> ConvertError {
    ConvertError::BadInput { file: file.into(), reason: reason.into() }
}

/// What was written, for the report.
pub struct ConvertReport {
    pub config: ModelConfig,
    pub base_dir: PathBuf,
    pub adapter_dir: PathBuf,
    pub base_bytes: u64,
    pub adapter_bytes: u64,
}

/// Converts the three inputs into `out/base` and `out/adapter`.
pub fn convert(llama_dir: &Path, clip: &Path, adapter: &Path, out: &Path, opts: &ConvertOptions) -> Result<ConvertReport, ConvertError> {
    let (base_manifest_bytes, llama_cfg, clip_cfg, base_bytes) = convert_base(llama_dir, clip, &out.join("base"), opts)?;
    let base_sha = sha256_hex(&base_manifest_bytes);
    let (config, adapter_bytes) = if adapter.join("manifest.json").exists() {
        retarget_adapter_package(adapter, &llama_cfg, &clip_cfg, &base_sha, &out.join("adapter"), opts)?
    } else {
        convert_adapter(adapter, &llama_cfg, &clip_cfg, &base_sha, &out.join("adapter"), opts)?
    };
    Ok(ConvertReport { config, base_dir: out.join("base"), adapter_dir: out.join("adapter"), base_bytes, adapter_bytes })
}

fn read_json(path: &Path) -> Result<serde_json::Value, ConvertError> {
    // params.json / config.json are a few hundred bytes; a manifest's bound is generous.
    let text = read_bounded(path, crate::limits::MAX_MANIFEST_BYTES).map_err(|e| ConvertError::Io(format!("{}: {e}", path.display())))?;
    serde_json::from_slice(&text).map_err(|e| bad(&path.display().to_string(), e.to_string()))
}

/// Writes a package folder: its shard files, `extra` files (the tokenizer)
/// and manifest.json. Returns the manifest's bytes and the other files' total.
pub(crate) fn write_package(dir: &Path, manifest: &Manifest, files: &[(String, Vec<u8>)], extra: &[(String, Vec<u8>)]) -> Result<(Vec<u8>, u64), ConvertError> {
    std::fs::create_dir_all(dir).map_err(|e| ConvertError::Io(format!("{}: {e}", dir.display())))?;
    let mut total = 0;
    for (name, bytes) in files.iter().chain(extra) {
        std::fs::write(dir.join(name), bytes).map_err(|e| ConvertError::Io(format!("{}: {e}", dir.join(name).display())))?;
        total += bytes.len() as u64;
    }
    let text = serde_json::to_vec_pretty(manifest).expect("manifest serialises");
    std::fs::write(dir.join("manifest.json"), &text).map_err(|e| ConvertError::Io(e.to_string()))?;
    Ok((text, total))
}

fn convert_base(llama_dir: &Path, clip_path: &Path, out: &Path, opts: &ConvertOptions) -> Result<(Vec<u8>, LlamaConfig, ClipConfig, u64), ConvertError> {
    // --- LLaMA: Meta's folder, or a Hugging Face one ---
    let meta_params = llama_dir.join("params.json");
    let (params, mut llama): (serde_json::Value, Box<dyn TensorSource>) = if meta_params.exists() {
        let params = read_json(&meta_params)?;
        let shards: Vec<PathBuf> = list_files(llama_dir, |n| n.starts_with("consolidated.") && n.ends_with(".pth"))?;
        if shards.len() != 1 {
            return Err(bad(
                &llama_dir.display().to_string(),
                format!("expected exactly one consolidated.*.pth (the 7B layout), found {}; model-parallel checkpoints are not supported", shards.len()),
            ));
        }
        (params, Box::new(PthSource::open(&shards[0])?))
    } else if llama_dir.join("config.json").exists() {
        let hf = read_json(&llama_dir.join("config.json"))?;
        let get = |k: &str| hf.get(k).cloned().unwrap_or(serde_json::Value::Null);
        let heads = get("num_attention_heads").as_u64().unwrap_or(0) as usize;
        if get("num_key_value_heads").as_u64().is_some_and(|kv| kv as usize != heads) {
            return Err(bad("config.json", "grouped-query attention (num_key_value_heads != num_attention_heads) is not LLaMA-1/2-7B and is not supported"));
        }
        let params = json!({
            "dim": get("hidden_size"), "n_layers": get("num_hidden_layers"), "n_heads": heads,
            "norm_eps": get("rms_norm_eps"), "rope_theta": get("rope_theta"),
        });
        let files = list_files(llama_dir, |n| n.ends_with(".safetensors"))?;
        if files.is_empty() {
            return Err(bad(&llama_dir.display().to_string(), "a Hugging Face folder without *.safetensors files"));
        }
        (params, Box::new(HfLlama { inner: SafetensorsSource::open(&files)?, n_heads: heads }))
    } else {
        return Err(bad(&llama_dir.display().to_string(), "neither params.json (Meta) nor config.json (Hugging Face) found"));
    };
    let file = llama.file().to_string();
    let get = |k: &str| params.get(k).and_then(|v| v.as_f64());
    let dim = get("dim").ok_or_else(|| bad("params.json", "no dim"))? as usize;
    let n_layers = get("n_layers").ok_or_else(|| bad("params.json", "no n_layers"))? as usize;
    let n_heads = get("n_heads").ok_or_else(|| bad("params.json", "no n_heads"))? as usize;
    let norm_eps = get("norm_eps").unwrap_or(1e-6) as f32;
    let emb = llama.shape("tok_embeddings.weight")?;
    let w1 = llama.shape("layers.0.feed_forward.w1.weight")?;
    if emb.len() != 2 || emb[1] != dim {
        return Err(bad(&file, format!("tok_embeddings.weight has shape {emb:?}, params.json says dim {dim}")));
    }
    let llama_cfg = LlamaConfig {
        dim,
        n_layers,
        n_heads,
        vocab_size: emb[0],
        ffn_hidden: w1[0],
        norm_eps,
        rope_theta: get("rope_theta").map(|t| t as f32).unwrap_or(opts.rope_theta),
        max_seq_len: opts.max_seq_len,
    };
    // --- CLIP ---
    // `vision_heads` (an int beside the tensors) is our extension for the trained
    // default model; OpenAI's checkpoints imply heads = width / 64.
    let mut vision_heads = None;
    let mut clip: Box<dyn TensorSource> = if clip_path.extension().is_some_and(|e| e == "safetensors") {
        Box::new(HfClip { inner: SafetensorsSource::open(&[clip_path.to_path_buf()])? })
    } else {
        let pth = PthSource::open(clip_path)?;
        vision_heads = match pth.ckpt.root.get("vision_heads") {
            None => None,
            Some(Value::Int(h)) if *h > 0 => Some(*h as usize),
            Some(other) => return Err(bad(&pth.ckpt.path, format!("vision_heads is {other:?}; expected a positive int"))),
        };
        Box::new(pth)
    };
    let clip_file = clip.file().to_string();
    let prefix = if clip.contains("visual.conv1.weight") { "visual." } else { "" };
    let conv = clip.shape(&format!("{prefix}conv1.weight"))?;
    let pos = clip.shape(&format!("{prefix}positional_embedding"))?;
    let proj = clip.shape(&format!("{prefix}proj"))?;
    if conv.len() != 4 || conv[1] != 3 || conv[2] != conv[3] {
        return Err(bad(&clip_file, format!("conv1.weight has shape {conv:?}; expected [width, 3, p, p]")));
    }
    let width = conv[0];
    let grid = ((pos[0] - 1) as f64).sqrt().round() as usize;
    if grid * grid + 1 != pos[0] {
        return Err(bad(&clip_file, format!("positional_embedding has {} rows, not a square grid plus one", pos[0])));
    }
    let layers = (0..).take_while(|i| clip.contains(&format!("{prefix}transformer.resblocks.{i}.attn.in_proj_weight"))).count();
    let heads = vision_heads.unwrap_or((width / 64).max(1));
    if width % heads != 0 {
        let source = if vision_heads.is_some() { "vision_heads" } else { "heads (width / 64)" };
        return Err(bad(&clip_file, format!("{source} {heads} does not divide the width {width}")));
    }
    let clip_cfg = ClipConfig { width, layers, heads, patch: conv[2], image_size: grid * conv[2], embed_dim: proj[1] };

    let mut w = PackageWriter::new(opts.shard_bytes, opts.piece_bytes);
    let specs = base_specs(&llama_cfg, &clip_cfg);
    let format_for = |shape: &[usize], name: &str| -> QuantFormat {
        // Large 2-D weights take the chosen format; embeddings-like tables
        // that are added (positional) and vectors stay f32.
        if shape.len() == 2 && !name.contains("positional_embedding") { opts.quant } else { QuantFormat::F32 }
    };
    let mut used = std::collections::HashSet::new();
    let mut names: Vec<&String> = specs.keys().collect();
    names.sort();
    let total = names.len();
    for (i, name) in names.into_iter().enumerate() {
        if opts.progress {
            eprintln!("[base {}/{total}] {name}", i + 1);
        }
        let (shape, _) = &specs[name];
        let (data, source_key) = if let Some(rest) = name.strip_prefix("clip.") {
            if rest == "proj_t" {
                let key = format!("{prefix}proj");
                let p = clip.read(&key)?; // [width, embed] used as x @ proj
                let (r, c) = (proj[0], proj[1]);
                let mut t = vec![0f32; r * c];
                for i in 0..r {
                    for j in 0..c {
                        t[j * r + i] = p[i * c + j];
                    }
                }
                (t, key)
            } else {
                let key = format!("{prefix}{rest}");
                (clip.read(&key)?, key)
            }
        } else {
            (llama.read(name)?, name.clone())
        };
        let expect: usize = shape.iter().product();
        if data.len() != expect {
            return Err(bad(&file, format!("{source_key} has {} elements, the config implies {shape:?}", data.len())));
        }
        used.insert(source_key);
        w.add(name, shape, format_for(shape, name), &data);
    }
    // Every LLaMA key must be used (rope.freqs is a precomputed table we rebuild).
    let llama_keys = llama.keys();
    let unknown: Vec<&String> = llama_keys.iter().filter(|k| !used.contains(*k) && k.as_str() != "rope.freqs").collect();
    if !unknown.is_empty() {
        return Err(ConvertError::UnknownKeys { file, keys: join_sorted(unknown) });
    }
    // CLIP: unused visual keys are an error; the text tower is skipped.
    let clip_keys = clip.keys();
    let unknown: Vec<&String> = clip_keys.iter().filter(|k| k.starts_with(prefix) && !prefix.is_empty() && !used.contains(*k)).collect();
    if !unknown.is_empty() {
        return Err(ConvertError::UnknownKeys { file: clip_file, keys: join_sorted(unknown) });
    }
    // Tokenizer: from tokenizer.model (exact sentencepiece behaviour), else a
    // Hugging Face tokenizer.json as it is.
    let sp_path = llama_dir.join("tokenizer.model");
    let tokenizer_json = if sp_path.exists() {
        let sp_bytes = read_bounded(&sp_path, crate::limits::MAX_SENTENCEPIECE_BYTES).map_err(|e| ConvertError::Io(format!("{}: {e}", sp_path.display())))?;
        SentencePieceModel::parse(&sp_bytes)?.to_tokenizer_json()?.into_bytes()
    } else {
        let path = llama_dir.join("tokenizer.json");
        if !path.exists() {
            return Err(bad(&llama_dir.display().to_string(), "no tokenizer.model or tokenizer.json"));
        }
        read_bounded(&path, crate::limits::MAX_TOKENIZER_JSON_BYTES).map_err(|e| ConvertError::Io(format!("{}: {e}", path.display())))?
    };
    let (mut manifest, files) = w.finish(PackageKind::Base, json!({"llama": llama_cfg, "clip": clip_cfg}));
    manifest.tokenizer = Some(FileEntry { file: "tokenizer.json".into(), bytes: tokenizer_json.len() as u64, sha256: sha256_hex(&tokenizer_json) });
    manifest.validate_tensors(&specs)?;
    let (text, bytes) = write_package(out, &manifest, &files, &[("tokenizer.json".into(), tokenizer_json)])?;
    Ok((text, llama_cfg, clip_cfg, bytes))
}

fn list_files(dir: &Path, keep: impl Fn(&str) -> bool) -> Result<Vec<PathBuf>, ConvertError> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| ConvertError::Io(format!("{}: {e}", dir.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(&keep))
        .collect();
    files.sort();
    Ok(files)
}

fn join_sorted(mut keys: Vec<&String>) -> String {
    keys.sort();
    let n = keys.len();
    let mut s = keys.iter().take(8).map(|k| k.as_str()).collect::<Vec<_>>().join(", ");
    if n > 8 {
        s.push_str(&format!(" … ({n} in all)"));
    }
    s
}

fn config_value<'a>(root: &'a Value, key: &str) -> Option<&'a Value> {
    root.get("config").and_then(|c| c.get(key))
}

fn config_usize(root: &Value, key: &str) -> Option<usize> {
    match config_value(root, key) {
        Some(Value::Int(i)) if *i >= 0 => Some(*i as usize),
        _ => None,
    }
}

fn config_bool(root: &Value, key: &str) -> Option<bool> {
    match config_value(root, key) {
        Some(Value::Bool(b)) => Some(*b),
        Some(Value::Int(i)) => Some(*i != 0),
        _ => None,
    }
}

/// Storage of an adapter tensor: linear weights of the visual branch take the
/// chosen format; LoRA factors, prompts, norms, biases and gates stay f32.
fn adapter_tensor_format(name: &str, shape: &[usize], quant: QuantFormat) -> QuantFormat {
    let visual_linear = shape.len() == 2
        && (name.starts_with("visual_blocks.") || name.starts_with("clip_proj.") || name.starts_with("visual_proj."))
        && name.ends_with(".weight");
    if visual_linear {
        quant
    } else {
        QuantFormat::F32
    }
}

/// One of our own adapter packages, checked against the new base's config
/// and rewritten for it (visual-branch linears in the chosen format).
fn retarget_adapter_package(
    dir: &Path,
    llama: &LlamaConfig,
    clip: &ClipConfig,
    base_sha256: &str,
    out: &Path,
    opts: &ConvertOptions,
) -> Result<(ModelConfig, u64), ConvertError> {
    use crate::format::package::LoadedPackage;
    let package = LoadedPackage::read_dir(dir, PackageKind::Adapter)?;
    let adapter: AdapterConfig = serde_json::from_value(package.manifest.config["adapter"].clone())
        .map_err(|e| bad(&dir.display().to_string(), format!("adapter config: {e}")))?;
    let config = ModelConfig { llama: llama.clone(), clip: clip.clone(), adapter: adapter.clone() };
    config.validate().map_err(|reason| bad(&dir.display().to_string(), reason))?;
    let specs = adapter_specs(llama, clip, &adapter);
    package.manifest.validate_tensors(&specs)?;
    let mut w = PackageWriter::new(opts.shard_bytes, opts.piece_bytes);
    for t in &package.manifest.tensors {
        let data = package.tensor_f32(&t.name).ok_or_else(|| bad(&dir.display().to_string(), format!("{} is unreadable", t.name)))?;
        w.add(&t.name, &t.shape, adapter_tensor_format(&t.name, &t.shape, opts.quant), &data);
    }
    let (mut manifest, files) = w.finish(PackageKind::Adapter, json!({"adapter": adapter}));
    manifest.base_sha256 = Some(base_sha256.into());
    let (_, bytes) = write_package(out, &manifest, &files, &[])?;
    Ok((config, bytes))
}

fn convert_adapter(
    path: &Path,
    llama: &LlamaConfig,
    clip: &ClipConfig,
    base_sha256: &str,
    out: &Path,
    opts: &ConvertOptions,
) -> Result<(ModelConfig, u64), ConvertError> {
    let mut src = PthSource::open(path)?;
    let file = src.file().to_string();
    if src.ckpt.root.get("model").is_none() {
        return Err(bad(&file, "not an adapter checkpoint: no 'model' entry (expected torch.save({'model': ..., 'config': ...}))"));
    }
    let vq = src.shape("visual_query.weight")?;
    let aq = src.shape("adapter_query.weight")?;
    let fc1 = src.shape("visual_blocks.0.mlp.fc1.weight")?;
    let (query_len, v_embed_dim) = (vq[0], vq[1]);
    if query_len == 0 || aq.len() != 2 || aq[0] % query_len != 0 || aq[1] != llama.dim {
        return Err(bad(&file, format!("adapter_query.weight has shape {aq:?}; expected [query_layer·{query_len}, {}]", llama.dim)));
    }
    let v_depth = (0..).take_while(|i| src.contains(&format!("visual_blocks.{i}.attn.qkv.weight"))).count();
    let root = src.ckpt.root.clone();
    let w_lora = config_bool(&root, "w_lora").unwrap_or_else(|| src.contains("llama.layers.0.attention.lora_wq_l1.weight"));
    let lora_rank = if w_lora { src.shape("llama.layers.0.attention.lora_wq_l1.weight")?[0] } else { config_usize(&root, "lora_rank").unwrap_or(16) };
    let fusion = match config_value(&root, "fusion").and_then(|v| v.as_str()) {
        None | Some("late_add") => Fusion::LateAdd,
        Some("early_prefix") => Fusion::EarlyPrefix,
        Some(other) => return Err(bad(&file, format!("unknown fusion mode {other:?} (expected late_add or early_prefix)"))),
    };
    let adapter = AdapterConfig {
        query_len,
        query_layer: aq[0] / query_len,
        v_embed_dim,
        v_depth,
        v_num_heads: opts.v_num_heads.or(config_usize(&root, "v_num_heads")).unwrap_or(16),
        v_mlp_hidden: fc1[0],
        w_bias: config_bool(&root, "w_bias").unwrap_or(true),
        w_lora,
        lora_rank,
        w_new_gate: w_lora,
        w_scale: config_bool(&root, "w_scale").unwrap_or(false),
        fusion,
        early_layers: if fusion == Fusion::EarlyPrefix { config_usize(&root, "early_layers").unwrap_or(1) } else { 0 },
        // A checkpoint that says how it was trained wins over the flag.
        channel_order: match config_value(&root, "channel_order").and_then(|v| v.as_str()) {
            Some("rgb") => ChannelOrder::Rgb,
            Some("bgr") => ChannelOrder::Bgr,
            _ => opts.channel_order,
        },
    };
    let config = ModelConfig { llama: llama.clone(), clip: clip.clone(), adapter: adapter.clone() };
    config.validate().map_err(|reason| bad(&file, reason))?;
    let specs = adapter_specs(llama, clip, &adapter);

    let src_keys = src.keys();
    let unknown: Vec<&String> = src_keys.iter().filter(|k| !specs.contains_key(*k)).collect();
    if !unknown.is_empty() {
        return Err(ConvertError::UnknownKeys { file, keys: join_sorted(unknown) });
    }
    let missing: Vec<&String> = specs.iter().filter(|(k, (_, optional))| !optional && !src.contains(k)).map(|(k, _)| k).collect();
    if !missing.is_empty() {
        return Err(ConvertError::MissingKeys { file, keys: join_sorted(missing) });
    }
    let mut w = PackageWriter::new(opts.shard_bytes, opts.piece_bytes);
    let mut names: Vec<&String> = specs.keys().filter(|k| src.contains(k)).collect();
    names.sort();
    let total = names.len();
    for (i, name) in names.into_iter().enumerate() {
        if opts.progress {
            eprintln!("[adapter {}/{total}] {name}", i + 1);
        }
        let (shape, _) = &specs[name];
        let data = src.read(name)?;
        if data.len() != shape.iter().product::<usize>() {
            return Err(bad(&file, format!("{name} has shape {:?}, the config implies {shape:?}", src.shape(name)?)));
        }
        w.add(name, shape, adapter_tensor_format(name, shape, opts.quant), &data);
    }
    let (mut manifest, files) = w.finish(PackageKind::Adapter, json!({"adapter": adapter}));
    manifest.base_sha256 = Some(base_sha256.into());
    manifest.validate_tensors(&specs)?;
    let (_, bytes) = write_package(out, &manifest, &files, &[])?;
    Ok((config, bytes))
}

/// Rewrites a converted base + adapter pair with another storage format for
/// the large weights (the `quantize` rule with absmax rounding), into
/// `out/base` and `out/<adapter folder name>`. From q8/q4 to f32 this gives
/// the exact dequantised weights: the reference the quantised engine is
/// tested against.
pub fn restore_format(base_dir: &Path, adapter_dir: &Path, out: &Path, quant: QuantFormat) -> Result<(), ConvertError> {
    let opts = super::quantize::QuantizeOptions { to: quant, ..Default::default() };
    super::quantize::quantize_packages(Some(base_dir), &[adapter_dir.to_path_buf()], out, &opts).map(|_| ())
}
