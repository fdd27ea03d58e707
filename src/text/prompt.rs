//! The Alpaca prompt template of LLaMA-Adapter V2 (spec §4). The text ends
//! right after the final colon; the image is not referenced in the text.

const NO_INPUT: &str = "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:";
const WITH_INPUT: &str = "Below is an instruction that describes a task, paired with an input that provides further context. Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:";

/// The prompt for an instruction, with an optional input.
pub fn format_prompt(instruction: &str, input: Option<&str>) -> String {
    match input {
        Some(input) => WITH_INPUT.replacen("{instruction}", instruction, 1).replacen("{input}", input, 1),
        None => NO_INPUT.replacen("{instruction}", instruction, 1),
    }
}
