//! The native command-line tool. Today: `info` and `bench kernels`; the model
//! commands (convert, generate, eval, bench model) build on the same engine.

use std::path::PathBuf;
use std::rc::Rc;
use std::time::Instant;

use clap::{Parser, Subcommand};

use llama_adapter_web::convert::checkpoint::{convert, ConvertOptions};
use llama_adapter_web::model::config::ChannelOrder;
use llama_adapter_web::model::generate::GenerateOptions;
use llama_adapter_web::model::Model;
use llama_adapter_web::text::prompt::format_prompt;

use llama_adapter_web::bench::{bench_matmul, bench_model, host_copy_bandwidth, write_random_packages, BenchShape};
use llama_adapter_web::convert::quantize::{calibrate, quantize_packages, Calibration, CalibrationItem, FormatOverride, QuantizeOptions};
use llama_adapter_web::format::quant::{QuantFormat, Rounding};
use llama_adapter_web::gpu::{GpuContext, GpuOptions};
use llama_adapter_web::kernels::matmul::MatmulShape;

#[derive(Parser)]
#[command(name = "llama-adapter", version, about = "LLaMA-Adapter V2 on your GPU (native tool of llama-adapter-web)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Describe the GPU adapter the engine picks.
    Info,
    /// Convert official checkpoints into base and adapter packages.
    Convert(ConvertArgs),
    /// Answer an instruction about a picture.
    Generate(GenerateArgs),
    /// Re-store a converted base and/or adapter with another weight format (f16 → q8/q4 …).
    Quantize(QuantizeArgs),
    /// Score a held-out question set (questions.json) through the engine.
    Eval(EvalArgs),
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        what: BenchWhat,
    },
}

/// The shape of a `bench` random model.
#[derive(clap::Args)]
struct ShapeArgs {
    #[arg(long, default_value_t = 512)]
    dim: usize,
    #[arg(long, default_value_t = 8)]
    layers: usize,
    #[arg(long, default_value_t = 8)]
    heads: usize,
    #[arg(long, default_value_t = 1376)]
    ffn: usize,
    #[arg(long, default_value_t = 32000)]
    vocab: usize,
    #[arg(long, default_value = "q4")]
    quant: String,
    /// CLIP tower width and depth (ViT-L/14 is 1024 × 24).
    #[arg(long, default_value_t = 256)]
    clip_width: usize,
    #[arg(long, default_value_t = 4)]
    clip_layers: usize,
    /// The adapter carries LoRA (rank 16) on every decoder linear and a
    /// new_gate, as the LORA-BIAS checkpoints do.
    #[arg(long)]
    lora: bool,
}

impl ShapeArgs {
    fn shape(&self) -> Result<BenchShape, String> {
        let quant = QuantFormat::parse(&self.quant).ok_or_else(|| format!("unknown --quant {:?} (expected f32, f16, q8 or q4)", self.quant))?;
        Ok(BenchShape { dim: self.dim, layers: self.layers, heads: self.heads, ffn: self.ffn, vocab: self.vocab, quant, clip_width: self.clip_width, clip_layers: self.clip_layers, max_seq_len: 512, lora: self.lora })
    }
}

