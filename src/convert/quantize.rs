//! `llama-adapter quantize`: re-stores a converted package (base and/or
//! adapters) with another format for its large weights, so a user converts
//! a checkpoint once (f16) and derives the smaller downloads from it.
//!
//! The rule is the converter's: a tensor stored in f32 (norms, biases,
//! gates, prompts, embeddings of the vision tower) stays f32; every other
//! tensor is re-packed in the target format, unless an override names it.
//! Adapters that named the old base are re-targeted to the new one (their
//! `base_sha256`); an adapter given without a base keeps its base.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::checkpoint::{write_package, ConvertError};
use crate::format::package::{sha256_hex, LoadedPackage, Manifest, PackageKind, PackageWriter};
use crate::format::gptq;
use crate::format::quant::{PackedMatrix, QuantFormat, Rounding};

/// A tensor-name pattern (`*` matches any run of characters) and the format
/// the tensors it matches get instead of the target.
#[derive(Debug, Clone)]
pub struct FormatOverride {
    pub pattern: String,
    pub format: QuantFormat,
}

impl FormatOverride {
    /// Parses `PATTERN=FORMAT`, e.g. `output.weight=q8` or `layers.*.feed_forward.w2.weight=q8`.
    pub fn parse(s: &str) -> Result<FormatOverride, String> {
        let (pattern, format) = s.rsplit_once('=').ok_or_else(|| format!("{s:?}: expected PATTERN=FORMAT"))?;
        let format = QuantFormat::parse(format).ok_or_else(|| format!("{s:?}: unknown format {format:?} (expected f32, f16, q8 or q4)"))?;
        if pattern.is_empty() {
            return Err(format!("{s:?}: empty pattern"));
        }
        Ok(FormatOverride { pattern: pattern.into(), format })
    }

    pub fn matches(&self, name: &str) -> bool {
        glob_match(&self.pattern, name)
    }
}

