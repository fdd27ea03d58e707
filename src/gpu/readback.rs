//! GPU -> CPU copies. `map_async` reports through a oneshot channel: natively
//! we poll the device until it fires; on the web the browser's event loop
//! resolves it while we await (a blocking poll there would deadlock).

use super::{GpuContext, GpuError};

/// A reusable MAP_READ staging buffer, so that a per-token readback does not
/// allocate.
pub struct StagingReader {
    buffer: wgpu::Buffer,
    capacity: u64,
}

impl StagingReader {
    pub fn new(ctx: &GpuContext, capacity: u64) -> StagingReader {
        let capacity = capacity.max(4).next_multiple_of(wgpu::COPY_BUFFER_ALIGNMENT);
        ctx.count_buffer();
        let buffer = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("staging"),
            size: capacity,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        StagingReader { buffer, capacity }
    }

    /// Copies `bytes` bytes at byte `offset` of `source` and returns them as `T`s.
    /// `offset` and `bytes` must be multiples of 4.
    pub async fn read<T: bytemuck::Pod>(
        &self,
        ctx: &GpuContext,
        source: &wgpu::Buffer,
        offset: u64,
        bytes: u64,
    ) -> Result<Vec<T>, GpuError> {
        if bytes == 0 {
            return Ok(Vec::new());
        }
        if bytes > self.capacity || offset % 4 != 0 || bytes % 4 != 0 || offset + bytes > source.size() {
            return Err(GpuError::Readback(format!(
                "bad readback range: {bytes} bytes at {offset} from a {}-byte buffer into a {}-byte staging buffer",
                source.size(),
                self.capacity
            )));
        }
        ctx.check()?;
        let mut encoder = ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("readback") });
        encoder.copy_buffer_to_buffer(source, offset, &self.buffer, 0, bytes);
        ctx.submit_encoder(encoder);

        let (sender, receiver) = futures_channel::oneshot::channel();
        self.buffer.map_async(wgpu::MapMode::Read, 0..bytes, move |result| {
            let _ = sender.send(result);
        });
        #[cfg(not(target_arch = "wasm32"))]
        ctx.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| GpuError::DeviceLost(e.to_string()))?;
        let mapped = receiver.await;
        // A lost device or an earlier validation error explains a failed map best.
        ctx.check()?;
        match mapped {
            Ok(Ok(())) => {}
            // Our staging buffers are never destroyed or mapped twice, so a
            // failed map means the device went away (on the web the lost
            // callback may arrive only after this).
            Ok(Err(e)) => return Err(GpuError::DeviceLost(format!("a readback could not be mapped: {e}"))),
            Err(_) => return Err(GpuError::DeviceLost("the readback was cancelled".into())),
        }
        let out = {
            let view = self
                .buffer
                .get_mapped_range(0..bytes)
                .map_err(|e| GpuError::Readback(e.to_string()))?;
            bytemuck::pod_collect_to_vec::<u8, T>(&view)
        };
        self.buffer.unmap();
        Ok(out)
    }
}
