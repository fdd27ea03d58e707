//! Text side: tokenizer, prompt template.

pub mod prompt;
pub mod tokenizer;
