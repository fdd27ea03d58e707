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

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
}

impl Tokenizer {
    pub fn from_json(bytes: &[u8]) -> Result<Tokenizer, TokenizerError> {
        let inner = tokenizers::Tokenizer::from_bytes(bytes).map_err(|e| TokenizerError::Load(e.to_string()))?;
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
