//! Native-only readers of the checkpoints users have, and the writer of the
//! web format.

pub mod checkpoint;
pub mod pickle;
pub mod quantize;
pub mod sentencepiece;
pub mod sources;
