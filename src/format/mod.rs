//! Weight formats on the wire and on the GPU.

pub mod package;
pub mod quant;
