//! Hostile files get a typed error naming the file and the field, before
//! anything is allocated from their sizes (src/limits.rs, docs/ROBUSTNESS.md).
//! No GPU needed: these are the readers alone.

use std::io::Write;

use llama_adapter_web::convert::pickle::{Checkpoint, PickleError};
use llama_adapter_web::convert::sentencepiece::{SentencePieceError, SentencePieceModel};
use llama_adapter_web::convert::sources::parse_safetensors_header;
use llama_adapter_web::format::package::{FormatError, PackageKind};
use llama_adapter_web::gpu::GpuInfo;
use llama_adapter_web::image::{decode_rgb8, ImageError};
use llama_adapter_web::limits;
use llama_adapter_web::model::config::ModelConfig;
use llama_adapter_web::model::loader::{fit, BasePlan, PackagePlan};

const BASE: &str = "www/models/default/base/manifest.json";
const ADAPTER: &str = "www/models/default/adapter/manifest.json";

fn manifest(path: &str) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn base_plan(m: &serde_json::Value) -> Result<BasePlan, FormatError> {
    BasePlan::new(PackagePlan::parse("hostile/manifest.json", &serde_json::to_vec(m).unwrap(), PackageKind::Base)?)
}

fn browser_gpu() -> GpuInfo {
    GpuInfo::webgpu_defaults("test")
}

#[test]
fn manifest_with_an_impossible_context_length() {
    // Beyond any bound: a typed config error naming the field and the file.
    for ctx in [1u64 << 40, u64::MAX, 0] {
        let mut m = manifest(BASE);
        m["config"]["llama"]["max_seq_len"] = serde_json::json!(ctx);
        let e = base_plan(&m).err().unwrap_or_else(|| panic!("max_seq_len {ctx} accepted"));
        assert!(matches!(e, FormatError::Config { .. }), "{e}");
        assert!(e.to_string().contains("max_seq_len") && e.to_string().contains("hostile/manifest.json"), "{e}");
    }
    // Within the bound (2^27) but far beyond the device: does-not-fit, from the manifests alone.
    let mut m = manifest(BASE);
    m["config"]["llama"]["max_seq_len"] = serde_json::json!(1u64 << 27);
    let base = base_plan(&m).unwrap();
    let adapter: serde_json::Value = manifest(ADAPTER)["config"]["adapter"].clone();
    let config = ModelConfig { llama: base.llama.clone(), clip: base.clip.clone(), adapter: serde_json::from_value(adapter).unwrap() };
    let e = fit(&config, &[&base.package], &browser_gpu(), None).unwrap_err();
    assert!(e.reason.contains("--max-seq-len"), "{e}");
}

