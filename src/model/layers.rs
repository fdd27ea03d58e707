//! The decoder's weights, resolved once per base + adapter pair into typed
//! per-layer structs, so that the forward pass names fields, not tensor
//! names. Tensor names come from [`names`], which the package specs
//! (`weights.rs`) use too.

use crate::kernels::matmul::GpuMatrix;

use super::config::{Fusion, ModelConfig};
use crate::gpu::GpuContext;

use super::weights::{GpuTensor, GpuWeights, BIASED};
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
    /// Decoder linears stored as one matrix on the GPU: `layers.{l}.attention.wqkv`
    /// ([wq; wk; wv]) and `layers.{l}.feed_forward.w13` ([w1; w3]). Not a
    /// package name: the loader builds it from the members.
    pub fn fused(l: usize, group: &str) -> String {
        format!("layers.{l}.{group}")
    }
    /// A LoRA half (`l1` or `l2`) of a decoder linear: `llama.layers.{l}.attention.lora_wq_l1.weight`.
    pub fn lora(l: usize, linear: &str, half: &str) -> String {
        let short = linear.rsplit('.').next().unwrap_or(linear);
        let group = linear.split('.').next().unwrap_or(linear);
        format!("llama.layers.{l}.{group}.lora_{short}_{half}.weight")
    }
}

/// Base weights that read the same input and are stored, row after row, as
/// one matrix on the GPU (one matmul dispatch instead of several).
#[derive(Debug, Clone, PartialEq)]
pub struct FusedGroup {
    pub name: String,
    pub members: Vec<String>,
}

/// The base's fused groups: q/k/v and w1/w3 of every layer.
pub fn base_fusions(n_layers: usize) -> Vec<FusedGroup> {
    let mut groups = Vec::with_capacity(2 * n_layers);
    for l in 0..n_layers {
        for (group, members) in [("attention.wqkv", &ATTENTION_INPUT[..]), ("feed_forward.w13", &FFN_INPUT[..])] {
            groups.push(FusedGroup { name: names::fused(l, group), members: members.iter().map(|m| names::base_linear(l, m)).collect() });
        }
    }
    groups
}

/// The adapter's fused groups: where every decoder linear carries LoRA, the
/// L1 halves of q/k/v (and of w1/w3) stacked into one matrix, and their L2
/// halves likewise; a layer's pair is fused only when both halves can be
/// (see [`super::loader::fusable`]) and L2 is f32 (the matmul's LoRA
/// epilogue reads it as dense rows), so a group's LoRA is either stacked
/// whole or left as its members.
pub fn adapter_fusions(ctx: &GpuContext, manifest: &crate::format::package::Manifest, config: &ModelConfig) -> Vec<FusedGroup> {
    let mut groups = Vec::new();
    if !config.adapter.w_lora {
        return groups;
    }
    for l in 0..config.llama.n_layers {
        for (group, members) in [("attention.wqkv", &ATTENTION_INPUT[..]), ("feed_forward.w13", &FFN_INPUT[..])] {
            let half = |h: &str| FusedGroup { name: names::lora(l, group, h), members: members.iter().map(|m| names::lora(l, m, h)).collect() };
            let (down, up) = (half("l1"), half("l2"));
            let down_ok = super::loader::fusable(ctx, manifest, &down).is_some();
            let up_ok = matches!(super::loader::fusable(ctx, manifest, &up), Some((crate::format::quant::QuantFormat::F32, _, _)));
            if down_ok && up_ok {
                groups.push(down);
                groups.push(up);
            }
        }
    }
    groups
}

/// The members of the two groups, in their row order.
pub const ATTENTION_INPUT: [&str; 3] = ["attention.wq", "attention.wk", "attention.wv"];
pub const FFN_INPUT: [&str; 2] = ["feed_forward.w1", "feed_forward.w3"];

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
}

/// A member's adapter parameters.
pub struct AdapterParams {
    pub bias: Option<wgpu::Buffer>,
    pub scale: Option<wgpu::Buffer>,
    pub lora: Option<(GpuMatrix, GpuMatrix)>,
}

/// How a group's base weights are stored.
pub enum GroupWeights {
    /// One matrix, the members' rows one after the other, with the members'
    /// biases and scales concatenated the same way (zero bias, unit scale
    /// for a member without).
    Fused { weight: GpuMatrix, bias: Option<wgpu::Buffer>, scale: Option<wgpu::Buffer> },
    /// Each member's own matrix (the loader could not fuse them).
    Separate(Vec<GpuMatrix>),
}

/// Linears that read the same input and write side by side into one output
/// row (q | k | v, w1 | w3): one matmul when their weights are fused.
pub struct LinearGroup {
    /// Output rows of each member (its slice of the group's output row).
    pub member_rows: usize,
    /// Each member's bias, scale and (where not stacked) LoRA.
    pub members: Vec<AdapterParams>,
    pub weights: GroupWeights,
    /// The members' LoRA stacked ([`adapter_fusions`]): (L1 rows of every
    /// member, [members·rank, cols]; L2 rows of every member, f32
    /// [members·member_rows, rank]). The matmul applies L2 in its epilogue.
    pub stacked_lora: Option<(GpuMatrix, GpuMatrix)>,
}

impl LinearGroup {
    /// Output elements per input row (all members).
    pub fn width(&self) -> usize {
        self.member_rows * self.members.len()
    }

