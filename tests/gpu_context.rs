//! The GPU context: adapter report, limits the kernels rely on, typed errors.

mod common;

use common::gpu;
use llama_adapter_web::gpu::{grid_1d, GpuError, Slot, StagingReader, MAX_GRID_DIM};

#[test]
fn adapter_is_reported_and_fits_the_kernels() {
    let ctx = gpu();
    println!("adapter: {}", ctx.info);
    assert!(!ctx.info.backend.is_empty());
    // What the portable kernels need (the WebGPU defaults).
    assert!(ctx.info.max_invocations_per_workgroup >= 256);
    assert!(ctx.info.max_workgroup_storage >= 16384);
    assert!(ctx.info.max_storage_buffers_per_stage >= 8);
    assert!(ctx.info.max_storage_binding >= 128 << 20);
}

#[test]
fn grid_folds_large_counts() {
    assert_eq!(grid_1d(0), [1, 1, 1]);
    assert_eq!(grid_1d(5), [5, 1, 1]);
    for groups in [65535u32, 65536, 1_000_000, 16_000_000] {
        let g = grid_1d(groups);
        assert!(g[0] <= MAX_GRID_DIM && g[1] <= MAX_GRID_DIM);
        assert!(g[0] as u64 * g[1] as u64 >= groups as u64, "{groups}: {g:?}");
    }
}

#[test]
fn bad_readback_range_is_an_error() {
    let ctx = gpu();
    let buf = ctx.storage("b", 64);
    let reader = StagingReader::new(ctx, 16);
    let err = pollster::block_on(reader.read::<u32>(ctx, &buf, 0, 32)).unwrap_err();
    assert!(matches!(err, GpuError::Readback(_)), "{err}");
    let err = ctx.read_blocking::<u32>(&buf, 10, 10).unwrap_err();
    assert!(matches!(err, GpuError::Readback(_)), "{err}");
    // A good range still works afterwards.
    assert_eq!(ctx.read_blocking::<u32>(&buf, 0, 16).unwrap(), vec![0; 16]);
}

#[test]
fn broken_shader_is_a_validation_error_not_a_panic() {
    let ctx = gpu();
    let err = ctx.kernel("broken", "@compute @workgroup_size(1) fn main() { let x: f32 = 1u; }", "main", &[Slot::Uniform], &[]).err();
    assert!(matches!(err, Some(GpuError::Validation(_))), "{err:?}");
}