#[test]
fn manifest_with_an_impossible_tensor_size() {
    let cases: Vec<(serde_json::Value, &str)> = vec![
        // rows × cols would overflow (2^80 elements).
        (serde_json::json!([1u64 << 40, 1u64 << 40]), "shape"),
        (serde_json::json!([u64::MAX, 2]), "shape"),
        // over MAX_TENSOR_ELEMENTS without overflowing
        (serde_json::json!([1u64 << 20, 1u64 << 20]), "shape"),
        (serde_json::json!([96, 0]), "shape"),
        (serde_json::json!([]), "shape"),
        (serde_json::json!([1, 1, 1, 1, 1, 1, 1, 1, 96]), "shape"),
    ];
    for (shape, field) in cases {
        let mut m = manifest(BASE);
        m["tensors"][0]["shape"] = shape.clone();
        let bytes = serde_json::to_vec(&m).unwrap();
        let e = PackagePlan::parse("hostile/manifest.json", &bytes, PackageKind::Base).err().unwrap_or_else(|| panic!("shape {shape} accepted"));
        assert!(matches!(e, FormatError::Tensor { .. } | FormatError::NotAManifest { .. }), "{shape}: {e}");
        assert!(e.to_string().contains(field), "{shape}: {e}");
    }
    // A piece claiming more rows than exist (2^64 - 1), an offset at the end of u64.
    let mut m = manifest(BASE);
    m["tensors"][0]["pieces"][0]["rows"] = serde_json::json!(u64::MAX);
    let e = PackagePlan::parse("m", &serde_json::to_vec(&m).unwrap(), PackageKind::Base).unwrap_err();
    assert!(matches!(e, FormatError::Tensor { .. }) && e.to_string().contains("tile"), "{e}");
    let mut m = manifest(BASE);
    m["tensors"][0]["pieces"][0]["offset"] = serde_json::json!(u64::MAX);
    let e = PackagePlan::parse("m", &serde_json::to_vec(&m).unwrap(), PackageKind::Base).unwrap_err();
    assert!(e.to_string().contains("outside shard"), "{e}");
    // A version that wraps to 1 in 32 bits is not version 1.
    let mut m = manifest(BASE);
    m["version"] = serde_json::json!((1u64 << 32) + 1);
    let e = PackagePlan::parse("m", &serde_json::to_vec(&m).unwrap(), PackageKind::Base).unwrap_err();
    assert!(matches!(e, FormatError::Version { .. }), "{e}");
    // Too many shards.
    let mut m = manifest(BASE);
    let shard = m["shards"][0].clone();
    m["shards"] = serde_json::Value::Array(vec![shard; limits::MAX_SHARDS + 1]);
    let e = PackagePlan::parse("m", &serde_json::to_vec(&m).unwrap(), PackageKind::Base).unwrap_err();
    assert!(e.to_string().contains("shards"), "{e}");
}

// ---- pickles, written opcode by opcode ----

fn binunicode(s: &str) -> Vec<u8> {
    let mut b = vec![b'X'];
    b.extend((s.len() as u32).to_le_bytes());
    b.extend(s.as_bytes());
    b
}

fn int(v: u64) -> Vec<u8> {
    let mut b = vec![0x8a, 8];
    b.extend(v.to_le_bytes());
    b
}

fn tuple(items: &[Vec<u8>]) -> Vec<u8> {
    let mut b = vec![b'('];
    for i in items {
        b.extend(i);
    }
    b.push(b't');
    b
}

/// `{"w": torch._utils._rebuild_tensor_v2(storage('0', FloatStorage, numel), offset, shape, stride, False, OrderedDict())}`
fn tensor_pickle(numel: u64, offset: u64, shape: &[u64], stride: &[u64]) -> Vec<u8> {
    let mut p = vec![0x80, 2, b'}'];
    p.extend(binunicode("w"));
    p.extend(b"ctorch._utils\n_rebuild_tensor_v2\n");
    let storage = tuple(&[binunicode("storage"), b"ctorch\nFloatStorage\n".to_vec(), binunicode("0"), binunicode("cpu"), int(numel)]);
    let mut pid = storage;
    pid.push(b'Q');
    let mut od = b"ccollections\nOrderedDict\n".to_vec();
    od.extend(b")R");
    let args = tuple(&[pid, int(offset), tuple(&shape.iter().map(|s| int(*s)).collect::<Vec<_>>()), tuple(&stride.iter().map(|s| int(*s)).collect::<Vec<_>>()), vec![0x89], od]);
    p.extend(args);
    p.extend(b"Rs.");
    p
}

fn zip_checkpoint(pickle: &[u8], storage: &[u8]) -> Vec<u8> {
    let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    z.start_file("archive/data.pkl", opts).unwrap();
    z.write_all(pickle).unwrap();
    z.start_file("archive/data/0", opts).unwrap();
    z.write_all(storage).unwrap();
    z.finish().unwrap().into_inner()
}

fn open(pickle: &[u8], storage: &[u8]) -> Result<Vec<f32>, PickleError> {
    let mut c = Checkpoint::from_bytes("hostile.pth", zip_checkpoint(pickle, storage))?;
    let tensors = c.tensors()?;
    c.read_f32(&tensors["w"])
}

