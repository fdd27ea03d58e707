//! GPU context on wgpu: adapter choice, device limits and features, a pipeline
//! cache, buffer helpers, and a readback that works natively and on the web.
//!
//! Errors never panic: wgpu's uncaptured errors and device loss are recorded
//! here and turned into a [`GpuError`] at the next wait point (a readback, a
//! checked allocation, a pipeline build).

pub mod profile;
mod readback;

pub use readback::StagingReader;

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};


/// Everything that can go wrong on the GPU side, as a typed error.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GpuError {
    #[error("no GPU adapter found ({0}); on Linux install a Vulkan driver (Debian: `apt-get install mesa-vulkan-drivers`), in a browser enable WebGPU")]
    NoAdapter(String),
    #[error("the GPU adapter refused the device request: {0}")]
    RequestDevice(String),
    #[error("the GPU device was lost: {0}")]
    DeviceLost(String),
    #[error("out of GPU memory: {0}")]
    OutOfMemory(String),
    #[error("GPU validation error: {0}")]
    Validation(String),
    #[error("reading a GPU buffer back failed: {0}")]
    Readback(String),
    #[error("{what} needs {needed} bytes in one binding, but this device allows {limit}")]
    BindingTooLarge { what: String, needed: u64, limit: u64 },
    #[error("invalid kernel arguments: {0}")]
    InvalidArgument(String),
}

impl GpuError {
    /// The error's code in the JS API.
    pub fn code(&self) -> &'static str {
        match self {
            GpuError::NoAdapter(_) | GpuError::RequestDevice(_) => "no-webgpu",
            GpuError::DeviceLost(_) => "device-lost",
            GpuError::OutOfMemory(_) | GpuError::BindingTooLarge { .. } => "does-not-fit",
            GpuError::Validation(_) | GpuError::Readback(_) | GpuError::InvalidArgument(_) => "internal",
        }
    }
}

/// What the chosen adapter is and what it can do, as far as the kernels care.
#[derive(Debug, Clone)]
pub struct GpuInfo {
    pub name: String,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
    /// `shader-f16` is enabled on the device (only optional kernels use it).
    pub shader_f16: bool,
    /// Subgroup operations are enabled (reported; the portable kernels do not need them).
    pub subgroups: bool,
    /// Timestamp queries are enabled (used by the benchmarks).
    pub timestamps: bool,
    pub max_storage_binding: u64,
    pub max_buffer_size: u64,
    pub max_workgroup_storage: u32,
    pub max_invocations_per_workgroup: u32,
    pub max_storage_buffers_per_stage: u32,
}

impl GpuInfo {
    /// A device with WebGPU's default limits and no optional features (what
    /// a browser gives at the least), named `name`: for checks that need no
    /// real device (`fit` in tests and fuzzing).
    pub fn webgpu_defaults(name: &str) -> GpuInfo {
        GpuInfo {
            name: name.into(),
            backend: "none".into(),
            device_type: "none".into(),
            driver: String::new(),
            shader_f16: false,
            subgroups: false,
            timestamps: false,
            max_storage_binding: 128 << 20,
            max_buffer_size: 256 << 20,
            max_workgroup_storage: 16384,
            max_invocations_per_workgroup: 256,
            max_storage_buffers_per_stage: 8,
        }
    }
}

impl std::fmt::Display for GpuInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = if self.name.is_empty() { "(unnamed)" } else { &self.name };
        write!(
            f,
            "{name} [{} {}, driver {}] shader-f16={} subgroups={} timestamps={} \
             max_storage_binding={} MiB max_buffer={} MiB workgroup_storage={} B invocations={} storage_buffers/stage={}",
            self.backend,
            self.device_type,
            if self.driver.is_empty() { "?" } else { &self.driver },
            self.shader_f16,
            self.subgroups,
            self.timestamps,
            self.max_storage_binding >> 20,
            self.max_buffer_size >> 20,
            self.max_workgroup_storage,
            self.max_invocations_per_workgroup,
            self.max_storage_buffers_per_stage,
        )
    }
}

