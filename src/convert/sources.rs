//! Where tensors come from: PyTorch `.pth` archives and safetensors files,
//! and views that present Hugging Face layouts under the Meta / OpenAI names
//! the converter uses.

use std::collections::HashMap;
use std::io::{Read, Seek};
use std::path::Path;

use super::checkpoint::ConvertError;
use super::pickle::{Checkpoint, TensorRef};

/// A set of named tensors read as f32.
pub trait TensorSource {
    fn file(&self) -> &str;
    fn keys(&self) -> Vec<String>;
    fn shape(&self, key: &str) -> Result<Vec<usize>, ConvertError>;
    fn read(&mut self, key: &str) -> Result<Vec<f32>, ConvertError>;
    fn contains(&self, key: &str) -> bool {
        self.shape(key).is_ok()
    }
}

fn missing(file: &str, key: &str) -> ConvertError {
    ConvertError::MissingKeys { file: file.into(), keys: key.into() }
}

/// A `torch.save` archive.
pub struct PthSource {
    pub ckpt: Checkpoint,
    tensors: HashMap<String, TensorRef>,
}

impl PthSource {
    pub fn open(path: &Path) -> Result<PthSource, ConvertError> {
        let ckpt = Checkpoint::open(path)?;
        let tensors = ckpt.tensors()?;
        Ok(PthSource { ckpt, tensors })
    }
}

impl TensorSource for PthSource {
    fn file(&self) -> &str {
        &self.ckpt.path
    }
    fn keys(&self) -> Vec<String> {
        self.tensors.keys().cloned().collect()
    }
    fn shape(&self, key: &str) -> Result<Vec<usize>, ConvertError> {
        self.tensors.get(key).map(|t| t.shape.clone()).ok_or_else(|| missing(self.file(), key))
    }
    fn read(&mut self, key: &str) -> Result<Vec<f32>, ConvertError> {
        let t = self.tensors.get(key).cloned().ok_or_else(|| missing(&self.ckpt.path, key))?;
        Ok(self.ckpt.read_f32(&t)?)
    }
}

/// One tensor of a safetensors header: dtype name, shape, and its byte range
/// in the file (absolute offsets, checked against the file's length).
#[derive(Debug, Clone, PartialEq)]
pub struct SafetensorsEntry {
    pub dtype: String,
    pub shape: Vec<usize>,
    pub start: u64,
    pub end: u64,
}

/// Bytes per element of the safetensors dtypes we know (`None`: sub-byte or unknown).
fn safetensors_dtype_size(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" | "F8_E8M0" => 1,
        "I16" | "U16" | "F16" | "BF16" => 2,
        "I32" | "U32" | "F32" => 4,
        "I64" | "U64" | "F64" => 8,
        _ => return None,
    })
}

