//! Converts a SentencePiece BPE model (`tokenizer.model`, a protobuf) into a
//! Hugging Face `tokenizer.json` that the `tokenizers` crate loads on every
//! target. The conversion reproduces SentencePiece's encoding:
//!
//! * normaliser: prepend "▁" (the dummy prefix), replace " " by "▁";
//! * model: BPE over the pieces, where the merge of (a, b) exists when a, b
//!   and a+b are all normal pieces, ranked by the merged piece's score (higher
//!   first, which SentencePiece merges first), then by the ids of a and b;
//! * byte fallback: characters outside the vocabulary become `<0xXX>` pieces;
//! * control pieces (`<s>`, `</s>`) are never produced from text, as in
//!   `sp.encode`; the engine adds BOS itself.

use std::collections::HashMap;

use serde_json::json;

use crate::limits::{MAX_MERGE_WORK, MAX_PIECE_BYTES, MAX_SENTENCEPIECE_BYTES, MAX_SENTENCEPIECE_PIECES};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PieceType {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

#[derive(Debug, Clone)]
pub struct Piece {
    pub text: String,
    pub score: f32,
    pub kind: PieceType,
}

/// What we read from the model file.
#[derive(Debug, Clone)]
pub struct SentencePieceModel {
    pub pieces: Vec<Piece>,
    /// 1 = unigram, 2 = BPE (trainer_spec.model_type).
    pub model_type: u64,
    pub byte_fallback: bool,
    pub add_dummy_prefix: bool,
    pub remove_extra_whitespaces: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SentencePieceError {
    #[error("tokenizer model is not a valid SentencePiece protobuf: {0}")]
    Corrupt(String),
    #[error("unsupported SentencePiece model: {0}")]
    Unsupported(String),
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, SentencePieceError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.data.get(self.pos).ok_or_else(|| SentencePieceError::Corrupt("truncated varint".into()))?;
            self.pos += 1;
            v |= ((b & 0x7f) as u64) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(SentencePieceError::Corrupt("varint too long".into()))
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], SentencePieceError> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.data.len()).ok_or_else(|| SentencePieceError::Corrupt("truncated field".into()))?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    /// Next (field number, value) where value is a varint, a fixed32 or a
    /// length-delimited slice.
    fn field(&mut self) -> Result<Option<(u64, Field<'a>)>, SentencePieceError> {
        if self.pos >= self.data.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let value = match key & 7 {
            0 => Field::Varint(self.varint()?),
            1 => Field::Fixed64(self.bytes(8)?),
            2 => {
                let n = self.varint()? as usize;
                Field::Bytes(self.bytes(n)?)
            }
            5 => Field::Fixed32(u32::from_le_bytes(self.bytes(4)?.try_into().unwrap())),
            w => return Err(SentencePieceError::Corrupt(format!("wire type {w}"))),
        };
        Ok(Some((key >> 3, value)))
    }
}

