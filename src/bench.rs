//! Kernel benchmarks (native): `llama-adapter bench kernels`.
//!
//! GPU time comes from timestamp queries around a compute pass holding
//! `reps` back-to-back dispatches, where the adapter has them; otherwise from
//! wall time around submit + wait. Figures go to stdout and docs/PERFORMANCE.md.

use std::time::Instant;

use crate::format::quant::{PackedMatrix, QuantFormat};
use crate::gpu::{Dispatch, GpuContext, GpuError};
use crate::kernels::matmul::{matmul, resolve_shape, GpuMatrix, MatmulArgs, MatmulShape};
use crate::util::Rng;

/// How a time was measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clock {
    GpuTimestamps,
    WallClock,
}

impl Clock {
    pub fn name(self) -> &'static str {
        match self {
            Clock::GpuTimestamps => "gpu-timestamps",
            Clock::WallClock => "wall-clock",
        }
    }
}

/// Seconds per repetition of `dispatches`, recorded `reps` times in one pass
/// (after one warm-up submission).
pub fn time_dispatches(ctx: &GpuContext, dispatches: &[Dispatch], reps: usize) -> Result<(f64, Clock), GpuError> {
    let record = |encoder: &mut wgpu::CommandEncoder, timestamps: Option<wgpu::ComputePassTimestampWrites>| {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("bench"), timestamp_writes: timestamps });
        for _ in 0..reps {
            for d in dispatches {
                d.record(&mut pass);
            }
        }
    };
    // Warm-up: pipeline first use, memory residency.
    let mut warm = ctx.device.create_command_encoder(&Default::default());
    record(&mut warm, None);
    ctx.queue.submit([warm.finish()]);
    ctx.wait_idle()?;

    if ctx.info.timestamps {
        let queries = ctx.device.create_query_set(&wgpu::QuerySetDescriptor { label: Some("bench"), ty: wgpu::QueryType::Timestamp, count: 2 });
        let resolved = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("timestamps"),
            size: 16,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let mut encoder = ctx.device.create_command_encoder(&Default::default());
        record(
            &mut encoder,
            Some(wgpu::ComputePassTimestampWrites { query_set: &queries, beginning_of_pass_write_index: Some(0), end_of_pass_write_index: Some(1) }),
        );
        encoder.resolve_query_set(&queries, 0..2, &resolved, 0);
        ctx.queue.submit([encoder.finish()]);
        let ticks: Vec<u64> = ctx.read_blocking(&resolved, 0, 2)?;
        let ns = ticks[1].saturating_sub(ticks[0]) as f64 * ctx.queue.get_timestamp_period() as f64;
        if ns > 0.0 {
            return Ok((ns * 1e-9 / reps as f64, Clock::GpuTimestamps));
        }
    }
    let start = Instant::now();
    let mut encoder = ctx.device.create_command_encoder(&Default::default());
    record(&mut encoder, None);
    ctx.queue.submit([encoder.finish()]);
    ctx.wait_idle()?;
    Ok((start.elapsed().as_secs_f64() / reps as f64, Clock::WallClock))
}

/// One measured matmul configuration.
#[derive(Debug, Clone)]
pub struct MatmulFigure {
    pub shape: &'static str,
    pub format: QuantFormat,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub blocks: usize,
    pub weight_bytes: u64,
    pub seconds: f64,
    pub clock: Clock,
}

impl MatmulFigure {
    pub fn gbps(&self) -> f64 {
        self.weight_bytes as f64 / self.seconds / 1e9
    }
    pub fn gflops(&self) -> f64 {
        2.0 * (self.m * self.n * self.k) as f64 / self.seconds / 1e9
    }
}

/// Measures one matmul of a random `n × k` weight in `format` on `m` x rows.
pub fn bench_matmul(ctx: &GpuContext, format: QuantFormat, m: usize, n: usize, k: usize, shape: MatmulShape, reps: usize) -> Result<MatmulFigure, GpuError> {
    let mut rng = Rng::new(0x5eed ^ (n * 31 + k) as u64);
    let weights: Vec<f32> = (0..n * k).map(|_| rng.symmetric(0.05)).collect();
    let packed = PackedMatrix::pack(format, n, k, &weights);
    drop(weights);
    let weight = GpuMatrix::upload(ctx, "bench weight", &packed)?;
    drop(packed);
    let x: Vec<f32> = (0..m * k).map(|_| rng.symmetric(1.0)).collect();
    let x = ctx.upload_activations("bench x", &x);
    let y = ctx.activations("bench y", (m * n * 4) as u64);
    let args = MatmulArgs { x: &x, x_offset: 0, x_stride: k, m, weight: &weight, bias: None, scale: None, y: &y, y_offset: 0, y_stride: n, accumulate: false };
    let dispatches = matmul(ctx, &args, shape)?;
    let (seconds, clock) = time_dispatches(ctx, &dispatches, reps)?;
    Ok(MatmulFigure {
        shape: match resolve_shape(ctx, shape, m) { MatmulShape::Gemm => "gemm", MatmulShape::Rowwise => "rowwise", _ => "gemv" },
        format,
        m,
        n,
        k,
        blocks: weight.blocks.len(),
        weight_bytes: weight.bytes(),
        seconds,
        clock,
    })
}

/// Host memory bandwidth (GB/s) by copying a 256 MiB buffer on all cores: the
/// roofline of a CPU-backed adapter, whose "device memory" is host memory.
pub fn host_copy_bandwidth() -> f64 {
    const BYTES: usize = 256 << 20;
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let src = vec![1u8; BYTES];
    let mut dst = vec![0u8; BYTES];
    let chunk = BYTES / threads;
    let mut best = f64::MAX;
    for _ in 0..3 {
        let start = Instant::now();
        std::thread::scope(|scope| {
            for (d, s) in dst.chunks_mut(chunk).zip(src.chunks(chunk)) {
                scope.spawn(move || d.copy_from_slice(s));
            }
        });
        best = best.min(start.elapsed().as_secs_f64());
    }
    std::hint::black_box(&dst);
    // A copy reads and writes every byte.
    2.0 * BYTES as f64 / best / 1e9
}
