//! The wasm-bindgen surface (wasm32 only), driven by `www/src/worker.js`.
//!
//! JS fetches (network or Cache API) and Rust does the rest through the same
//! loader as the native tool ([`crate::model::loader`]): `beginLoad` parses
//! and checks the manifests and the fit, `allocate` creates the buffers,
//! `writeShard` verifies one shard and writes it to the GPU (the bytes are
//! dropped when it returns, so the wasm heap holds one shard at a time),
//! `finishLoad` builds the model and compiles its pipelines.
//!
//! Errors cross into JS as `Error` objects with a `code` property (see
//! `ModelError::code`); nothing here panics on bad input. Async methods
//! return promises built from `'static` futures over `Rc` state, and no
//! `RefCell` borrow is held across an await, so JS may call in at any time.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;

use crate::format::package::PackageKind;
use crate::gpu::{GpuContext, GpuError, GpuOptions};
use crate::image::{clip_crop, clip_normalize, decode_rgb8, ImageError};
use crate::model::decoder::ImagePrefixes;
use crate::model::generate::GenerateOptions;
use crate::model::loader::{adapter_host_names, base_host_names, fit, AdapterPlan, BasePlan, FitReport, PackagePlan, PackageUpload};
use crate::model::{format_code, AdapterModel, BaseModel, Model, ModelError};
use crate::text::prompt::format_prompt;

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_namespace = console, js_name = error)]
    fn console_error(message: &str);
}

/// A panic is a bug: say where in the console before the wasm traps (the
/// worker then reports code `internal` and starts afresh on the next load).
fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::panic::set_hook(Box::new(|info| console_error(&format!("llama-adapter-web: internal error (a bug, please report it): {info}"))));
    });
}

/// A JS `Error` with a `code` property.
fn js_error(code: &str, message: &str) -> JsValue {
    let error = js_sys::Error::new(message);
    error.set_name("LlamaAdapterError");
    let _ = js_sys::Reflect::set(&error, &"code".into(), &code.into());
    error.into()
}

fn model_error(e: &ModelError) -> JsValue {
    js_error(e.code(), &e.to_string())
}

fn to_js<T: serde::Serialize>(value: &T) -> Result<JsValue, JsValue> {
    value
        .serialize(&serde_wasm_bindgen::Serializer::json_compatible())
        .map_err(|e| js_error("internal", &format!("serialising a result: {e}")))
}

/// Whether this global (window or worker) has `navigator.gpu`.
fn has_navigator_gpu() -> bool {
    let global = js_sys::global();
    js_sys::Reflect::get(&global, &"navigator".into())
        .ok()
        .filter(|n| !n.is_undefined())
        .and_then(|n| js_sys::Reflect::get(&n, &"gpu".into()).ok())
        .is_some_and(|g| !g.is_undefined() && !g.is_null())
}

const NO_WEBGPU: &str = "This browser does not offer WebGPU, which runs the model on your GPU. Use Chrome or Edge 113+ (Windows, macOS, ChromeOS, Android), \
Chrome on Linux with chrome://flags/#enable-unsafe-webgpu (or --enable-unsafe-webgpu), Safari 26+, or Firefox 141+ on Windows; \
WebGPU also needs a secure page (https or localhost)";

