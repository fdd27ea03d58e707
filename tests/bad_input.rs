//! Bad input gets a typed error with a clear message, never a panic.

mod common;

use std::path::{Path, PathBuf};
use std::rc::Rc;

use common::gpu_shared;
use llama_adapter_web::convert::checkpoint::{convert, ConvertError, ConvertOptions};
use llama_adapter_web::format::package::FormatError;
use llama_adapter_web::format::quant::QuantFormat;
use llama_adapter_web::model::config::ChannelOrder;
use llama_adapter_web::model::generate::GenerateOptions;
use llama_adapter_web::model::weights::ModelLoadError;
use llama_adapter_web::model::{Model, ModelError};

const FIX: &str = "tests/fixtures/tiny";

fn fresh(tag: &str, quant: QuantFormat) -> PathBuf {
    let out = std::env::temp_dir().join(format!("la-bad-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let opts = ConvertOptions { quant, channel_order: ChannelOrder::Rgb, ..Default::default() };
    convert(&Path::new(FIX).join("llama"), &Path::new(FIX).join("clip.pth"), &Path::new(FIX).join("adapter_bias.pth"), &out, &opts).unwrap();
    out
}

fn load(dir: &Path) -> Result<Model, ModelError> {
    Model::load_dirs(Rc::new(gpu_shared()), &dir.join("base"), &dir.join("adapter"))
}

fn format_error(r: Result<Model, ModelError>) -> FormatError {
    match r {
        Err(ModelError::Load(ModelLoadError::Format(e))) => e,
        Err(other) => panic!("expected a format error, got {other}"),
        Ok(_) => panic!("expected a format error, the model loaded"),
    }
}

#[test]
fn truncated_shard() {
    let dir = fresh("truncated", QuantFormat::Q4);
    let shard = dir.join("adapter/shard-000.bin");
    let bytes = std::fs::read(&shard).unwrap();
    std::fs::write(&shard, &bytes[..bytes.len() / 2]).unwrap();
    let e = format_error(load(&dir));
    assert!(matches!(e, FormatError::Truncated { .. }), "{e}");
    assert!(e.to_string().contains("truncated"), "{e}");
}

#[test]
fn corrupt_shard_fails_its_hash() {
    let dir = fresh("corrupt", QuantFormat::Q4);
    let shard = dir.join("base/shard-000.bin");
    let mut bytes = std::fs::read(&shard).unwrap();
    bytes[1000] ^= 0x55;
    std::fs::write(&shard, &bytes).unwrap();
    let e = format_error(load(&dir));
    assert!(matches!(e, FormatError::HashMismatch { .. }), "{e}");
    assert!(e.to_string().contains("sha256"), "{e}");
}

#[test]
fn manifest_that_does_not_fit_the_config() {
    let dir = fresh("config", QuantFormat::Q4);
    let path = dir.join("adapter/manifest.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut m: serde_json::Value = serde_json::from_str(&text).unwrap();
    m["config"]["adapter"]["query_len"] = serde_json::json!(12);
    std::fs::write(&path, serde_json::to_string(&m).unwrap()).unwrap();
    let e = format_error(load(&dir));
    assert!(matches!(e, FormatError::Tensor { .. }), "{e}");
    assert!(e.to_string().contains("does not fit the config"), "{e}");

    // A tensor entry pointing past its shard.
    let dir = fresh("offset", QuantFormat::Q4);
    let path = dir.join("adapter/manifest.json");
    let mut m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    m["tensors"][0]["pieces"][0]["offset"] = serde_json::json!(1u64 << 40);
    std::fs::write(&path, serde_json::to_string(&m).unwrap()).unwrap();
    let e = format_error(load(&dir));
    assert!(e.to_string().contains("outside shard"), "{e}");

    // An unsupported format version.
    let path = dir.join("base/manifest.json");
    let mut m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    m["version"] = serde_json::json!(99);
    std::fs::write(&path, serde_json::to_string(&m).unwrap()).unwrap();
    assert!(matches!(format_error(load(&dir)), FormatError::Version { found: 99, .. }));
}

#[test]
fn adapter_for_another_base() {
    let q4 = fresh("base-q4", QuantFormat::Q4);
    let q8 = fresh("base-q8", QuantFormat::Q8);
    let e = format_error(Model::load_dirs(Rc::new(gpu_shared()), &q8.join("base"), &q4.join("adapter")));
    assert!(matches!(e, FormatError::WrongBase { .. }), "{e}");
    // A package of the wrong kind.
    let e = format_error(Model::load_dirs(Rc::new(gpu_shared()), &q4.join("adapter"), &q4.join("adapter")));
    assert!(matches!(e, FormatError::Kind { .. }), "{e}");
}

fn convert_adapter(path: &str) -> ConvertError {
    let out = std::env::temp_dir().join(format!("la-bad-ckpt-{}-{}", std::process::id(), path.replace('/', "_")));
    let opts = ConvertOptions { quant: QuantFormat::Q4, ..Default::default() };
    match convert(&Path::new(FIX).join("llama"), &Path::new(FIX).join("clip.pth"), Path::new(path), &out, &opts) {
        Err(e) => e,
        Ok(_) => panic!("{path}: conversion should fail"),
    }
}

#[test]
fn checkpoints_with_unknown_missing_or_misshapen_keys() {
    let e = convert_adapter(&format!("{FIX}/bad/adapter_unknown_key.pth"));
    assert!(matches!(e, ConvertError::UnknownKeys { .. }) && e.to_string().contains("mystery"), "{e}");
    let e = convert_adapter(&format!("{FIX}/bad/adapter_missing_key.pth"));
    assert!(matches!(e, ConvertError::MissingKeys { .. }) && e.to_string().contains("layers.1.attention.wq.bias"), "{e}");
    let e = convert_adapter(&format!("{FIX}/bad/adapter_bad_shape.pth"));
    assert!(e.to_string().contains("visual_proj.bias"), "{e}");
    // A CLIP file where an adapter is expected, and a file that is not a checkpoint.
    let e = convert_adapter(&format!("{FIX}/clip.pth"));
    assert!(e.to_string().contains("not an adapter checkpoint"), "{e}");
    let e = convert_adapter(&format!("{FIX}/llama/params.json"));
    assert!(e.to_string().contains("not a PyTorch zip checkpoint"), "{e}");
}

/// Our `vision_heads` extension in clip.pth: a value that does not divide the
/// width, or leaves a head dim the attention kernel cannot take, is refused by
/// name; a valid one reaches the loaded model's config
/// (OpenAI's layout alone implies width / 64 = 1 head for this fixture).
#[test]
fn clip_vision_heads_extension() {
    let convert_with = |clip: &str, tag: &str| {
        let out = std::env::temp_dir().join(format!("la-bad-heads-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&out);
        let opts = ConvertOptions { quant: QuantFormat::F32, channel_order: ChannelOrder::Rgb, ..Default::default() };
        convert(&Path::new(FIX).join("llama"), Path::new(clip), &Path::new(FIX).join("adapter_bias.pth"), &out, &opts).map(|_| out)
    };
    let e = convert_with(&format!("{FIX}/bad/clip_heads3.pth"), "3").err().expect("3 heads of a width of 64 must be refused");
    assert!(matches!(e, ConvertError::BadInput { .. }) && e.to_string().contains("vision_heads 3 does not divide the width 64"), "{e}");
    let e = convert_with(&format!("{FIX}/bad/clip_heads32.pth"), "32").err().expect("a head dim of 2 must be refused");
    assert!(e.to_string().contains("CLIP head dim 2 (width 64 / 32 heads) must be a multiple of 4"), "{e}");
    let dir = convert_with(&format!("{FIX}/bad/clip_heads2.pth"), "2").unwrap();
    assert_eq!(load(&dir).unwrap().config.clip.heads, 2);
    let dir = convert_with(&format!("{FIX}/clip.pth"), "default").unwrap();
    assert_eq!(load(&dir).unwrap().config.clip.heads, 1);
}

#[test]
fn empty_prompt_and_prompt_over_the_context() {
    let dir = fresh("prompt", QuantFormat::Q4);
    let model = load(&dir).unwrap();
    let image = vec![0f32; 3 * 224 * 224];
    let vision = model.encode_image(&image).unwrap();
    let prefixes = model.prepare_image(&vision).unwrap();
    let opts = GenerateOptions { max_new_tokens: 8, temperature: 0.0, ..Default::default() };
    let e = model.generate_blocking(&prefixes, &[1], &opts, &mut |_, _| true).err().unwrap();
    assert!(matches!(e, ModelError::BadInput(_)) && e.to_string().contains("empty"), "{e}");
    let long: Vec<u32> = std::iter::once(1).chain(std::iter::repeat(450).take(510)).collect();
    let e = model.generate_blocking(&prefixes, &long, &opts, &mut |_, _| true).err().unwrap();
    assert!(matches!(e, ModelError::ContextOverflow { prompt: 511, new: 8, context: 512 }), "{e}");
    assert!(e.to_string().contains("exceed the model's context of 512"), "{e}");
    // A wrongly sized image tensor and an out-of-vocabulary token.
    assert!(matches!(model.encode_image(&image[..100]), Err(ModelError::BadInput(_))));
    assert!(matches!(model.forward(&[1, 40000], 0, &prefixes, false), Err(ModelError::BadInput(_))));
}