/// Parses and checks a safetensors header: `bytes` holds at least the
/// file's first 8 + header-length bytes, `file_len` is the whole file's
/// length. The header length, the number of tensors, names, ranks, element
/// counts ([`crate::limits`]) and every byte range (inside the data, and as
/// long as shape × dtype says) are checked with checked arithmetic; nothing
/// is allocated from a size before it is checked.
pub fn parse_safetensors_header(file: &str, bytes: &[u8], file_len: u64) -> Result<(u64, HashMap<String, SafetensorsEntry>), ConvertError> {
    use crate::limits::{MAX_NAME_BYTES, MAX_SAFETENSORS_HEADER_BYTES, MAX_TENSORS, MAX_TENSOR_ELEMENTS, MAX_TENSOR_RANK};
    let bad = |field: &str, reason: String| ConvertError::BadInput { file: file.into(), reason: format!("not a valid safetensors file: {field}: {reason}") };
    let n = u64::from_le_bytes(bytes.get(..8).ok_or_else(|| bad("header length", format!("{} bytes, less than the 8-byte length", bytes.len())))?.try_into().unwrap());
    if n > MAX_SAFETENSORS_HEADER_BYTES {
        return Err(bad("header length", format!("{n} bytes; at most {MAX_SAFETENSORS_HEADER_BYTES}")));
    }
    let data_start = 8 + n;
    if data_start > file_len {
        return Err(bad("header length", format!("{n} bytes, past the end of the {file_len}-byte file")));
    }
    let header = bytes.get(8..data_start as usize).ok_or_else(|| bad("header length", format!("{n} bytes, past the end of the data given")))?;
    #[derive(serde::Deserialize)]
    struct Info {
        dtype: String,
        shape: Vec<u64>,
        data_offsets: (u64, u64),
    }
    let map: HashMap<String, serde_json::Value> = serde_json::from_slice(header).map_err(|e| bad("header", e.to_string()))?;
    if map.len() > MAX_TENSORS + 1 {
        return Err(bad("header", format!("{} tensors; at most {MAX_TENSORS}", map.len())));
    }
    let data_len = file_len - data_start;
    let mut out = HashMap::new();
    for (name, value) in map {
        if name == "__metadata__" {
            continue;
        }
        let short: String = name.chars().take(64).collect();
        if name.len() > MAX_NAME_BYTES {
            return Err(bad("tensor name", format!("{short}...: over {MAX_NAME_BYTES} bytes")));
        }
        let info: Info = serde_json::from_value(value).map_err(|e| bad(&short, e.to_string()))?;
        if info.shape.len() > MAX_TENSOR_RANK {
            return Err(bad(&short, format!("\"shape\" has {} dimensions; at most {MAX_TENSOR_RANK}", info.shape.len())));
        }
        let count = info.shape.iter().try_fold(1u64, |c, &d| c.checked_mul(d).filter(|c| *c <= MAX_TENSOR_ELEMENTS));
        let count = count.ok_or_else(|| bad(&short, format!("\"shape\" {:?} is over {MAX_TENSOR_ELEMENTS} elements", info.shape)))?;
        let (begin, end) = info.data_offsets;
        if begin > end || end > data_len {
            return Err(bad(&short, format!("\"data_offsets\" [{begin}, {end}] lie outside the {data_len} bytes of data")));
        }
        if let Some(size) = safetensors_dtype_size(&info.dtype) {
            if end - begin != count * size {
                return Err(bad(&short, format!("\"data_offsets\" give {} bytes, but {} elements of {} take {}", end - begin, count, info.dtype, count * size)));
            }
        }
        let shape = info.shape.iter().map(|d| *d as usize).collect(); // each at most MAX_TENSOR_ELEMENTS
        out.insert(name, SafetensorsEntry { dtype: info.dtype, shape, start: data_start + begin, end: data_start + end });
    }
    Ok((data_start, out))
}

/// Reads one tensor's bytes (its range was checked by [`parse_safetensors_header`]) as f32.
pub fn read_safetensors_f32(file: &str, key: &str, reader: &mut (impl Read + Seek), entry: &SafetensorsEntry) -> Result<Vec<f32>, ConvertError> {
    let len = entry.end - entry.start;
    let convert: fn(&[u8]) -> Vec<f32> = match entry.dtype.as_str() {
        "F32" => |d| d.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect(),
        "F16" => |d| d.chunks_exact(2).map(|c| half::f16::from_le_bytes(c.try_into().unwrap()).to_f32()).collect(),
        "BF16" => |d| d.chunks_exact(2).map(|c| half::bf16::from_le_bytes(c.try_into().unwrap()).to_f32()).collect(),
        other => return Err(ConvertError::BadInput { file: file.into(), reason: format!("{key}: unsupported dtype {other}") }),
    };
    let io = |e: std::io::Error| ConvertError::Io(format!("{file}: {key}: {e}"));
    reader.seek(std::io::SeekFrom::Start(entry.start)).map_err(io)?;
    let mut data = Vec::new();
    (&mut *reader).take(len).read_to_end(&mut data).map_err(io)?;
    if data.len() as u64 != len {
        return Err(ConvertError::BadInput { file: file.into(), reason: format!("{key}: the file ends {} bytes into a {len}-byte tensor", data.len()) });
    }
    Ok(convert(&data))
}

