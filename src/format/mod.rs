//! Weight formats on the wire and on the GPU.

pub mod gptq;
pub mod package;
pub mod quant;
