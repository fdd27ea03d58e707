//! Plain CPU versions of every GPU kernel: the tests' oracle. Inputs and
//! outputs are f32 like the kernels'; sums are accumulated in f64 so that the
//! oracle's own rounding is negligible next to the tolerances.

pub mod attention;
pub mod elementwise;
pub mod embedding;
pub mod layernorm;
pub mod matmul;
pub mod rmsnorm;
pub mod rope;
pub mod sampling;