/// Options for [`GpuContext::new`].
#[derive(Debug, Clone, Default)]
pub struct GpuOptions {
    /// Do not enable `shader-f16` even where the adapter has it (tests the f32 path).
    pub disable_f16: bool,
    /// Pick the matmul shapes of a real GPU (GEMV, GEMM) even on a
    /// CPU-backed adapter, which would take the rowwise shape: the tests run
    /// the whole model through the kernels a real GPU takes.
    pub gpu_kernel_shapes: bool,
}

impl GpuOptions {
    /// Reads `LLAMA_ADAPTER_FORCE_F32=1` from the environment (native only).
    pub fn from_env() -> Self {
        #[cfg(not(target_arch = "wasm32"))]
        {
            let force = std::env::var("LLAMA_ADAPTER_FORCE_F32").map(|v| v == "1").unwrap_or(false);
            GpuOptions { disable_f16: force, ..Default::default() }
        }
        #[cfg(target_arch = "wasm32")]
        GpuOptions::default()
    }
}

/// The kind of each binding in a kernel's bind group, in binding order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Slot {
    Uniform,
    Read,
    ReadWrite,
}

/// A compute pipeline plus the layout of its single bind group.
#[derive(Clone)]
pub struct Kernel {
    pub label: String,
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
}

/// A kernel's uniform parameter block (binding 0 of every kernel): the
/// buffer and the words written to it. A decode plan rewrites the words that
/// move with the position ([`crate::model::plan`]).
pub struct ParamBlock {
    pub buffer: wgpu::Buffer,
    pub words: Vec<u32>,
}

/// One recorded-ready dispatch: pipeline, bound buffers and grid. Build once,
/// record as often as needed (decode reuses the same dispatches every token).
pub struct Dispatch {
    /// Which kernel (for profiles).
    pub label: String,
    pub pipeline: wgpu::ComputePipeline,
    pub bind_group: wgpu::BindGroup,
    pub workgroups: [u32; 3],
    pub params: ParamBlock,
}

/// GPU objects created through a context (the decode plan's test asserts
/// that a decode step creates none).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ObjectCounts {
    pub buffers: u64,
    pub bind_groups: u64,
    /// Queue submissions (each decode step should make exactly one).
    pub submits: u64,
    /// Compute pipelines compiled (cached by kernel, entry and constants).
    pub pipelines: u64,
    /// Of `buffers`, those made by [`GpuContext::activations`].
    pub activation_buffers: u64,
}

impl Dispatch {
    pub fn record(&self, pass: &mut wgpu::ComputePass<'_>) {
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &self.bind_group, &[]);
        pass.dispatch_workgroups(self.workgroups[0], self.workgroups[1], self.workgroups[2]);
    }
}

/// Size of the uniform window through which the rowwise matmul reads x: the
/// WebGPU default `maxUniformBufferBindingSize`.
pub const UNIFORM_WINDOW_BYTES: u64 = 65536;

/// wgpu's limit on workgroups per grid dimension.
pub const MAX_GRID_DIM: u32 = 65535;

/// A grid of `groups` workgroups folded into x and y (kernels rebuild the
/// linear index as `wid.y * nwg.x + wid.x` and skip the overhang).
pub fn grid_1d(groups: u32) -> [u32; 3] {
    let groups = groups.max(1);
    if groups <= MAX_GRID_DIM {
        [groups, 1, 1]
    } else {
        let y = groups.div_ceil(MAX_GRID_DIM);
        [groups.div_ceil(y), y, 1]
    }
}

type ErrorSlot = Arc<Mutex<Option<GpuError>>>;

