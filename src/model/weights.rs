//! Tensor names and shapes of the two packages, and their upload to the GPU.
//!
//! Names follow the official checkpoints: the base holds Meta's LLaMA keys
//! (no prefix) and CLIP's visual tower under `clip.` (OpenAI's `visual.`
//! stripped; `conv1` flattened to `[width, 3·p·p]`, `proj` stored transposed
//! as `proj_t` so that it is a `[out, in]` linear weight). The adapter holds
//! the official adapter keys (`llama.`-prefixed for decoder parameters); gates
//! are stored as `[n_heads]`, `new_gate` as `[1]`.

use std::collections::HashMap;

use crate::format::package::{FormatError, LoadedPackage};
use crate::format::quant::{PackedMatrix, QuantFormat};
use crate::gpu::GpuError;
use crate::kernels::matmul::GpuMatrix;

use super::config::{AdapterConfig, ClipConfig, Fusion, LlamaConfig, ModelConfig};
use super::layers::names;

/// name → (shape, optional)
pub type TensorSpecs = HashMap<String, (Vec<usize>, bool)>;

pub fn base_specs(llama: &LlamaConfig, clip: &ClipConfig) -> TensorSpecs {
    let mut s = TensorSpecs::new();
    let mut add = |name: String, shape: Vec<usize>| {
        s.insert(name, (shape, false));
    };
    let (d, f, v) = (llama.dim, llama.ffn_hidden, llama.vocab_size);
    add(names::TOK_EMBEDDINGS.into(), vec![v, d]);
    add(names::OUTPUT.into(), vec![v, d]);
    add("norm.weight".into(), vec![d]);
    for i in 0..llama.n_layers {
        for w in ["wq", "wk", "wv", "wo"] {
            add(names::base_linear(i, &format!("attention.{w}")), vec![d, d]);
        }
        add(names::base_linear(i, "feed_forward.w1"), vec![f, d]);
        add(names::base_linear(i, "feed_forward.w2"), vec![d, f]);
        add(names::base_linear(i, "feed_forward.w3"), vec![f, d]);
        add(format!("layers.{i}.attention_norm.weight"), vec![d]);
        add(format!("layers.{i}.ffn_norm.weight"), vec![d]);
    }
    let w = clip.width;
    add("clip.conv1.weight".into(), vec![w, 3 * clip.patch * clip.patch]);
    add("clip.class_embedding".into(), vec![w]);
    add("clip.positional_embedding".into(), vec![clip.tokens(), w]);
    for n in ["ln_pre", "ln_post"] {
        add(format!("clip.{n}.weight"), vec![w]);
        add(format!("clip.{n}.bias"), vec![w]);
    }
    add("clip.proj_t".into(), vec![clip.embed_dim, w]);
    for i in 0..clip.layers {
        let p = format!("clip.transformer.resblocks.{i}");
        add(format!("{p}.attn.in_proj_weight"), vec![3 * w, w]);
        add(format!("{p}.attn.in_proj_bias"), vec![3 * w]);
        add(format!("{p}.attn.out_proj.weight"), vec![w, w]);
        add(format!("{p}.attn.out_proj.bias"), vec![w]);
        for n in ["ln_1", "ln_2"] {
            add(format!("{p}.{n}.weight"), vec![w]);
            add(format!("{p}.{n}.bias"), vec![w]);
        }
        add(format!("{p}.mlp.c_fc.weight"), vec![4 * w, w]);
        add(format!("{p}.mlp.c_fc.bias"), vec![4 * w]);
        add(format!("{p}.mlp.c_proj.weight"), vec![w, 4 * w]);
        add(format!("{p}.mlp.c_proj.bias"), vec![w]);
    }
    s
}