#[test]
fn pickle_tensor_records_that_do_not_fit_their_storage() {
    let storage: Vec<u8> = (0..6).flat_map(|i| (i as f32).to_le_bytes()).collect();
    // The well-formed record reads.
    assert_eq!(open(&tensor_pickle(6, 0, &[2, 3], &[3, 1]), &storage).unwrap(), vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
    let field = |r: Result<Vec<f32>, PickleError>| match r {
        Err(PickleError::BadTensor { field, path, .. }) => {
            assert_eq!(path, "hostile.pth");
            field
        }
        Err(e) => panic!("expected a BadTensor error, got {e}"),
        Ok(v) => panic!("read {} values", v.len()),
    };
    // Strides whose products overflow usize (2^62 × 2 wraps), and strides that are not contiguous.
    assert_eq!(field(open(&tensor_pickle(6, 0, &[2, 3], &[1 << 62, 1]), &storage)), "stride");
    assert_eq!(field(open(&tensor_pickle(6, 0, &[2, 3], &[u64::MAX / 2, u64::MAX / 2]), &storage)), "stride");
    assert_eq!(field(open(&tensor_pickle(6, 0, &[3, 2], &[1, 3]), &storage)), "stride");
    assert_eq!(field(open(&tensor_pickle(6, 0, &[2, 3], &[3]), &storage)), "stride");
    // A shape whose element count overflows, or is past MAX_TENSOR_ELEMENTS.
    assert_eq!(field(open(&tensor_pickle(6, 0, &[1 << 40, 1 << 40], &[1 << 40, 1]), &storage)), "size");
    assert_eq!(field(open(&tensor_pickle(6, 0, &[1 << 29], &[1]), &storage)), "size");
    // An offset past the storage (by its record's numel, and by the bytes in the archive).
    assert_eq!(field(open(&tensor_pickle(6, 4, &[2, 3], &[3, 1]), &storage)), "storage_offset");
    assert_eq!(field(open(&tensor_pickle(6, u64::MAX / 2, &[2, 3], &[3, 1]), &storage)), "storage_offset");
    assert_eq!(field(open(&tensor_pickle(1 << 20, 0, &[2, 3], &[3, 1]), &storage[..8])), "offset");
}

#[test]
fn pickle_resource_budgets() {
    let limit = |r: Result<Checkpoint, PickleError>| match r {
        Err(PickleError::Limit { field, .. }) => field,
        Err(e) => panic!("expected a Limit error, got {e}"),
        Ok(_) => panic!("accepted"),
    };
    // Nesting: 100k TUPLE1s in a row.
    let mut p = vec![0x80, 2, b'N'];
    p.extend(std::iter::repeat_n(0x85, 100_000));
    p.push(b'.');
    assert_eq!(limit(Checkpoint::from_bytes("deep.pth", zip_checkpoint(&p, b""))), "nesting depth");
    // A billion laughs: a list memoised, then fetched twice into a new list, 64 times over.
    let mut p = vec![0x80, 2, b']', b'q', 0];
    for _ in 0..64 {
        p.extend([b']', b'h', 0, b'a', b'h', 0, b'a', b'q', 0]);
    }
    p.push(b'.');
    assert_eq!(limit(Checkpoint::from_bytes("laughs.pth", zip_checkpoint(&p, b""))), "values");
    // A string longer than the bound (the length is checked before the data is).
    let mut p = vec![0x80, 2, b'X'];
    p.extend(u32::MAX.to_le_bytes());
    assert_eq!(limit(Checkpoint::from_bytes("string.pth", zip_checkpoint(&p, b""))), "string length");
    // Too many memo entries.
    let mut p = vec![0x80, 2, b'N'];
    for i in 0..=limits::MAX_PICKLE_MEMO as u32 {
        p.push(b'r');
        p.extend(i.to_le_bytes());
    }
    assert_eq!(limit(Checkpoint::from_bytes("memo.pth", zip_checkpoint(&p, b""))), "memo");
}

#[test]
fn safetensors_headers_that_lie() {
    let file = |header: &str, data: usize| {
        let mut b = (header.len() as u64).to_le_bytes().to_vec();
        b.extend(header.as_bytes());
        b.extend(vec![0u8; data]);
        b
    };
    let ok = file(r#"{"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}"#, 16);
    assert_eq!(parse_safetensors_header("t.safetensors", &ok, ok.len() as u64).unwrap().1["a"].shape, vec![2, 2]);
    for (header, data, what) in [
        (r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,16]}}"#, 16, "shape"),
        (r#"{"a":{"dtype":"F32","shape":[18446744073709551615,2],"data_offsets":[0,16]}}"#, 16, "shape"),
        (r#"{"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,18446744073709551615]}}"#, 16, "data_offsets"),
        (r#"{"a":{"dtype":"F32","shape":[2,2],"data_offsets":[8,4]}}"#, 16, "data_offsets"),
        (r#"{"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,16]}}"#, 16, "data_offsets"),
    ] {
        let b = file(header, data);
        let e = parse_safetensors_header("t.safetensors", &b, b.len() as u64).unwrap_err();
        assert!(e.to_string().contains(what) && e.to_string().contains("t.safetensors"), "{header}: {e}");
    }
    // A header length past the file, or past the bound.
    let mut b = ok.clone();
    b[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    assert!(parse_safetensors_header("t.safetensors", &b, b.len() as u64).unwrap_err().to_string().contains("header length"));
}

#[test]
fn sentencepiece_models_that_lie() {
    // A piece (field 1) whose length says 2^62 bytes.
    let mut b = vec![0x0a];
    let mut n = 1u64 << 62;
    while n >= 0x80 {
        b.push((n as u8) | 0x80);
        n >>= 7;
    }
    b.push(n as u8);
    assert!(matches!(SentencePieceModel::parse(&b), Err(SentencePieceError::Corrupt(_))));
    // A piece over MAX_PIECE_BYTES.
    let text = vec![b'a'; limits::MAX_PIECE_BYTES + 1];
    let mut piece = vec![0x0a];
    let mut n = text.len();
    while n >= 0x80 {
        piece.push((n as u8) | 0x80);
        n >>= 7;
    }
    piece.push(n as u8);
    piece.extend(&text);
    let mut b = vec![0x0a];
    let mut n = piece.len();
    while n >= 0x80 {
        b.push((n as u8) | 0x80);
        n >>= 7;
    }
    b.push(n as u8);
    b.extend(piece);
    let e = SentencePieceModel::parse(&b).unwrap_err();
    assert!(e.to_string().contains("at most"), "{e}");
}

#[test]
fn pictures_too_large_to_decode() {
    // A PNG header claiming 100000 × 100000 pixels (30 GB as RGB): refused
    // from the header, before any pixel is inflated.
    let mut png = Vec::new();
    image::DynamicImage::ImageRgb8(image::RgbImage::new(1, 1)).write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).unwrap();
    let ihdr = 8 + 8; // signature, then IHDR's length and type
    png[ihdr..ihdr + 4].copy_from_slice(&100_000u32.to_be_bytes());
    png[ihdr + 4..ihdr + 8].copy_from_slice(&100_000u32.to_be_bytes());
    let crc = crc32(&png[12..29]);
    png[29..33].copy_from_slice(&crc.to_be_bytes());
    let e = decode_rgb8(&png).unwrap_err();
    assert!(matches!(e, ImageError::Limits(_)), "{e:?}");
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut c = !0u32;
    for b in bytes {
        c ^= *b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
        }
    }
    !c
}

/// The CLI takes any prompt and input text, including text that starts with
/// '-' (clap would read it as a flag), and `generate` answers without
/// `--image` (text-only). Runs the default model on the GPU adapter.
#[test]
fn cli_prompt_starting_with_a_dash_and_no_image() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_llama-adapter"))
        .args(["generate", "--model", "www/models/default", "--prompt", "-5 plus 3?", "--input", "--verbose", "--max-new-tokens", "3", "--temperature", "0", "--json"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    assert!(doc.to_string().contains("ids"), "{doc}");
}
