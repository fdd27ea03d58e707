//! The wasm-bindgen surface (wasm32 only). Errors cross into JS as `Error`
//! objects with a message, never as a panic.

use wasm_bindgen::prelude::*;

use crate::gpu::{GpuContext, GpuOptions};

/// What the browser's WebGPU adapter is and can do, as a JS object.
#[derive(serde::Serialize)]
struct AdapterReport {
    name: String,
    backend: String,
    shader_f16: bool,
    subgroups: bool,
    timestamps: bool,
    max_storage_binding: u64,
    max_buffer_size: u64,
    summary: String,
}

/// Opens the GPU and describes the adapter.
#[wasm_bindgen(js_name = gpuInfo)]
pub async fn gpu_info() -> Result<JsValue, JsError> {
    let ctx = GpuContext::new(GpuOptions::default()).await.map_err(|e| JsError::new(&e.to_string()))?;
    let i = &ctx.info;
    let report = AdapterReport {
        name: i.name.clone(),
        backend: i.backend.clone(),
        shader_f16: i.shader_f16,
        subgroups: i.subgroups,
        timestamps: i.timestamps,
        max_storage_binding: i.max_storage_binding,
        max_buffer_size: i.max_buffer_size,
        summary: i.to_string(),
    };
    serde_wasm_bindgen::to_value(&report).map_err(|e| JsError::new(&e.to_string()))
}