#[derive(Subcommand)]
enum BenchWhat {
    /// A seeded random model end to end: vision, prefill, decode.
    Model {
        /// Preset: 7b (LLaMA-7B + ViT-L/14), or none to use the flags.
        #[arg(long)]
        shape: Option<String>,
        #[command(flatten)]
        model: ShapeArgs,
        #[arg(long, default_value_t = 128)]
        prompt: usize,
        #[arg(long, default_value_t = 32)]
        new_tokens: usize,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Write the `bench model` random model as base + adapter packages (for the browser bench page).
    WriteModel {
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        model: ShapeArgs,
        /// Largest shard file, in bytes.
        #[arg(long, default_value_t = 16 << 20)]
        shard_bytes: u64,
    },
    /// Matmul GEMV at the 7B shapes in every format (GB/s of weights) and GEMM (FLOP/s).
    Kernels {
        /// Dispatches per timed pass.
        #[arg(long, default_value_t = 10)]
        reps: usize,
        /// Formats to run (comma separated: f32,f16,q8,q4).
        #[arg(long, default_value = "f32,f16,q8,q4", value_delimiter = ',')]
        formats: Vec<String>,
        /// x rows for the GEMM (prefill-like) runs.
        #[arg(long, default_value_t = 128)]
        gemm_rows: usize,
        /// Skip the GEMM runs.
        #[arg(long)]
        no_gemm: bool,
        /// Kernel shape: auto (what the engine uses on this adapter), gemv, gemm or rowwise.
        #[arg(long, default_value = "auto")]
        shape: String,
    },
}

#[derive(clap::Args)]
struct ConvertArgs {
    /// Meta LLaMA folder: params.json, consolidated.00.pth, tokenizer.model.
    #[arg(long)]
    llama_dir: PathBuf,
    /// OpenAI CLIP state dict (.pth with visual.* keys).
    #[arg(long)]
    clip: PathBuf,
    /// Official adapter checkpoint ({model, config} .pth).
    #[arg(long)]
    adapter: PathBuf,
    /// Heads of the visual blocks (not recoverable from shapes); default: the
    /// checkpoint's config, else 16 as in the official 7B.
    #[arg(long)]
    v_num_heads: Option<usize>,
    /// Storage of the large weights: f32, f16, q8 or q4.
    #[arg(long, default_value = "q4")]
    quant: String,
    /// Context length (prompt + generation).
    #[arg(long, default_value_t = 512)]
    max_seq_len: usize,
    #[arg(long, default_value_t = 10000.0)]
    rope_theta: f32,
    /// Channel order the checkpoint was trained on: bgr (official checkpoints, cv2.imread) or rgb.
    #[arg(long, default_value = "bgr")]
    channel_order: String,
    /// Output folder; gets base/ and adapter/.
    #[arg(long)]
    out: PathBuf,
    /// No per-tensor progress lines.
    #[arg(long)]
    quiet: bool,
    /// Largest shard file, in bytes (the browser fetches and caches shard by shard).
    #[arg(long, default_value_t = 64 << 20)]
    shard_bytes: u64,
}

#[derive(clap::Args)]
struct GenerateArgs {
    /// A folder holding base/ and adapter/, or a base package with --adapter.
    #[arg(long)]
    model: PathBuf,
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// PNG or JPEG picture; without it the instruction is answered text-only
    /// (the model sees the all-zero picture, spec §4).
    #[arg(long)]
    image: Option<PathBuf>,
    /// The instruction (may start with '-').
    #[arg(long, allow_hyphen_values = true)]
    prompt: String,
    /// Optional input paragraph (selects the template with input; may start with '-').
    #[arg(long, allow_hyphen_values = true)]
    input: Option<String>,
    #[arg(long, default_value_t = 256)]
    max_new_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.1)]
    temperature: f32,
    #[arg(long, default_value_t = 0.75)]
    top_p: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print one JSON object (prompt ids, generated ids, text, timings) instead of streaming text.
    #[arg(long)]
    json: bool,
    /// Write the logits of every generated step as little-endian f32.
    #[arg(long)]
    dump_logits: Option<PathBuf>,
}

#[derive(clap::Args)]
struct QuantizeArgs {
    /// A folder holding base/ and adapter/ (both are re-stored).
    #[arg(long, conflicts_with_all = ["base", "adapter"])]
    model: Option<PathBuf>,
    /// A base package folder.
    #[arg(long)]
    base: Option<PathBuf>,
    /// An adapter package folder (repeatable). With --base it must name that
    /// base and is re-targeted to the new one; alone it keeps its base.
    #[arg(long)]
    adapter: Vec<PathBuf>,
    /// Output folder: OUT/base and OUT/<adapter folder name>.
    #[arg(long)]
    out: PathBuf,
    /// Format of the large weights: f32, f16, q8 or q4 (norms, biases, gates and prompts stay f32).
    #[arg(long)]
    to: String,
    /// Q-format rounding: absmax (15 of q4's 16 levels), full-range (all levels), search (all levels,
    /// error-minimising scale), gptq (error-compensating, with --calibration).
    #[arg(long, default_value = "absmax")]
    rounding: String,
    /// Store the tensors matching PATTERN (`*` = anything) in FORMAT instead, e.g. output.weight=q8 (repeatable; first match wins).
    #[arg(long = "keep", value_name = "PATTERN=FORMAT")]
    keep: Vec<String>,
    /// Calibration set (questions.json layout; answers are not used): the
    /// source model runs on it to weigh each column's rounding error by the
    /// mean square of its activations (with --rounding search). Needs a GPU
    /// adapter (lavapipe will do) and --model, or --base with one --adapter.
    #[arg(long)]
    calibration: Option<PathBuf>,
    /// Largest shard file, in bytes.
    #[arg(long, default_value_t = 64 << 20)]
    shard_bytes: u64,
    /// Print one JSON object (per-tensor errors, sizes) instead of the table.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct EvalArgs {
    /// A folder holding base/ and adapter/, or a base package with --adapter.
    #[arg(long)]
    model: PathBuf,
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// questions.json: {"images": [{"image", "split", "questions": [{"kind", "instruction", "answer", "torch_answer"?}]}],
    /// "text": [{"kind", "instruction", "answer", "torch_answer"?}]}; image paths are relative to it.
    #[arg(long)]
    questions: PathBuf,
    #[arg(long, default_value_t = 48)]
    max_new_tokens: usize,
    /// Print one JSON object with the accuracies.
    #[arg(long)]
    json: bool,
    /// Save this model's greedy answers (token ids) and, per answer token,
    /// its top-64 next-token log-probabilities: the reference for --reference.
    #[arg(long)]
    save_reference: Option<PathBuf>,
    /// Forced decoding against a --save-reference file: feed the reference's
    /// answers and report top-1 agreement and the mean KL divergence
    /// KL(reference ‖ this model) of the next-token distributions.
    #[arg(long)]
    reference: Option<PathBuf>,
    /// With --reference: skip the greedy answers (the forced pass alone).
    #[arg(long, requires = "reference")]
    forced_only: bool,
}

