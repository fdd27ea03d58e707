//! Fuzz harnesses: one function per reader of untrusted bytes. Each feeds
//! the bytes to the reader as the engine or the converter would, uses what
//! comes back the way they do, and ignores the `Err` (a typed error is the
//! right answer to bad input); a panic, an abort, a hang or a huge
//! allocation is a bug.
//!
//! The same functions run under libFuzzer (`fuzz/fuzz_targets/*.rs`, nightly,
//! `cargo fuzz run <name>`) and in the stable replay of the committed corpora
//! (`tests/fuzz_corpus.rs`, part of `cargo test`). See docs/ROBUSTNESS.md.

use crate::convert::pickle::Checkpoint;
use crate::convert::sentencepiece::SentencePieceModel;
use crate::convert::sources::{parse_safetensors_header, read_safetensors_f32};
use crate::format::package::PackageKind;
use crate::gpu::GpuInfo;
use crate::model::config::{AdapterConfig, ChannelOrder, ClipConfig, Fusion, LlamaConfig, ModelConfig};
use crate::model::loader::{fit, AdapterPlan, BasePlan, PackagePlan};
use crate::text::tokenizer::Tokenizer;

/// A harness: bytes in, nothing out (a panic is the failure).
pub type Harness = fn(&[u8]);

/// The targets, by name (the folder names under `fuzz/corpus/`).
pub const TARGETS: &[(&str, Harness)] = &[
    ("manifest", manifest),
    ("checkpoint", checkpoint),
    ("safetensors", safetensors),
    ("sentencepiece", sentencepiece),
    ("tokenizer_json", tokenizer_json),
    ("image", image),
];

/// The default model's base (www/models/default): what an adapter manifest is checked against.
fn default_base() -> (LlamaConfig, ClipConfig) {
    (
        LlamaConfig { dim: 96, n_layers: 6, n_heads: 4, vocab_size: 32000, ffn_hidden: 256, norm_eps: 1e-5, rope_theta: 10000.0, max_seq_len: 512 },
        ClipConfig { width: 128, layers: 3, heads: 8, patch: 16, image_size: 128, embed_dim: 128 },
    )
}

/// The default model's adapter config: what a base manifest is fitted with.
fn default_adapter() -> AdapterConfig {
    AdapterConfig {
        query_len: 10,
        query_layer: 3,
        v_embed_dim: 128,
        v_depth: 4,
        v_num_heads: 4,
        v_mlp_hidden: 512,
        w_bias: true,
        w_lora: false,
        lora_rank: 16,
        w_new_gate: false,
        w_scale: true,
        fusion: Fusion::EarlyPrefix,
        early_layers: 3,
        channel_order: ChannelOrder::Rgb,
    }
}

/// A device with WebGPU's default limits (what a browser gives).
fn device() -> GpuInfo {
    GpuInfo::webgpu_defaults("fuzz")
}

/// manifest.json: the loader's plan (size bound, parse, kind, shard names
/// and sizes, `validate_structure`), then the checks against the config
/// (`BasePlan::new` / `AdapterPlan::for_base`), then `fit`.
pub fn manifest(data: &[u8]) {
    let info = device();
    if let Ok(plan) = PackagePlan::parse("fuzz/manifest.json", data, PackageKind::Base) {
        let _ = (plan.transfer_bytes(), plan.gpu_bytes(), plan.largest_piece());
        if let Ok(base) = BasePlan::new(plan) {
            let config = ModelConfig { llama: base.llama.clone(), clip: base.clip.clone(), adapter: default_adapter() };
            let _ = fit(&config, &[&base.package], &info, Some(1 << 30));
        }
    }
    if let Ok(plan) = PackagePlan::parse("fuzz/manifest.json", data, PackageKind::Adapter) {
        let _ = (plan.transfer_bytes(), plan.gpu_bytes(), plan.largest_piece());
        let (llama, clip) = default_base();
        // The base is the one the adapter names, so that the fuzzer gets past the hash check.
        let base_sha = plan.manifest.base_sha256.clone().unwrap_or_default();
        if let Ok(adapter) = AdapterPlan::for_base(plan, &llama, &clip, &base_sha) {
            let _ = fit(&adapter.config, &[&adapter.package], &info, None);
        }
    }
}

/// A PyTorch checkpoint (`torch.save` zip, or a TorchScript archive): the
/// zip directory, `data.pkl`, the tensor table, then every tensor's data.
pub fn checkpoint(data: &[u8]) {
    let Ok(mut ckpt) = Checkpoint::from_bytes("fuzz.pth", data.to_vec()) else { return };
    let Ok(tensors) = ckpt.tensors() else { return };
    let mut names: Vec<_> = tensors.keys().cloned().collect();
    names.sort();
    for name in names.iter().take(64) {
        let _ = ckpt.read_f32(&tensors[name]);
    }
}

/// A safetensors file: the header, then every tensor's data.
pub fn safetensors(data: &[u8]) {
    let Ok((_, entries)) = parse_safetensors_header("fuzz.safetensors", data, data.len() as u64) else { return };
    let mut names: Vec<_> = entries.keys().cloned().collect();
    names.sort();
    let mut cursor = std::io::Cursor::new(data);
    for name in names.iter().take(64) {
        let _ = read_safetensors_f32("fuzz.safetensors", name, &mut cursor, &entries[name]);
    }
}

/// Text the tokenizer targets encode: ASCII, spaces, digits, accents, CJK, an emoji.
const SAMPLE: &str = "Hello, world!  -5 plus 3? Ünïcödé 日本語 🦙\n\t<s>";

/// A SentencePiece `tokenizer.model`: the parse, the conversion to
/// tokenizer.json, loading that, and a round of encode / decode.
pub fn sentencepiece(data: &[u8]) {
    let Ok(model) = SentencePieceModel::parse(data) else { return };
    let Ok(json) = model.to_tokenizer_json() else { return };
    if let Ok(tok) = Tokenizer::from_json(json.as_bytes()) {
        use_tokenizer(&tok);
    }
}

/// A tokenizer.json: loading it, then a round of encode / decode.
pub fn tokenizer_json(data: &[u8]) {
    if let Ok(tok) = Tokenizer::from_json(data) {
        use_tokenizer(&tok);
    }
}

fn use_tokenizer(tok: &Tokenizer) {
    let _ = tok.vocab_size();
    if let Ok(ids) = tok.encode_prompt(SAMPLE) {
        let _ = tok.decode(&ids);
    }
    let _ = tok.decode(&[0, 1, 2, 3, 13, 29871, 31999, 32000, u32::MAX]);
}

/// A picture: decoding (PNG / JPEG, within the decoder's limits) and the
/// CLIP preprocessing at 224 (the official models' size) in BGR order.
pub fn image(data: &[u8]) {
    let _ = crate::image::clip_preprocess(data, 224, ChannelOrder::Bgr);
}
