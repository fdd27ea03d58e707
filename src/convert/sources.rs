//! Where tensors come from: PyTorch `.pth` archives and safetensors files,
//! and views that present Hugging Face layouts under the Meta / OpenAI names
//! the converter uses.

use std::collections::HashMap;
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
        let tensors = ckpt.tensors();
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

/// One or more `.safetensors` files read into memory.
pub struct SafetensorsSource {
    file: String,
    /// key → (file index, dtype, shape, byte range in that file's data)
    index: HashMap<String, (usize, safetensors::Dtype, Vec<usize>)>,
    files: Vec<Vec<u8>>,
}

impl SafetensorsSource {
    pub fn open(paths: &[std::path::PathBuf]) -> Result<SafetensorsSource, ConvertError> {
        let mut index = HashMap::new();
        let mut files = Vec::new();
        for (i, path) in paths.iter().enumerate() {
            let bytes = std::fs::read(path).map_err(|e| ConvertError::Io(format!("{}: {e}", path.display())))?;
            let st = safetensors::SafeTensors::deserialize(&bytes)
                .map_err(|e| ConvertError::BadInput { file: path.display().to_string(), reason: format!("not a safetensors file: {e}") })?;
            for (name, view) in st.tensors() {
                index.insert(name, (i, view.dtype(), view.shape().to_vec()));
            }
            files.push(bytes);
        }
        let file = paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ");
        Ok(SafetensorsSource { file, index, files })
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
        self.index.get(key).map(|t| t.2.clone()).ok_or_else(|| missing(&self.file, key))
    }
    fn read(&mut self, key: &str) -> Result<Vec<f32>, ConvertError> {
        let (i, _, _) = self.index.get(key).ok_or_else(|| missing(&self.file, key))?;
        let st = safetensors::SafeTensors::deserialize(&self.files[*i]).map_err(|e| ConvertError::Io(e.to_string()))?;
        let view = st.tensor(key).map_err(|e| ConvertError::Io(e.to_string()))?;
        let data = view.data();
        use safetensors::Dtype;
        Ok(match view.dtype() {
            Dtype::F32 => data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect(),
            Dtype::F16 => data.chunks_exact(2).map(|c| half::f16::from_le_bytes(c.try_into().unwrap()).to_f32()).collect(),
            Dtype::BF16 => data.chunks_exact(2).map(|c| half::bf16::from_le_bytes(c.try_into().unwrap()).to_f32()).collect(),
            other => return Err(ConvertError::BadInput { file: self.file.clone(), reason: format!("{key}: unsupported dtype {other:?}") }),
        })
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
