//! The decode plan: one decode step's GPU work, built once per session (and
//! again only when the adapter or the picture changes), replayed every token.
//!
//! A step writes a few bytes (the token id, and the parameter words that
//! move with the position), records the prepared dispatches plus the argmax
//! (or the top-k summary for sampling) and the copy into a staging buffer,
//! submits once and maps once. No buffer or bind group is created per step
//! (`GpuContext::object_counts`; tests/decode_plan.rs holds it to that).
//!
//! Which words move: the plan builds the decode step at positions 0 and 1;
//! every parameter word that differs between the two is affine in the
//! position (RoPE's start, attention's key count, the KV-cache row a k/v
//! matmul writes), so `word(p) = word(0) + p·(word(1) − word(0))`. A third
//! build at the last position of the context checks that prediction for
//! every word of every dispatch, so a kernel whose parameters depended on
//! the position in any other way would fail the build, not decode wrongly.

use crate::gpu::{Dispatch, GpuError};
use crate::kernels::sampling::{self, top_k_words, TopK};

use super::decoder::{ForwardOutput, ImagePrefixes};
use super::{Model, ModelError};

/// Candidates of the top-k summary a sampling step reads back (520 bytes).
pub const PLAN_TOP_K: usize = 64;

/// A parameter block whose words move with the position.
struct Moving {
    dispatch: usize,
    at_zero: Vec<u32>,
    per_position: Vec<u32>,
}

/// What a step picks the next token with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pick {
    Greedy,
    /// The top-[`PLAN_TOP_K`] summary at this temperature.
    TopK { temperature: f32 },
}

/// What a step read back.
#[derive(Debug, Clone, PartialEq)]
pub enum StepResult {
    Token(u32),
    Summary(TopK),
}

pub struct DecodePlan {
    /// (adapter id, prefixes id) the plan was built for.
    pub key: (u64, u64),
    tokens: wgpu::Buffer,
    forward: Vec<Dispatch>,
    moving: Vec<Moving>,
    /// The step's logits and final hidden state.
    pub out: ForwardOutput,
    argmax: Dispatch,
    argmax_result: wgpu::Buffer,
    top_k: Option<(f32, Dispatch)>,
    top_k_result: wgpu::Buffer,
    /// Bytes of the top-k summary (k = PLAN_TOP_K, or the vocabulary if smaller).
    top_k_bytes: u64,
    staging: wgpu::Buffer,
    /// Reused per step for the moved parameter words (no allocation per token).
    words: Vec<u32>,
    /// Readback of the step in flight: bytes to read.
    pending: Option<(Pick, u64)>,
}

