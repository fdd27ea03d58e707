//! GPU time per kernel, natively and on the web: each dispatch is submitted
//! once and then `1 + reps` times, each submission waited for with a 4-byte
//! readback, and the difference divided by `reps`. The subtraction removes
//! the submit and readback round trip (on the web, a trip through the
//! browser's GPU process), which timestamp queries would not need but which
//! the web does not always offer.

use web_time::Instant;

use super::readback::StagingReader;
use super::{Dispatch, GpuContext, GpuError};

/// One kernel's share of a forward pass: every dispatch with this label and grid.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KernelTime {
    pub label: String,
    pub workgroups: [u32; 3],
    pub dispatches: usize,
    /// GPU milliseconds over all of them.
    pub ms: f64,
}

/// Times each of `steps` alone (see the module comment), grouped by kernel
/// label and grid, in first-seen order. Timings below the clock's noise can
/// come out slightly negative; they are clamped to 0.
pub async fn time_each_dispatch(ctx: &GpuContext, steps: &[Dispatch], reps: usize) -> Result<Vec<KernelTime>, GpuError> {
    let reps = reps.max(1);
    let reader = StagingReader::new(ctx, 4);
    let sink = &ctx.storage("profile sink", 4);
    let run = |dispatch: &Dispatch, times: usize| {
        let mut encoder = ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("profile") });
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("profile"), timestamp_writes: None });
            for _ in 0..times {
                dispatch.record(&mut pass);
            }
        }
        ctx.submit_encoder(encoder);
    };
    // Warm-up: first use of every pipeline and buffer.
    for d in steps {
        run(d, 1);
    }
    reader.read::<u32>(ctx, sink, 0, 4).await?;

    let mut kernels: Vec<KernelTime> = Vec::new();
    for d in steps {
        let mut seconds = [0.0; 2];
        for (slot, times) in [1, 1 + reps].into_iter().enumerate() {
            let t = Instant::now();
            run(d, times);
            reader.read::<u32>(ctx, sink, 0, 4).await?;
            seconds[slot] = t.elapsed().as_secs_f64();
        }
        let ms = ((seconds[1] - seconds[0]) / reps as f64 * 1e3).max(0.0);
        match kernels.iter_mut().find(|k| k.label == d.label && k.workgroups == d.workgroups) {
            Some(k) => {
                k.dispatches += 1;
                k.ms += ms;
            }
            None => kernels.push(KernelTime { label: d.label.clone(), workgroups: d.workgroups, dispatches: 1, ms }),
        }
    }
    Ok(kernels)
}
