//! The LLaMA tokenizer converted from the genuine `tokenizer.model` must give
//! exactly sentencepiece's ids on every case in tests/fixtures/cases.jsonl
//! (copied from shared/fixtures/tokenizer: sentencepiece 0.2.3 `encode`).

use llama_adapter_web::convert::sentencepiece::SentencePieceModel;
use llama_adapter_web::text::prompt::format_prompt;
use llama_adapter_web::text::tokenizer::{Tokenizer, BOS};

fn tokenizer() -> Tokenizer {
    let model = std::fs::read("tests/fixtures/llama-tokenizer.model").unwrap();
    let sp = SentencePieceModel::parse(&model).unwrap();
    assert_eq!(sp.pieces.len(), 32000);
    Tokenizer::from_json(sp.to_tokenizer_json().unwrap().as_bytes()).unwrap()
}

#[test]
fn matches_sentencepiece_on_every_case() {
    let tok = tokenizer();
    assert_eq!(tok.vocab_size(), 32000);
    let cases = std::fs::read_to_string("tests/fixtures/cases.jsonl").unwrap();
    let mut failures = Vec::new();
    let mut count = 0;
    for line in cases.lines().filter(|l| !l.trim().is_empty()) {
        let case: serde_json::Value = serde_json::from_str(line).unwrap();
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = case["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let got = tok.encode(text).unwrap();
        if got != want {
            failures.push(format!("{text:?}\n  got  {got:?}\n  want {want:?}"));
        }
        count += 1;
    }
    assert_eq!(count, 200);
    assert!(failures.is_empty(), "{} of {count} cases differ:\n{}", failures.len(), failures.iter().take(5).cloned().collect::<Vec<_>>().join("\n"));
}

#[test]
fn decode_round_trips_text() {
    let tok = tokenizer();
    for text in ["A red circle and a blue triangle.", "Ünïcödé ok\nnew line", "  two leading spaces", "数字 7 plus 5"] {
        let ids = tok.encode(text).unwrap();
        assert_eq!(tok.decode(&ids).unwrap(), text);
    }
}

#[test]
fn prompt_template_and_bos() {
    let tok = tokenizer();
    let p = format_prompt("Describe this image.", None);
    assert!(p.starts_with("Below is an instruction that describes a task. Write"));
    assert!(p.ends_with("Describe this image.\n\n### Response:"));
    let with_input = format_prompt("Add.", Some("7 and 5"));
    assert!(with_input.contains("paired with an input") && with_input.contains("### Input:\n7 and 5\n\n### Response:"));
    let ids = tok.encode_prompt(&p).unwrap();
    assert_eq!(ids[0], BOS);
    assert_eq!(&ids[1..], &tok.encode(&p).unwrap()[..]);
    assert_eq!(tok.encode("").unwrap(), Vec::<u32>::new());
}
