//! llama-adapter-web: LLaMA-Adapter V2 on the user's GPU through wgpu, with
//! hand-written WGSL kernels, natively and in the browser (wasm32 + WebGPU).
//!
//! * [`gpu`]: device, limits and features, pipeline cache, async readback.
//! * [`kernels`]: one Rust wrapper per WGSL kernel family in `shaders/`.
//! * [`reference`]: plain CPU versions of every kernel (the tests' oracle).
//! * [`format`]: weight storage formats (f32, f16, q8, q4), packing, the web package format.
//! * [`model`]: config, weights, vision, decoder, generation.
//! * [`text`]: tokenizer and prompt template; [`image`]: CLIP preprocessing.
//! * `convert` (native): official checkpoints → packages.
//! * [`limits`]: every bound on a size read from a file; `fuzzing` (native):
//!   the fuzz harnesses, shared by `fuzz/` and `tests/fuzz_corpus.rs`.

pub mod format;
pub mod gpu;
pub mod image;
pub mod kernels;
pub mod model;
pub mod reference;
pub mod text;
pub mod util;
pub mod limits;
#[cfg(not(target_arch = "wasm32"))]
pub mod fuzzing;

#[cfg(not(target_arch = "wasm32"))]
pub mod convert;

#[cfg(not(target_arch = "wasm32"))]
pub mod bench;

#[cfg(target_arch = "wasm32")]
pub mod web;
