//! The decode plan (src/model/plan.rs): a decode step replays dispatches
//! built once, so after the first step no GPU buffer or bind group is
//! created, each step submits exactly once and reads back at most 1 KiB,
//! and the tokens are those of the step-by-step forward path (greedy) and
//! top-k summary of the step's own logits (sampling).

mod common;

use std::path::{Path, PathBuf};
use std::rc::Rc;

use common::gpu_shared;
use llama_adapter_web::convert::checkpoint::{convert, ConvertOptions};
use llama_adapter_web::format::quant::QuantFormat;
use llama_adapter_web::model::config::ChannelOrder;
use llama_adapter_web::model::plan::{DecodePlan, Pick, StepResult, PLAN_TOP_K};
use llama_adapter_web::model::Model;
use llama_adapter_web::text::prompt::format_prompt;

const FIX: &str = "tests/fixtures/tiny";

/// The tiny fixture with `adapter`, converted into a folder of this test's own
/// (`tag`: tests run in parallel and must not share one).
fn model(tag: &str, adapter: &str, quant: QuantFormat) -> Model {
    model_on(tag, adapter, quant, gpu_shared())
}

fn model_on(tag: &str, adapter: &str, quant: QuantFormat, ctx: llama_adapter_web::gpu::GpuContext) -> Model {
    let out: PathBuf = std::env::temp_dir().join(format!("la-plan-{}-{tag}-{adapter}-{}", std::process::id(), quant.name()));
    let _ = std::fs::remove_dir_all(&out);
    let opts = ConvertOptions { quant, v_num_heads: Some(2), channel_order: ChannelOrder::Rgb, ..Default::default() };
    convert(&Path::new(FIX).join("llama"), &Path::new(FIX).join("clip.pth"), &Path::new(FIX).join(format!("adapter_{adapter}.pth")), &out, &opts).unwrap();
    Model::load_dirs(Rc::new(ctx), &out.join("base"), &out.join("adapter")).unwrap()
}

fn picture(size: usize) -> Vec<f32> {
    let bytes = std::fs::read("tests/fixtures/images/franz-kafka.jpg").unwrap();
    llama_adapter_web::image::clip_preprocess(&bytes, size as u32, ChannelOrder::Rgb).unwrap()
}

/// The prefixes of the test picture for `model`.
fn kafka_prefixes(model: &Model) -> llama_adapter_web::model::decoder::ImagePrefixes {
    model.prepare_image(&model.encode_image(&picture(model.config.clip.image_size)).unwrap()).unwrap()
}

/// The token ids of `instruction` in the prompt template.
fn prompt_ids(model: &Model, instruction: &str) -> Vec<u32> {
    model.base.tokenizer.encode_prompt(&format_prompt(instruction, None)).unwrap()
}

fn token(r: StepResult) -> u32 {
    match r {
        StepResult::Token(t) => t,
        other => panic!("expected a token, got {other:?}"),
    }
}