/// One or more `.safetensors` files: the headers are read when opened, each
/// tensor's bytes when it is read (a 10 GB file is never held whole).
pub struct SafetensorsSource {
    file: String,
    /// key → (file index, entry)
    index: HashMap<String, (usize, SafetensorsEntry)>,
    paths: Vec<std::path::PathBuf>,
}

impl SafetensorsSource {
    pub fn open(paths: &[std::path::PathBuf]) -> Result<SafetensorsSource, ConvertError> {
        let mut index = HashMap::new();
        for (i, path) in paths.iter().enumerate() {
            let name = path.display().to_string();
            let io = |e: std::io::Error| ConvertError::Io(format!("{name}: {e}"));
            let mut f = std::fs::File::open(path).map_err(io)?;
            let file_len = f.metadata().map_err(io)?.len();
            let mut len = [0u8; 8];
            f.read_exact(&mut len).map_err(|e| ConvertError::BadInput { file: name.clone(), reason: format!("not a safetensors file: {e}") })?;
            let n = u64::from_le_bytes(len).min(crate::limits::MAX_SAFETENSORS_HEADER_BYTES + 1).min(file_len);
            let mut head = len.to_vec();
            (&mut f).take(n).read_to_end(&mut head).map_err(io)?;
            let (_, entries) = parse_safetensors_header(&name, &head, file_len)?;
            for (key, entry) in entries {
                index.insert(key, (i, entry));
            }
            if index.len() > crate::limits::MAX_TENSORS {
                return Err(ConvertError::BadInput { file: name, reason: format!("more than {} tensors", crate::limits::MAX_TENSORS) });
            }
        }
        let file = paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ");
        Ok(SafetensorsSource { file, index, paths: paths.to_vec() })
    }
}

impl TensorSource for SafetensorsSource {
    fn file(&self) -> &str {
        &self.file
    }
    fn keys(&self) -> Vec<String> {
        self.index.keys().cloned().collect()
    }
    fn shape(&self, key: &str) -> Result<Vec<usize>, ConvertError> {
        self.index.get(key).map(|t| t.1.shape.clone()).ok_or_else(|| missing(&self.file, key))
    }
    fn read(&mut self, key: &str) -> Result<Vec<f32>, ConvertError> {
        let (i, entry) = self.index.get(key).ok_or_else(|| missing(&self.file, key))?;
        let path = &self.paths[*i];
        let name = path.display().to_string();
        let mut f = std::io::BufReader::new(std::fs::File::open(path).map_err(|e| ConvertError::Io(format!("{name}: {e}")))?);
        read_safetensors_f32(&name, key, &mut f, entry)
    }
}

/// A Hugging Face `LlamaForCausalLM` checkpoint seen under Meta's key names.
/// HF stores q/k rows permuted for its rotate-half RoPE; reading `wq`/`wk`
/// undoes that, so RoPE stays in the interleaved layout of the spec.
pub struct HfLlama {
    pub inner: SafetensorsSource,
    pub n_heads: usize,
}

impl HfLlama {
    fn hf_name(meta: &str) -> Option<String> {
        let fixed = match meta {
            "tok_embeddings.weight" => Some("model.embed_tokens.weight"),
            "norm.weight" => Some("model.norm.weight"),
            "output.weight" => Some("lm_head.weight"),
            _ => None,
        };
        if let Some(f) = fixed {
            return Some(f.into());
        }
        let rest = meta.strip_prefix("layers.")?;
        let (layer, name) = rest.split_once('.')?;
        let hf = match name {
            "attention.wq.weight" => "self_attn.q_proj.weight",
            "attention.wk.weight" => "self_attn.k_proj.weight",
            "attention.wv.weight" => "self_attn.v_proj.weight",
            "attention.wo.weight" => "self_attn.o_proj.weight",
            "feed_forward.w1.weight" => "mlp.gate_proj.weight",
            "feed_forward.w2.weight" => "mlp.down_proj.weight",
            "feed_forward.w3.weight" => "mlp.up_proj.weight",
            "attention_norm.weight" => "input_layernorm.weight",
            "ffn_norm.weight" => "post_attention_layernorm.weight",
            _ => return None,
        };
        Some(format!("model.layers.{layer}.{hf}"))
    }

