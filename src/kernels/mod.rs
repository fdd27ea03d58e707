//! Rust wrappers of the WGSL kernels: one file per kernel family. Each binds
//! buffers, checks shapes against the buffers, sizes the grid and returns
//! [`Dispatch`]es that the caller records (once, or every token).

pub mod attention;
pub mod elementwise;
pub mod embedding;
pub mod layernorm;
pub mod matmul;
pub mod rmsnorm;
pub mod rope;
pub mod sampling;

use crate::gpu::GpuError;

/// Elements of f32 a buffer holds.
pub(crate) fn f32_capacity(buffer: &wgpu::Buffer) -> u64 {
    buffer.size() / 4
}

/// Fails with a clear message unless `buffer` holds at least `needed` f32s.
pub(crate) fn require(buffer: &wgpu::Buffer, needed: u64, what: &str) -> Result<(), GpuError> {
    if f32_capacity(buffer) < needed {
        return Err(GpuError::InvalidArgument(format!(
            "{what}: needs {needed} elements but the buffer holds {}",
            f32_capacity(buffer)
        )));
    }
    Ok(())
}

pub(crate) fn to_u32(value: usize, what: &str) -> Result<u32, GpuError> {
    u32::try_from(value).map_err(|_| GpuError::InvalidArgument(format!("{what} = {value} does not fit in 32 bits")))
}
