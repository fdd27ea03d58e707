#![no_main]
// The harness body lives in the library (llama_adapter_web::fuzzing), shared
// with the stable corpus replay in tests/fuzz_corpus.rs.
libfuzzer_sys::fuzz_target!(|data: &[u8]| llama_adapter_web::fuzzing::sentencepiece(data));