impl DecodePlan {
    /// Builds the plan of a one-token decode step for these prefixes.
    pub fn new(model: &Model, image: &ImagePrefixes) -> Result<DecodePlan, ModelError> {
        let ctx = &model.ctx;
        let context = model.config.llama.max_seq_len;
        if context < 2 {
            return Err(ModelError::BadInput("the context must hold at least 2 tokens to decode".into()));
        }
        let (forward, out) = model.forward_dispatches(&[0], 0, image, false)?;
        let (at_one, _) = model.forward_dispatches(&[0], 1, image, false)?;
        let last = context - 1;
        let (at_last, _) = model.forward_dispatches(&[0], last, image, false)?;
        let same_shape = |a: &[Dispatch], b: &[Dispatch]| {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.label == y.label && x.workgroups == y.workgroups && x.params.words.len() == y.params.words.len())
        };
        if !same_shape(&forward, &at_one) || !same_shape(&forward, &at_last) {
            return Err(GpuError::InvalidArgument("decode plan: the decode step's dispatches change with the position".into()).into());
        }
        let mut moving = Vec::new();
        for (i, ((d0, d1), dl)) in forward.iter().zip(&at_one).zip(&at_last).enumerate() {
            let (w0, w1, wl) = (&d0.params.words, &d1.params.words, &dl.params.words);
            let per_position: Vec<u32> = w0.iter().zip(w1).map(|(a, b)| b.wrapping_sub(*a)).collect();
            let predicted = w0.iter().zip(&per_position).map(|(a, s)| a.wrapping_add(s.wrapping_mul(last as u32)));
            if !predicted.eq(wl.iter().copied()) {
                return Err(GpuError::InvalidArgument(format!("decode plan: the parameters of {} are not affine in the position", d0.label)).into());
            }
            if per_position.iter().any(|s| *s != 0) {
                moving.push(Moving { dispatch: i, at_zero: w0.clone(), per_position });
            }
        }
        drop((at_one, at_last));
        let vocab = model.config.llama.vocab_size;
        let argmax_result = ctx.storage("plan argmax", 8);
        let argmax = sampling::argmax(ctx, &out.logits, 0, vocab, &argmax_result)?;
        let top_k_bytes = (top_k_words(PLAN_TOP_K.min(vocab)) * 4) as u64;
        let top_k_result = ctx.storage("plan top-k", top_k_bytes);
        let staging = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("plan staging"),
            size: (top_k_words(PLAN_TOP_K) * 4) as u64,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        ctx.count_buffer();
        ctx.check()?;
        Ok(DecodePlan {
            key: (model.adapter.id, image.id),
            tokens: out.tokens.clone(),
            forward,
            moving,
            out,
            argmax,
            argmax_result,
            top_k: None,
            top_k_result,
            top_k_bytes,
            staging,
            words: Vec::new(),
            pending: None,
        })
    }

    /// Dispatches per decode step (the forward pass and the pick).
    pub fn dispatches_per_step(&self) -> usize {
        self.forward.len() + 1
    }

    /// Parameter blocks rewritten per step.
    pub fn moving_blocks(&self) -> usize {
        self.moving.len()
    }

    /// Prepares the top-k dispatch for `temperature` (once per generation).
    fn top_k_for(&mut self, model: &Model, temperature: f32) -> Result<(), ModelError> {
        if self.top_k.as_ref().is_some_and(|(t, _)| *t == temperature) {
            return Ok(());
        }
        let vocab = model.config.llama.vocab_size;
        let d = sampling::top_k(&model.ctx, &self.out.logits, 0, vocab, PLAN_TOP_K.min(vocab), temperature, &self.top_k_result)?;
        self.top_k = Some((temperature, d));
        Ok(())
    }

    /// Writes the step's inputs and submits it: token `token` at `pos`.
    /// Returns at once; [`DecodePlan::finish`] awaits the result.
    pub fn submit(&mut self, model: &Model, token: u32, pos: usize, pick: Pick) -> Result<(), ModelError> {
        let ctx = &model.ctx;
        let cfg = &model.config.llama;
        if pos >= cfg.max_seq_len {
            return Err(ModelError::ContextOverflow { prompt: pos, new: 1, context: cfg.max_seq_len });
        }
        if token as usize >= cfg.vocab_size {
            return Err(ModelError::BadInput(format!("token id {token} is outside the vocabulary of {}", cfg.vocab_size)));
        }
        if let Pick::TopK { temperature } = pick {
            self.top_k_for(model, temperature)?;
        }
        ctx.check()?;
        ctx.queue.write_buffer(&self.tokens, 0, bytemuck::bytes_of(&token));
        let p = pos as u32;
        for m in &self.moving {
            self.words.clear();
            self.words.extend(m.at_zero.iter().zip(&m.per_position).map(|(a, s)| a.wrapping_add(s.wrapping_mul(p))));
            ctx.queue.write_buffer(&self.forward[m.dispatch].params.buffer, 0, bytemuck::cast_slice(&self.words));
        }
        let mut encoder = ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("decode step") });
        let (result, bytes) = {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("decode step"), timestamp_writes: None });
            for d in &self.forward {
                d.record(&mut pass);
            }
            match (pick, &self.top_k) {
                (Pick::TopK { .. }, Some((_, d))) => {
                    d.record(&mut pass);
                    (&self.top_k_result, self.top_k_bytes)
                }
                _ => {
                    self.argmax.record(&mut pass);
                    (&self.argmax_result, 8)
                }
            }
        };
        encoder.copy_buffer_to_buffer(result, 0, &self.staging, 0, bytes);
        ctx.submit_encoder(encoder);
        self.pending = Some((pick, bytes));
        Ok(())
    }

    /// Waits for the submitted step and reads its few bytes back.
    pub async fn finish(&mut self, model: &Model) -> Result<StepResult, ModelError> {
        let ctx = &model.ctx;
        let (pick, bytes) = self.pending.take().ok_or_else(|| ModelError::BadInput("finish without submit".into()))?;
        let (sender, receiver) = futures_channel::oneshot::channel();
        self.staging.map_async(wgpu::MapMode::Read, 0..bytes, move |r| {
            let _ = sender.send(r);
        });
        #[cfg(not(target_arch = "wasm32"))]
        ctx.device.poll(wgpu::PollType::wait_indefinitely()).map_err(|e| GpuError::DeviceLost(e.to_string()))?;
        let mapped = receiver.await;
        ctx.check()?;
        match mapped {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(GpuError::DeviceLost(format!("a readback could not be mapped: {e}")).into()),
            Err(_) => return Err(GpuError::DeviceLost("the readback was cancelled".into()).into()),
        }
        let words: Vec<u32> = {
            let view = self.staging.get_mapped_range(0..bytes).map_err(|e| GpuError::Readback(e.to_string()))?;
            bytemuck::pod_collect_to_vec(&view)
        };
        self.staging.unmap();
        Ok(match pick {
            Pick::Greedy => StepResult::Token(words[0]),
            Pick::TopK { .. } => StepResult::Summary(TopK::from_words(&words)),
        })
    }
}
