//! Generation (spec §5): prefill the prompt at position 0, then one token at
//! a time; greedy (temperature 0) or temperature + top-p with a seed; stop at
//! EOS or after `max_new_tokens`; each token is streamed to a callback. A
//! step reads back a few bytes (the argmax, or the top-k summary).

use web_time::Instant;

use crate::kernels::sampling::{self, top_k_words, TopK};
use crate::reference;
use crate::text::tokenizer::EOS;
use crate::util::Rng;

use super::decoder::{ForwardOutput, ImagePrefixes};
use super::plan::{DecodePlan, Pick, StepResult};
use super::{Model, ModelError};

#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    /// 0 = greedy.
    pub temperature: f32,
    pub top_p: f32,
    pub seed: u64,
    /// Keep the full logits of every step (for `--dump-logits`; costs a
    /// 4·vocab-byte readback per step).
    pub keep_logits: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        // The official defaults (spec §5).
        GenerateOptions { max_new_tokens: 256, temperature: 0.1, top_p: 0.75, seed: 0, keep_logits: false }
    }
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Timings {
    pub prefill_ms: f64,
    pub decode_ms: f64,
    pub prefill_tokens_per_s: f64,
    pub decode_tokens_per_s: f64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Generation {
    pub prompt_ids: Vec<u32>,
    pub generated_ids: Vec<u32>,
    pub text: String,
    pub stopped_at_eos: bool,
    /// The caller's `on_token` asked to stop.
    pub stopped: bool,
    pub timings: Timings,
    #[serde(skip)]
    pub logits: Vec<Vec<f32>>,
}

/// Candidates read back per sampling step; more only when the nucleus is wider.
const SAMPLE_K: [usize; 2] = [64, sampling::MAX_TOP_K];

impl Model {
    /// Native convenience: blocks on [`Model::generate`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn generate_blocking(
        &self,
        image: &ImagePrefixes,
        prompt_ids: &[u32],
        opts: &GenerateOptions,
        on_token: &mut dyn FnMut(u32, &str) -> bool,
    ) -> Result<Generation, ModelError> {
        pollster::block_on(self.generate(image, prompt_ids, opts, on_token))
    }

    /// Generates from `prompt_ids` (BOS first) for an image's prefixes.
    /// Every wait is an await on a readback, so it runs on the web too.
    /// `on_token(id, new_text)` is called per token; returning false stops
    /// the generation there (`Generation::stopped`).
    pub async fn generate(
        &self,
        image: &ImagePrefixes,
        prompt_ids: &[u32],
        opts: &GenerateOptions,
        on_token: &mut dyn FnMut(u32, &str) -> bool,
    ) -> Result<Generation, ModelError> {
        let _busy = self.session.claim()?;
        let context = self.config.llama.max_seq_len;
        if prompt_ids.len() <= 1 {
            return Err(ModelError::BadInput("the prompt is empty".into()));
        }
        if prompt_ids.len() + opts.max_new_tokens > context {
            return Err(ModelError::ContextOverflow { prompt: prompt_ids.len(), new: opts.max_new_tokens, context });
        }
        let valid = opts.temperature >= 0.0 && opts.temperature.is_finite() && opts.top_p > 0.0 && opts.top_p <= 1.0;
        if !valid {
            return Err(ModelError::BadInput(format!("temperature {} must be ≥ 0 and top_p {} in (0, 1]", opts.temperature, opts.top_p)));
        }
        let mut rng = Rng::new(opts.seed);
        let mut generated = Vec::new();
        let mut logits_kept = Vec::new();
        let mut text = String::new();
        let mut stopped = false;
        let mut stopped_by_caller = false;

        let t0 = Instant::now();
        let out = self.forward(prompt_ids, 0, image, false)?;
        let mut next = self.choose(&out, opts, &mut rng, &mut logits_kept).await?;
        drop(out);
        let prefill = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        // Decode steps replay the session's plan (built once per adapter and picture).
        let mut plan: Option<DecodePlan> = None;
        let mut pos = prompt_ids.len();
        let result: Result<(), ModelError> = async {
            loop {
                if next == EOS {
                    stopped = true;
                    break;
                }
                generated.push(next);
                let full = self.base.tokenizer.decode(&generated)?;
                let go_on = on_token(next, full.get(text.len()..).unwrap_or(""));
                text = full;
                if !go_on {
                    stopped_by_caller = true;
                    break;
                }
                if generated.len() >= opts.max_new_tokens {
                    break;
                }
                if plan.is_none() {
                    plan = Some(self.session.take_plan(self, image)?);
                }
                let step_plan = plan.as_mut().expect("just built");
                next = self.decode_step(step_plan, next, pos, opts, &mut rng, &mut logits_kept).await?;
                pos += 1;
            }
            Ok(())
        }
        .await;
        if let Some(plan) = plan {
            self.session.put_plan(plan);
        }
        result?;
        let decode = t1.elapsed().as_secs_f64();
        let decoded_steps = generated.len().saturating_sub(1).max(1);
        Ok(Generation {
            prompt_ids: prompt_ids.to_vec(),
            generated_ids: generated,
            text,
            stopped_at_eos: stopped,
            stopped: stopped_by_caller,
            timings: Timings {
                prefill_ms: prefill * 1e3,
                decode_ms: decode * 1e3,
                prefill_tokens_per_s: prompt_ids.len() as f64 / prefill,
                decode_tokens_per_s: decoded_steps as f64 / decode.max(1e-9),
            },
            logits: logits_kept,
        })
    }

    /// Forced decoding: the logits that predict each token of `continuation`
    /// after `prompt_ids` (row i predicts `continuation[i]`), from one
    /// prefill of the prompt and all but the last continuation token. Greedy
    /// generation would give `continuation` exactly when every row's argmax
    /// is its token. For scoring a model against another's answers.
    pub async fn continuation_logits(&self, image: &ImagePrefixes, prompt_ids: &[u32], continuation: &[u32]) -> Result<Vec<Vec<f32>>, ModelError> {
        let _busy = self.session.claim()?;
        let context = self.config.llama.max_seq_len;
        if prompt_ids.is_empty() || continuation.is_empty() {
            return Err(ModelError::BadInput("forced decoding needs a prompt and a continuation".into()));
        }
        let tokens: Vec<u32> = prompt_ids.iter().chain(&continuation[..continuation.len() - 1]).copied().collect();
        if tokens.len() > context {
            return Err(ModelError::ContextOverflow { prompt: prompt_ids.len(), new: continuation.len(), context });
        }
        let out = self.forward_tail(&tokens, 0, image, continuation.len())?;
        let vocab = self.config.llama.vocab_size;
        let rows: Vec<f32> = self.ctx.read(&out.logits, 0, continuation.len() * vocab).await?;
        Ok(rows.chunks(vocab).map(|r| r.to_vec()).collect())
    }

    /// Creates every pipeline a generation uses (vision tower, prefixes,
    /// prefill at 2 and 8 rows — the matmul shapes change there — the decode
    /// step, argmax and top-k) without running GPU work, so that the first
    /// answer does not wait on shader compilation. The browser's `compile`
    /// load phase.
    pub fn compile_pipelines(&self) -> Result<(), ModelError> {
        let size = self.config.clip.image_size;
        let vision = self.encode_image_with(&vec![0.0; 3 * size * size], false)?;
        let prefixes = self.prepare_image_with(&vision, false)?;
        for rows in [2, 8.min(self.config.llama.max_seq_len)] {
            self.forward_dispatches(&vec![1; rows], 0, &prefixes, false)?;
        }
        let plan = DecodePlan::new(self, &prefixes)?;
        let vocab = self.config.llama.vocab_size;
        for k in SAMPLE_K {
            let result = self.ctx.storage("top-k", (top_k_words(k.min(vocab)) * 4) as u64);
            sampling::top_k(&self.ctx, &plan.out.logits, 0, vocab, k.min(vocab), 1.0, &result)?;
        }
        self.ctx.check()?;
        Ok(())
    }

    /// One decode step through the plan: token `token` at `pos` in, the next token out.
    async fn decode_step(&self, plan: &mut DecodePlan, token: u32, pos: usize, opts: &GenerateOptions, rng: &mut Rng, kept: &mut Vec<Vec<f32>>) -> Result<u32, ModelError> {
        let pick = if opts.temperature == 0.0 { Pick::Greedy } else { Pick::TopK { temperature: opts.temperature } };
        plan.submit(self, token, pos, pick)?;
        let result = plan.finish(self).await?;
        if opts.keep_logits {
            kept.push(self.ctx.read(&plan.out.logits, 0, self.config.llama.vocab_size).await?);
        }
        match result {
            StepResult::Token(t) => Ok(t),
            StepResult::Summary(summary) => {
                let u = rng.uniform();
                if let Some(t) = summary.sample_top_p(opts.temperature, opts.top_p as f64, u) {
                    return Ok(t);
                }
                // The nucleus is wider than the summary: the slow path, on the plan's logits.
                self.choose_wide(&plan.out, opts, u).await
            }
        }
    }

    /// The next token from the last row of `out`.
    async fn choose(&self, out: &ForwardOutput, opts: &GenerateOptions, rng: &mut Rng, kept: &mut Vec<Vec<f32>>) -> Result<u32, ModelError> {
        let vocab = self.config.llama.vocab_size;
        let offset = (out.rows - 1) * vocab;
        if opts.keep_logits {
            kept.push(self.ctx.read(&out.logits, offset, vocab).await?);
        }
        if opts.temperature == 0.0 {
            return self.argmax_token(out).await;
        }
        let u = rng.uniform();
        self.choose_wide(out, opts, u).await
    }

    /// Temperature + top-p with uniform draw `u`, reading back as few candidates as the nucleus needs.
    async fn choose_wide(&self, out: &ForwardOutput, opts: &GenerateOptions, u: f64) -> Result<u32, ModelError> {
        let vocab = self.config.llama.vocab_size;
        let offset = (out.rows - 1) * vocab;
        let ctx = &self.ctx;
        for k in SAMPLE_K {
            let k = k.min(vocab);
            let result = ctx.storage("top-k", (top_k_words(k) * 4) as u64);
            let dsp = sampling::top_k(ctx, &out.logits, offset, vocab, k, opts.temperature, &result)?;
            ctx.submit(&[&dsp])?;
            let summary = TopK::from_words(&ctx.read::<u32>(&result, 0, top_k_words(k)).await?);
            if let Some(token) = summary.sample_top_p(opts.temperature, opts.top_p as f64, u) {
                return Ok(token);
            }
        }
        // The nucleus is wider than MAX_TOP_K candidates: sample on the full row.
        let row: Vec<f32> = self.ctx.read(&out.logits, offset, vocab).await?;
        Ok(reference::sampling::sample_top_p(&row, opts.temperature, opts.top_p as f64, u))
    }
}