async fn open_gpu() -> Result<GpuContext, JsValue> {
    if !has_navigator_gpu() {
        return Err(js_error("no-webgpu", NO_WEBGPU));
    }
    GpuContext::new(GpuOptions::default()).await.map_err(|e| match e {
        GpuError::NoAdapter(why) => js_error("no-webgpu", &format!("{NO_WEBGPU} (the browser has WebGPU but gave no adapter: {why})")),
        other => js_error(other.code(), &other.to_string()),
    })
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct AdapterReport {
    name: String,
    backend: String,
    device_type: String,
    shader_f16: bool,
    subgroups: bool,
    timestamps: bool,
    max_storage_binding: u64,
    max_buffer_size: u64,
    summary: String,
}

fn adapter_report(ctx: &GpuContext) -> AdapterReport {
    let i = &ctx.info;
    AdapterReport {
        name: i.name.clone(),
        backend: i.backend.clone(),
        device_type: i.device_type.clone(),
        shader_f16: i.shader_f16,
        subgroups: i.subgroups,
        timestamps: i.timestamps,
        max_storage_binding: i.max_storage_binding,
        max_buffer_size: i.max_buffer_size,
        summary: i.to_string(),
    }
}

/// Whether WebGPU works here, and the adapter if so. Never throws.
#[wasm_bindgen(js_name = checkSupport)]
pub async fn check_support() -> JsValue {
    #[derive(serde::Serialize)]
    struct Support {
        webgpu: bool,
        adapter: Option<AdapterReport>,
        reason: Option<String>,
    }
    let support = match open_gpu().await {
        Ok(ctx) => Support { webgpu: true, adapter: Some(adapter_report(&ctx)), reason: None },
        Err(e) => Support { webgpu: false, adapter: None, reason: Some(js_sys::Error::from(e).message().into()) },
    };
    to_js(&support).unwrap_or(JsValue::NULL)
}

/// A load in progress: plans, then buffers, then shards.
struct PendingLoad {
    base_plan: Option<BasePlan>,
    adapter_plan: AdapterPlan,
    base_upload: Option<PackageUpload>,
    adapter_upload: Option<PackageUpload>,
    tokenizer: Option<Vec<u8>>,
}

/// A picture given to `encodeImage`: its CLIP crop, and its prefixes for the
/// adapter that last used it.
struct ImageEntry {
    crop: ::image::RgbImage,
    prefixes: Option<Rc<ImagePrefixes>>,
}

struct State {
    model: Option<Rc<Model>>,
    pending: Option<PendingLoad>,
    images: HashMap<u32, ImageEntry>,
    /// Prefixes of the all-zero picture (text-only prompts, spec §4).
    text_only: Option<Rc<ImagePrefixes>>,
    next_image: u32,
}

struct Inner {
    ctx: Rc<GpuContext>,
    state: RefCell<State>,
    generating: Cell<bool>,
    /// Set by `destroyDevice`: every later failure is a lost device.
    destroyed: Cell<bool>,
}

impl Inner {
    fn fail(&self, e: &ModelError) -> JsValue {
        if self.destroyed.get() || self.ctx.check().is_err_and(|g| matches!(g, GpuError::DeviceLost(_))) {
            return js_error("device-lost", &format!("The GPU device was lost ({e}). Load the model again; if this repeats, close other GPU-heavy tabs or restart the browser."));
        }
        model_error(e)
    }

    fn model(&self) -> Result<Rc<Model>, JsValue> {
        self.state.borrow().model.clone().ok_or_else(|| js_error("bad-input", "no model is loaded yet: call load first"))
    }

    /// The prefixes of `handle`'s picture (or of the zero picture) for the
    /// current adapter, encoding it again if the adapter changed.
    async fn prefixes(&self, model: &Model, handle: Option<u32>) -> Result<Rc<ImagePrefixes>, JsValue> {
        let current = |p: &Option<Rc<ImagePrefixes>>| p.as_ref().filter(|p| p.adapter_id == model.adapter.id).cloned();
        let pixels = {
            let state = self.state.borrow();
            match handle {
                None => {
                    if let Some(p) = current(&state.text_only) {
                        return Ok(p);
                    }
                    let size = model.config.clip.image_size;
                    vec![0.0; 3 * size * size]
                }
                Some(h) => {
                    let entry = state.images.get(&h).ok_or_else(|| js_error("bad-input", &format!("image {h} is not known (released, or from another model)")))?;
                    if let Some(p) = current(&entry.prefixes) {
                        return Ok(p);
                    }
                    clip_normalize(&entry.crop, model.config.adapter.channel_order)
                }
            }
        };
        let vision = model.encode_image(&pixels).map_err(|e| self.fail(&e))?;
        let prefixes = Rc::new(model.prepare_image(&vision).map_err(|e| self.fail(&e))?);
        // A few bytes back: the picture's work is done (vision time is real) and a lost device shows here.
        model.ctx.read::<f32>(&vision.visual_tokens, 0, 1).await.map_err(|e| self.fail(&e.into()))?;
        let mut state = self.state.borrow_mut();
        match handle {
            None => state.text_only = Some(prefixes.clone()),
            Some(h) => {
                if let Some(entry) = state.images.get_mut(&h) {
                    entry.prefixes = Some(prefixes.clone());
                }
            }
        }
        Ok(prefixes)
    }

    async fn add_image(&self, img: ::image::RgbImage) -> Result<u32, JsValue> {
        let model = self.model()?;
        let size = model.config.clip.image_size as u32;
        if img.width() == 0 || img.height() == 0 {
            return Err(js_error("bad-input", "the picture has no pixels"));
        }
        let crop = clip_crop(&img, size);
        drop(img);
        let handle = {
            let mut state = self.state.borrow_mut();
            state.next_image += 1;
            let h = state.next_image;
            state.images.insert(h, ImageEntry { crop, prefixes: None });
            h
        };
        if let Err(e) = self.prefixes(&model, Some(handle)).await {
            self.state.borrow_mut().images.remove(&handle);
            return Err(e);
        }
        Ok(handle)
    }
}

/// The engine of one worker: a GPU device, the model on it, a load in progress.
#[wasm_bindgen]
pub struct Engine {
    inner: Rc<Inner>,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct ShardReport {
    file: String,
    bytes: u64,
    sha256: String,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct PackageReport {
    manifest_sha256: String,
    shards: Vec<ShardReport>,
    tokenizer: Option<ShardReport>,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct LoadPlanReport {
    base: Option<PackageReport>,
    adapter: PackageReport,
    fit: FitReport,
    total_bytes: u64,
}

fn package_report(plan: &PackagePlan) -> PackageReport {
    let m = &plan.manifest;
    PackageReport {
        manifest_sha256: plan.manifest_sha256.clone(),
        shards: m.shards.iter().map(|s| ShardReport { file: s.file.clone(), bytes: s.bytes, sha256: s.sha256.clone() }).collect(),
        tokenizer: m.tokenizer.as_ref().map(|t| ShardReport { file: t.file.clone(), bytes: t.bytes, sha256: t.sha256.clone() }),
    }
}

/// What `profileForward` takes from JS.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ProfileRequest {
    tokens: usize,
    position: usize,
    #[serde(default)]
    image: Option<u32>,
    #[serde(default)]
    reps: Option<usize>,
}

/// What `generate` takes from JS.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct GenerateRequest {
    prompt: String,
    #[serde(default)]
    input: Option<String>,
    #[serde(default)]
    image: Option<u32>,
    #[serde(default)]
    max_new_tokens: Option<usize>,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    top_p: Option<f32>,
    #[serde(default)]
    seed: Option<f64>,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct GenerateReport {
    prompt_ids: Vec<u32>,
    generated_ids: Vec<u32>,
    text: String,
    stopped_at_eos: bool,
    stopped: bool,
    timings: TimingsReport,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct TimingsReport {
    prefill_ms: f64,
    decode_ms: f64,
    prefill_tokens_per_s: f64,
    decode_tokens_per_s: f64,
}

fn promise<F>(future: F) -> js_sys::Promise
where
    F: std::future::Future<Output = Result<JsValue, JsValue>> + 'static,
{
    wasm_bindgen_futures::future_to_promise(future)
}

#[wasm_bindgen]
impl Engine {
    /// Opens the GPU device. Throws code `no-webgpu` where there is none.
    pub async fn create() -> Result<Engine, JsValue> {
        install_panic_hook();
        let ctx = open_gpu().await?;
        Ok(Engine {
            inner: Rc::new(Inner {
                ctx: Rc::new(ctx),
                state: RefCell::new(State { model: None, pending: None, images: HashMap::new(), text_only: None, next_image: 0 }),
                generating: Cell::new(false),
                destroyed: Cell::new(false),
            }),
        })
    }

    #[wasm_bindgen(js_name = adapterInfo)]
    pub fn adapter_info(&self) -> Result<JsValue, JsValue> {
        to_js(&adapter_report(&self.inner.ctx))
    }

    /// Bytes of the wasm linear memory (it only grows: this is the peak).
    #[wasm_bindgen(js_name = wasmMemoryBytes)]
    pub fn wasm_memory_bytes(&self) -> f64 {
        wasm_bindgen::memory().unchecked_into::<js_sys::WebAssembly::Memory>().buffer().unchecked_into::<js_sys::ArrayBuffer>().byte_length() as f64
    }

    /// Checks the manifests and the fit; no shard needed. `base_manifest`
    /// null keeps the base on the GPU and swaps the adapter only.
    #[wasm_bindgen(js_name = beginLoad)]
    pub fn begin_load(&self, base_manifest: Option<Vec<u8>>, adapter_manifest: Vec<u8>, base_label: Option<String>, adapter_label: Option<String>) -> Result<JsValue, JsValue> {
        let inner = &self.inner;
        if inner.generating.get() {
            return Err(js_error("busy", "a generation is running; stop it or wait before loading"));
        }
        inner.ctx.check().map_err(|e| inner.fail(&e.into()))?;
        let fail = |e: crate::format::package::FormatError| js_error(format_code(&e), &e.to_string());
        let base_label = base_label.unwrap_or_else(|| "base manifest.json".into());
        let adapter_label = adapter_label.unwrap_or_else(|| "adapter manifest.json".into());
        let adapter_package = PackagePlan::parse(&adapter_label, &adapter_manifest, PackageKind::Adapter).map_err(fail)?;
        let (base_plan, adapter_plan) = match base_manifest {
            Some(bytes) => {
                let base = BasePlan::new(PackagePlan::parse(&base_label, &bytes, PackageKind::Base).map_err(fail)?).map_err(fail)?;
                let adapter = AdapterPlan::new(adapter_package, &base).map_err(fail)?;
                (Some(base), adapter)
            }
            None => {
                let model = inner.model().map_err(|_| js_error("bad-input", "no base is loaded: give a base manifest"))?;
                let b = &model.base;
                (None, AdapterPlan::for_base(adapter_package, &b.llama, &b.clip, &b.manifest_sha256).map_err(fail)?)
            }
        };
        let mut packages = vec![&adapter_plan.package];
        if let Some(b) = &base_plan {
            packages.insert(0, &b.package);
        }
        let report = fit(&adapter_plan.config, &packages, &inner.ctx.info, None).map_err(|e| {
            // Needed vs offered, as numbers a page can show.
            let error = js_error("does-not-fit", &e.to_string());
            let r = &e.report;
            for (key, value) in [
                ("totalBytes", r.total_bytes),
                ("largestBinding", r.largest_binding),
                ("maxStorageBinding", r.max_storage_binding),
                ("maxBufferSize", r.max_buffer_size),
            ] {
                let _ = js_sys::Reflect::set(&error, &key.into(), &(value as f64).into());
            }
            error
        })?;
        let total_bytes = packages.iter().map(|p| p.transfer_bytes()).sum();
        let plan = LoadPlanReport { base: base_plan.as_ref().map(|b| package_report(&b.package)), adapter: package_report(&adapter_plan.package), fit: report, total_bytes };
        inner.state.borrow_mut().pending = Some(PendingLoad { base_plan, adapter_plan, base_upload: None, adapter_upload: None, tokenizer: None });
        to_js(&plan)
    }

    /// Creates the GPU buffers of the pending load.
    pub fn allocate(&self) -> js_sys::Promise {
        let inner = self.inner.clone();
        promise(async move {
            let (base_plan, adapter_plan) = {
                let state = inner.state.borrow();
                let p = state.pending.as_ref().ok_or_else(|| js_error("bad-input", "allocate before beginLoad"))?;
                (p.base_plan.as_ref().map(|b| (b.package.clone(), crate::model::layers::base_fusions(b.llama.n_layers))), p.adapter_plan.clone())
            };
            let ctx = &inner.ctx;
            let base_upload = match &base_plan {
                Some((b, fusions)) => Some(PackageUpload::allocate(ctx, b, &base_host_names(), fusions).await.map_err(|e| inner.fail(&e.into()))?),
                None => None,
            };
            let adapter_fusions = crate::model::layers::adapter_fusions(ctx, &adapter_plan.package.manifest, &adapter_plan.config);
            let adapter_upload = PackageUpload::allocate(ctx, &adapter_plan.package, &adapter_host_names(&adapter_plan.config), &adapter_fusions).await.map_err(|e| inner.fail(&e.into()))?;
            let mut state = inner.state.borrow_mut();
            let p = state.pending.as_mut().ok_or_else(|| js_error("aborted", "the load was cancelled"))?;
            p.base_upload = base_upload;
            p.adapter_upload = Some(adapter_upload);
            Ok(JsValue::UNDEFINED)
        })
    }

    /// Verifies shard `index` of `package` ("base" or "adapter") and writes it to the GPU.
    #[wasm_bindgen(js_name = writeShard)]
    pub fn write_shard(&self, package: &str, index: usize, bytes: &[u8]) -> Result<(), JsValue> {
        let inner = &self.inner;
        let mut state = inner.state.borrow_mut();
        let p = state.pending.as_mut().ok_or_else(|| js_error("bad-input", "writeShard before beginLoad"))?;
        let upload = match package {
            "base" => p.base_upload.as_mut(),
            "adapter" => p.adapter_upload.as_mut(),
            other => return Err(js_error("bad-input", &format!("package {other:?}: expected \"base\" or \"adapter\""))),
        }
        .ok_or_else(|| js_error("bad-input", &format!("no {package} upload: call allocate first (and load a base for base shards)")))?;
        upload.write_shard(&inner.ctx, index, bytes).map_err(|e| inner.fail(&e.into()))
    }

    /// The base's tokenizer.json (checked against the manifest).
    #[wasm_bindgen(js_name = setTokenizer)]
    pub fn set_tokenizer(&self, bytes: Vec<u8>) -> Result<(), JsValue> {
        let mut state = self.inner.state.borrow_mut();
        let p = state.pending.as_mut().ok_or_else(|| js_error("bad-input", "setTokenizer before beginLoad"))?;
        let plan = p.base_plan.as_ref().ok_or_else(|| js_error("bad-input", "this load keeps the base: no tokenizer needed"))?;
        crate::model::loader::verify_tokenizer(plan, &bytes).map_err(|e| js_error(format_code(&e), &e.to_string()))?;
        p.tokenizer = Some(bytes);
        Ok(())
    }

    /// Builds the model from the written shards and compiles its pipelines.
    #[wasm_bindgen(js_name = finishLoad)]
    pub fn finish_load(&self) -> js_sys::Promise {
        let inner = self.inner.clone();
        promise(async move {
            let pending = inner.state.borrow_mut().pending.take().ok_or_else(|| js_error("bad-input", "finishLoad before beginLoad"))?;
            let ctx = inner.ctx.clone();
            let fail = |e: ModelError| inner.fail(&e);
            let adapter_upload = pending.adapter_upload.ok_or_else(|| js_error("bad-input", "finishLoad before allocate"))?;
            let adapter = Rc::new(AdapterModel::new(&pending.adapter_plan, adapter_upload).map_err(fail)?);
            let model = match (pending.base_plan, pending.base_upload) {
                (Some(plan), Some(upload)) => {
                    let tokenizer = pending.tokenizer.ok_or_else(|| js_error("bad-input", "finishLoad before setTokenizer"))?;
                    let base = Rc::new(BaseModel::new(&ctx, &plan, upload, &tokenizer).map_err(fail)?);
                    Model::assemble(ctx.clone(), base, adapter, None).map_err(fail)?
                }
                (None, _) => inner.model()?.with_adapter(adapter).map_err(fail)?,
                (Some(_), None) => return Err(js_error("bad-input", "finishLoad before allocate")),
            };
            let model = Rc::new(model);
            // Compile every pipeline now (nothing runs): the first answer must not wait on it.
            model.compile_pipelines().map_err(fail)?;
            // The browser may compile them after `createComputePipeline` has
            // returned (SwiftShader does: a load that did not wait here left
            // seconds of compiling to the first question, or to the next
            // load). A readback completes after every earlier GPU command, so
            // the compile phase ends when the pipelines exist.
            model.ctx.read::<u32>(&model.base.rope.buffer, 0, 1).await.map_err(|e| fail(e.into()))?;
            let mut state = inner.state.borrow_mut();
            let base_changed = state.model.as_ref().is_none_or(|m| !Rc::ptr_eq(&m.base, &model.base));
            if base_changed {
                // Pictures were cropped for the old base's input size.
                state.images.clear();
            }
            state.text_only = None;
            state.model = Some(model);
            Ok(JsValue::UNDEFINED)
        })
    }

    /// Drops a half-done load; the model loaded before (if any) stays usable.
    #[wasm_bindgen(js_name = cancelLoad)]
    pub fn cancel_load(&self) {
        self.inner.state.borrow_mut().pending = None;
    }

    /// Config and identity of the loaded model, or null.
    #[wasm_bindgen(js_name = modelInfo)]
    pub fn model_info(&self) -> Result<JsValue, JsValue> {
        #[derive(serde::Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Info<'a> {
            config: &'a crate::model::config::ModelConfig,
            base_sha256: &'a str,
            adapter_sha256: &'a str,
            gpu_bytes: u64,
        }
        match self.inner.state.borrow().model.as_ref() {
            Some(m) => to_js(&Info { config: &m.config, base_sha256: &m.base.manifest_sha256, adapter_sha256: &m.adapter.manifest_sha256, gpu_bytes: m.gpu_bytes }),
            None => Ok(JsValue::NULL),
        }
    }

    /// A PNG or JPEG file's bytes → an image handle (decoded as natively).
    #[wasm_bindgen(js_name = encodeImage)]
    pub fn encode_image(&self, bytes: Vec<u8>) -> js_sys::Promise {
        let inner = self.inner.clone();
        promise(async move {
            let img = decode_rgb8(&bytes).map_err(|e| image_error(&e))?;
            drop(bytes);
            Ok(inner.add_image(img).await?.into())
        })
    }

    /// RGBA8 pixels (ImageData, a canvas) → an image handle. Alpha is dropped, as PIL's convert("RGB") does.
    #[wasm_bindgen(js_name = encodeImageRgba)]
    pub fn encode_image_rgba(&self, rgba: Vec<u8>, width: u32, height: u32) -> js_sys::Promise {
        let inner = self.inner.clone();
        promise(async move {
            let expected = width as u64 * height as u64 * 4;
            if rgba.len() as u64 != expected || expected == 0 {
                return Err(js_error("bad-input", &format!("{} bytes of RGBA for a {width}×{height} picture (expected {expected})", rgba.len())));
            }
            let rgb: Vec<u8> = rgba.chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).collect();
            drop(rgba);
            let img = ::image::RgbImage::from_raw(width, height, rgb).ok_or_else(|| js_error("bad-input", "the pixels do not fit the size"))?;
            Ok(inner.add_image(img).await?.into())
        })
    }

    #[wasm_bindgen(js_name = releaseImage)]
    pub fn release_image(&self, handle: u32) {
        self.inner.state.borrow_mut().images.remove(&handle);
    }

    /// Generates; `on_token(id, text)` per token, returning false stops.
    /// Resolves to ids, text and timings.
    pub fn generate(&self, request: JsValue, on_token: js_sys::Function) -> js_sys::Promise {
        let inner = self.inner.clone();
        promise(async move {
            let request: GenerateRequest = serde_wasm_bindgen::from_value(request).map_err(|e| js_error("bad-input", &format!("generate options: {e}")))?;
            if inner.generating.replace(true) {
                return Err(js_error("busy", "a generation is already running on this model; wait for it or stop it first"));
            }
            let result = run_generate(&inner, request, on_token).await;
            inner.generating.set(false);
            result
        })
    }

    /// Bench hook: GPU time per kernel of one forward pass of `tokens` tokens
    /// from `position` (1 token: a decode step), each dispatch timed alone.
    /// Resolves to `[{label, workgroups, dispatches, ms}]`.
    #[wasm_bindgen(js_name = profileForward)]
    pub fn profile_forward(&self, request: JsValue) -> js_sys::Promise {
        let inner = self.inner.clone();
        promise(async move {
            let request: ProfileRequest = serde_wasm_bindgen::from_value(request).map_err(|e| js_error("bad-input", &format!("profile options: {e}")))?;
            let model = inner.model()?;
            if inner.generating.replace(true) {
                return Err(js_error("busy", "a generation is running on this model; profile after it"));
            }
            let result = async {
                let prefixes = inner.prefixes(&model, request.image).await?;
                let kernels = model.profile_forward(request.tokens, request.position, &prefixes, request.reps.unwrap_or(5)).await.map_err(|e| inner.fail(&e))?;
                to_js(&kernels)
            }
            .await;
            inner.generating.set(false);
            result
        })
    }

    /// Test hook: a Rust panic, as a bug would cause (the wasm traps; the
    /// worker must report `internal` and the next load start afresh).
    #[wasm_bindgen(js_name = panicForTesting)]
    pub fn panic_for_testing(&self) {
        panic!("panicForTesting was called");
    }

    /// Test hook: destroys the GPU device, as a driver reset would.
    #[wasm_bindgen(js_name = destroyDevice)]
    pub fn destroy_device(&self) {
        self.inner.destroyed.set(true);
        self.inner.ctx.device.destroy();
    }
}

fn image_error(e: &ImageError) -> JsValue {
    js_error("bad-input", &format!("This is not a picture the model can read: {e}. Give a PNG or JPEG file, or an ImageBitmap / ImageData / canvas."))
}

async fn run_generate(inner: &Rc<Inner>, request: GenerateRequest, on_token: js_sys::Function) -> Result<JsValue, JsValue> {
    let model = inner.model()?;
    let defaults = GenerateOptions::default();
    let opts = GenerateOptions {
        max_new_tokens: request.max_new_tokens.unwrap_or(defaults.max_new_tokens),
        temperature: request.temperature.unwrap_or(defaults.temperature),
        top_p: request.top_p.unwrap_or(defaults.top_p),
        seed: request.seed.map_or(0, |s| if s.is_finite() && s >= 0.0 { s as u64 } else { 0 }),
        keep_logits: false,
    };
    if request.prompt.trim().is_empty() {
        return Err(js_error("bad-input", "the prompt is empty: type an instruction"));
    }
    let prompt = format_prompt(&request.prompt, request.input.as_deref().filter(|s| !s.trim().is_empty()));
    let ids = model.base.tokenizer.encode_prompt(&prompt).map_err(|e| inner.fail(&e.into()))?;
    let context = model.config.llama.max_seq_len;
    if ids.len() + opts.max_new_tokens > context {
        return Err(inner.fail(&ModelError::ContextOverflow { prompt: ids.len(), new: opts.max_new_tokens, context }));
    }
    let prefixes = inner.prefixes(&model, request.image).await?;
    let mut on_token = |id: u32, piece: &str| match on_token.call2(&JsValue::NULL, &id.into(), &piece.into()) {
        Ok(v) => v.as_bool() != Some(false),
        Err(_) => false,
    };
    let g = model.generate(&prefixes, &ids, &opts, &mut on_token).await.map_err(|e| inner.fail(&e))?;
    to_js(&GenerateReport {
        prompt_ids: g.prompt_ids,
        generated_ids: g.generated_ids,
        text: g.text,
        stopped_at_eos: g.stopped_at_eos,
        stopped: g.stopped,
        timings: TimingsReport {
            prefill_ms: g.timings.prefill_ms,
            decode_ms: g.timings.decode_ms,
            prefill_tokens_per_s: g.timings.prefill_tokens_per_s,
            decode_tokens_per_s: g.timings.decode_tokens_per_s,
        },
    })
}