/// `*` matches any run of characters (including dots); everything else is literal.
fn glob_match(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !name.starts_with(first) || name.len() < first.len() + last.len() || !name.ends_with(last) {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

#[derive(Debug, Clone)]
pub struct QuantizeOptions {
    /// Format of the large weights.
    pub to: QuantFormat,
    /// How Q-format groups are rounded.
    pub rounding: Rounding,
    /// First match wins.
    pub overrides: Vec<FormatOverride>,
    /// Per-column importance of a tensor's inputs (mean square activation),
    /// by tensor name, for `Rounding::Search`.
    pub importance: HashMap<String, Vec<f32>>,
    /// Mean x xᵀ of a tensor's inputs (`cols × cols`), by name, for `Rounding::Gptq`.
    pub hessians: HashMap<String, Vec<f64>>,
    pub shard_bytes: u64,
    pub piece_bytes: u64,
}

impl Default for QuantizeOptions {
    fn default() -> Self {
        QuantizeOptions { to: QuantFormat::Q4, rounding: Rounding::Absmax, overrides: Vec::new(), importance: HashMap::new(), hessians: HashMap::new(), shard_bytes: 64 << 20, piece_bytes: 64 << 20 }
    }
}

impl QuantizeOptions {
    /// The format `name` is stored in, given the format it was stored in.
    pub fn format_for(&self, name: &str, stored: QuantFormat) -> QuantFormat {
        if stored == QuantFormat::F32 {
            return QuantFormat::F32;
        }
        self.overrides.iter().find(|o| o.matches(name)).map(|o| o.format).unwrap_or(self.to)
    }
}

/// One re-stored tensor, for the report.
#[derive(Debug, Clone, Serialize)]
pub struct TensorReport {
    pub package: String,
    pub name: String,
    pub kind: &'static str,
    pub from: &'static str,
    pub to: &'static str,
    pub elements: u64,
    pub bytes: u64,
    /// RMS of (new − stored) over RMS of stored.
    pub relative_rms_error: f64,
}

/// What `quantize` wrote.
#[derive(Debug, Clone, Serialize)]
pub struct QuantizeReport {
    pub tensors: Vec<TensorReport>,
    /// Package folder → bytes written (shards + manifest + tokenizer).
    pub packages: Vec<(String, u64)>,
}

impl QuantizeReport {
    /// Bits per weight over the re-stored (non-f32) tensors, scales included.
    pub fn bits_per_weight(&self) -> f64 {
        let (bits, n) = self.tensors.iter().filter(|t| t.from != "f32").fold((0u64, 0u64), |(b, n), t| (b + 8 * t.bytes, n + t.elements));
        bits as f64 / n.max(1) as f64
    }

    /// (kind, elements, bytes, element-weighted mean relative RMS error) per tensor kind.
    pub fn by_kind(&self) -> Vec<(&'static str, u64, u64, f64)> {
        let mut kinds: Vec<(&'static str, u64, u64, f64)> = Vec::new();
        for t in self.tensors.iter().filter(|t| t.from != "f32") {
            match kinds.iter_mut().find(|k| k.0 == t.kind) {
                Some(k) => {
                    k.1 += t.elements;
                    k.2 += t.bytes;
                    k.3 += t.relative_rms_error * t.elements as f64;
                }
                None => kinds.push((t.kind, t.elements, t.bytes, t.relative_rms_error * t.elements as f64)),
            }
        }
        for k in &mut kinds {
            k.3 /= k.1.max(1) as f64;
        }
        kinds
    }
}

/// A tensor's kind, for reports: which part of the model it belongs to.
pub fn tensor_kind(name: &str) -> &'static str {
    let has = |s: &str| name.contains(s);
    if name == "tok_embeddings.weight" {
        "token embedding"
    } else if name == "output.weight" {
        "output head"
    } else if has(".attention.w") {
        "decoder attention"
    } else if has(".feed_forward.w") {
        "decoder FFN"
    } else if name.starts_with("clip.") {
        "CLIP tower"
    } else if name.starts_with("visual_blocks.") || name.starts_with("clip_proj.") || name.starts_with("visual_proj.") {
        "visual adapter"
    } else if has("lora") {
        "LoRA"
    } else {
        "other"
    }
}

fn rel_rms(new: &[f32], old: &[f32]) -> f64 {
    let (mut e, mut s) = (0f64, 0f64);
    for (a, b) in new.iter().zip(old) {
        e += ((a - b) as f64).powi(2);
        s += (*b as f64).powi(2);
    }
    if s > 0.0 {
        (e / s).sqrt()
    } else {
        0.0
    }
}

/// Re-packs every tensor of `package`; returns its new manifest, shard
/// files and per-tensor reports.
fn requantize(package: &LoadedPackage, label: &str, opts: &QuantizeOptions, reports: &mut Vec<TensorReport>) -> Result<(Manifest, Vec<(String, Vec<u8>)>), ConvertError> {
    let mut w = PackageWriter::new(opts.shard_bytes, opts.piece_bytes);
    for t in &package.manifest.tensors {
        let stored = t.quant().ok_or_else(|| ConvertError::BadInput { file: label.into(), reason: format!("{}: unknown format {:?}", t.name, t.format) })?;
        let data = package.tensor_f32(&t.name).expect("a validated tensor");
        let format = opts.format_for(&t.name, stored);
        let (rows, cols) = (t.rows(), t.cols());
        let importance = opts.importance.get(&t.name).map(|v| v.as_slice()).filter(|v| v.len() == cols);
        let gptq_factor = match (opts.rounding, format, opts.hessians.get(&t.name), importance) {
            (Rounding::Gptq, QuantFormat::Q8 | QuantFormat::Q4, Some(h), Some(_)) if h.len() == cols * cols => gptq::inverse_hessian_factor(h, cols),
            _ => None,
        };
        let packed = match (gptq_factor, importance) {
            (Some(u), Some(imp)) => gptq::pack_gptq(format, rows, cols, &data, &u, imp),
            _ => PackedMatrix::pack_with(format, rows, cols, &data, opts.rounding, importance),
        };
        let error = if format == stored { 0.0 } else { rel_rms(&packed.dequantize(), &data) };
        w.add_packed(&t.name, &t.shape, &packed);
        reports.push(TensorReport {
            package: label.into(),
            name: t.name.clone(),
            kind: tensor_kind(&t.name),
            from: stored.name(),
            to: format.name(),
            elements: (rows * cols) as u64,
            bytes: format.bytes(rows, cols),
            relative_rms_error: error,
        });
    }
    let (mut manifest, files) = w.finish(package.manifest.kind, package.manifest.config.clone());
    manifest.tokenizer = package.manifest.tokenizer.clone();
    manifest.prompt_template = package.manifest.prompt_template.clone();
    manifest.base_sha256 = package.manifest.base_sha256.clone();
    Ok((manifest, files))
}

/// [`write_package`], counting the manifest in the bytes written.
fn write(dir: &Path, manifest: &Manifest, files: &[(String, Vec<u8>)], extra: &[(String, Vec<u8>)]) -> Result<(Vec<u8>, u64), ConvertError> {
    let (text, bytes) = write_package(dir, manifest, files, extra)?;
    let total = bytes + text.len() as u64;
    Ok((text, total))
}

/// Re-stores `base` (into `out/base`) and each adapter (into `out/<its
/// folder name>`). With a base, every adapter must name it, and is
/// re-targeted to the new base.
pub fn quantize_packages(base: Option<&Path>, adapters: &[PathBuf], out: &Path, opts: &QuantizeOptions) -> Result<QuantizeReport, ConvertError> {
    if base.is_none() && adapters.is_empty() {
        return Err(ConvertError::BadInput { file: out.display().to_string(), reason: "nothing to quantize: give a base and/or adapters".into() });
    }
    let mut names: Vec<String> = Vec::new();
    for a in adapters {
        let name = a.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "adapter".into());
        if name == "base" || names.contains(&name) {
            return Err(ConvertError::BadInput { file: a.display().to_string(), reason: format!("two outputs would be named {:?}: rename the adapter folders", out.join(&name).display().to_string()) });
        }
        names.push(name);
    }
    let mut report = QuantizeReport { tensors: Vec::new(), packages: Vec::new() };
    let mut new_base_sha: Option<(String, String)> = None; // (old, new)
    if let Some(base_dir) = base {
        let package = LoadedPackage::read_dir(base_dir, PackageKind::Base)?;
        let (manifest, files) = requantize(&package, &base_dir.display().to_string(), opts, &mut report.tensors)?;
        let tokenizer = match &package.manifest.tokenizer {
            Some(t) => vec![(t.file.clone(), std::fs::read(base_dir.join(&t.file)).map_err(|e| ConvertError::Io(format!("{}: {e}", base_dir.join(&t.file).display())))?)],
            None => Vec::new(),
        };
        let dir = out.join("base");
        let (text, bytes) = write(&dir, &manifest, &files, &tokenizer)?;
        report.packages.push((dir.display().to_string(), bytes));
        new_base_sha = Some((package.manifest_sha256.clone(), sha256_hex(&text)));
    }
    for (adapter_dir, name) in adapters.iter().zip(&names) {
        let package = LoadedPackage::read_dir(adapter_dir, PackageKind::Adapter)?;
        let label = adapter_dir.display().to_string();
        if let Some((old, _)) = &new_base_sha {
            if package.manifest.base_sha256.as_deref() != Some(old.as_str()) {
                return Err(ConvertError::BadInput {
                    file: label,
                    reason: format!("this adapter was made for another base (base_sha256 {:?}, the given base's manifest is {old})", package.manifest.base_sha256),
                });
            }
        }
        let (mut manifest, files) = requantize(&package, &label, opts, &mut report.tensors)?;
        if let Some((_, new)) = &new_base_sha {
            manifest.base_sha256 = Some(new.clone());
        }
        let dir = out.join(name);
        let (_, bytes) = write(&dir, &manifest, &files, &[])?;
        report.packages.push((dir.display().to_string(), bytes));
    }
    Ok(report)
}

/// One calibration picture (CLIP-preprocessed pixels) and its instructions.
pub struct CalibrationItem {
    pub pixels: Vec<f32>,
    pub instructions: Vec<String>,
}

/// Calibration statistics, by tensor name: each input column's mean square
/// (for the weighted search) and, where the input is narrow enough, the
/// mean of x xᵀ (for GPTQ).
#[derive(Default)]
pub struct Calibration {
    pub importance: HashMap<String, Vec<f32>>,
    pub hessians: HashMap<String, Vec<f64>>,
    pub tokens: usize,
}

/// Runs the (source) model on every instruction, with its own greedy
/// answer appended, and collects the inputs' statistics of every decoder
/// linear and the output head. Tensors not listed (embedding, vision tower,
/// visual adapter) are weighed uniformly.
#[cfg(not(target_arch = "wasm32"))]
pub fn calibrate(model: &crate::model::Model, items: &[CalibrationItem], max_new_tokens: usize) -> Result<Calibration, crate::model::ModelError> {
    use crate::model::generate::GenerateOptions;
    let opts = GenerateOptions { max_new_tokens, temperature: 0.0, ..Default::default() };
    let mut sums: HashMap<String, (usize, bool, Vec<f64>)> = HashMap::new();
    let mut tokens_seen = 0usize;
    for item in items {
        let vision = model.encode_image(&item.pixels)?;
        let prefixes = model.prepare_image(&vision)?;
        for instruction in &item.instructions {
            let prompt = crate::text::prompt::format_prompt(instruction, None);
            let mut ids = model.base.tokenizer.encode_prompt(&prompt)?;
            let answer = model.generate_blocking(&prefixes, &ids, &opts, &mut |_, _| true)?;
            ids.extend(&answer.generated_ids);
            for m in model.linear_input_moments(&ids, &prefixes)? {
                for name in m.names {
                    let acc = sums.entry(name).or_insert_with(|| (m.cols, m.full, vec![0.0; m.sums.len()]));
                    acc.2.iter_mut().zip(&m.sums).for_each(|(a, s)| *a += s);
                }
            }
            tokens_seen += ids.len();
        }
    }
    let n = tokens_seen.max(1) as f64;
    let mut out = Calibration { tokens: tokens_seen, ..Default::default() };
    for (name, (cols, full, s)) in sums {
        let diag: Vec<f32> = if full { (0..cols).map(|i| (s[i * cols + i] / n) as f32).collect() } else { s.iter().map(|v| (v / n) as f32).collect() };
        out.importance.insert(name.clone(), diag);
        if full {
            out.hessians.insert(name, s.iter().map(|v| v / n).collect());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob() {
        assert!(glob_match("output.weight", "output.weight"));
        assert!(!glob_match("output.weight", "output.weight2"));
        assert!(glob_match("layers.*.feed_forward.w2.weight", "layers.11.feed_forward.w2.weight"));
        assert!(!glob_match("layers.*.feed_forward.w2.weight", "layers.11.feed_forward.w3.weight"));
        assert!(glob_match("*", "anything"));
        assert!(glob_match("clip.*", "clip.conv1.weight"));
        assert!(glob_match("*.w*.weight", "layers.0.attention.wq.weight"));
        assert!(!glob_match("a*a", "a"));
    }
}
