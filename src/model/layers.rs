//! The decoder's weights, resolved once per base + adapter pair into typed
//! per-layer structs, so that the forward pass names fields, not tensor
//! names. Tensor names come from [`names`], which the package specs
//! (`weights.rs`) use too.

use crate::kernels::matmul::GpuMatrix;

use super::config::{Fusion, ModelConfig};
use super::weights::{GpuWeights, BIASED};
use super::{Linear, ModelError};

/// The tensor names of the decoder, in one place.
pub mod names {
    pub const TOK_EMBEDDINGS: &str = "tok_embeddings.weight";
    pub const OUTPUT: &str = "output.weight";
    /// A base decoder linear's weight: `layers.{l}.attention.wq.weight`.
    pub fn base_linear(l: usize, linear: &str) -> String {
        format!("layers.{l}.{linear}.weight")
    }
    /// A per-layer adapter tensor: `llama.layers.{l}.{what}`.
    pub fn adapter_layer(l: usize, what: &str) -> String {
        format!("llama.layers.{l}.{what}")
    }
    /// A LoRA half (`l1` or `l2`) of a decoder linear: `llama.layers.{l}.attention.lora_wq_l1.weight`.
    pub fn lora(l: usize, linear: &str, half: &str) -> String {
        let short = linear.rsplit('.').next().unwrap_or(linear);
        let group = linear.split('.').next().unwrap_or(linear);
        format!("llama.layers.{l}.{group}.lora_{short}_{half}.weight")
    }
}

/// One decoder linear with its adapter parameters (bias, scale, LoRA).
pub struct LinearWeights {
    pub weight: GpuMatrix,
    pub bias: Option<wgpu::Buffer>,
    pub scale: Option<wgpu::Buffer>,
    pub lora: Option<(GpuMatrix, GpuMatrix)>,
}

impl LinearWeights {
    pub fn view(&self) -> Linear<'_> {
        Linear { weight: &self.weight, bias: self.bias.as_ref(), scale: self.scale.as_ref(), lora: self.lora.as_ref().map(|(a, b)| (a, b)) }
    }

    /// The base weight with the adapter's scale only: what the prefix keys and
    /// values go through (spec §2.3 step 5: no bias, no LoRA).
    pub fn scaled_only(&self) -> Linear<'_> {
        Linear { weight: &self.weight, bias: None, scale: self.scale.as_ref(), lora: None }
    }
}

pub struct DecoderLayer {
    pub attention_norm: wgpu::Buffer,
    pub ffn_norm: wgpu::Buffer,
    pub wq: LinearWeights,
    pub wk: LinearWeights,
    pub wv: LinearWeights,
    pub wo: LinearWeights,
    pub w1: LinearWeights,
    pub w2: LinearWeights,
    pub w3: LinearWeights,
    /// The gate of this layer's prefix (raw, per head; the kernel applies
    /// tanh): `attention.gate` for the late layers' prompts,
    /// `attention.visual_gate` for early fusion's visual prefix.
    pub prefix_gate: Option<wgpu::Buffer>,
    /// LoRA checkpoints' extra scalar gate (1.0 without).
    pub new_gate: f32,
}

pub struct DecoderWeights {
    pub tok_embeddings: GpuMatrix,
    pub output: GpuMatrix,
    pub norm: wgpu::Buffer,
    pub layers: Vec<DecoderLayer>,
}

impl DecoderWeights {
    /// Looks every decoder tensor up once (the loader has checked that the
    /// required ones exist; a missing one is still a typed error here).
    pub fn resolve(config: &ModelConfig, base: &GpuWeights, adapter: &GpuWeights, new_gates: &[f32]) -> Result<DecoderWeights, ModelError> {
        let a = &config.adapter;
        let n = config.llama.n_layers;
        let first_late = n - a.query_layer;
        let linear = |l: usize, name: &str| -> Result<LinearWeights, ModelError> {
            let lora = if a.w_lora {
                Some((adapter.matrix(&names::lora(l, name, "l1"))?.clone(), adapter.matrix(&names::lora(l, name, "l2"))?.clone()))
            } else {
                None
            };
            let bias = if a.w_bias && BIASED.contains(&name) { Some(adapter.vector(&names::adapter_layer(l, &format!("{name}.bias")))?.clone()) } else { None };
            Ok(LinearWeights {
                weight: base.matrix(&names::base_linear(l, name))?.clone(),
                bias,
                scale: adapter.optional_vector(&names::adapter_layer(l, &format!("{name}.scale"))).cloned(),
                lora,
            })
        };
        let mut layers = Vec::with_capacity(n);
        for l in 0..n {
            let prefix_gate = if l >= first_late {
                Some(adapter.vector(&names::adapter_layer(l, "attention.gate"))?.clone())
            } else if a.fusion == Fusion::EarlyPrefix && l < a.early_layers {
                Some(adapter.vector(&names::adapter_layer(l, "attention.visual_gate"))?.clone())
            } else {
                None
            };
            layers.push(DecoderLayer {
                attention_norm: adapter.vector(&names::adapter_layer(l, "attention_norm.weight"))?.clone(),
                ffn_norm: adapter.vector(&names::adapter_layer(l, "ffn_norm.weight"))?.clone(),
                wq: linear(l, "attention.wq")?,
                wk: linear(l, "attention.wk")?,
                wv: linear(l, "attention.wv")?,
                wo: linear(l, "attention.wo")?,
                w1: linear(l, "feed_forward.w1")?,
                w2: linear(l, "feed_forward.w2")?,
                w3: linear(l, "feed_forward.w3")?,
                prefix_gate,
                new_gate: new_gates.get(l).copied().unwrap_or(1.0),
            });
        }
        Ok(DecoderWeights {
            tok_embeddings: base.matrix(names::TOK_EMBEDDINGS)?.clone(),
            output: base.matrix(names::OUTPUT)?.clone(),
            norm: adapter.vector("llama.norm.weight")?.clone(),
            layers,
        })
    }
}
