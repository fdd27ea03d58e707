//! Shared helpers for the GPU kernel tests.
#![allow(dead_code)]

use llama_adapter_web::gpu::{Dispatch, GpuContext, GpuOptions};

thread_local! {
    /// One device per test thread (GpuContext is not Sync); created on first use.
    static CTX: &'static GpuContext = Box::leak(Box::new(open_gpu()));
}

fn open_gpu() -> GpuContext {
    match GpuContext::new_blocking(GpuOptions::from_env()) {
        Ok(ctx) => ctx,
        Err(e) => panic!(
            "These tests need a GPU adapter and none could be opened: {e}\n\
             On Debian/Ubuntu without a GPU install the software Vulkan driver: apt-get install mesa-vulkan-drivers"
        ),
    }
}

pub fn gpu() -> &'static GpuContext {
    CTX.with(|c| *c)
}

/// A fresh context that picks a real GPU's matmul shapes (GEMV, GEMM) even
/// on a CPU-backed adapter.
pub fn gpu_with_gpu_kernel_shapes() -> GpuContext {
    GpuContext::new_blocking(GpuOptions { gpu_kernel_shapes: true, ..GpuOptions::from_env() }).expect("a GPU adapter")
}

/// A fresh context of its own (for APIs that take ownership).
pub fn gpu_shared() -> GpuContext {
    open_gpu()
}

/// Submits the dispatches and waits.
pub fn run(ctx: &GpuContext, dispatches: &[Dispatch]) {
    let refs: Vec<&Dispatch> = dispatches.iter().collect();
    ctx.submit(&refs).expect("submit");
    ctx.wait_idle().expect("wait");
}

pub fn read_f32(ctx: &GpuContext, buffer: &wgpu::Buffer, n: usize) -> Vec<f32> {
    ctx.read_blocking(buffer, 0, n).expect("readback")
}

/// Asserts |got − want| ≤ tol(i) for every element, reporting the worst one.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], tol: impl Fn(usize) -> f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst: Option<(usize, f64, f64)> = None;
    for i in 0..got.len() {
        let err = (got[i] as f64 - want[i] as f64).abs();
        let t = tol(i);
        if !(err <= t) {
            let ratio = err / t;
            if worst.map_or(true, |(_, r, _)| ratio > r) {
                worst = Some((i, ratio, err));
            }
        }
    }
    if let Some((i, ratio, err)) = worst {
        panic!(
            "{what}: element {i}: got {} want {} (error {err:.3e} is {ratio:.2}x the tolerance {:.3e})",
            got[i],
            want[i],
            tol(i)
        );
    }
}

/// Reads a little-endian, C-order .npy file of f32 or i32 (as f32) values.
pub fn read_npy(path: &str) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert_eq!(&bytes[..6], b"\x93NUMPY", "{path}: not an npy file");
    let (header_len, start) = if bytes[6] == 1 {
        (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10)
    } else {
        (u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize, 12)
    };
    let header = std::str::from_utf8(&bytes[start..start + header_len]).unwrap();
    assert!(header.contains("'fortran_order': False"), "{path}: Fortran order");
    let shape_text = header.split("'shape': (").nth(1).unwrap().split(')').next().unwrap();
    let shape: Vec<usize> = shape_text.split(',').filter(|s| !s.trim().is_empty()).map(|s| s.trim().parse().unwrap()).collect();
    let data = &bytes[start + header_len..];
    let values = if header.contains("'<f4'") {
        data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
    } else if header.contains("'<i4'") {
        data.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap()) as f32).collect()
    } else {
        panic!("{path}: unsupported dtype in {header}")
    };
    (shape, values)
}
