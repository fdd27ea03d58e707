//! Model hyperparameters, as stored in the packages' manifests.

use serde::{Deserialize, Serialize};

/// The LLaMA decoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    pub dim: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub vocab_size: usize,
    pub ffn_hidden: usize,
    pub norm_eps: f32,
    pub rope_theta: f32,
    /// Context length: prompt plus generated tokens (the KV cache size).
    pub max_seq_len: usize,
}

impl LlamaConfig {
    pub fn head_dim(&self) -> usize {
        self.dim / self.n_heads
    }

    /// Checks the sizes a manifest gives, before anything is allocated from them.
    /// The bounds are far above any LLaMA (7B: dim 4096, 32 layers) and keep
    /// every byte count the loader computes well inside u64.
    pub fn validate(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        for (name, value, max) in [
            ("dim", self.dim, 1 << 16),
            ("n_layers", self.n_layers, 1 << 10),
            ("n_heads", self.n_heads, 1 << 10),
            ("vocab_size", self.vocab_size, 1 << 22),
            ("ffn_hidden", self.ffn_hidden, 1 << 18),
            ("max_seq_len", self.max_seq_len, 1 << 27),
        ] {
            if value == 0 || value > max {
                problems.push(format!("{name} {value} must be between 1 and {max}"));
            }
        }
        if !(self.norm_eps > 0.0 && self.norm_eps.is_finite() && self.rope_theta > 0.0 && self.rope_theta.is_finite()) {
            problems.push(format!("norm_eps {} and rope_theta {} must be positive", self.norm_eps, self.rope_theta));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    /// FFN width from `dim` the way LLaMA computes it.
    pub fn ffn_hidden_for(dim: usize, multiple_of: usize) -> usize {
        let hidden = 2 * (4 * dim) / 3;
        hidden.div_ceil(multiple_of) * multiple_of
    }
}

/// CLIP's vision tower (OpenAI ViT layout).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClipConfig {
    pub width: usize,
    pub layers: usize,
    pub heads: usize,
    pub patch: usize,
    pub image_size: usize,
    /// Output dim of `proj` (768 for ViT-L/14).
    pub embed_dim: usize,
}

impl ClipConfig {
    pub fn grid(&self) -> usize {
        self.image_size / self.patch
    }
    /// Checks the sizes a manifest gives (see [`LlamaConfig::validate`]).
    pub fn validate(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        for (name, value, max) in [
            ("width", self.width, 1 << 14),
            ("layers", self.layers, 1 << 8),
            ("heads", self.heads, 1 << 8),
            ("patch", self.patch, 1 << 8),
            ("image_size", self.image_size, 1 << 12),
            ("embed_dim", self.embed_dim, 1 << 14),
        ] {
            if value == 0 || value > max {
                problems.push(format!("CLIP {name} {value} must be between 1 and {max}"));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    /// Patches plus the class token.
    pub fn tokens(&self) -> usize {
        self.grid() * self.grid() + 1
    }
}

/// How the visual tokens enter the decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fusion {
    /// The released code: in each of the last `query_layer` layers the prefix
    /// is `adapter_query[l] + visual tokens`, gated by `attention.gate`.
    LateAdd,
    /// The paper: the visual tokens are the gated prefix (`visual_gate`) of
    /// the first `early_layers` layers; the last `query_layer` layers get the
    /// static prompts alone, gated by `attention.gate`.
    EarlyPrefix,
}

/// Which channel order the image tensor is fed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelOrder {
    Rgb,
    /// What the official checkpoints were trained on (`cv2.imread`, spec §4).
    Bgr,
}

/// The adapter: visual branch, prompts, gates and the tuned parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterConfig {
    pub query_len: usize,
    pub query_layer: usize,
    pub v_embed_dim: usize,
    pub v_depth: usize,
    pub v_num_heads: usize,
    pub v_mlp_hidden: usize,
    pub w_bias: bool,
    pub w_lora: bool,
    pub lora_rank: usize,
    pub w_new_gate: bool,
    pub w_scale: bool,
    pub fusion: Fusion,
    pub early_layers: usize,
    pub channel_order: ChannelOrder,
}

/// Everything the engine needs to build the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub llama: LlamaConfig,
    pub clip: ClipConfig,
    pub adapter: AdapterConfig,
}

impl ModelConfig {
    /// Checks the combinations the forward pass relies on.
    pub fn validate(&self) -> Result<(), String> {
        let l = &self.llama;
        let a = &self.adapter;
        let c = &self.clip;
        l.validate()?;
        c.validate()?;
        let mut problems = Vec::new();
        for (name, value, max) in [
            ("query_len", a.query_len, 1 << 12),
            ("v_embed_dim", a.v_embed_dim, 1 << 14),
            ("v_depth", a.v_depth, 1 << 8),
            ("v_mlp_hidden", a.v_mlp_hidden, 1 << 16),
            ("lora_rank", a.lora_rank, 1 << 12),
        ] {
            if value > max || (value == 0 && name != "v_depth" && name != "lora_rank") {
                problems.push(format!("adapter {name} {value} must be between 1 and {max}"));
            }
        }
        if l.dim == 0 || l.n_heads == 0 || l.dim % l.n_heads != 0 {
            problems.push(format!("dim {} is not a multiple of n_heads {}", l.dim, l.n_heads));
        } else if l.head_dim() % 2 != 0 || l.head_dim() > 256 {
            problems.push(format!("head dim {} must be even and at most 256", l.head_dim()));
        }
        if a.query_layer > l.n_layers {
            problems.push(format!("query_layer {} exceeds n_layers {}", a.query_layer, l.n_layers));
        }
        if a.fusion == Fusion::EarlyPrefix && a.early_layers + a.query_layer > l.n_layers {
            problems.push(format!("early_layers {} + query_layer {} exceed n_layers {}", a.early_layers, a.query_layer, l.n_layers));
        }
        if a.v_num_heads == 0 || a.v_embed_dim % a.v_num_heads != 0 {
            problems.push(format!("v_embed_dim {} is not a multiple of v_num_heads {}", a.v_embed_dim, a.v_num_heads));
        }
        if c.heads == 0 || c.width % c.heads != 0 || c.patch == 0 || c.image_size % c.patch != 0 {
            problems.push(format!("CLIP width {} / heads {} / patch {} / image {} do not fit", c.width, c.heads, c.patch, c.image_size));
        } else if (c.width / c.heads) % 4 != 0 || c.width / c.heads > 256 {
            // the attention kernel moves 16-byte vectors and holds one head in registers
            problems.push(format!("CLIP head dim {} (width {} / {} heads) must be a multiple of 4 and at most 256", c.width / c.heads, c.width, c.heads));
        }
        if l.max_seq_len == 0 || l.vocab_size == 0 {
            problems.push("max_seq_len and vocab_size must be positive".into());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }
}