    /// Whether a member carries a LoRA of its own (not stacked): the
    /// unfolded path, three matmuls per member.
    pub fn member_lora(&self) -> bool {
        self.members.iter().any(|m| m.lora.is_some())
    }
}

pub struct DecoderLayer {
    pub attention_norm: wgpu::Buffer,
    pub ffn_norm: wgpu::Buffer,
    /// wq | wk | wv: one output row is [q, k, v].
    pub qkv: LinearGroup,
    pub wo: LinearWeights,
    /// w1 | w3: one output row is [w1·x, w3·x].
    pub w13: LinearGroup,
    pub w2: LinearWeights,
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

/// `parts` (each `len` f32, or absent: `fill`) one after the other in a new
/// buffer, or None when every part is absent.
fn concat_vectors(ctx: &GpuContext, label: &str, parts: &[Option<&wgpu::Buffer>], len: usize, fill: f32) -> Option<wgpu::Buffer> {
    if parts.iter().all(Option::is_none) {
        return None;
    }
    let bytes = (len * 4) as u64;
    let out = ctx.storage(label, bytes * parts.len() as u64);
    let mut encoder = ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(label) });
    for (i, part) in parts.iter().enumerate() {
        match part {
            Some(b) => encoder.copy_buffer_to_buffer(b, 0, &out, i as u64 * bytes, bytes),
            None if fill != 0.0 => ctx.queue.write_buffer(&out, i as u64 * bytes, bytemuck::cast_slice(&vec![fill; len])),
            None => {}
        }
    }
    ctx.submit_encoder(encoder);
    Some(out)
}

impl DecoderWeights {
    /// Looks every decoder tensor up once (the loader has checked that the
    /// required ones exist; a missing one is still a typed error here).
    pub fn resolve(ctx: &GpuContext, config: &ModelConfig, base: &GpuWeights, adapter: &GpuWeights, new_gates: &[f32]) -> Result<DecoderWeights, ModelError> {
        let a = &config.adapter;
        let n = config.llama.n_layers;
        let first_late = n - a.query_layer;
        let params = |l: usize, name: &str, stacked: bool| -> Result<AdapterParams, ModelError> {
            let lora = if a.w_lora && !stacked {
                Some((adapter.matrix(&names::lora(l, name, "l1"))?.clone(), adapter.matrix(&names::lora(l, name, "l2"))?.clone()))
            } else {
                None
            };
            let bias = if a.w_bias && BIASED.contains(&name) { Some(adapter.vector(&names::adapter_layer(l, &format!("{name}.bias")))?.clone()) } else { None };
            Ok(AdapterParams { bias, scale: adapter.optional_vector(&names::adapter_layer(l, &format!("{name}.scale"))).cloned(), lora })
        };
        let linear = |l: usize, name: &str| -> Result<LinearWeights, ModelError> {
            let p = params(l, name, false)?;
            Ok(LinearWeights { weight: base.matrix(&names::base_linear(l, name))?.clone(), bias: p.bias, scale: p.scale, lora: p.lora })
        };
        let group = |l: usize, group: &str, members: &[&str], member_rows: usize| -> Result<LinearGroup, ModelError> {
            let stacked_lora = match (adapter.tensors.get(&names::lora(l, group, "l1")), adapter.tensors.get(&names::lora(l, group, "l2"))) {
                (Some(GpuTensor::Matrix(down)), Some(GpuTensor::Matrix(up))) => Some((down.clone(), up.clone())),
                _ => None,
            };
            if let Some((down, up)) = &stacked_lora {
                let rank = up.cols;
                let fits = super::lora_up_foldable(up, rank, members.len() * member_rows)
                    && down.rows == members.len() * rank
                    && down.cols == config.llama.dim;
                if !fits {
                    return Err(ModelError::BadInput(format!(
                        "layer {l} {group}: stacked LoRA of {}x{} ({}) and {}x{} does not fit {} members of {member_rows} rows",
                        down.rows, down.cols, up.format.name(), up.rows, up.cols, members.len()
                    )));
                }
            }
            let members_params = members.iter().map(|m| params(l, m, stacked_lora.is_some())).collect::<Result<Vec<_>, _>>()?;
            let weights = match base.tensors.get(&names::fused(l, group)) {
                Some(GpuTensor::Matrix(weight)) => {
                    let label = names::fused(l, group);
                    let biases: Vec<_> = members_params.iter().map(|p| p.bias.as_ref()).collect();
                    let scales: Vec<_> = members_params.iter().map(|p| p.scale.as_ref()).collect();
                    GroupWeights::Fused {
                        weight: weight.clone(),
                        bias: concat_vectors(ctx, &format!("{label}.bias"), &biases, member_rows, 0.0),
                        scale: concat_vectors(ctx, &format!("{label}.scale"), &scales, member_rows, 1.0),
                    }
                }
                _ => GroupWeights::Separate(members.iter().map(|m| base.matrix(&names::base_linear(l, m)).cloned()).collect::<Result<_, _>>()?),
            };
            Ok(LinearGroup { member_rows, members: members_params, weights, stacked_lora })
        };
        let (dim, ffn) = (config.llama.dim, config.llama.ffn_hidden);
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
                qkv: group(l, "attention.wqkv", &ATTENTION_INPUT, dim)?,
                wo: linear(l, "attention.wo")?,
                w13: group(l, "feed_forward.w13", &FFN_INPUT, ffn)?,
                w2: linear(l, "feed_forward.w2")?,
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