#[test]
fn decode_steps_create_nothing_submit_once_and_match_the_forward_path() {
    // LoRA + new_gate: the adapter with the most dispatches per step.
    for adapter in ["lora", "early"] {
        let model = model("steps", adapter, QuantFormat::Q4);
        let ctx = model.ctx.clone();
        let prefixes = kafka_prefixes(&model);
        let prompt = prompt_ids(&model, "What is in this picture?");
        let out = model.forward(&prompt, 0, &prefixes, false).unwrap();
        let first = model.argmax_token_blocking(&out).unwrap();

        // Reference: every step rebuilt from scratch (the pre-plan path).
        let steps = 40;
        let mut want = vec![first];
        for i in 0..steps {
            let out = model.forward(&[*want.last().unwrap()], prompt.len() + i, &prefixes, false).unwrap();
            want.push(model.argmax_token_blocking(&out).unwrap());
        }

        let mut plan = DecodePlan::new(&model, &prefixes).unwrap();
        let mut got = vec![first];
        let mut after_first = None;
        for i in 0..steps {
            let before = ctx.object_counts();
            plan.submit(&model, *got.last().unwrap(), prompt.len() + i, Pick::Greedy).unwrap();
            got.push(token(pollster::block_on(plan.finish(&model)).unwrap()));
            let now = ctx.object_counts();
            assert_eq!(now.submits - before.submits, 1, "{adapter}: step {i} submitted {} times", now.submits - before.submits);
            match after_first {
                None => after_first = Some(now),
                Some(c) => assert_eq!((now.buffers, now.bind_groups), (c.buffers, c.bind_groups), "{adapter}: step {i} created GPU objects"),
            }
        }
        assert_eq!(got, want, "{adapter}: the plan decodes other tokens than the forward path");
        // The parameter blocks that move per step, per layer: the RoPE that
        // writes k and v into the cache row, and attention.
        let layers = model.config.llama.n_layers;
        assert_eq!(plan.moving_blocks(), 2 * layers, "{adapter}: moving parameter blocks");
        // Per layer: 2 RMSNorms, the fused q|k|v matmul, its RoPE, attention,
        // wo, the gated w1|w3 matmul, w2; then embedding, final norm, head,
        // argmax (issue #15's bar). LoRA adds one small matmul (u = x·L1ᵀ)
        // before each of the four matmuls, which apply L2 in their epilogue.
        let lora = if model.config.adapter.w_lora { 4 } else { 0 };
        assert_eq!(plan.dispatches_per_step(), (8 + lora) * layers + 4, "{adapter}: dispatches per step");
    }
}

/// With a real GPU's kernel shapes (GEMV, and decode attention split over
/// the keys: the tiny model's 512-key context makes 4 splits, plus the
/// prefix's), the plan decodes the forward path's tokens, across a split
/// boundary, and takes one more dispatch per layer (the combine).
#[test]
fn decode_plan_with_gpu_shapes_splits_attention_and_matches_the_forward_path() {
    for adapter in ["lora", "bias"] {
        let model = model_on("gpu-shapes", adapter, QuantFormat::Q4, common::gpu_with_gpu_kernel_shapes());
        let prefixes = kafka_prefixes(&model);
        let prompt = prompt_ids(&model, "What is in this picture?");
        let out = model.forward(&prompt, 0, &prefixes, false).unwrap();
        let first = model.argmax_token_blocking(&out).unwrap();
        // Start just before the first split boundary (128 keys) and cross it.
        let start = 120;
        assert!(prompt.len() < start);
        let filler = model.forward(&vec![first; start - prompt.len()], prompt.len(), &prefixes, false).unwrap();
        let first = model.argmax_token_blocking(&filler).unwrap();
        let steps = 16;
        let mut want = vec![first];
        for i in 0..steps {
            let out = model.forward(&[*want.last().unwrap()], start + i, &prefixes, false).unwrap();
            want.push(model.argmax_token_blocking(&out).unwrap());
        }
        let mut plan = DecodePlan::new(&model, &prefixes).unwrap();
        let mut got = vec![first];
        for i in 0..steps {
            plan.submit(&model, *got.last().unwrap(), start + i, Pick::Greedy).unwrap();
            got.push(token(pollster::block_on(plan.finish(&model)).unwrap()));
        }
        assert_eq!(got, want, "{adapter}: the plan decodes other tokens than the forward path");
        let layers = model.config.llama.n_layers;
        let lora = if model.config.adapter.w_lora { 4 } else { 0 };
        assert_eq!(plan.dispatches_per_step(), (9 + lora) * layers + 4, "{adapter}: dispatches per step with split-K attention");
        assert_eq!(plan.moving_blocks(), 2 * layers, "{adapter}: moving parameter blocks");
    }
}