/// Next-token candidates a reference keeps per answer token.
const REFERENCE_TOP: usize = 64;

fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
    let sum: f64 = logits.iter().map(|&x| (x as f64 - max).exp()).sum();
    let log_z = max + sum.ln();
    logits.iter().map(|&x| x as f64 - log_z).collect()
}

/// The `k` most likely tokens of a logits row as (id, log-probability).
fn top_log_probs(logits: &[f32], k: usize) -> Vec<(u32, f64)> {
    let lp = log_softmax(logits);
    let mut ids: Vec<u32> = (0..lp.len() as u32).collect();
    ids.sort_by(|a, b| lp[*b as usize].total_cmp(&lp[*a as usize]).then(a.cmp(b)));
    ids.truncate(k);
    ids.into_iter().map(|i| (i, lp[i as usize])).collect()
}

/// KL(p ‖ q) between the reference's distribution p, known on its top
/// tokens, and a full logits row q, over the reference's top tokens plus
/// one outcome for all the rest: KL of the two distributions coarsened that
/// way (at most the full KL; the rest holds ≈ nothing of p in practice).
fn kl_on_reference_top(top: &[(u32, f64)], logits: &[f32]) -> f64 {
    let lq = log_softmax(logits);
    let (mut kl, mut p_top, mut q_top) = (0f64, 0f64, 0f64);
    for &(id, lp) in top {
        let p = lp.exp();
        kl += p * (lp - lq[id as usize]);
        p_top += p;
        q_top += lq[id as usize].exp();
    }
    let (p_rest, q_rest) = ((1.0 - p_top).max(0.0), (1.0 - q_top).max(1e-300));
    if p_rest > 0.0 {
        kl += p_rest * (p_rest / q_rest).ln();
    }
    kl.max(0.0)
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run_convert(a: ConvertArgs) -> Result<(), Box<dyn std::error::Error>> {
    let quant = QuantFormat::parse(&a.quant).ok_or_else(|| format!("unknown --quant {:?} (expected f32, f16, q8 or q4)", a.quant))?;
    let channel_order = match a.channel_order.as_str() {
        "bgr" => ChannelOrder::Bgr,
        "rgb" => ChannelOrder::Rgb,
        other => return Err(format!("unknown --channel-order {other:?} (expected bgr or rgb)").into()),
    };
    let opts = ConvertOptions { quant, v_num_heads: a.v_num_heads, max_seq_len: a.max_seq_len, rope_theta: a.rope_theta, channel_order, progress: !a.quiet, shard_bytes: a.shard_bytes.max(1), ..Default::default() };
    let start = Instant::now();
    eprintln!("converting (weights in {}, norms/biases/gates/prompts in f32)…", quant.name());
    let report = convert(&a.llama_dir, &a.clip, &a.adapter, &a.out, &opts)?;
    let c = &report.config;
    println!(
        "wrote {} ({:.3} MB) and {} ({:.3} MB) in {:.1} s",
        report.base_dir.display(),
        report.base_bytes as f64 / 1e6,
        report.adapter_dir.display(),
        report.adapter_bytes as f64 / 1e6,
        start.elapsed().as_secs_f64()
    );
    println!(
        "LLaMA dim {} × {} layers, {} heads, ffn {}, vocab {}; CLIP width {} × {} layers, patch {}; adapter query_len {}, query_layer {}, visual blocks {} × {} (heads {}), fusion {:?}, lora {}",
        c.llama.dim, c.llama.n_layers, c.llama.n_heads, c.llama.ffn_hidden, c.llama.vocab_size, c.clip.width, c.clip.layers, c.clip.patch,
        c.adapter.query_len, c.adapter.query_layer, c.adapter.v_depth, c.adapter.v_embed_dim, c.adapter.v_num_heads, c.adapter.fusion, c.adapter.w_lora
    );
    Ok(())
}

fn run_generate(ctx: GpuContext, a: GenerateArgs) -> Result<(), Box<dyn std::error::Error>> {
    let (base_dir, adapter_dir) = model_dirs(&a.model, &a.adapter);
    let start = Instant::now();
    let model = Model::load_dirs(Rc::new(ctx), &base_dir, &adapter_dir)?;
    let load_ms = start.elapsed().as_secs_f64() * 1e3;
    let size = model.config.clip.image_size as u32;
    let pixels = match &a.image {
        Some(path) => {
            let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
            llama_adapter_web::image::clip_preprocess(&bytes, size, model.config.adapter.channel_order).map_err(|e| format!("{}: {e}", path.display()))?
        }
        None => vec![0.0; 3 * (size * size) as usize],
    };
    if a.prompt.trim().is_empty() {
        return Err("the prompt is empty".into());
    }
    let t = Instant::now();
    let vision = model.encode_image(&pixels)?;
    let prefixes = model.prepare_image(&vision)?;
    model.ctx.wait_idle()?;
    let vision_ms = t.elapsed().as_secs_f64() * 1e3;
    let prompt = format_prompt(&a.prompt, a.input.as_deref());
    let prompt_ids = model.base.tokenizer.encode_prompt(&prompt)?;
    let opts = GenerateOptions {
        max_new_tokens: a.max_new_tokens,
        temperature: a.temperature,
        top_p: a.top_p,
        seed: a.seed,
        keep_logits: a.dump_logits.is_some(),
    };
    let json = a.json;
    let mut stdout = std::io::stdout();
    let result = model.generate_blocking(&prefixes, &prompt_ids, &opts, &mut |_, piece| {
        if !json {
            use std::io::Write;
            let _ = write!(stdout, "{piece}");
            let _ = stdout.flush();
        }
        true
    })?;
    if let Some(path) = &a.dump_logits {
        let bytes: Vec<u8> = result.logits.iter().flatten().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(path, bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if json {
        let out = serde_json::json!({
            "prompt_ids": result.prompt_ids,
            "generated_ids": result.generated_ids,
            "text": result.text,
            "stopped_at_eos": result.stopped_at_eos,
            "timings": {
                "load_ms": load_ms,
                "vision_ms": vision_ms,
                "prefill_ms": result.timings.prefill_ms,
                "decode_ms": result.timings.decode_ms,
                "prefill_tokens_per_s": result.timings.prefill_tokens_per_s,
                "decode_tokens_per_s": result.timings.decode_tokens_per_s,
            },
            "adapter": model.ctx.info.name,
        });
        println!("{out}");
    } else {
        println!();
        eprintln!(
            "[{} prompt tokens, {} generated; load {:.0} ms, vision {:.0} ms, prefill {:.1} tok/s, decode {:.1} tok/s on {}]",
            result.prompt_ids.len(),
            result.generated_ids.len(),
            load_ms,
            vision_ms,
            result.timings.prefill_tokens_per_s,
            result.timings.decode_tokens_per_s,
            model.ctx.info.name
        );
    }
    Ok(())
}

fn model_dirs(model: &std::path::Path, adapter: &Option<PathBuf>) -> (PathBuf, PathBuf) {
    match adapter {
        Some(adapter) => (model.to_path_buf(), adapter.clone()),
        None => (model.join("base"), model.join("adapter")),
    }
}

/// Greedy answers to every question, exact match after trimming; accuracy
/// by kind and split, and how often the engine's answer differs from the
/// PyTorch model's (`torch_answer`), when the file has it.
fn run_eval(ctx: GpuContext, a: EvalArgs) -> Result<(), Box<dyn std::error::Error>> {
    let (base_dir, adapter_dir) = model_dirs(&a.model, &a.adapter);
    let model = Model::load_dirs(Rc::new(ctx), &base_dir, &adapter_dir)?;
    let text = std::fs::read_to_string(&a.questions).map_err(|e| format!("{}: {e}", a.questions.display()))?;
    let doc: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", a.questions.display()))?;
    let root = a.questions.parent().unwrap_or(std::path::Path::new("."));
    let size = model.config.clip.image_size;
    let opts = GenerateOptions { max_new_tokens: a.max_new_tokens, temperature: 0.0, ..Default::default() };
    // (correct, total) by key; (differs from torch, compared).
    let mut stats: std::collections::BTreeMap<String, (usize, usize)> = Default::default();
    let mut vs_torch = (0usize, 0usize);
    let start = Instant::now();
    let mut score = |split: &str, q: &serde_json::Value, got: &str, stats: &mut std::collections::BTreeMap<String, (usize, usize)>| {
        let kind = q["kind"].as_str().unwrap_or("?");
        let ok = got.trim() == q["answer"].as_str().unwrap_or("").trim();
        for key in [format!("{split}/{kind}"), format!("{split}/all"), format!("all/{kind}")] {
            let e = stats.entry(key).or_default();
            e.0 += ok as usize;
            e.1 += 1;
        }
        if let Some(t) = q["torch_answer"].as_str() {
            vs_torch.0 += (t.trim() != got.trim()) as usize;
            vs_torch.1 += 1;
        }
    };
    let empty = Vec::new();
    // The reference to compare against, question by question in file order.
    let reference: Option<Vec<serde_json::Value>> = match &a.reference {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let doc: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
            Some(doc["questions"].as_array().cloned().ok_or_else(|| format!("{}: no \"questions\" array", path.display()))?)
        }
        None => None,
    };
    let mut saved: Vec<serde_json::Value> = Vec::new();
    // Forced decoding: (positions, top-1 agreements, KL sum, questions, questions with a disagreement).
    let mut forced = (0usize, 0usize, 0f64, 0usize, 0usize);
    let mut question_index = 0usize;
    let keep_logits = a.save_reference.is_some();
    let gen_opts = GenerateOptions { keep_logits, ..opts.clone() };
    let mut answer_all = |pixels: &[f32], questions: &[serde_json::Value], split: &str, stats: &mut std::collections::BTreeMap<String, (usize, usize)>| -> Result<(), Box<dyn std::error::Error>> {
        let vision = model.encode_image(pixels)?;
        let prefixes = model.prepare_image(&vision)?;
        for q in questions {
            let prompt = format_prompt(q["instruction"].as_str().unwrap_or(""), None);
            let ids = model.base.tokenizer.encode_prompt(&prompt)?;
            if !a.forced_only {
                let got = model.generate_blocking(&prefixes, &ids, &gen_opts, &mut |_, _| true)?;
                score(split, q, &got.text, stats);
                if keep_logits {
                    let mut answer = got.generated_ids.clone();
                    if got.stopped_at_eos {
                        answer.push(llama_adapter_web::text::tokenizer::EOS);
                    }
                    let top: Vec<Vec<(u32, f64)>> = got.logits.iter().map(|row| top_log_probs(row, REFERENCE_TOP)).collect();
                    saved.push(serde_json::json!({"prompt_ids": ids, "answer_ids": answer, "top": top}));
                }
            }
            if let Some(reference) = &reference {
                let r = reference.get(question_index).ok_or("the reference has fewer questions than the question file")?;
                let answer: Vec<u32> = serde_json::from_value(r["answer_ids"].clone())?;
                let top: Vec<Vec<(u32, f64)>> = serde_json::from_value(r["top"].clone())?;
                let ref_prompt: Vec<u32> = serde_json::from_value(r["prompt_ids"].clone())?;
                if ref_prompt != ids || top.len() != answer.len() {
                    return Err(format!("reference question {question_index} does not match this question file").into());
                }
                let rows = pollster::block_on(model.continuation_logits(&prefixes, &ids, &answer))?;
                let mut all_agree = true;
                for ((row, want), top) in rows.iter().zip(&answer).zip(&top) {
                    let argmax = row.iter().enumerate().fold((0, f32::NEG_INFINITY), |b, (i, &v)| if v > b.1 { (i, v) } else { b }).0 as u32;
                    let agree = argmax == *want;
                    all_agree &= agree;
                    forced.0 += 1;
                    forced.1 += agree as usize;
                    forced.2 += kl_on_reference_top(top, row);
                }
                forced.3 += 1;
                forced.4 += (!all_agree) as usize;
            }
            question_index += 1;
        }
        Ok(())
    };
    for item in doc["images"].as_array().unwrap_or(&empty) {
        let name = item["image"].as_str().ok_or("an image item without \"image\"")?;
        let bytes = std::fs::read(root.join(name)).map_err(|e| format!("{name}: {e}"))?;
        let pixels = llama_adapter_web::image::clip_preprocess(&bytes, size as u32, model.config.adapter.channel_order).map_err(|e| format!("{name}: {e}"))?;
        let split = item["split"].as_str().unwrap_or("images").to_string();
        answer_all(&pixels, item["questions"].as_array().unwrap_or(&empty), &split, &mut stats)?;
    }
    // Text-only items see the all-zero, unnormalised image (spec §4).
    let text_items = doc["text"].as_array().cloned().unwrap_or_default();
    if !text_items.is_empty() {
        answer_all(&vec![0.0; 3 * size * size], &text_items, "text", &mut stats)?;
    }
    let accuracy: serde_json::Map<String, serde_json::Value> =
        stats.iter().map(|(k, (ok, n))| (k.clone(), serde_json::json!({"acc": *ok as f64 / *n as f64, "n": n}))).collect();
    let differs = if vs_torch.1 > 0 { Some(vs_torch.0 as f64 / vs_torch.1 as f64) } else { None };
    if let Some(path) = &a.save_reference {
        let doc = serde_json::json!({"model": a.model.display().to_string(), "top": REFERENCE_TOP, "questions": saved});
        std::fs::write(path, serde_json::to_vec(&doc)?).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let forced_json = (forced.0 > 0).then(|| {
        serde_json::json!({
            "positions": forced.0,
            "top1_agreement": forced.1 as f64 / forced.0 as f64,
            "mean_kl": forced.2 / forced.0 as f64,
            "questions": forced.3,
            "questions_with_a_disagreement": forced.4 as f64 / forced.3.max(1) as f64,
        })
    });
    if a.json {
        println!("{}", serde_json::json!({"accuracy": accuracy, "differs_from_torch": differs, "compared": vs_torch.1, "forced": forced_json, "seconds": start.elapsed().as_secs_f64(), "adapter": model.ctx.info.name}));
    } else {
        if forced.0 > 0 {
            println!(
                "forced decoding of the reference's answers: top-1 agreement {:.2}% of {} tokens, mean KL {:.5} nats; {:.2}% of {} answers would differ",
                100.0 * forced.1 as f64 / forced.0 as f64,
                forced.0,
                forced.2 / forced.0 as f64,
                100.0 * forced.4 as f64 / forced.3.max(1) as f64,
                forced.3
            );
        }
        for (k, (ok, n)) in &stats {
            println!("{k:<28} {:.3} ({ok}/{n})", *ok as f64 / *n as f64);
        }
        if let Some(d) = differs {
            println!("answers differing from the PyTorch model: {:.2}% of {}", 100.0 * d, vs_torch.1);
        }
        println!("[{:.0} s on {}]", start.elapsed().as_secs_f64(), model.ctx.info.name);
    }
    Ok(())
}

/// A calibration file: {"images": [{"image", "questions": [{"instruction"}]}], "text": [{"instruction"}]}
/// (the questions.json layout; text items see the all-zero image).
fn read_calibration(path: &std::path::Path, model: &Model) -> Result<Vec<CalibrationItem>, Box<dyn std::error::Error>> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let doc: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let root = path.parent().unwrap_or(std::path::Path::new("."));
    let size = model.config.clip.image_size;
    let instructions = |v: &serde_json::Value| -> Vec<String> { v.as_array().into_iter().flatten().filter_map(|q| q["instruction"].as_str().map(String::from)).collect() };
    let mut items = Vec::new();
    for item in doc["images"].as_array().into_iter().flatten() {
        let name = item["image"].as_str().ok_or_else(|| format!("{}: an image item without \"image\"", path.display()))?;
        let bytes = std::fs::read(root.join(name)).map_err(|e| format!("{name}: {e}"))?;
        let pixels = llama_adapter_web::image::clip_preprocess(&bytes, size as u32, model.config.adapter.channel_order).map_err(|e| format!("{name}: {e}"))?;
        items.push(CalibrationItem { pixels, instructions: instructions(&item["questions"]) });
    }
    let text_items = instructions(&doc["text"]);
    if !text_items.is_empty() {
        items.push(CalibrationItem { pixels: vec![0.0; 3 * size * size], instructions: text_items });
    }
    if items.iter().all(|i| i.instructions.is_empty()) {
        return Err(format!("{}: no instructions to calibrate on", path.display()).into());
    }
    Ok(items)
}

/// Re-stores packages and prints, per tensor kind, the relative RMS error
/// against the stored weights, and the bits per weight.
fn run_quantize(a: QuantizeArgs) -> Result<(), Box<dyn std::error::Error>> {
    let to = QuantFormat::parse(&a.to).ok_or_else(|| format!("unknown --to {:?} (expected f32, f16, q8 or q4)", a.to))?;
    let rounding = Rounding::parse(&a.rounding).ok_or_else(|| format!("unknown --rounding {:?} (expected absmax, full-range, search or gptq)", a.rounding))?;
    let overrides = a.keep.iter().map(|k| FormatOverride::parse(k)).collect::<Result<Vec<_>, _>>()?;
    let (base, adapters) = match &a.model {
        Some(dir) => (Some(dir.join("base")), vec![dir.join("adapter")]),
        None => (a.base.clone(), a.adapter.clone()),
    };
    let start = Instant::now();
    let mut calibration = Calibration::default();
    if let Some(path) = &a.calibration {
        if !matches!(rounding, Rounding::Search | Rounding::Gptq) {
            return Err("--calibration is used by --rounding search or gptq: add one".into());
        }
        let (Some(base), [adapter]) = (&base, adapters.as_slice()) else {
            return Err("--calibration runs the model: give --model, or --base with one --adapter".into());
        };
        let ctx = GpuContext::new_blocking(GpuOptions::from_env())?;
        let model = Model::load_dirs(Rc::new(ctx), base, adapter)?;
        let items = read_calibration(path, &model)?;
        let found = calibrate(&model, &items, 48)?;
        eprintln!("calibration: {} pictures, {} tokens, {} weights weighed by their inputs [{:.1} s]", items.len(), found.tokens, found.importance.len(), start.elapsed().as_secs_f64());
        calibration = found;
    }
    let opts = QuantizeOptions { to, rounding, overrides, importance: calibration.importance, hessians: calibration.hessians, shard_bytes: a.shard_bytes.max(1), ..Default::default() };
    let report = quantize_packages(base.as_deref(), &adapters, &a.out, &opts)?;
    if a.json {
        println!("{}", serde_json::json!({"tensors": report.tensors, "packages": report.packages, "bits_per_weight": report.bits_per_weight()}));
        return Ok(());
    }
    println!("{:<20} {:>12} {:>12} {:>10} {:>16}", "tensor kind", "weights", "bytes", "bits/w", "rel. RMS error");
    for (kind, n, bytes, err) in report.by_kind() {
        println!("{kind:<20} {n:>12} {bytes:>12} {:>10.3} {:>15.2}%", 8.0 * bytes as f64 / n as f64, 100.0 * err);
    }
    println!("bits per weight over the re-stored tensors: {:.3}", report.bits_per_weight());
    for (dir, bytes) in &report.packages {
        println!("wrote {dir} ({:.3} MB)", *bytes as f64 / 1e6);
    }
    println!("[{:.1} s]", start.elapsed().as_secs_f64());
    Ok(())
}

fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    // Conversion and package writing need no GPU.
    let command = match cli.command {
        Command::Convert(a) => return run_convert(a),
        Command::Quantize(a) => return run_quantize(a),
        Command::Bench { what: BenchWhat::WriteModel { out, model, shard_bytes } } => {
            let shape = model.shape()?;
            write_random_packages(&out, &shape, 7, shard_bytes.max(1))?;
            println!("wrote {}/base and {}/adapter (the `bench model` random model, seed 7)", out.display(), out.display());
            return Ok(());
        }
        other => other,
    };
    let ctx = GpuContext::new_blocking(GpuOptions::from_env())?;
    match command {
        Command::Info => println!("adapter: {}", ctx.info),
        Command::Convert(a) => run_convert(a)?,
        Command::Quantize(a) => run_quantize(a)?,
        Command::Generate(a) => run_generate(ctx, a)?,
        Command::Eval(a) => run_eval(ctx, a)?,
        Command::Bench { what: BenchWhat::Model { shape, model, prompt, new_tokens, json } } => {
            let flags = model.shape()?;
            let shape = match shape.as_deref() {
                Some("7b") => BenchShape { lora: flags.lora, ..BenchShape::seven_b(flags.quant) },
                Some(other) => return Err(format!("unknown --shape {other:?} (expected 7b)").into()),
                None => flags,
            };
            eprintln!("building a random {shape:?} model…");
            let ctx = Rc::new(ctx);
            let f = bench_model(ctx, &shape, prompt, new_tokens)?;
            if json {
                println!("{}", serde_json::to_string(&f)?);
            } else {
                println!("adapter: {}", f.adapter);
                println!("model: dim {} × {} layers, {} heads, ffn {}, vocab {}, {}; CLIP {} × {} layers", shape.dim, shape.layers, shape.heads, shape.ffn, shape.vocab, shape.quant.name(), shape.clip_width, shape.clip_layers);
                if shape.lora {
                    println!("adapter: LoRA rank 16 on every decoder linear, new_gate");
                }
                println!("build + upload            {:>10.2} s", f.build_s);
                println!("compile pipelines         {:>10.2} s", f.compile_s);
                println!("vision encoder            {:>10.1} ms", f.vision_ms);
                println!("prefill ({:>4} tokens)     {:>10.2} tokens/s", f.prompt_tokens, f.prefill_tokens_per_s);
                println!("decode ({:>4} tokens)      {:>10.2} tokens/s", f.new_tokens, f.decode_tokens_per_s);
                println!("host time per decode token {:>9.2} ms", f.host_ms_per_token);
                println!("dispatches per token      {:>10}", f.dispatches_per_token);
                println!("submits per token         {:>10.2}", f.submits_per_token);
                println!("GPU objects made per token {:>9.2}", f.gpu_objects_created_per_token);
                println!("weight bytes per token    {:>10.1} MB", f.weight_bytes_per_token as f64 / 1e6);
                println!("KV bytes per token (mid)  {:>10.1} MB", f.kv_bytes_per_token as f64 / 1e6);
                println!("GPU memory: weights + KV cache {:.1} MB, activations ≈ {:.1} MB", f.gpu_weight_and_cache_bytes as f64 / 1e6, f.activation_bytes as f64 / 1e6);
            }
        }
        Command::Bench { what: BenchWhat::WriteModel { .. } } => unreachable!("handled before the GPU opens"),
        Command::Bench { what: BenchWhat::Kernels { reps, formats, gemm_rows, no_gemm, shape } } => {
            let shape = match shape.as_str() {
                "auto" => MatmulShape::Auto,
                "gemv" => MatmulShape::Gemv,
                "gemm" => MatmulShape::Gemm,
                "rowwise" => MatmulShape::Rowwise,
                other => return Err(format!("unknown shape {other:?} (expected auto, gemv, gemm or rowwise)").into()),
            };
            let formats: Vec<QuantFormat> = formats
                .iter()
                .map(|f| QuantFormat::parse(f).ok_or_else(|| format!("unknown format {f:?} (expected f32, f16, q8 or q4)")))
                .collect::<Result<_, _>>()?;
            println!("adapter: {}", ctx.info);
            let roofline = if ctx.info.device_type == "Cpu" {
                let bw = host_copy_bandwidth();
                println!("host memory bandwidth (copy, all cores): {bw:.2} GB/s = the roofline of this CPU-backed adapter");
                Some(bw)
            } else {
                None
            };
            println!("\nGEMV, one token (decode), y = x·Wᵀ; GB/s counts weight bytes read once per call");
            println!("{:<6} {:<8} {:>12} {:>7} {:>13} {:>12} {:>9} {:>9}  clock", "format", "kernel", "n x k", "blocks", "weight bytes", "time/call", "GB/s", "roofline");
            for &format in &formats {
                for (n, k) in [(4096, 4096), (11008, 4096), (4096, 11008)] {
                    let f = bench_matmul(&ctx, format, 1, n, k, shape, reps)?;
                    println!(
                        "{:<6} {:<8} {:>12} {:>7} {:>13} {:>9.3} ms {:>9.2} {:>9}  {}",
                        format.name(),
                        f.shape,
                        format!("{n}x{k}"),
                        f.blocks,
                        f.weight_bytes,
                        f.seconds * 1e3,
                        f.gbps(),
                        roofline.map_or("-".to_string(), |bw| format!("{:.1}%", 100.0 * f.gbps() / bw)),
                        f.clock.name()
                    );
                }
            }
            if !no_gemm {
                println!("\nGEMM, {gemm_rows} rows (prefill), 4096x4096");
                println!("{:<6} {:<8} {:>14} {:>12} {:>10}  clock", "format", "kernel", "m x n x k", "time/call", "GFLOP/s");
                for &format in &formats {
                    let f = bench_matmul(&ctx, format, gemm_rows, 4096, 4096, shape, reps.div_ceil(4))?;
                    println!(
                        "{:<6} {:<8} {:>14} {:>9.3} ms {:>10.2}  {}",
                        format.name(),
                        f.shape,
                        format!("{gemm_rows}x4096x4096"),
                        f.seconds * 1e3,
                        f.gflops(),
                        f.clock.name()
                    );
                }
            }
        }
    }
    Ok(())
}
