// Shared by every kernel that reads packed weights (prepended to matmul.wgsl
// and embedding.wgsl). The including shader declares
//   var<storage, read> weights: array<u32>;
// and `override FORMAT: u32;`. Layout: see src/format/quant.rs.

const FMT_F32: u32 = 0u;
const FMT_F16: u32 = 1u;
const FMT_Q8: u32 = 2u;
const FMT_Q4: u32 = 3u;
const QGROUP: u32 = 32u;

// f16 scale number `i` (row * groups + group) of the block.
fn group_scale(scale_base: u32, i: u32) -> f32 {
    let word = weights[scale_base + i / 2u];
    return unpack2x16float(word)[i % 2u];
}

// Signed byte `b` (0..3) of a q8 word.
fn q8_at(word: u32, b: u32) -> f32 {
    return f32(extractBits(bitcast<i32>(word), 8u * b, 8u));
}

// Signed nibble `n` (0..7) of a q4 word (stored as q + 8).
fn q4_at(word: u32, n: u32) -> f32 {
    return f32((word >> (4u * n)) & 15u) - 8.0;
}

// One weight element (row r, column c) of a block with `row_words` words per
// row and `groups` scale groups per row. Used where elements are gathered one
// at a time (embedding rows, GEMM tile loads of the float formats).
fn weight_at(r: u32, c: u32, row_words: u32, groups: u32, scale_base: u32) -> f32 {
    if (FORMAT == FMT_F32) {
        return bitcast<f32>(weights[r * row_words + c]);
    }
    if (FORMAT == FMT_F16) {
        return unpack2x16float(weights[r * row_words + c / 2u])[c % 2u];
    }
    let s = group_scale(scale_base, r * groups + c / QGROUP);
    if (FORMAT == FMT_Q8) {
        return q8_at(weights[r * row_words + c / 4u], c % 4u) * s;
    }
    return q4_at(weights[r * row_words + c / 8u], c % 8u) * s;
}