#[test]
fn sampling_steps_read_the_top_k_summary_of_the_row_and_create_nothing() {
    let model = model("sampling", "bias", QuantFormat::F32);
    let ctx = model.ctx.clone();
    let prefixes = kafka_prefixes(&model);
    let mut plan = DecodePlan::new(&model, &prefixes).unwrap();
    let prompt = prompt_ids(&model, "Describe the picture.");
    model.forward(&prompt, 0, &prefixes, false).unwrap();
    // The summary of a step equals the top-k kernel run on that step's logits from the forward path.
    let pos = prompt.len();
    plan.submit(&model, 450, pos, Pick::TopK { temperature: 0.7 }).unwrap();
    let summary = match pollster::block_on(plan.finish(&model)).unwrap() {
        StepResult::Summary(s) => s,
        other => panic!("expected a summary, got {other:?}"),
    };
    assert_eq!(summary.entries.len(), PLAN_TOP_K);
    let logits = model.read_f32(&plan.out.logits, model.config.llama.vocab_size).unwrap();
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|a, b| logits[*b].total_cmp(&logits[*a]).then(a.cmp(b)));
    let top: Vec<u32> = order[..PLAN_TOP_K].iter().map(|i| *i as u32).collect();
    assert_eq!(summary.entries.iter().map(|e| e.1).collect::<Vec<_>>(), top, "the summary's candidates are the row's top k, in order");
    // A second sampling step creates nothing and reads back 520 bytes at most.
    let before = ctx.object_counts();
    plan.submit(&model, summary.entries[0].1, pos + 1, Pick::TopK { temperature: 0.7 }).unwrap();
    pollster::block_on(plan.finish(&model)).unwrap();
    let after = ctx.object_counts();
    assert_eq!((after.buffers, after.bind_groups, after.submits), (before.buffers, before.bind_groups, before.submits + 1));
    assert!(llama_adapter_web::kernels::sampling::top_k_words(PLAN_TOP_K) * 4 <= 1024);
}

#[test]
fn compile_pipelines_leaves_nothing_to_compile_for_a_generation() {
    use llama_adapter_web::model::generate::GenerateOptions;
    for adapter in ["lora", "early"] {
        let model = model("compile", adapter, QuantFormat::Q4);
        model.compile_pipelines().unwrap();
        let compiled = model.ctx.object_counts().pipelines;
        assert!(compiled > 8, "{adapter}: {compiled} pipelines");
        let pixels = picture(model.config.clip.image_size);
        let prefixes = model.prepare_image(&model.encode_image(&pixels).unwrap()).unwrap();
        let prompt = prompt_ids(&model, "What is in this picture?");
        for temperature in [0.0, 0.8] {
            let opts = GenerateOptions { max_new_tokens: 6, temperature, seed: 3, ..Default::default() };
            model.generate_blocking(&prefixes, &prompt, &opts, &mut |_, _| true).unwrap();
        }
        assert_eq!(model.ctx.object_counts().pipelines, compiled, "{adapter}: a generation compiled a pipeline that compile_pipelines had not");
    }
}

#[test]
fn the_profile_times_every_dispatch_of_a_decode_step_and_leaves_the_output_alone() {
    let model = model("profile", "lora", QuantFormat::Q4);
    let prefixes = kafka_prefixes(&model);
    let prompt = prompt_ids(&model, "What is in this picture?");
    let before = model.argmax_token_blocking(&model.forward(&prompt, 0, &prefixes, false).unwrap()).unwrap();
    let kernels = pollster::block_on(model.profile_forward(1, prompt.len(), &prefixes, 2)).unwrap();
    // Every dispatch of the step is in it once (the plan adds the argmax).
    let plan = DecodePlan::new(&model, &prefixes).unwrap();
    let timed: usize = kernels.iter().map(|k| k.dispatches).sum();
    assert_eq!(timed + 1, plan.dispatches_per_step(), "dispatches timed: {kernels:?}");
    assert!(kernels.iter().all(|k| k.ms.is_finite() && k.ms >= 0.0 && !k.label.is_empty()), "{kernels:?}");
    assert!(kernels.iter().any(|k| k.label.starts_with("matmul/")), "{kernels:?}");
    // It runs on the session: a forward pass after it gives what one before it gave.
    let after = model.argmax_token_blocking(&model.forward(&prompt, 0, &prefixes, false).unwrap()).unwrap();
    assert_eq!(after, before);
    // A pass past the context is refused, not run.
    let context = model.config.llama.max_seq_len;
    assert!(pollster::block_on(model.profile_forward(2, context - 1, &prefixes, 1)).is_err());
}

