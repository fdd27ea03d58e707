//! The web format: a package is a `manifest.json` plus shard files of
//! bounded size. A model is a *base* package (LLaMA + CLIP) and an *adapter*
//! package (biases, norms, gates, prompts, visual branch, LoRA...), which
//! names the base it fits by the sha256 of the base's manifest.
//!
//! Every tensor is stored as a `rows × cols` matrix (cols = last dimension,
//! rows = product of the others) in one of the [`QuantFormat`]s, cut into row
//! pieces that each lie inside one shard and fit one GPU binding. Norms,
//! biases, gates and prompts stay f32.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::quant::QuantFormat;

pub const FORMAT_NAME: &str = "llama-adapter-web";
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PackageKind {
    Base,
    Adapter,
}

/// A row piece of a tensor, stored at `offset .. offset+length` of a shard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Piece {
    pub row_start: usize,
    pub rows: usize,
    pub shard: usize,
    pub offset: u64,
    pub length: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorEntry {
    pub name: String,
    pub shape: Vec<usize>,
    pub format: String,
    pub pieces: Vec<Piece>,
}

impl TensorEntry {
    pub fn cols(&self) -> usize {
        *self.shape.last().unwrap_or(&1)
    }
    pub fn rows(&self) -> usize {
        self.shape.iter().rev().skip(1).product()
    }
    pub fn quant(&self) -> Option<QuantFormat> {
        QuantFormat::parse(&self.format)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardEntry {
    pub file: String,
    pub bytes: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    pub file: String,
    pub bytes: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    pub kind: PackageKind,
    /// Base: `{"llama": …, "clip": …}`; adapter: `{"adapter": …}`.
    pub config: serde_json::Value,
    /// Adapter only: sha256 of the base package's manifest.json bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_sha256: Option<String>,
    /// Base only: the tokenizer.json file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<FileEntry>,
    /// Prompt template name ("alpaca", spec §4).
    pub prompt_template: String,
    pub tensors: Vec<TensorEntry>,
    pub shards: Vec<ShardEntry>,
}

/// Everything that can be wrong with a package, as a typed error.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FormatError {
    #[error("{file}: not a {FORMAT_NAME} manifest: {reason}")]
    NotAManifest { file: String, reason: String },
    #[error("{file}: format version {found} is not supported (this engine reads version {FORMAT_VERSION})")]
    Version { file: String, found: u32 },
    #[error("{file}: expected a {expected:?} package, found {found:?}")]
    Kind { file: String, expected: PackageKind, found: PackageKind },
    #[error("{file}: the config is invalid: {reason}")]
    Config { file: String, reason: String },
    #[error("tensor {name}: {reason}")]
    Tensor { name: String, reason: String },
    #[error("tensor {name} is missing from the package")]
    MissingTensor { name: String },
    #[error("tensor {name} is not part of this model (unknown name)")]
    UnknownTensor { name: String },
    #[error("shard {file}: {reason}")]
    Shard { file: String, reason: String },
    #[error("shard {file} is truncated: {found} bytes, the manifest says {expected}")]
    Truncated { file: String, found: u64, expected: u64 },
    #[error("shard {file} is corrupt: sha256 {found}, the manifest says {expected}")]
    HashMismatch { file: String, found: String, expected: String },
    #[error("this adapter was made for base {expected}, but the base package is {found}")]
    WrongBase { expected: String, found: String },
    #[error("{0}")]
    Io(String),
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

impl Manifest {
    /// Parses manifest.json text and checks its header.
    pub fn parse(file: &str, text: &[u8]) -> Result<Manifest, FormatError> {
        let value: serde_json::Value =
            serde_json::from_slice(text).map_err(|e| FormatError::NotAManifest { file: file.into(), reason: e.to_string() })?;
        if value.get("format").and_then(|f| f.as_str()) != Some(FORMAT_NAME) {
            return Err(FormatError::NotAManifest { file: file.into(), reason: format!("\"format\" is not \"{FORMAT_NAME}\"") });
        }
        if let Some(v) = value.get("version").and_then(|v| v.as_u64()) {
            // Compared as u64: a version of 2^32 + 1 must not pass for 1.
            if v != FORMAT_VERSION as u64 {
                return Err(FormatError::Version { file: file.into(), found: u32::try_from(v).unwrap_or(u32::MAX) });
            }
        }
        serde_json::from_value(value).map_err(|e| FormatError::NotAManifest { file: file.into(), reason: e.to_string() })
    }

    pub fn tensor_count(&self) -> usize {
        self.tensors.len()
    }

    /// Checks the tensor table against the shards and against the shapes the
    /// config implies (`expected`: name → (shape, optional)). Unknown and
    /// missing tensors, bad formats, pieces that do not tile the rows,
    /// lengths that do not match the format, and offsets out of range are
    /// all errors.
    pub fn validate_tensors(&self, expected: &HashMap<String, (Vec<usize>, bool)>) -> Result<(), FormatError> {
        let mut seen = std::collections::HashSet::new();
        for t in &self.tensors {
            let err = |reason: String| FormatError::Tensor { name: t.name.clone(), reason };
            let (shape, _) = expected.get(&t.name).ok_or_else(|| FormatError::UnknownTensor { name: t.name.clone() })?;
            if !seen.insert(t.name.as_str()) {
                return Err(err("listed twice".into()));
            }
            if &t.shape != shape {
                return Err(err(format!("shape {:?} does not fit the config, which implies {:?}", t.shape, shape)));
            }
        }
        self.validate_structure()?;
        for (name, (_, optional)) in expected {
            if !optional && !seen.contains(name.as_str()) {
                return Err(FormatError::MissingTensor { name: name.clone() });
            }
        }
        Ok(())
    }

    /// Checks what does not depend on the config: the table's size, shapes
    /// (rank, dimensions, element count within [`crate::limits`]), formats,
    /// pieces tiling the rows, lengths matching the format, and byte ranges
    /// inside the shards. Every size is checked before it is multiplied, so
    /// [`TensorEntry::rows`], [`TensorEntry::cols`] and the format's byte
    /// counts cannot overflow afterwards (on wasm32 either).
    pub fn validate_structure(&self) -> Result<(), FormatError> {
        use crate::limits::{MAX_NAME_BYTES, MAX_TENSORS, MAX_TENSOR_ELEMENTS, MAX_TENSOR_RANK};
        if self.tensors.len() > MAX_TENSORS {
            return Err(FormatError::Tensor { name: "(table)".into(), reason: format!("\"tensors\": {} tensors; a package has at most {MAX_TENSORS}", self.tensors.len()) });
        }
        for t in &self.tensors {
            let err = |reason: String| FormatError::Tensor { name: t.name.chars().take(MAX_NAME_BYTES).collect(), reason };
            if t.name.is_empty() || t.name.len() > MAX_NAME_BYTES {
                return Err(err(format!("\"name\": {} bytes; a tensor name has 1 to {MAX_NAME_BYTES}", t.name.len())));
            }
            if t.shape.is_empty() || t.shape.len() > MAX_TENSOR_RANK {
                return Err(err(format!("\"shape\" has {} dimensions; a tensor has 1 to {MAX_TENSOR_RANK}", t.shape.len())));
            }
            let elements = t.shape.iter().try_fold(1u64, |n, &d| if d == 0 { None } else { n.checked_mul(d as u64).filter(|n| *n <= MAX_TENSOR_ELEMENTS) });
            if elements.is_none() {
                return Err(err(format!("\"shape\" {:?}: every dimension must be at least 1 and the tensor at most {MAX_TENSOR_ELEMENTS} elements", t.shape)));
            }
            let format = t.quant().ok_or_else(|| err(format!("unknown storage format {:?}", t.format)))?;
            let rows = t.rows();
            let mut next_row = 0usize;
            for p in &t.pieces {
                if p.row_start != next_row || p.rows == 0 || p.rows > rows - next_row {
                    return Err(err(format!("pieces do not tile the {rows} rows (piece of {} rows at row {})", p.rows, p.row_start)));
                }
                next_row += p.rows;
                let shard = self.shards.get(p.shard).ok_or_else(|| err(format!("shard {} does not exist", p.shard)))?;
                let want = format.bytes(p.rows, t.cols());
                if p.length != want {
                    return Err(err(format!("piece of {} rows is {} bytes, {} format needs {want}", p.rows, p.length, t.format)));
                }
                if p.offset.checked_add(p.length).is_none_or(|end| end > shard.bytes) {
                    return Err(err(format!("bytes at offset {} (length {}) lie outside shard {} ({} bytes)", p.offset, p.length, shard.file, shard.bytes)));
                }
            }
            if next_row != rows {
                return Err(err(format!("pieces cover {next_row} of {rows} rows")));
            }
        }
        Ok(())
    }
}

/// Checks a shard's bytes against its manifest entry (size, then sha256).
pub fn verify_shard(entry: &ShardEntry, bytes: &[u8]) -> Result<(), FormatError> {
    if bytes.len() as u64 != entry.bytes {
        return Err(FormatError::Truncated { file: entry.file.clone(), found: bytes.len() as u64, expected: entry.bytes });
    }
    let found = sha256_hex(bytes);
    if found != entry.sha256 {
        return Err(FormatError::HashMismatch { file: entry.file.clone(), found, expected: entry.sha256.clone() });
    }
    Ok(())
}

/// Builds a package: tensors go into shards of at most `shard_bytes` each,
/// cut into row pieces of at most `piece_bytes`.
pub struct PackageWriter {
    pub shard_bytes: u64,
    pub piece_bytes: u64,
    tensors: Vec<TensorEntry>,
    shards: Vec<Vec<u8>>,
}

impl PackageWriter {
    pub fn new(shard_bytes: u64, piece_bytes: u64) -> PackageWriter {
        PackageWriter { shard_bytes, piece_bytes: piece_bytes.min(shard_bytes), tensors: Vec::new(), shards: vec![Vec::new()] }
    }

    /// Adds a tensor of `shape` (row-major f32 data) stored in `format`.
    pub fn add(&mut self, name: &str, shape: &[usize], format: QuantFormat, data: &[f32]) {
        let cols = *shape.last().unwrap_or(&1);
        let rows: usize = shape.iter().rev().skip(1).product();
        assert_eq!(data.len(), rows * cols, "{name}: data does not match its shape");
        self.add_packed(name, shape, &super::quant::PackedMatrix::pack(format, rows, cols, data));
    }

    /// Adds a tensor of `shape` already packed (its rows × cols must match).
    pub fn add_packed(&mut self, name: &str, shape: &[usize], packed: &super::quant::PackedMatrix) {
        let cols = *shape.last().unwrap_or(&1);
        let rows: usize = shape.iter().rev().skip(1).product();
        assert_eq!((packed.rows, packed.cols), (rows, cols), "{name}: packed matrix does not match its shape");
        let format = packed.format;
        let mut pieces = Vec::new();
        for (row_start, block) in packed.split_rows(self.piece_bytes) {
            let bytes: &[u8] = bytemuck::cast_slice(&block.words);
            if !self.shards.last().unwrap().is_empty() && self.shards.last().unwrap().len() as u64 + bytes.len() as u64 > self.shard_bytes {
                self.shards.push(Vec::new());
            }
            let shard = self.shards.len() - 1;
            let buf = self.shards.last_mut().unwrap();
            let offset = buf.len() as u64;
            buf.extend_from_slice(bytes);
            pieces.push(Piece { row_start, rows: block.rows, shard, offset, length: bytes.len() as u64 });
        }
        self.tensors.push(TensorEntry { name: name.into(), shape: shape.to_vec(), format: format.name().into(), pieces });
    }

    /// The shard files' contents and the manifest (without config/links,
    /// which the caller fills in).
    pub fn finish(self, kind: PackageKind, config: serde_json::Value) -> (Manifest, Vec<(String, Vec<u8>)>) {
        let files: Vec<(String, Vec<u8>)> = self
            .shards
            .into_iter()
            .enumerate()
            .map(|(i, bytes)| (format!("shard-{i:03}.bin"), bytes))
            .collect();
        let shards = files
            .iter()
            .map(|(file, bytes)| ShardEntry { file: file.clone(), bytes: bytes.len() as u64, sha256: sha256_hex(bytes) })
            .collect();
        let manifest = Manifest {
            format: FORMAT_NAME.into(),
            version: FORMAT_VERSION,
            kind,
            config,
            base_sha256: None,
            tokenizer: None,
            prompt_template: "alpaca".into(),
            tensors: self.tensors,
            shards,
        };
        (manifest, files)
    }
}

/// Reads a file of at most `limit` bytes; a longer one is an error, found
/// from its metadata or, failing that, after reading `limit + 1` bytes.
#[cfg(not(target_arch = "wasm32"))]
pub fn read_bounded(path: &std::path::Path, limit: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let file = std::fs::File::open(path)?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let too_big = |n: u64| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{n} bytes or more; the limit is {limit}"));
    if size > limit {
        return Err(too_big(size));
    }
    let mut bytes = Vec::with_capacity(size as usize);
    file.take(limit.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(too_big(bytes.len() as u64));
    }
    Ok(bytes)
}

/// A package read into memory and verified.
pub struct LoadedPackage {
    pub manifest: Manifest,
    /// sha256 of manifest.json's bytes (what an adapter names its base by).
    pub manifest_sha256: String,
    pub shards: Vec<Vec<u8>>,
}

impl LoadedPackage {
    /// Reads `dir/manifest.json` and every shard, verifying sizes and hashes.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_dir(dir: &std::path::Path, kind: PackageKind) -> Result<LoadedPackage, FormatError> {
        use crate::limits::{MAX_MANIFEST_BYTES, MAX_SHARD_BYTES};
        let path = dir.join("manifest.json");
        let text = read_bounded(&path, MAX_MANIFEST_BYTES).map_err(|e| FormatError::Io(format!("{}: {e}", path.display())))?;
        let manifest = Manifest::parse(&path.display().to_string(), &text)?;
        if manifest.kind != kind {
            return Err(FormatError::Kind { file: path.display().to_string(), expected: kind, found: manifest.kind });
        }
        manifest.validate_structure()?;
        let mut shards = Vec::with_capacity(manifest.shards.len());
        for entry in &manifest.shards {
            if entry.file.contains('/') || entry.file.contains('\\') || entry.file.starts_with('.') {
                return Err(FormatError::Shard { file: entry.file.clone(), reason: "shard names must be plain file names".into() });
            }
            if entry.bytes > MAX_SHARD_BYTES {
                return Err(FormatError::Shard { file: entry.file.clone(), reason: format!("{} bytes; a shard is at most {MAX_SHARD_BYTES}", entry.bytes) });
            }
            // A file longer than the manifest says is refused without being read whole.
            let bytes = read_bounded(&dir.join(&entry.file), entry.bytes).map_err(|e| FormatError::Shard { file: entry.file.clone(), reason: e.to_string() })?;
            verify_shard(entry, &bytes)?;
            shards.push(bytes);
        }
        Ok(LoadedPackage { manifest_sha256: sha256_hex(&text), manifest, shards })
    }

    /// The packed words of one piece.
    pub fn piece_words(&self, piece: &Piece) -> &[u8] {
        &self.shards[piece.shard][piece.offset as usize..(piece.offset + piece.length) as usize]
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorEntry> {
        self.manifest.tensors.iter().find(|t| t.name == name)
    }

    /// A whole tensor, dequantised to f32 (CPU side: small tensors, tests).
    pub fn tensor_f32(&self, name: &str) -> Option<Vec<f32>> {
        let t = self.tensor(name)?;
        let format = t.quant()?;
        let mut out = Vec::with_capacity(t.rows() * t.cols());
        for p in &t.pieces {
            let words: Vec<u32> = bytemuck::pod_collect_to_vec(self.piece_words(p));
            out.extend(super::quant::PackedMatrix { format, rows: p.rows, cols: t.cols(), words }.dequantize());
        }
        Some(out)
    }
}
