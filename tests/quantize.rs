//! `quantize`: re-storing converted packages. The rule (f32 tensors stay
//! f32, overrides first, the target otherwise), the re-targeted adapter
//! (the loader accepts it and it answers), a refused adapter of another
//! base, the report's sizes, and the q4 → f32 round trip being exact (the
//! dequantised weights are what the kernels compute with).

mod common;

use std::path::{Path, PathBuf};
use std::rc::Rc;

use common::gpu_shared;
use llama_adapter_web::convert::checkpoint::{convert, ConvertOptions};
use llama_adapter_web::convert::quantize::{quantize_packages, FormatOverride, QuantizeOptions};
use llama_adapter_web::format::package::{LoadedPackage, PackageKind};
use llama_adapter_web::format::quant::{QuantFormat, Rounding};
use llama_adapter_web::model::config::ChannelOrder;
use llama_adapter_web::model::generate::GenerateOptions;
use llama_adapter_web::model::Model;
use llama_adapter_web::text::prompt::format_prompt;

const FIX: &str = "tests/fixtures/tiny";

fn tmp(tag: &str) -> PathBuf {
    let out = std::env::temp_dir().join(format!("la-quantize-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    out
}

/// The tiny fixture with the LoRA adapter, converted in f16.
fn converted_f16(tag: &str) -> PathBuf {
    let out = tmp(tag);
    let opts = ConvertOptions { quant: QuantFormat::F16, v_num_heads: Some(2), channel_order: ChannelOrder::Rgb, ..Default::default() };
    convert(&Path::new(FIX).join("llama"), &Path::new(FIX).join("clip.pth"), &Path::new(FIX).join("adapter_lora.pth"), &out, &opts).unwrap();
    out
}

fn answer(dir: &Path) -> Vec<u32> {
    let model = Model::load_dirs(Rc::new(gpu_shared()), &dir.join("base"), &dir.join("adapter")).unwrap();
    let size = model.config.clip.image_size;
    let vision = model.encode_image(&vec![0.25; 3 * size * size]).unwrap();
    let prefixes = model.prepare_image(&vision).unwrap();
    let ids = model.base.tokenizer.encode_prompt(&format_prompt("Describe this image.", None)).unwrap();
    let opts = GenerateOptions { max_new_tokens: 6, temperature: 0.0, ..Default::default() };
    model.generate_blocking(&prefixes, &ids, &opts, &mut |_, _| true).unwrap().generated_ids
}

#[test]
fn quantize_restores_retargets_and_reports() {
    let src = converted_f16("src");
    let out = tmp("q4");
    let opts = QuantizeOptions {
        to: QuantFormat::Q4,
        rounding: Rounding::Search,
        overrides: vec![FormatOverride::parse("output.weight=q8").unwrap(), FormatOverride::parse("layers.*.feed_forward.w2.weight=f16").unwrap()],
        ..Default::default()
    };
    let report = quantize_packages(Some(&src.join("base")), &[src.join("adapter")], &out, &opts).unwrap();

    let old_base = LoadedPackage::read_dir(&src.join("base"), PackageKind::Base).unwrap();
    let base = LoadedPackage::read_dir(&out.join("base"), PackageKind::Base).unwrap();
    let adapter = LoadedPackage::read_dir(&out.join("adapter"), PackageKind::Adapter).unwrap();
    assert_eq!(adapter.manifest.base_sha256.as_deref(), Some(base.manifest_sha256.as_str()), "the adapter names the new base");
    assert_eq!(base.manifest.tokenizer, old_base.manifest.tokenizer);
    for t in &base.manifest.tensors {
        let was = &old_base.tensor(&t.name).unwrap().format;
        let want = if was == "f32" {
            "f32"
        } else if t.name == "output.weight" {
            "q8"
        } else if t.name.contains(".feed_forward.w2.") {
            "f16"
        } else {
            "q4"
        };
        assert_eq!(t.format, want, "{} (was {was})", t.name);
    }
    assert!(adapter.manifest.tensors.iter().any(|t| t.format == "q4"), "the adapter's visual linears are re-stored too");
    assert!(adapter.manifest.tensors.iter().filter(|t| t.name.contains("gate") || t.name.ends_with(".bias")).all(|t| t.format == "f32"));

    // Sizes and errors: bytes per the format, a q4 error well above zero and below absmax's worst case.
    for t in &report.tensors {
        let format = QuantFormat::parse(t.to).unwrap();
        let entry = if t.package.ends_with("base") { base.tensor(&t.name) } else { adapter.tensor(&t.name) }.unwrap();
        assert_eq!(t.bytes, format.bytes(entry.rows(), entry.cols()), "{}", t.name);
        if t.to == "q4" {
            assert!(t.relative_rms_error > 0.01 && t.relative_rms_error < 0.2, "{}: {}", t.name, t.relative_rms_error);
        }
        if t.from == t.to {
            assert_eq!(t.relative_rms_error, 0.0);
        }
    }
    let bits = report.bits_per_weight();
    assert!(bits > 4.5 && bits < 16.0, "{bits}");

    // The loader takes the re-targeted pair and it answers.
    assert_eq!(answer(&out).len(), 6);

    // q4 → f32 is exact: every weight equals its dequantised q4 value.
    let f32_out = tmp("f32");
    quantize_packages(Some(&out.join("base")), &[out.join("adapter")], &f32_out, &QuantizeOptions { to: QuantFormat::F32, ..Default::default() }).unwrap();
    let back = LoadedPackage::read_dir(&f32_out.join("base"), PackageKind::Base).unwrap();
    for t in &base.manifest.tensors {
        assert_eq!(back.tensor_f32(&t.name), base.tensor_f32(&t.name), "{}", t.name);
    }
    assert_eq!(answer(&f32_out), answer(&out), "the dequantised model answers as the q4 one");

    // An adapter made for another base is refused, naming the mismatch.
    let err = quantize_packages(Some(&out.join("base")), &[src.join("adapter")], &tmp("wrong"), &QuantizeOptions::default()).err().expect("refused");
    assert!(err.to_string().contains("another base"), "{err}");
    // An adapter alone keeps its base.
    let alone = tmp("alone");
    quantize_packages(None, &[src.join("adapter")], &alone, &QuantizeOptions::default()).unwrap();
    let kept = LoadedPackage::read_dir(&alone.join("adapter"), PackageKind::Adapter).unwrap();
    assert_eq!(kept.manifest.base_sha256.as_deref(), Some(old_base.manifest_sha256.as_str()));
    // Bad overrides are refused with a reason.
    assert!(FormatOverride::parse("output.weight").is_err());
    assert!(FormatOverride::parse("output.weight=q3").is_err());
    for d in [src, out, f32_out, alone] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// Forced decoding (`eval --reference`): the logits that predict each token
/// of a greedy answer, from one prefill, equal the logits the generation saw
/// step by step (prefill vs decode plan: same weights, other kernels'
/// summation order: 1e-3 of the logit range), and their argmaxes are the
/// answer — so "some forced step disagrees" is "the greedy answer differs".
#[test]
fn forced_decoding_reproduces_greedy_steps() {
    let src = converted_f16("forced");
    let model = Model::load_dirs(Rc::new(gpu_shared()), &src.join("base"), &src.join("adapter")).unwrap();
    let size = model.config.clip.image_size;
    let vision = model.encode_image(&vec![0.1; 3 * size * size]).unwrap();
    let prefixes = model.prepare_image(&vision).unwrap();
    let ids = model.base.tokenizer.encode_prompt(&format_prompt("What is in the picture?", None)).unwrap();
    let opts = GenerateOptions { max_new_tokens: 10, temperature: 0.0, keep_logits: true, ..Default::default() };
    let got = model.generate_blocking(&prefixes, &ids, &opts, &mut |_, _| true).unwrap();
    let mut answer = got.generated_ids.clone();
    if got.stopped_at_eos {
        answer.push(llama_adapter_web::text::tokenizer::EOS);
    }
    assert_eq!(got.logits.len(), answer.len());
    let forced = pollster::block_on(model.continuation_logits(&prefixes, &ids, &answer)).unwrap();
    assert_eq!(forced.len(), answer.len());
    for (step, ((f, g), want)) in forced.iter().zip(&got.logits).zip(&answer).enumerate() {
        let range = g.iter().fold(0f32, |m, x| m.max(x.abs()));
        let worst = f.iter().zip(g).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(worst <= 1e-3 * range, "step {step}: forced logits differ by {worst} (range {range})");
        let argmax = f.iter().enumerate().fold((0, f32::NEG_INFINITY), |b, (i, &v)| if v > b.1 { (i, v) } else { b }).0 as u32;
        assert_eq!(argmax, *want, "step {step}");
    }
    // An empty continuation is bad input, not a panic.
    assert!(pollster::block_on(model.continuation_logits(&prefixes, &ids, &[])).is_err());
    let _ = std::fs::remove_dir_all(src);
}

/// The loader fuses q|k|v and w1|w3 only where the members share a format;
/// a base whose wk and w3 stay f16 while the rest is f32 holds the same
/// values as the all-f32 base (f16 -> f32 is exact) but runs every member
/// as its own matmul. Both must compute the same thing: the fused matmul
/// and the separate ones, each with the stacked LoRA in its epilogue (the
/// separate members reading their own slices of u and rows of L2), on the
/// CPU adapter's shapes and on a real GPU's. Tolerance: the same
/// products summed by the same kernels, in row tiles of another size;
/// measured 0 here, allowed 1e-5 relative to the largest logit.
#[test]
fn fused_and_separate_members_compute_the_same() {
    let src = converted_f16("fuse-src");
    let fused_dir = tmp("fused");
    let separate_dir = tmp("separate");
    let all_f32 = QuantizeOptions { to: QuantFormat::F32, ..Default::default() };
    quantize_packages(Some(&src.join("base")), &[src.join("adapter")], &fused_dir, &all_f32).unwrap();
    let split = QuantizeOptions {
        overrides: vec![FormatOverride::parse("layers.*.attention.wk.weight=f16").unwrap(), FormatOverride::parse("layers.*.feed_forward.w3.weight=f16").unwrap()],
        ..all_f32
    };
    quantize_packages(Some(&src.join("base")), &[src.join("adapter")], &separate_dir, &split).unwrap();

    for gpu_shapes in [false, true] {
        let logits = |dir: &Path, fused: bool| -> Vec<f32> {
            let ctx = if gpu_shapes { common::gpu_with_gpu_kernel_shapes() } else { gpu_shared() };
            let model = Model::load_dirs(Rc::new(ctx), &dir.join("base"), &dir.join("adapter")).unwrap();
            for group in ["attention.wqkv", "feed_forward.w13"] {
                assert_eq!(model.base.weights.tensors.contains_key(&format!("layers.0.{group}")), fused, "{}: {group}", dir.display());
            }
            let size = model.config.clip.image_size;
            let prefixes = model.prepare_image(&model.encode_image(&vec![0.25; 3 * size * size]).unwrap()).unwrap();
            let ids = model.base.tokenizer.encode_prompt(&format_prompt("Describe this image.", None)).unwrap();
            let prompt = model.forward(&ids, 0, &prefixes, true).unwrap();
            let mut all = model.read_f32(&prompt.logits, ids.len() * model.config.llama.vocab_size).unwrap();
            // One decode step after the prompt (the one-row shapes).
            let step = model.forward(&[5], ids.len(), &prefixes, false).unwrap();
            all.extend(model.read_f32(&step.logits, model.config.llama.vocab_size).unwrap());
            all
        };
        let (a, b) = (logits(&fused_dir, true), logits(&separate_dir, false));
        let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
        let diff = a.iter().zip(&b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        println!("gpu shapes {gpu_shapes}: fused vs separate logits differ by {diff:e} (largest {scale})");
        assert!(diff <= 1e-5 * scale, "gpu shapes {gpu_shapes}: fused and separate differ by {diff} (largest logit {scale})");
    }
}

/// Writes `package`'s tensors again into `dir`, each as `format(name)`, with
/// `values(name, data)` in place of its values (same config, base, template).
fn rewrite_package(package: &LoadedPackage, dir: &Path, format: impl Fn(&str) -> QuantFormat, values: impl Fn(&str, Vec<f32>) -> Vec<f32>) {
    use llama_adapter_web::format::package::PackageWriter;
    let mut writer = PackageWriter::new(64 << 20, 64 << 20);
    for t in &package.manifest.tensors {
        let data = values(&t.name, package.tensor_f32(&t.name).unwrap());
        writer.add(&t.name, &t.shape, format(&t.name), &data);
    }
    let (mut manifest, files) = writer.finish(package.manifest.kind, package.manifest.config.clone());
    manifest.base_sha256 = package.manifest.base_sha256.clone();
    manifest.prompt_template = package.manifest.prompt_template.clone();
    std::fs::create_dir_all(dir).unwrap();
    for (name, bytes) in &files {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    std::fs::write(dir.join("manifest.json"), serde_json::to_vec_pretty(&manifest).unwrap()).unwrap();
}

/// The loader stacks a group's LoRA halves (and the matmul applies L2 in its
/// epilogue) only where L2 is f32; an adapter whose wk, wo and w3 L2 are f16
/// runs q|k|v, wo and w1|w3 through the unfolded LoRA path (u, then L2 as a
/// matmul of its own, then the main product on top; a separate SiLU-gate),
/// and w2 still folded. With the same values (those L2 rounded to f16 in
/// both packages), both must compute the same logits, on the CPU adapter's
/// shapes and on a real GPU's. Tolerance: the same products summed in
/// another order (the LoRA term inside or outside the main sum); 1e-5
/// relative to the largest logit.
#[test]
fn stacked_and_member_lora_compute_the_same() {
    let src = converted_f16("lora-src");
    let all_f32 = tmp("lora-f32");
    quantize_packages(Some(&src.join("base")), &[src.join("adapter")], &all_f32, &QuantizeOptions { to: QuantFormat::F32, ..Default::default() }).unwrap();
    let adapter = LoadedPackage::read_dir(&all_f32.join("adapter"), PackageKind::Adapter).unwrap();
    let unfolded = |name: &str| ["lora_wk_l2", "lora_wo_l2", "lora_w3_l2"].iter().any(|h| name.contains(h));
    let to_f16 = |name: &str, data: Vec<f32>| if unfolded(name) { data.iter().map(|v| half::f16::from_f32(*v).to_f32()).collect() } else { data };
    let (stacked_dir, members_dir) = (tmp("lora-stacked"), tmp("lora-members"));
    rewrite_package(&adapter, &stacked_dir, |_| QuantFormat::F32, to_f16);
    rewrite_package(&adapter, &members_dir, |n| if unfolded(n) { QuantFormat::F16 } else { QuantFormat::F32 }, to_f16);

    for gpu_shapes in [false, true] {
        let run = |adapter_dir: &Path, stacked: bool| -> (Vec<f32>, usize) {
            let ctx = if gpu_shapes { common::gpu_with_gpu_kernel_shapes() } else { gpu_shared() };
            let model = Model::load_dirs(Rc::new(ctx), &all_f32.join("base"), adapter_dir).unwrap();
            let layer = &model.decoder.layers[0];
            assert_eq!(layer.qkv.stacked_lora.is_some(), stacked, "{}: q|k|v LoRA stacked", adapter_dir.display());
            assert_eq!(layer.w13.stacked_lora.is_some(), stacked, "{}: w1|w3 LoRA stacked", adapter_dir.display());
            let size = model.config.clip.image_size;
            let prefixes = model.prepare_image(&model.encode_image(&vec![0.25; 3 * size * size]).unwrap()).unwrap();
            let ids = model.base.tokenizer.encode_prompt(&format_prompt("Describe this image.", None)).unwrap();
            let prompt = model.forward(&ids, 0, &prefixes, true).unwrap();
            let mut all = model.read_f32(&prompt.logits, ids.len() * model.config.llama.vocab_size).unwrap();
            let (steps, _) = model.forward_dispatches(&[5], ids.len(), &prefixes, false).unwrap();
            let step = model.forward(&[5], ids.len(), &prefixes, false).unwrap();
            all.extend(model.read_f32(&step.logits, model.config.llama.vocab_size).unwrap());
            (all, steps.len())
        };
        let ((a, folded_dispatches), (b, member_dispatches)) = (run(&stacked_dir, true), run(&members_dir, false));
        let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
        let diff = a.iter().zip(&b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        println!("gpu shapes {gpu_shapes}: stacked vs member LoRA logits differ by {diff:e} (largest {scale}); dispatches per step {folded_dispatches} vs {member_dispatches}");
        assert!(diff <= 1e-5 * scale, "gpu shapes {gpu_shapes}: stacked and member LoRA differ by {diff} (largest logit {scale})");
        assert!(folded_dispatches < member_dispatches, "folding must cut dispatches ({folded_dispatches} vs {member_dispatches})");
    }
}
