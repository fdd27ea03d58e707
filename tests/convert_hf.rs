//! Hugging Face layouts (LLaMA safetensors with HF's q/k row permutation,
//! CLIP vision safetensors with separate q/k/v) convert to exactly the same
//! packages as Meta's and OpenAI's files of the same weights
//! (tests/fixtures/tiny/hf, made by tools/reference/make_hf_fixtures.py).

use std::path::{Path, PathBuf};

use llama_adapter_web::convert::checkpoint::{convert, ConvertOptions};
use llama_adapter_web::format::package::{LoadedPackage, PackageKind};
use llama_adapter_web::format::quant::QuantFormat;

const FIX: &str = "tests/fixtures/tiny";

fn out(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("la-hf-{}-{tag}", std::process::id()))
}

#[test]
fn hf_layouts_convert_to_the_same_packages() {
    // An HF folder: config.json + model.safetensors, and the tokenizer.model beside them.
    let hf_dir = out("llama");
    std::fs::create_dir_all(&hf_dir).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(Path::new(FIX).join("hf/llama").join(f), hf_dir.join(f)).unwrap();
    }
    std::fs::copy(Path::new(FIX).join("llama/tokenizer.model"), hf_dir.join("tokenizer.model")).unwrap();

    let opts = ConvertOptions { quant: QuantFormat::F32, ..Default::default() };
    let adapter = Path::new(FIX).join("adapter_bias.pth");
    let meta = out("meta-out");
    let hf = out("hf-out");
    convert(&Path::new(FIX).join("llama"), &Path::new(FIX).join("clip.pth"), &adapter, &meta, &opts).unwrap();
    convert(&hf_dir, &Path::new(FIX).join("hf/clip.safetensors"), &adapter, &hf, &opts).unwrap();

    let a = LoadedPackage::read_dir(&meta.join("base"), PackageKind::Base).unwrap();
    let b = LoadedPackage::read_dir(&hf.join("base"), PackageKind::Base).unwrap();
    let mut names: Vec<&str> = a.manifest.tensors.iter().map(|t| t.name.as_str()).collect();
    names.sort();
    assert_eq!(a.manifest.tensors.len(), b.manifest.tensors.len());
    for name in names {
        assert_eq!(a.tensor_f32(name), b.tensor_f32(name), "{name} differs between the Meta/OpenAI and HF conversions");
    }
    // Same weights, same config: identical manifests and shards.
    assert_eq!(a.manifest.config["llama"]["dim"], b.manifest.config["llama"]["dim"]);
    assert_eq!(a.manifest_sha256, b.manifest_sha256, "the packages should be byte-identical");
}

/// OpenAI releases CLIP as a TorchScript archive (`ViT-L-14.pt`): its module
/// tree must give the same weights as the plain state dict.
#[test]
fn torchscript_clip_converts_like_the_state_dict() {
    let opts = ConvertOptions { quant: QuantFormat::F32, ..Default::default() };
    let adapter = Path::new(FIX).join("adapter_bias.pth");
    let plain = out("ts-plain");
    let scripted = out("ts-scripted");
    convert(&Path::new(FIX).join("llama"), &Path::new(FIX).join("clip.pth"), &adapter, &plain, &opts).unwrap();
    convert(&Path::new(FIX).join("llama"), &Path::new(FIX).join("clip_torchscript.pt"), &adapter, &scripted, &opts).unwrap();
    let a = LoadedPackage::read_dir(&plain.join("base"), PackageKind::Base).unwrap();
    let b = LoadedPackage::read_dir(&scripted.join("base"), PackageKind::Base).unwrap();
    for t in a.manifest.tensors.iter().filter(|t| t.name.starts_with("clip.")) {
        assert_eq!(a.tensor_f32(&t.name), b.tensor_f32(&t.name), "{}", t.name);
    }
    assert_eq!(a.manifest_sha256, b.manifest_sha256);
}

/// One of our own adapter packages as the converter's adapter input: it is
/// checked against the base and re-targeted to it (new base hash, new format).
#[test]
fn own_adapter_package_is_retargeted() {
    let opts = |quant| ConvertOptions { quant, ..Default::default() };
    let first = out("own-first");
    convert(&Path::new(FIX).join("llama"), &Path::new(FIX).join("clip.pth"), &Path::new(FIX).join("adapter_lora.pth"), &first, &opts(QuantFormat::F32)).unwrap();
    let second = out("own-second");
    convert(&Path::new(FIX).join("llama"), &Path::new(FIX).join("clip.pth"), &first.join("adapter"), &second, &opts(QuantFormat::Q8)).unwrap();
    let base = LoadedPackage::read_dir(&second.join("base"), PackageKind::Base).unwrap();
    let a = LoadedPackage::read_dir(&first.join("adapter"), PackageKind::Adapter).unwrap();
    let b = LoadedPackage::read_dir(&second.join("adapter"), PackageKind::Adapter).unwrap();
    assert_eq!(b.manifest.base_sha256.as_deref(), Some(base.manifest_sha256.as_str()));
    assert_eq!(b.manifest.tensor_count(), a.manifest.tensor_count());
    let t = b.tensor("visual_blocks.0.mlp.fc1.weight").unwrap();
    assert_eq!(t.format, "q8");
    assert_eq!(a.tensor_f32("llama.layers.1.attention.new_gate"), b.tensor_f32("llama.layers.1.attention.new_gate"));
}