/// The device, its queue, what it can do, and the compiled pipelines.
pub struct GpuContext {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: GpuInfo,
    modules: RefCell<HashMap<&'static str, wgpu::ShaderModule>>,
    kernels: RefCell<HashMap<String, Kernel>>,
    /// First fatal error seen by a wgpu callback (device lost, uncaptured error).
    fault: ErrorSlot,
    /// A 16-byte zeroed buffer bound where a kernel's optional input is absent.
    dummy: wgpu::Buffer,
    /// A zeroed uniform window, bound where a kernel reads x from storage instead.
    dummy_window: wgpu::Buffer,
    dummy_writable: wgpu::Buffer,
    /// Required alignment of a uniform binding's offset.
    pub uniform_offset_alignment: u64,
    /// The adapter runs on the CPU (lavapipe, SwiftShader) and the options
    /// did not ask for the GPU shapes: `MatmulShape::Auto` picks rowwise.
    pub cpu_kernel_shapes: bool,
    counts: RefCell<ObjectCounts>,
}

impl GpuContext {
    /// Picks the highest-performance adapter and creates a device with the
    /// limits a 7B model needs, where the adapter offers them.
    pub async fn new(options: GpuOptions) -> Result<GpuContext, GpuError> {
        #[cfg(not(target_arch = "wasm32"))]
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        #[cfg(target_arch = "wasm32")]
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
            backends: wgpu::Backends::BROWSER_WEBGPU,
            ..wgpu::InstanceDescriptor::new_without_display_handle()
        });
        let adapter = instance
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::HighPerformance,
                ..Default::default()
            })
            .await
            .map_err(|e| GpuError::NoAdapter(e.to_string()))?;
        Self::from_adapter(adapter, options).await
    }

    /// Creates the device on a given adapter.
    pub async fn from_adapter(adapter: wgpu::Adapter, options: GpuOptions) -> Result<GpuContext, GpuError> {
        let adapter_info = adapter.get_info();
        let offered = adapter.features();
        let offered_limits = adapter.limits();

        let mut features = wgpu::Features::empty();
        if offered.contains(wgpu::Features::SHADER_F16) && !options.disable_f16 {
            features |= wgpu::Features::SHADER_F16;
        }
        if offered.contains(wgpu::Features::SUBGROUP) {
            features |= wgpu::Features::SUBGROUP;
        }
        if offered.contains(wgpu::Features::TIMESTAMP_QUERY) {
            features |= wgpu::Features::TIMESTAMP_QUERY;
        }

        // Start from the WebGPU defaults (which every adapter offers) and raise
        // what a 7B model benefits from. The kernels are written to fit the
        // defaults: 256 invocations, 16 KiB workgroup memory, 8 storage
        // buffers per stage, 128 MiB per binding (large tensors are split).
        const GIB: u64 = 1 << 30;
        let mut limits = wgpu::Limits::default();
        limits.max_storage_buffer_binding_size = offered_limits
            .max_storage_buffer_binding_size
            .min(GIB)
            .max(limits.max_storage_buffer_binding_size.min(offered_limits.max_storage_buffer_binding_size));
        limits.max_buffer_size = offered_limits.max_buffer_size.min(4 * GIB);
        limits.max_storage_buffers_per_shader_stage = offered_limits.max_storage_buffers_per_shader_stage.min(10);
        limits.max_compute_workgroup_storage_size = offered_limits.max_compute_workgroup_storage_size.min(32768);
        // max_compute_invocations_per_workgroup stays at the default 256: the
        // portable kernels use no more (browsers allow no more).

        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("llama-adapter-web"),
                required_features: features,
                required_limits: limits.clone(),
                experimental_features: wgpu::ExperimentalFeatures::disabled(),
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await
            .map_err(|e| GpuError::RequestDevice(e.to_string()))?;

        let fault: ErrorSlot = Arc::new(Mutex::new(None));
        {
            let fault = fault.clone();
            device.set_device_lost_callback(move |reason, message| {
                let mut slot = fault.lock().unwrap_or_else(|p| p.into_inner());
                if slot.is_none() {
                    *slot = Some(GpuError::DeviceLost(format!("{reason:?}: {message}")));
                }
            });
        }
        {
            let fault = fault.clone();
            device.on_uncaptured_error(Arc::new(move |error: wgpu::Error| {
                let typed = match &error {
                    wgpu::Error::OutOfMemory { .. } => GpuError::OutOfMemory(error.to_string()),
                    _ => GpuError::Validation(error.to_string()),
                };
                let mut slot = fault.lock().unwrap_or_else(|p| p.into_inner());
                if slot.is_none() {
                    *slot = Some(typed);
                }
            }));
        }

        let info = GpuInfo {
            name: adapter_info.name.clone(),
            backend: format!("{:?}", adapter_info.backend),
            device_type: format!("{:?}", adapter_info.device_type),
            driver: format!("{} {}", adapter_info.driver, adapter_info.driver_info).trim().to_string(),
            shader_f16: features.contains(wgpu::Features::SHADER_F16),
            subgroups: features.contains(wgpu::Features::SUBGROUP),
            timestamps: features.contains(wgpu::Features::TIMESTAMP_QUERY),
            max_storage_binding: limits.max_storage_buffer_binding_size,
            max_buffer_size: limits.max_buffer_size,
            max_workgroup_storage: limits.max_compute_workgroup_storage_size,
            max_invocations_per_workgroup: limits.max_compute_invocations_per_workgroup,
            max_storage_buffers_per_stage: limits.max_storage_buffers_per_shader_stage,
        };
        let dummy = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("dummy"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        // A writable binding must not alias any other binding of a dispatch
        // (WebGPU), so an unused read-write slot gets a buffer of its own.
        let dummy_writable = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("dummy writable"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        let dummy_window = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("dummy window"),
            size: UNIFORM_WINDOW_BYTES,
            usage: wgpu::BufferUsages::UNIFORM,
            mapped_at_creation: false,
        });
        let cpu_kernel_shapes = info.device_type == "Cpu" && !options.gpu_kernel_shapes;
        Ok(GpuContext {
            device,
            queue,
            info,
            modules: RefCell::new(HashMap::new()),
            kernels: RefCell::new(HashMap::new()),
            fault,
            dummy,
            dummy_window,
            dummy_writable,
            uniform_offset_alignment: limits.min_uniform_buffer_offset_alignment as u64,
            cpu_kernel_shapes,
            counts: RefCell::new(ObjectCounts::default()),
        })
    }

    /// Native convenience: blocks on [`GpuContext::new`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn new_blocking(options: GpuOptions) -> Result<GpuContext, GpuError> {
        pollster::block_on(Self::new(options))
    }

    /// The first fatal error recorded by wgpu's callbacks, if any.
    pub fn check(&self) -> Result<(), GpuError> {
        match self.fault.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// A small zeroed storage buffer for optional inputs that are absent.
    pub fn dummy(&self) -> &wgpu::Buffer {
        &self.dummy
    }

    /// A small storage buffer for an unused read-write binding (never bound
    /// read-only, so it cannot alias another binding).
    pub fn dummy_writable(&self) -> &wgpu::Buffer {
        &self.dummy_writable
    }

    /// A zeroed [`UNIFORM_WINDOW_BYTES`] uniform buffer.
    pub fn dummy_window(&self) -> &wgpu::Buffer {
        &self.dummy_window
    }

    /// A compute kernel from a WGSL source, cached by (name, entry, constants).
    /// `constants` are WGSL `override` values.
    pub fn kernel(
        &self,
        name: &'static str,
        source: &'static str,
        entry: &str,
        slots: &[Slot],
        constants: &[(&str, f64)],
    ) -> Result<Kernel, GpuError> {
        let key = format!("{name}/{entry}/{constants:?}");
        if let Some(k) = self.kernels.borrow().get(&key) {
            return Ok(k.clone());
        }
        self.check()?;
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = self
            .modules
            .borrow_mut()
            .entry(name)
            .or_insert_with(|| {
                self.device.create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some(name),
                    source: wgpu::ShaderSource::Wgsl(source.into()),
                })
            })
            .clone();
        let entries: Vec<wgpu::BindGroupLayoutEntry> = slots
            .iter()
            .enumerate()
            .map(|(i, slot)| wgpu::BindGroupLayoutEntry {
                binding: i as u32,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: match slot {
                    Slot::Uniform => wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Uniform,
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                    Slot::Read | Slot::ReadWrite => wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Storage { read_only: *slot == Slot::Read },
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                },
                count: None,
            })
            .collect();
        let layout = self.device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some(name),
            entries: &entries,
        });
        let pipeline_layout = self.device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some(name),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let pipeline = self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(&key),
            layout: Some(&pipeline_layout),
            module: &module,
            entry_point: Some(entry),
            compilation_options: wgpu::PipelineCompilationOptions { constants, zero_initialize_workgroup_memory: false },
            cache: None,
        });
        if let Some(err) = pollster_free_pop(scope) {
            return Err(GpuError::Validation(format!("building kernel {key}: {err}")));
        }
        let kernel = Kernel { label: format!("{name}/{entry}"), pipeline, layout };
        self.counts.borrow_mut().pipelines += 1;
        self.kernels.borrow_mut().insert(key, kernel.clone());
        Ok(kernel)
    }

    /// Binds `params` (binding 0) and `buffers` (bindings 1..) to `kernel` and
    /// returns a dispatch over `workgroups`.
    pub fn dispatch(&self, kernel: &Kernel, params: ParamBlock, buffers: &[&wgpu::Buffer], workgroups: [u32; 3]) -> Dispatch {
        let bindings: Vec<wgpu::BindingResource> = buffers.iter().map(|b| b.as_entire_binding()).collect();
        self.dispatch_bindings(kernel, params, &bindings, workgroups)
    }

    /// Like [`GpuContext::dispatch`], with explicit binding ranges for bindings 1...
    pub fn dispatch_bindings(&self, kernel: &Kernel, params: ParamBlock, bindings: &[wgpu::BindingResource], workgroups: [u32; 3]) -> Dispatch {
        let mut entries = vec![wgpu::BindGroupEntry { binding: 0, resource: params.buffer.as_entire_binding() }];
        entries.extend(bindings.iter().enumerate().map(|(i, r)| wgpu::BindGroupEntry { binding: i as u32 + 1, resource: r.clone() }));
        let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor { label: None, layout: &kernel.layout, entries: &entries });
        self.counts.borrow_mut().bind_groups += 1;
        Dispatch { label: kernel.label.clone(), pipeline: kernel.pipeline.clone(), bind_group, workgroups, params }
    }

    /// How many buffers and bind groups this context has created.
    pub fn object_counts(&self) -> ObjectCounts {
        *self.counts.borrow()
    }

    /// Counts a buffer made outside the helpers below (staging buffers).
    pub(crate) fn count_buffer(&self) {
        self.counts.borrow_mut().buffers += 1;
    }

    /// Records `dispatches` in one compute pass and submits them.
    pub fn submit(&self, dispatches: &[&Dispatch]) -> Result<(), GpuError> {
        self.check()?;
        let mut encoder = self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: None, timestamp_writes: None });
            for d in dispatches {
                d.record(&mut pass);
            }
        }
        self.submit_encoder(encoder);
        Ok(())
    }

    /// Submits one recorded command encoder (counted in [`GpuContext::object_counts`]).
    pub fn submit_encoder(&self, encoder: wgpu::CommandEncoder) {
        self.counts.borrow_mut().submits += 1;
        self.queue.submit([encoder.finish()]);
    }

    /// A storage buffer holding `data` (also a copy source and destination).
    pub fn upload<T: bytemuck::Pod>(&self, label: &str, data: &[T]) -> wgpu::Buffer {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        if bytes.is_empty() {
            return self.storage(label, 16);
        }
        self.count_buffer();
        // Whole 16-byte words, so kernels may view any buffer as vec4s.
        // Created empty and written through the queue rather than mapped at
        // creation: on a lost device wgpu's mapped-at-creation path panics,
        // while a queue write just fails (the loss surfaces at the next check).
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: (bytes.len() as u64).next_multiple_of(16),
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        if bytes.len() % 4 == 0 {
            self.queue.write_buffer(&buffer, 0, bytes);
        } else {
            // Queue writes move whole 4-byte words.
            let mut padded = bytes.to_vec();
            padded.resize(bytes.len().next_multiple_of(4), 0);
            self.queue.write_buffer(&buffer, 0, &padded);
        }
        buffer
    }

    /// A zeroed storage buffer of `bytes` bytes (rounded up to 16).
    pub fn storage(&self, label: &str, bytes: u64) -> wgpu::Buffer {
        self.count_buffer();
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes.max(16).next_multiple_of(16),
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    /// A zeroed buffer for activations: storage, and also bindable as a
    /// uniform window ([`UNIFORM_WINDOW_BYTES`], so at least that large),
    /// which the CPU-adapter matmul reads far faster.
    pub fn activations(&self, label: &str, bytes: u64) -> wgpu::Buffer {
        self.count_buffer();
        self.counts.borrow_mut().activation_buffers += 1;
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            // A multiple of the offset alignment, so that a window can end
            // exactly at the end of the buffer.
            size: bytes.max(UNIFORM_WINDOW_BYTES).next_multiple_of(self.uniform_offset_alignment.max(16)),
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::UNIFORM
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    /// [`GpuContext::activations`] holding `data`.
    pub fn upload_activations(&self, label: &str, data: &[f32]) -> wgpu::Buffer {
        let buffer = self.activations(label, (data.len() * 4) as u64);
        self.queue.write_buffer(&buffer, 0, bytemuck::cast_slice(data));
        buffer
    }

    /// Like [`GpuContext::storage`], but a failed allocation is a typed error.
    pub async fn storage_checked(&self, label: &str, bytes: u64) -> Result<wgpu::Buffer, GpuError> {
        self.check()?;
        if bytes > self.info.max_buffer_size {
            return Err(GpuError::OutOfMemory(format!(
                "{label}: {bytes} bytes exceeds this device's largest buffer ({} bytes)",
                self.info.max_buffer_size
            )));
        }
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let buffer = self.storage(label, bytes);
        match scope.pop().await {
            Some(e) => Err(GpuError::OutOfMemory(format!("{label} ({bytes} bytes): {e}"))),
            None => Ok(buffer),
        }
    }

    /// A uniform buffer holding one parameter block (a struct of 4-byte fields).
    pub fn uniform<T: bytemuck::Pod>(&self, label: &str, value: &T) -> ParamBlock {
        self.count_buffer();
        let words: Vec<u32> = bytemuck::pod_collect_to_vec(bytemuck::bytes_of(value));
        // Written through the queue, not mapped at creation (see `upload`).
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: (words.len() as u64 * 4).next_multiple_of(16),
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        self.queue.write_buffer(&buffer, 0, bytemuck::cast_slice(&words));
        ParamBlock { buffer, words }
    }

    /// Copies `count` elements starting at element `offset` of `buffer` back to the CPU.
    pub async fn read<T: bytemuck::Pod>(&self, buffer: &wgpu::Buffer, offset: usize, count: usize) -> Result<Vec<T>, GpuError> {
        let size = std::mem::size_of::<T>();
        let reader = StagingReader::new(self, (count * size) as u64);
        reader.read(self, buffer, (offset * size) as u64, (count * size) as u64).await
    }

    /// Native convenience: blocks on [`GpuContext::read`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_blocking<T: bytemuck::Pod>(&self, buffer: &wgpu::Buffer, offset: usize, count: usize) -> Result<Vec<T>, GpuError> {
        pollster::block_on(self.read(buffer, offset, count))
    }

    /// Waits until all submitted work is done (native); a no-op on the web,
    /// where only a readback can wait.
    pub fn wait_idle(&self) -> Result<(), GpuError> {
        #[cfg(not(target_arch = "wasm32"))]
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| GpuError::DeviceLost(e.to_string()))?;
        self.check()
    }
}

/// Pops an error scope. Natively the future is ready at once; on the web,
/// pipeline errors surface later through the uncaptured-error slot instead.
fn pollster_free_pop(scope: wgpu::ErrorScopeGuard) -> Option<wgpu::Error> {
    #[cfg(not(target_arch = "wasm32"))]
    {
        pollster::block_on(scope.pop())
    }
    #[cfg(target_arch = "wasm32")]
    {
        drop(scope.pop());
        None
    }
}
