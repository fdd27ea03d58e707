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
