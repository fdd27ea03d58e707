//! The LLaMA tokenizer through the `tokenizers` crate (compiled for native
//! and wasm32), loaded from the `tokenizer.json` the converter writes.

pub const BOS: u32 = 1;
pub const EOS: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("cannot load the tokenizer: {0}")]
    Load(String),
    #[error("cannot tokenize: {0}")]
    Encode(String),
}

/// Refuses the components the `tokenizers` crate (0.23) cannot run safely
/// from hostile JSON, each found by fuzzing (fuzz/regressions/tokenizer_json/):
/// a `Precompiled` normaliser (SentencePiece's compiled charsmap, which
/// T5-style unigram tokenizers carry and LLaMA's do not) panics instead of
/// failing when its data is malformed; a `Strip` decoder with a non-zero
/// `stop` panics when decoding a token shorter than `stop`; chained `Replace`
/// steps may grow a text exponentially (bounded by
/// [`crate::limits::MAX_TOKENIZER_TEXT_GROWTH`]). The first two are found by
/// their fields, not only their `"type"`: the crate also reads untagged
/// (legacy) components by shape. Only the pipeline components are walked,
/// not the vocabulary (whose tokens may be named anything).
fn refuse_unsafe_components(doc: &serde_json::Value) -> Result<(), TokenizerError> {
    fn walk(value: &serde_json::Value, at: &str) -> Result<(), TokenizerError> {
        match value {
            serde_json::Value::Object(map) => {
                if map.get("type").and_then(|t| t.as_str()) == Some("Precompiled") || map.contains_key("precompiled_charsmap") {
                    return Err(TokenizerError::Load(format!("{at}: a \"Precompiled\" normalizer is not supported (LLaMA's tokenizer has none)")));
                }
                // Strip's stop side indexes `len - i - 1` unchecked.
                if let Some(stop) = map.get("stop").filter(|_| map.contains_key("start") && map.contains_key("content")) {
                    if stop.as_u64() != Some(0) {
                        return Err(TokenizerError::Load(format!("{at}: a \"Strip\" decoder with \"stop\" {stop} is not supported (LLaMA's strips 1 space at the start, none at the end)")));
                    }
                }
                map.values().try_for_each(|v| walk(v, at))
            }
            serde_json::Value::Array(items) => items.iter().try_for_each(|v| walk(v, at)),
            _ => Ok(()),
        }
    }
    for part in ["normalizer", "pre_tokenizer", "post_processor", "decoder"] {
        if let Some(v) = doc.get(part) {
            walk(v, part)?;
        }
    }
    // Chained `Replace`s multiply a text's length (an empty pattern matches everywhere).
    use crate::limits::MAX_TOKENIZER_TEXT_GROWTH;
    fn growth(value: &serde_json::Value) -> f64 {
        match value {
            serde_json::Value::Object(map) => {
                // Found by shape (a pattern and a content), as the crate's untagged reading would take it.
                let own = match (map.get("pattern"), map.get("content").and_then(|c| c.as_str())) {
                    (Some(pattern), Some(content)) => {
                        let content = content.len() as f64;
                        match pattern.get("String").and_then(|p| p.as_str()) {
                            Some(p) if !p.is_empty() => (content / p.len() as f64).max(1.0),
                            _ => content + 1.0,
                        }
                    }
                    _ => 1.0,
                };
                map.values().fold(own, |g, v| g * growth(v))
            }
            serde_json::Value::Array(items) => items.iter().fold(1.0, |g, v| g * growth(v)),
            _ => 1.0,
        }
    }
    for part in ["normalizer", "decoder"] {
        let g = doc.get(part).map_or(1.0, growth);
        if g > MAX_TOKENIZER_TEXT_GROWTH {
            return Err(TokenizerError::Load(format!("{part}: its Replace steps may grow a text {g:.0}-fold; at most {MAX_TOKENIZER_TEXT_GROWTH}")));
        }
    }
    Ok(())
}

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
}

impl Tokenizer {
    /// Loads a `tokenizer.json` of at most
    /// [`crate::limits::MAX_TOKENIZER_JSON_BYTES`] (serde_json also bounds
    /// its nesting at 128).
    pub fn from_json(bytes: &[u8]) -> Result<Tokenizer, TokenizerError> {
        use crate::limits::MAX_TOKENIZER_JSON_BYTES;
        if bytes.len() as u64 > MAX_TOKENIZER_JSON_BYTES {
            return Err(TokenizerError::Load(format!("tokenizer.json is {} bytes; at most {MAX_TOKENIZER_JSON_BYTES}", bytes.len())));
        }
        // Parsed to a JSON value first, then checked, then deserialised from
        // the value: the `tokenizers` crate panics (`expect("Helper")`) on a
        // syntax error inside a decoder when it reads the text itself, and on
        // any malformed `Precompiled` normaliser. Found by fuzzing
        // (fuzz/regressions/tokenizer_json/).
        let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| TokenizerError::Load(format!("tokenizer.json is not JSON: {e}")))?;
        refuse_unsafe_components(&value)?;
        let inner: tokenizers::Tokenizer = serde_json::from_value(value).map_err(|e| TokenizerError::Load(e.to_string()))?;
        Ok(Tokenizer { inner })
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Token ids of `text`, as sentencepiece's `encode` (no BOS/EOS).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        if text.is_empty() {
            return Ok(Vec::new());
        }
        let enc = self.inner.encode(text, false).map_err(|e| TokenizerError::Encode(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// A prompt's ids: BOS, then the text (spec §4: bos=True, eos=False).
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let mut ids = vec![BOS];
        ids.extend(self.encode(text)?);
        Ok(ids)
    }

    /// Text of generated ids (stops before EOS, skips BOS).
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        let ids: Vec<u32> = ids.iter().copied().take_while(|t| *t != EOS).filter(|t| *t != BOS).collect();
        self.inner.decode(&ids, false).map_err(|e| TokenizerError::Encode(e.to_string()))
    }
}
