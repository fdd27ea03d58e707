//! Every bound on a size that comes from a file, in one place.
//!
//! Users feed the engine files from the internet: packages (manifests,
//! shards, tokenizers), official checkpoints (PyTorch zip archives,
//! safetensors, `tokenizer.model`) and pictures. Each reader checks the sizes
//! it reads against these bounds, with checked arithmetic, *before* it
//! allocates or indexes with them, and refuses what it cannot trust with a
//! typed error that names the file and the field. The bounds are far above
//! any model this engine runs (LLaMA-7B: dim 4096, 32 layers, vocab 32000,
//! 291 tensors; the bounds also admit LLaMA-65B) and low enough that no
//! reader can be made to allocate more than [`MAX_HOST_BYTES`] at once, which
//! matters most in the browser (wasm32 has 4 GiB of address space, and a tab
//! that runs out is killed).
//!
//! `docs/ROBUSTNESS.md` lists the same bounds with the tests that prove them.
//! The config bounds (dims, layers, heads, context length) live with the
//! config ([`crate::model::config::LlamaConfig::validate`],
//! [`crate::model::config::ClipConfig::validate`],
//! [`crate::model::config::ModelConfig::validate`]).

// ---- the whole engine ----

/// The largest single host-side allocation any reader or the loader makes
/// from a file's sizes (a shard, a tensor read as f32, the RoPE table, a
/// decoded picture stays well below). 1 GiB: a quarter of wasm32's address space.
pub const MAX_HOST_BYTES: u64 = 1 << 30;

/// The most elements a tensor may have, in a package or a checkpoint.
/// 2^28 = 268M: LLaMA-65B's largest tensor (the 32000 × 8192 embedding) has
/// 262M; read as f32 that is 1 GiB, [`MAX_HOST_BYTES`]. It also keeps every
/// byte count of a tensor (rows × cols × 4, in any storage format) far inside
/// a 32-bit `usize`, so the same checks hold on wasm32.
pub const MAX_TENSOR_ELEMENTS: u64 = 1 << 28;

/// The most dimensions a tensor may have. Our tensors have 1 to 4 (CLIP's
/// patch convolution is 4-D); PyTorch itself stops at 64.
pub const MAX_TENSOR_RANK: usize = 8;

/// The most tensors in one package, checkpoint or safetensors file.
/// LLaMA-7B has 291, CLIP ViT-L/14 about 300, LLaMA-65B 723.
pub const MAX_TENSORS: usize = 1 << 16;

/// The longest tensor name (a key of a state dict or a manifest). Ours are
/// under 64 bytes; Hugging Face names are under 100.
pub const MAX_NAME_BYTES: usize = 1024;

// ---- packages (manifest.json, shards, tokenizer.json) ----

/// The largest manifest.json accepted (LLaMA-7B's tensor table is about 0.5 MB).
pub const MAX_MANIFEST_BYTES: u64 = 64 << 20;

/// The largest shard file the loader accepts: it holds one shard at a time
/// in memory (the converter writes 64 MiB shards by default).
pub const MAX_SHARD_BYTES: u64 = 1 << 30;

/// The most shards in one package: 4096 × 1 GiB is 4 TiB, far above any
/// model, and the loader keeps a little state per shard.
pub const MAX_SHARDS: usize = 1 << 12;

/// The largest tokenizer.json accepted: LLaMA's is 1.8 MB, a 256k-vocabulary
/// tokenizer about 17 MB. Parsing one builds a vocabulary and merge table of
/// a few times its size.
pub const MAX_TOKENIZER_JSON_BYTES: u64 = 64 << 20;

/// How much a tokenizer's `Replace` normalisers and decoders may grow a text,
/// all of them together (the product of each one's worst case: content
/// bytes per pattern byte; an empty or regex pattern may match at every
/// position). LLaMA's grows 3× (" " → "▁"). Without it, five chained
/// replacements of an empty pattern take a 50-character prompt to gigabytes
/// (found by fuzzing).
pub const MAX_TOKENIZER_TEXT_GROWTH: f64 = 64.0;

// ---- PyTorch checkpoints (zip archive + pickle) ----

/// The largest `data.pkl` read from a checkpoint. LLaMA-7B's is about 30 kB
/// (one small record per tensor); OpenAI's TorchScript CLIP about 150 kB.
pub const MAX_PICKLE_BYTES: u64 = 64 << 20;

/// The deepest nesting of pickle values (tuples in lists in dicts...).
/// A state dict nests 4 deep, a TorchScript module tree about 10; the bound
/// keeps recursive code (clone, drop, tree walks) far from the stack's end.
pub const MAX_PICKLE_DEPTH: usize = 256;

/// The most memo entries a pickle may store (pickle's back-references).
/// LLaMA-7B's data.pkl stores about 1500.
pub const MAX_PICKLE_MEMO: usize = 1 << 20;

/// The longest string or byte string inside a pickle (names, keys, device
/// strings are under 100 bytes).
pub const MAX_PICKLE_STRING_BYTES: usize = 16 << 20;

/// The bytes of values an unpickler may build in all, counting every value
/// made and every copy a memo fetch or DUP makes. Without it, a few hundred
/// bytes of pickle that fetch a memoised list into itself grow exponentially
/// (a "billion laughs"). Real checkpoints use well under 10 MB.
pub const MAX_PICKLE_VALUE_BYTES: usize = 256 << 20;

/// The most entries in a checkpoint's zip archive: one per tensor storage
/// plus a few (TorchScript adds its `code/` and `constants.pkl`).
pub const MAX_ZIP_ENTRIES: usize = 1 << 17;

// ---- safetensors ----

/// The largest safetensors JSON header (the `safetensors` crate's own bound).
pub const MAX_SAFETENSORS_HEADER_BYTES: u64 = 100 << 20;

// ---- SentencePiece tokenizer.model ----

/// The largest `tokenizer.model` read: LLaMA's is 500 kB, Gemma's 4 MB.
pub const MAX_SENTENCEPIECE_BYTES: u64 = 64 << 20;

/// The most pieces in a SentencePiece model (the same bound as the config's
/// `vocab_size`: 4M; LLaMA has 32000).
pub const MAX_SENTENCEPIECE_PIECES: usize = 1 << 22;

/// The longest piece, in bytes. SentencePiece's trainer caps pieces at 16
/// characters by default and at 512 at most (`max_sentencepiece_length`).
pub const MAX_PIECE_BYTES: usize = 2048;

/// The work the BPE merge table may cost: the sum over normal pieces of the
/// squared piece length (every split point of a piece is looked up). LLaMA's
/// costs about 2M; the bound keeps a hostile model to about a second.
pub const MAX_MERGE_WORK: u64 = 1 << 28;

// ---- pictures ----

/// The widest or tallest picture decoded (a 16384 × 16384 picture is 268
/// megapixels; phone photos are under 50).
pub const MAX_IMAGE_SIDE: u32 = 16384;

/// The most bytes a decoder may allocate for one picture (the `image`
/// crate's `Limits::max_alloc`): a 48-megapixel RGB photo decodes to 144 MB.
pub const MAX_IMAGE_DECODED_BYTES: u64 = 512 << 20;