    fn meta_name(hf: &str) -> Option<String> {
        let fixed = match hf {
            "model.embed_tokens.weight" => Some("tok_embeddings.weight"),
            "model.norm.weight" => Some("norm.weight"),
            "lm_head.weight" => Some("output.weight"),
            _ => None,
        };
        if let Some(f) = fixed {
            return Some(f.into());
        }
        let rest = hf.strip_prefix("model.layers.")?;
        let (layer, name) = rest.split_once('.')?;
        let meta = match name {
            "self_attn.q_proj.weight" => "attention.wq.weight",
            "self_attn.k_proj.weight" => "attention.wk.weight",
            "self_attn.v_proj.weight" => "attention.wv.weight",
            "self_attn.o_proj.weight" => "attention.wo.weight",
            "mlp.gate_proj.weight" => "feed_forward.w1.weight",
            "mlp.down_proj.weight" => "feed_forward.w2.weight",
            "mlp.up_proj.weight" => "feed_forward.w3.weight",
            "input_layernorm.weight" => "attention_norm.weight",
            "post_attention_layernorm.weight" => "ffn_norm.weight",
            _ => return None,
        };
        Some(format!("layers.{layer}.{meta}"))
    }
}

impl TensorSource for HfLlama {
    fn file(&self) -> &str {
        self.inner.file()
    }
    fn keys(&self) -> Vec<String> {
        // Keys HF adds that carry no weights of their own are skipped.
        self.inner
            .keys()
            .into_iter()
            .filter(|k| !k.ends_with("rotary_emb.inv_freq"))
            .map(|k| Self::meta_name(&k).unwrap_or(k))
            .collect()
    }
    fn shape(&self, key: &str) -> Result<Vec<usize>, ConvertError> {
        let hf = Self::hf_name(key).ok_or_else(|| missing(self.file(), key))?;
        self.inner.shape(&hf)
    }
    fn read(&mut self, key: &str) -> Result<Vec<f32>, ConvertError> {
        let hf = Self::hf_name(key).ok_or_else(|| missing(self.file(), key))?;
        let shape = self.inner.shape(&hf)?;
        let data = self.inner.read(&hf)?;
        if key.ends_with("attention.wq.weight") || key.ends_with("attention.wk.weight") {
            // HF row r = h·d + half·(d/2) + i holds Meta row h·d + 2i + half.
            let (rows, cols) = (shape[0], shape[1]);
            let d = rows / self.n_heads;
            let mut out = vec![0f32; data.len()];
            for h in 0..self.n_heads {
                for half in 0..2 {
                    for i in 0..d / 2 {
                        let src = h * d + half * (d / 2) + i;
                        let dst = h * d + 2 * i + half;
                        out[dst * cols..(dst + 1) * cols].copy_from_slice(&data[src * cols..(src + 1) * cols]);
                    }
                }
            }
            return Ok(out);
        }
        Ok(data)
    }
}

/// A Hugging Face CLIP vision checkpoint seen under OpenAI's names (without
/// the `visual.` prefix): q/k/v are joined into `in_proj`, and `proj` is
/// `visual_projection.weight` transposed.
pub struct HfClip {
    pub inner: SafetensorsSource,
}