enum Field<'a> {
    Varint(u64),
    Fixed32(u32),
    #[allow(dead_code)]
    Fixed64(&'a [u8]),
    Bytes(&'a [u8]),
}

impl SentencePieceModel {
    /// Parses a `tokenizer.model` of at most [`MAX_SENTENCEPIECE_BYTES`],
    /// with at most [`MAX_SENTENCEPIECE_PIECES`] pieces of at most
    /// [`MAX_PIECE_BYTES`] each (every length is checked against the data
    /// before it is used).
    pub fn parse(data: &[u8]) -> Result<SentencePieceModel, SentencePieceError> {
        if data.len() as u64 > MAX_SENTENCEPIECE_BYTES {
            return Err(SentencePieceError::Corrupt(format!("{} bytes; a tokenizer model is at most {MAX_SENTENCEPIECE_BYTES}", data.len())));
        }
        let mut model = SentencePieceModel {
            pieces: Vec::new(),
            model_type: 1,
            byte_fallback: false,
            add_dummy_prefix: true,
            remove_extra_whitespaces: true,
        };
        let mut r = Reader { data, pos: 0 };
        while let Some((field, value)) = r.field()? {
            match (field, value) {
                (1, Field::Bytes(b)) => {
                    if model.pieces.len() >= MAX_SENTENCEPIECE_PIECES {
                        return Err(SentencePieceError::Corrupt(format!("pieces: more than {MAX_SENTENCEPIECE_PIECES}")));
                    }
                    model.pieces.push(parse_piece(b, model.pieces.len())?)
                }
                (2, Field::Bytes(b)) => {
                    let mut t = Reader { data: b, pos: 0 };
                    while let Some((f, v)) = t.field()? {
                        match (f, v) {
                            (3, Field::Varint(v)) => model.model_type = v,
                            (35, Field::Varint(v)) => model.byte_fallback = v != 0,
                            _ => {}
                        }
                    }
                }
                (3, Field::Bytes(b)) => {
                    let mut n = Reader { data: b, pos: 0 };
                    while let Some((f, v)) = n.field()? {
                        match (f, v) {
                            (3, Field::Varint(v)) => model.add_dummy_prefix = v != 0,
                            (4, Field::Varint(v)) => model.remove_extra_whitespaces = v != 0,
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        if model.pieces.is_empty() {
            return Err(SentencePieceError::Corrupt("no pieces".into()));
        }
        Ok(model)
    }

    /// The Hugging Face `tokenizer.json` text.
    pub fn to_tokenizer_json(&self) -> Result<String, SentencePieceError> {
        if self.model_type != 2 {
            return Err(SentencePieceError::Unsupported(format!("model type {} (only BPE, as LLaMA's, is supported)", self.model_type)));
        }
        if self.remove_extra_whitespaces {
            return Err(SentencePieceError::Unsupported("remove_extra_whitespaces normalisation".into()));
        }
        let unk = self
            .pieces
            .iter()
            .find(|p| p.kind == PieceType::Unknown)
            .map(|p| p.text.clone())
            .ok_or_else(|| SentencePieceError::Unsupported("no unknown piece".into()))?;
        let mut vocab = serde_json::Map::new();
        let mut ids: HashMap<&str, usize> = HashMap::new();
        for (id, p) in self.pieces.iter().enumerate() {
            vocab.insert(p.text.clone(), json!(id));
            if p.kind == PieceType::Normal {
                ids.insert(p.text.as_str(), id);
            }
        }
        // Every split of a normal piece into two normal pieces is a merge:
        // looking them up costs about the square of each piece's length.
        let work: u64 = ids.keys().map(|t| (t.len() as u64).pow(2)).sum();
        if work > MAX_MERGE_WORK {
            return Err(SentencePieceError::Unsupported(format!("the pieces are too long to build a merge table from (cost {work}, at most {MAX_MERGE_WORK})")));
        }
        let mut merges: Vec<(f32, usize, usize, usize)> = Vec::new();
        for (&text, &id) in &ids {
            for (cut, _) in text.char_indices().skip(1) {
                if let (Some(&a), Some(&b)) = (ids.get(&text[..cut]), ids.get(&text[cut..])) {
                    merges.push((self.pieces[id].score, id, a, b));
                }
            }
        }
        merges.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)).then(x.2.cmp(&y.2)).then(x.3.cmp(&y.3)));
        let merges: Vec<_> = merges.iter().map(|(_, _, a, b)| json!([self.pieces[*a].text, self.pieces[*b].text])).collect();
        let mut normalizers = Vec::new();
        if self.add_dummy_prefix {
            normalizers.push(json!({"type": "Prepend", "prepend": "▁"}));
        }
        normalizers.push(json!({"type": "Replace", "pattern": {"String": " "}, "content": "▁"}));
        let mut decoders = vec![
            json!({"type": "Replace", "pattern": {"String": "▁"}, "content": " "}),
            json!({"type": "ByteFallback"}),
            json!({"type": "Fuse"}),
        ];
        if self.add_dummy_prefix {
            decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
        }
        let doc = json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": [],
            "normalizer": {"type": "Sequence", "normalizers": normalizers},
            "pre_tokenizer": null,
            "post_processor": null,
            "decoder": {"type": "Sequence", "decoders": decoders},
            "model": {
                "type": "BPE",
                "dropout": null,
                "unk_token": unk,
                "continuing_subword_prefix": null,
                "end_of_word_suffix": null,
                "fuse_unk": true,
                "byte_fallback": self.byte_fallback,
                "ignore_merges": false,
                "vocab": vocab,
                "merges": merges,
            }
        });
        Ok(doc.to_string())
    }
}

fn parse_piece(b: &[u8], index: usize) -> Result<Piece, SentencePieceError> {
    let mut r = Reader { data: b, pos: 0 };
    let mut piece = Piece { text: String::new(), score: 0.0, kind: PieceType::Normal };
    while let Some((f, v)) = r.field()? {
        match (f, v) {
            (1, Field::Bytes(s)) => {
                if s.len() > MAX_PIECE_BYTES {
                    return Err(SentencePieceError::Corrupt(format!("piece {index}: {} bytes; a piece is at most {MAX_PIECE_BYTES}", s.len())));
                }
                piece.text = std::str::from_utf8(s).map_err(|_| SentencePieceError::Corrupt(format!("piece {index} is not UTF-8")))?.to_string()
            }
            (2, Field::Fixed32(bits)) => piece.score = f32::from_bits(bits),
            (3, Field::Varint(t)) => {
                piece.kind = match t {
                    1 => PieceType::Normal,
                    2 => PieceType::Unknown,
                    3 => PieceType::Control,
                    4 => PieceType::UserDefined,
                    5 => PieceType::Unused,
                    6 => PieceType::Byte,
                    other => return Err(SentencePieceError::Corrupt(format!("piece type {other}"))),
                }
            }
            _ => {}
        }
    }
    Ok(piece)
}
