//! The streaming loader and the base / adapter / session split, natively
//! (the browser runs the same code; tests/browser checks it there):
//! shards are read one at a time and each is dropped before the next; a
//! model that cannot fit is refused before any shard is read; an adapter
//! swap keeps the base and gives the outputs of a fresh load of the new
//! adapter; a second generation on a busy session is refused; prefixes made
//! by another adapter are refused; every error has its JS code.

mod common;

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use common::gpu_shared;
use llama_adapter_web::convert::checkpoint::{convert, ConvertOptions};
use llama_adapter_web::format::package::{FormatError, PackageKind, ShardEntry};
use llama_adapter_web::format::quant::QuantFormat;
use llama_adapter_web::gpu::GpuContext;
use llama_adapter_web::model::config::ChannelOrder;
use llama_adapter_web::model::generate::GenerateOptions;
use llama_adapter_web::model::loader::{fit, AdapterPlan, BasePlan, PackagePlan, PackageUpload};
use llama_adapter_web::model::{AdapterModel, Model, ModelError, ShardSource};
use llama_adapter_web::text::prompt::format_prompt;

const FIX: &str = "tests/fixtures/tiny";

/// The tiny fixture with `adapter`, f32, in shards of at most `shard_bytes`.
fn converted(tag: &str, adapter: &str, shard_bytes: u64) -> PathBuf {
    let out = std::env::temp_dir().join(format!("la-loader-{}-{tag}-{adapter}-{shard_bytes}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let opts = ConvertOptions { quant: QuantFormat::F32, v_num_heads: Some(2), channel_order: ChannelOrder::Rgb, shard_bytes, ..Default::default() };
    convert(&Path::new(FIX).join("llama"), &Path::new(FIX).join("clip.pth"), &Path::new(FIX).join(format!("adapter_{adapter}.pth")), &out, &opts).unwrap();
    out
}

/// Reads shards from a folder and records how many bytes are alive at once.
struct CountingSource {
    dir: PathBuf,
    reads: Rc<RefCell<Vec<usize>>>,
}

impl ShardSource for CountingSource {
    fn shard(&mut self, index: usize, entry: &ShardEntry) -> Result<Vec<u8>, FormatError> {
        self.reads.borrow_mut().push(index);
        std::fs::read(self.dir.join(&entry.file)).map_err(|e| FormatError::Io(e.to_string()))
    }
}

fn manifest(dir: &Path, sub: &str) -> Vec<u8> {
    std::fs::read(dir.join(sub).join("manifest.json")).unwrap()
}

fn load_counting(ctx: Rc<GpuContext>, dir: &Path) -> (Result<Model, ModelError>, Vec<usize>, Vec<usize>) {
    let base_reads = Rc::new(RefCell::new(Vec::new()));
    let adapter_reads = Rc::new(RefCell::new(Vec::new()));
    let tokenizer = std::fs::read(dir.join("base/tokenizer.json")).unwrap();
    let (bm, am) = (manifest(dir, "base"), manifest(dir, "adapter"));
    let r = pollster::block_on(Model::load(
        ctx,
        ("base", &bm),
        &mut CountingSource { dir: dir.join("base"), reads: base_reads.clone() },
        &tokenizer,
        ("adapter", &am),
        &mut CountingSource { dir: dir.join("adapter"), reads: adapter_reads.clone() },
    ));
    let (b, a) = (base_reads.borrow().clone(), adapter_reads.borrow().clone());
    (r, b, a)
}

fn greedy(model: &Model, pixels: &[f32], n: usize) -> Vec<u32> {
    let vision = model.encode_image(pixels).unwrap();
    let prefixes = model.prepare_image(&vision).unwrap();
    let ids = model.base.tokenizer.encode_prompt(&format_prompt("What is in this picture?", None)).unwrap();
    let opts = GenerateOptions { max_new_tokens: n, temperature: 0.0, ..Default::default() };
    model.generate_blocking(&prefixes, &ids, &opts, &mut |_, _| true).unwrap().generated_ids
}

fn picture(size: usize) -> Vec<f32> {
    let bytes = std::fs::read("tests/fixtures/images/franz-kafka.jpg").unwrap();
    llama_adapter_web::image::clip_preprocess(&bytes, size as u32, ChannelOrder::Rgb).unwrap()
}

#[test]
fn many_shards_stream_one_at_a_time_and_match_one_shard() {
    let one = converted("stream", "lora", 64 << 20);
    let many = converted("stream", "lora", 65536);
    let shards = |d: &Path, sub: &str| std::fs::read_dir(d.join(sub)).unwrap().filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("shard-")).count();
    assert_eq!(shards(&one, "base"), 1);
    assert!(shards(&many, "base") >= 4, "the 64 KiB conversion has {} base shards", shards(&many, "base"));
    let ctx = Rc::new(gpu_shared());
    let (model, base_reads, adapter_reads) = load_counting(ctx.clone(), &many);
    let model = model.unwrap();
    // Each shard read once, in order.
    assert_eq!(base_reads, (0..shards(&many, "base")).collect::<Vec<_>>());
    assert_eq!(adapter_reads, (0..shards(&many, "adapter")).collect::<Vec<_>>());
    let reference = Model::load_dirs(ctx, &one.join("base"), &one.join("adapter")).unwrap();
    let pixels = picture(model.config.clip.image_size);
    let a = greedy(&model, &pixels, 12);
    assert_eq!(a, greedy(&reference, &pixels, 12), "many small shards give the same model as one");
    assert_eq!(a.len(), 12);
}

#[test]
fn a_model_that_cannot_fit_is_refused_before_any_shard_is_read() {
    let dir = converted("fit", "bias", 64 << 20);
    let p = dir.join("base/manifest.json");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    m["config"]["llama"]["max_seq_len"] = serde_json::json!(100_000_000u64);
    std::fs::write(&p, serde_json::to_vec(&m).unwrap()).unwrap();
    // The adapter names its base by hash: point it at the edited manifest.
    let base_sha = llama_adapter_web::format::package::sha256_hex(&manifest(&dir, "base"));
    let p = dir.join("adapter/manifest.json");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    m["base_sha256"] = serde_json::json!(base_sha);
    std::fs::write(&p, serde_json::to_vec(&m).unwrap()).unwrap();

    let (r, base_reads, adapter_reads) = load_counting(Rc::new(gpu_shared()), &dir);
    let e = r.err().expect("a 100M-token context must not fit");
    assert_eq!(e.code(), "does-not-fit", "{e}");
    let text = e.to_string();
    assert!(text.contains("does not fit") && text.contains("--max-seq-len") && text.contains("100000000 tokens"), "{text}");
    assert!(base_reads.is_empty() && adapter_reads.is_empty(), "shards were read: {base_reads:?} {adapter_reads:?}");

    // Absurd sizes are bad formats, found before any arithmetic on them.
    let p = dir.join("base/manifest.json");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    m["config"]["llama"]["dim"] = serde_json::json!(1u64 << 40);
    let plan = PackagePlan::parse("base", &serde_json::to_vec(&m).unwrap(), PackageKind::Base).unwrap();
    let e = BasePlan::new(plan).err().unwrap();
    assert!(e.to_string().contains("dim"), "{e}");

    // A "manifest" of 64 MiB + 1 is refused before it is parsed.
    let huge = vec![b' '; (64 << 20) + 1];
    let e = PackagePlan::parse("huge", &huge, PackageKind::Base).err().unwrap();
    assert!(matches!(e, FormatError::NotAManifest { .. }) && e.to_string().contains("at most"), "{e}");
}

#[test]
fn the_fit_report_counts_weights_cache_and_activations() {
    let dir = converted("report", "lora", 64 << 20);
    let ctx = gpu_shared();
    let base = BasePlan::new(PackagePlan::parse("base", &manifest(&dir, "base"), PackageKind::Base).unwrap()).unwrap();
    let adapter = AdapterPlan::new(PackagePlan::parse("adapter", &manifest(&dir, "adapter"), PackageKind::Adapter).unwrap(), &base).unwrap();
    let r = fit(&adapter.config, &[&base.package, &adapter.package], &ctx.info, None).unwrap();
    let l = &adapter.config.llama;
    assert_eq!(r.kv_cache_bytes, (2 * l.n_layers * l.max_seq_len * l.dim * 4) as u64);
    let shard_bytes: u64 = [&base.package, &adapter.package].iter().flat_map(|p| &p.manifest.shards).map(|s| s.bytes).sum();
    // Weights on the GPU are the shards' tensor bytes, each piece rounded up to 16.
    assert!(r.weight_bytes >= shard_bytes && r.weight_bytes < shard_bytes + 16 * 4096, "{} vs {shard_bytes}", r.weight_bytes);
    assert_eq!(r.total_bytes, r.weight_bytes + r.kv_cache_bytes + r.activation_bytes);
    // A budget below the total is refused, with both numbers in the message.
    let e = fit(&adapter.config, &[&base.package, &adapter.package], &ctx.info, Some(r.total_bytes / 2)).unwrap_err();
    assert!(e.to_string().contains("budget"), "{e}");
}

#[test]
fn swapping_the_adapter_keeps_the_base_and_matches_a_fresh_load() {
    let lora = converted("swap", "lora", 64 << 20);
    let bias = converted("swap", "bias", 64 << 20);
    // Same base checkpoint → byte-identical base packages.
    assert_eq!(manifest(&lora, "base"), manifest(&bias, "base"));
    let ctx = Rc::new(gpu_shared());
    let model = Model::load_dirs(ctx.clone(), &lora.join("base"), &lora.join("adapter")).unwrap();
    let pixels = picture(model.config.clip.image_size);
    let lora_ids = greedy(&model, &pixels, 10);

    // Upload only the bias adapter, onto the loaded base.
    let plan = AdapterPlan::for_base(
        PackagePlan::parse("bias adapter", &manifest(&bias, "adapter"), PackageKind::Adapter).unwrap(),
        &model.base.llama,
        &model.base.clip,
        &model.base.manifest_sha256,
    )
    .unwrap();
    let mut upload = pollster::block_on(PackageUpload::allocate(&ctx, &plan.package, &llama_adapter_web::model::loader::adapter_host_names(&plan.config), &[])).unwrap();
    for (i, s) in plan.package.manifest.shards.iter().enumerate() {
        upload.write_shard(&ctx, i, &std::fs::read(bias.join("adapter").join(&s.file)).unwrap()).unwrap();
    }
    let swapped = model.with_adapter(Rc::new(AdapterModel::new(&plan, upload).unwrap())).unwrap();
    assert!(Rc::ptr_eq(&swapped.base, &model.base), "the base is shared, not reloaded");
    assert!(Rc::ptr_eq(&swapped.session, &model.session), "the session (KV cache) is kept");

    // Prefixes of the old adapter are refused by the new one.
    let old_prefixes = model.prepare_image(&model.encode_image(&pixels).unwrap()).unwrap();
    let e = swapped.forward(&[1, 2], 0, &old_prefixes, false).err().unwrap();
    assert_eq!(e.code(), "bad-input");
    assert!(e.to_string().contains("another adapter"), "{e}");

    let fresh = Model::load_dirs(ctx, &bias.join("base"), &bias.join("adapter")).unwrap();
    let bias_ids = greedy(&swapped, &pixels, 10);
    assert_eq!(bias_ids, greedy(&fresh, &pixels, 10), "the swapped model answers as a fresh load of the bias adapter");
    assert_ne!(bias_ids, lora_ids, "the two adapters answer differently (else this test proves nothing)");
}

#[test]
fn a_second_generation_on_a_busy_session_is_refused() {
    let dir = converted("busy", "bias", 64 << 20);
    let model = Model::load_dirs(Rc::new(gpu_shared()), &dir.join("base"), &dir.join("adapter")).unwrap();
    let pixels = picture(model.config.clip.image_size);
    let prefixes = model.prepare_image(&model.encode_image(&pixels).unwrap()).unwrap();
    let ids = model.base.tokenizer.encode_prompt(&format_prompt("Hi", None)).unwrap();
    let opts = GenerateOptions { max_new_tokens: 4, temperature: 0.0, ..Default::default() };
    let mut inner: Option<ModelError> = None;
    let outer = model
        .generate_blocking(&prefixes, &ids, &opts, &mut |_, _| {
            if inner.is_none() {
                inner = Some(model.generate_blocking(&prefixes, &ids, &opts, &mut |_, _| true).expect_err("refused while busy"));
            }
            true
        })
        .unwrap();
    assert_eq!(inner.unwrap().code(), "busy");
    assert_eq!(outer.generated_ids.len(), 4);
    // The guard is released: the session works again.
    assert!(model.generate_blocking(&prefixes, &ids, &opts, &mut |_, _| true).is_ok());
    // And on_token returning false stops at once.
    let stopped = model.generate_blocking(&prefixes, &ids, &opts, &mut |_, _| false).unwrap();
    assert!(stopped.stopped && stopped.generated_ids.len() == 1);
}

#[test]
fn a_device_destroyed_mid_generation_is_device_lost_and_a_new_context_works() {
    let dir = converted("lost", "bias", 64 << 20);
    let model = Model::load_dirs(Rc::new(gpu_shared()), &dir.join("base"), &dir.join("adapter")).unwrap();
    let pixels = picture(model.config.clip.image_size);
    let prefixes = model.prepare_image(&model.encode_image(&pixels).unwrap()).unwrap();
    let ids = model.base.tokenizer.encode_prompt(&format_prompt("Hi", None)).unwrap();
    let opts = GenerateOptions { max_new_tokens: 8, temperature: 0.0, ..Default::default() };
    let mut seen = 0;
    let e = model
        .generate_blocking(&prefixes, &ids, &opts, &mut |_, _| {
            seen += 1;
            if seen == 2 {
                model.ctx.device.destroy();
            }
            true
        })
        .expect_err("a destroyed device cannot finish the generation");
    assert_eq!(e.code(), "device-lost", "{e}");
    assert!(seen >= 2 && seen < 8, "stopped at the loss ({seen} tokens)");
    // Later calls keep saying so, and a fresh context loads and answers.
    assert_eq!(model.generate_blocking(&prefixes, &ids, &opts, &mut |_, _| true).expect_err("still lost").code(), "device-lost");
    let fresh = Model::load_dirs(Rc::new(gpu_shared()), &dir.join("base"), &dir.join("adapter")).unwrap();
    assert_eq!(greedy(&fresh, &pixels, 4).len(), 4);
}