impl HfClip {
    fn map(name: &str) -> Option<String> {
        let fixed = match name {
            "conv1.weight" => Some("vision_model.embeddings.patch_embedding.weight"),
            "class_embedding" => Some("vision_model.embeddings.class_embedding"),
            "positional_embedding" => Some("vision_model.embeddings.position_embedding.weight"),
            "ln_pre.weight" => Some("vision_model.pre_layrnorm.weight"),
            "ln_pre.bias" => Some("vision_model.pre_layrnorm.bias"),
            "ln_post.weight" => Some("vision_model.post_layernorm.weight"),
            "ln_post.bias" => Some("vision_model.post_layernorm.bias"),
            "proj" => Some("visual_projection.weight"),
            _ => None,
        };
        if let Some(f) = fixed {
            return Some(f.into());
        }
        let rest = name.strip_prefix("transformer.resblocks.")?;
        let (layer, n) = rest.split_once('.')?;
        let hf = match n {
            "attn.in_proj_weight" => "self_attn.q_proj.weight",
            "attn.in_proj_bias" => "self_attn.q_proj.bias",
            "attn.out_proj.weight" => "self_attn.out_proj.weight",
            "attn.out_proj.bias" => "self_attn.out_proj.bias",
            "ln_1.weight" => "layer_norm1.weight",
            "ln_1.bias" => "layer_norm1.bias",
            "ln_2.weight" => "layer_norm2.weight",
            "ln_2.bias" => "layer_norm2.bias",
            "mlp.c_fc.weight" => "mlp.fc1.weight",
            "mlp.c_fc.bias" => "mlp.fc1.bias",
            "mlp.c_proj.weight" => "mlp.fc2.weight",
            "mlp.c_proj.bias" => "mlp.fc2.bias",
            _ => return None,
        };
        Some(format!("vision_model.encoder.layers.{layer}.{hf}"))
    }
}

impl TensorSource for HfClip {
    fn file(&self) -> &str {
        self.inner.file()
    }
    fn keys(&self) -> Vec<String> {
        // Only the vision tower matters; the text tower (if any) is skipped.
        let mut keys: Vec<String> = ["conv1.weight", "class_embedding", "positional_embedding", "ln_pre.weight", "ln_pre.bias", "ln_post.weight", "ln_post.bias", "proj"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut i = 0;
        while self.inner.contains(&format!("vision_model.encoder.layers.{i}.self_attn.q_proj.weight")) {
            for n in ["attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight", "attn.out_proj.bias", "ln_1.weight", "ln_1.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight", "mlp.c_proj.bias"] {
                keys.push(format!("transformer.resblocks.{i}.{n}"));
            }
            i += 1;
        }
        keys
    }
    fn shape(&self, key: &str) -> Result<Vec<usize>, ConvertError> {
        let hf = Self::map(key).ok_or_else(|| missing(self.file(), key))?;
        let s = self.inner.shape(&hf)?;
        Ok(match key {
            k if k.ends_with("in_proj_weight") => vec![3 * s[0], s[1]],
            k if k.ends_with("in_proj_bias") => vec![3 * s[0]],
            "proj" => vec![s[1], s[0]],
            _ => s,
        })
    }
    fn read(&mut self, key: &str) -> Result<Vec<f32>, ConvertError> {
        let hf = Self::map(key).ok_or_else(|| missing(self.file(), key))?;
        if key.ends_with("in_proj_weight") || key.ends_with("in_proj_bias") {
            let mut out = self.inner.read(&hf)?;
            out.extend(self.inner.read(&hf.replace("q_proj", "k_proj"))?);
            out.extend(self.inner.read(&hf.replace("q_proj", "v_proj"))?);
            return Ok(out);
        }
        let data = self.inner.read(&hf)?;
        if key == "proj" {
            let s = self.inner.shape(&hf)?; // [embed, width]
            let (r, c) = (s[0], s[1]);
            let mut t = vec![0f32; r * c];
            for i in 0..r {
                for j in 0..c {
                    t[j * r + i] = data[i * c + j];
                }
            }
            return Ok(t);
        }
        Ok(data)
    }
}