/// The decoder linears that may carry bias / scale / LoRA: (name, out, in).
pub fn decoder_linears(llama: &LlamaConfig) -> [(&'static str, usize, usize); 7] {
    let (d, f) = (llama.dim, llama.ffn_hidden);
    [
        ("attention.wq", d, d),
        ("attention.wk", d, d),
        ("attention.wv", d, d),
        ("attention.wo", d, d),
        ("feed_forward.w1", f, d),
        ("feed_forward.w2", d, f),
        ("feed_forward.w3", f, d),
    ]
}

/// Linears that carry a bias when `w_bias` (MM7B: not wk, wv).
pub const BIASED: [&str; 5] = ["attention.wq", "attention.wo", "feed_forward.w1", "feed_forward.w2", "feed_forward.w3"];

pub fn adapter_specs(llama: &LlamaConfig, clip: &ClipConfig, a: &AdapterConfig) -> TensorSpecs {
    let mut s = TensorSpecs::new();
    let mut add = |name: String, shape: Vec<usize>, optional: bool| {
        s.insert(name, (shape, optional));
    };
    let (d, h, v) = (llama.dim, llama.n_heads, a.v_embed_dim);
    add("clip_proj.weight".into(), vec![v, clip.embed_dim], false);
    add("clip_proj.bias".into(), vec![v], false);
    for n in ["clip_proj_norm", "visual_proj_norm"] {
        let width = if n == "clip_proj_norm" { v } else { d };
        add(format!("{n}.weight"), vec![width], false);
        add(format!("{n}.bias"), vec![width], false);
    }
    add("visual_query.weight".into(), vec![a.query_len, v], false);
    add("visual_proj.weight".into(), vec![d, v], false);
    add("visual_proj.bias".into(), vec![d], false);
    add("adapter_query.weight".into(), vec![a.query_layer * a.query_len, d], false);
    for i in 0..a.v_depth {
        let p = format!("visual_blocks.{i}");
        for n in ["norm1", "norm2"] {
            add(format!("{p}.{n}.weight"), vec![v], false);
            add(format!("{p}.{n}.bias"), vec![v], false);
        }
        add(format!("{p}.attn.qkv.weight"), vec![3 * v, v], false);
        add(format!("{p}.attn.qkv.bias"), vec![3 * v], false);
        add(format!("{p}.attn.proj.weight"), vec![v, v], false);
        add(format!("{p}.attn.proj.bias"), vec![v], false);
        add(format!("{p}.mlp.fc1.weight"), vec![a.v_mlp_hidden, v], false);
        add(format!("{p}.mlp.fc1.bias"), vec![a.v_mlp_hidden], false);
        add(format!("{p}.mlp.fc2.weight"), vec![v, a.v_mlp_hidden], false);
        add(format!("{p}.mlp.fc2.bias"), vec![v], false);
    }
    add("llama.norm.weight".into(), vec![d], false);
    for i in 0..llama.n_layers {
        let p = format!("llama.layers.{i}");
        // Gates exist for every layer in the official files (layer 0's is unused).
        add(format!("{p}.attention.gate"), vec![h], true);
        add(format!("{p}.attention_norm.weight"), vec![d], false);
        add(format!("{p}.ffn_norm.weight"), vec![d], false);
        if a.fusion == Fusion::EarlyPrefix && i < a.early_layers {
            add(format!("{p}.attention.visual_gate"), vec![h], false);
        }
        for (name, out, inp) in decoder_linears(llama) {
            if a.w_bias && BIASED.contains(&name) {
                add(format!("{p}.{name}.bias"), vec![out], false);
            }
            if a.w_scale {
                add(format!("{p}.{name}.scale"), vec![out], true);
            }
            if a.w_lora {
                add(names::lora(i, name, "l1"), vec![a.lora_rank, inp], false);
                add(names::lora(i, name, "l2"), vec![out, a.lora_rank], false);
            }
        }
        if a.w_new_gate {
            add(format!("{p}.attention.new_gate"), vec![1], false);
        }
    }
    s
}

/// Gates of the layers that use one are required; checks that beyond the
/// per-tensor table.
pub fn required_gate_layers(config: &ModelConfig) -> Vec<usize> {
    let n = config.llama.n_layers;
    (n - config.adapter.query_layer..n).collect()
}

/// A tensor on the GPU.
pub enum GpuTensor {
    Matrix(GpuMatrix),
    Vector(wgpu::Buffer),
}

/// All tensors of a package on the GPU (filled by [`super::loader::PackageUpload`]).
pub struct GpuWeights {
    pub tensors: HashMap<String, GpuTensor>,
    pub bytes: u64,
}

impl GpuWeights {
    pub fn matrix(&self, name: &str) -> Result<&GpuMatrix, ModelLoadError> {
        match self.tensors.get(name) {
            Some(GpuTensor::Matrix(m)) => Ok(m),
            Some(GpuTensor::Vector(_)) => Err(FormatError::Tensor { name: name.into(), reason: "expected a matrix".into() }.into()),
            None => Err(FormatError::MissingTensor { name: name.into() }.into()),
        }
    }

    pub fn vector(&self, name: &str) -> Result<&wgpu::Buffer, ModelLoadError> {
        match self.tensors.get(name) {
            Some(GpuTensor::Vector(b)) => Ok(b),
            Some(GpuTensor::Matrix(_)) => Err(FormatError::Tensor { name: name.into(), reason: "expected a vector".into() }.into()),
            None => Err(FormatError::MissingTensor { name: name.into() }.into()),
        }
    }

    /// The plain f32 data of a vector, or of a matrix stored as one f32 block.
    pub fn f32_buffer(&self, name: &str) -> Result<&wgpu::Buffer, ModelLoadError> {
        match self.tensors.get(name) {
            Some(GpuTensor::Vector(b)) => Ok(b),
            Some(GpuTensor::Matrix(m)) if m.format == QuantFormat::F32 && m.blocks.len() == 1 => Ok(&m.blocks[0].buffer),
            Some(_) => Err(FormatError::Tensor { name: name.into(), reason: "expected f32 data in one piece".into() }.into()),
            None => Err(FormatError::MissingTensor { name: name.into() }.into()),
        }
    }

    pub fn optional_vector(&self, name: &str) -> Option<&wgpu::Buffer> {
        match self.tensors.get(name) {
            Some(GpuTensor::Vector(b)) => Some(b),
            _ => None,
        }
    }
}

/// Loading a model: a bad package, or the GPU refusing.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ModelLoadError {
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error(transparent)]
    Gpu(#[from] GpuError),
}

/// Packs a dequantised CPU copy of a package tensor (for host-side use).
pub fn cpu_matrix(package: &LoadedPackage, name: &str) -> Result<PackedMatrix, FormatError> {
    let t = package.tensor(name).ok_or_else(|| FormatError::MissingTensor { name: name.into() })?;
    let data = package.tensor_f32(name).ok_or_else(|| FormatError::Tensor { name: name.into(), reason: "unreadable".into() })?;
    Ok(PackedMatrix::pack(QuantFormat::F32, t.rows(), t.cols(), &data))
}