/// A prompt longer than the prefill chunk runs in chunks through the
/// session's activation buffers: the same logits as one pass (rows are
/// computed independently of the rows beside them, so the same sums in the
/// same order: allowed 1e-6 of the largest logit, measured 0), the same
/// greedy answer, and after the first call a chunked forward makes no
/// activation buffer but the last pass's hidden state and logits.
#[test]
fn chunked_prefill_matches_one_pass_and_reuses_the_session_buffers() {
    for adapter in ["lora", "bias"] {
        let model = model("chunks", adapter, QuantFormat::Q4);
        let ctx = model.ctx.clone();
        let prefixes = kafka_prefixes(&model);
        let mut prompt = prompt_ids(&model, "What is in this picture? Describe it in detail, please.");
        while prompt.len() < 70 {
            prompt.extend_from_within(1..prompt.len().min(20));
        }
        let vocab = model.config.llama.vocab_size;
        let logits = |chunk: usize| {
            model.prefill_chunk.set(chunk);
            let out = model.forward(&prompt, 0, &prefixes, false).unwrap();
            (model.read_f32(&out.logits, vocab).unwrap(), model.argmax_token_blocking(&out).unwrap())
        };
        let (one_pass, token_one) = logits(1000);
        for chunk in [16, 33, 69] {
            let (chunked, token) = logits(chunk);
            let scale = one_pass.iter().fold(0f32, |m, v| m.max(v.abs()));
            let diff = one_pass.iter().zip(&chunked).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            println!("{adapter}: chunks of {chunk} vs one pass over {} rows: logits differ by {diff:e} (largest {scale})", prompt.len());
            assert!(diff <= 1e-6 * scale, "{adapter}: chunks of {chunk} differ by {diff}");
            assert_eq!(token, token_one, "{adapter}: chunks of {chunk}: another greedy token");
            let before = ctx.object_counts();
            model.forward(&prompt, 0, &prefixes, false).unwrap();
            let after = ctx.object_counts();
            assert_eq!(after.submits - before.submits, prompt.len().div_ceil(chunk) as u64, "{adapter}: one submit per chunk of {chunk}");
            let made = after.activation_buffers - before.activation_buffers;
            assert_eq!(made, 2, "{adapter}: chunks of {chunk}: {made} activation buffers made by one forward (the last pass's hidden state and logits expected)");
        }
        // An id outside the vocabulary in a later chunk is refused before any chunk runs.
        let mut bad = prompt.clone();
        bad[60] = vocab as u32;
        model.prefill_chunk.set(16);
        let before = ctx.object_counts();
        let err = model.forward(&bad, 0, &prefixes, false).err().expect("an out-of-vocabulary id must be refused");
        assert!(err.to_string().contains("outside the vocabulary"), "{adapter}: {err}");
        assert_eq!(ctx.object_counts().submits, before.submits, "{adapter}: a chunk ran before the bad id was refused");
        // Through generate too: the same answer in chunks as in one pass.
        let opts = llama_adapter_web::model::generate::GenerateOptions { max_new_tokens: 5, temperature: 0.0, ..Default::default() };
        model.prefill_chunk.set(1000);
        let whole = model.generate_blocking(&prefixes, &prompt, &opts, &mut |_, _| true).unwrap().generated_ids;
        model.prefill_chunk.set(16);
        let chunked = model.generate_blocking(&prefixes, &prompt, &opts, &mut |_, _| true).unwrap().generated_ids;
        assert_eq!(whole, chunked, "{adapter}: generate in chunks answers otherwise");
    }
}
