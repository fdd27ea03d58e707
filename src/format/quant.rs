//! Weight storage formats and their CPU packing / unpacking.
//!
//! A weight matrix W has `rows` outputs and `cols` inputs (PyTorch's
//! `[out, in]`), stored row-major. Every format is a flat array of u32 words,
//! so that no kernel needs `shader-f16`:
//!
//! * `F32`: one word per element (`f32::to_bits`), `row_words = cols`.
//! * `F16`: two halves per word, low half first; a row is padded to an even
//!   length, `row_words = ceil(cols / 2)`.
//! * `Q8` / `Q4`: symmetric quantisation in groups of [`QGROUP`] = 32 along a
//!   row (the last group is zero-padded). Each group has one f16 scale `d` and
//!   32 integers `q` with `w ≈ d·q`:
//!   - Q8: `d = absmax/127`, `q ∈ [-127, 127]`, 4 two's-complement bytes per
//!     word, low byte first: 8 words per group.
//!   - Q4: `d = absmax/7`, `q ∈ [-7, 7]`, stored as the nibble `q + 8`, 8 per
//!     word, low nibble first: 4 words per group.
//!
//!   The quants of all rows come first (`row_words` per row), then the scales:
//!   `rows·groups` f16 values, two per word, low half first, starting at word
//!   `scale_base = rows·row_words`.
//!
//! Rounding ([`Rounding`]; the layout is the same for every method, so the
//! kernels do not care): `d` is rounded to f16 *before* quantising.
//! * `Absmax` (the converter's default): `d = absmax/qmax`, bumped up one f16
//!   step in the rare case (tiny, subnormal scales) where rounding down would
//!   push `|w|/d` past `qmax + ½`. No value is clamped, and the round-trip
//!   error of every element is at most `d/2`. q4 uses 15 of its 16 levels.
//! * `FullRange`: all levels, `q ∈ [-(qmax+1), qmax]`; the largest-magnitude
//!   element sits on the lowest level (`d` takes its sign, so it may be
//!   negative): the step is `absmax/8` in q4 instead of `absmax/7`.
//! * `Search`: all levels, `d` from a grid around both orientations'
//!   full-range scales, minimising the group's squared error weighted by a
//!   per-column importance (the mean square of the activations that column
//!   multiplies, from `quantize --calibration`; uniform without it).

use half::f16;

/// Elements per quantisation group along the input dimension.
pub const QGROUP: usize = 32;

/// How a Q-format group's scale `d` and integers `q` are chosen. Every
/// method writes the same storage layout, so the kernels do not change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rounding {
    /// `d = absmax/qmax`, `q ∈ [-qmax, qmax]` (q4: 15 of the 16 nibble
    /// values). No value is clamped; every error is at most `d/2`.
    Absmax,
    /// All 2^bits levels, `q ∈ [-2^(bits-1), 2^(bits-1) - 1]`: the element of
    /// largest magnitude maps to the most negative level exactly (so `d` may
    /// be negative), which makes the step `absmax/8` instead of `absmax/7` in q4.
    FullRange,
    /// All levels, with `d` chosen from a grid of candidates around the
    /// full-range scale to minimise the (importance-weighted) squared error
    /// of the group, clamping where that pays.
    Search,
    /// Error-compensating rounding ([`super::gptq`]): needs the second
    /// moments of the layer's inputs (`quantize --calibration`); where there
    /// are none it is `Search`.
    Gptq,
}

impl Rounding {
    pub const ALL: [Rounding; 4] = [Rounding::Absmax, Rounding::FullRange, Rounding::Search, Rounding::Gptq];

    pub fn name(self) -> &'static str {
        match self {
            Rounding::Absmax => "absmax",
            Rounding::FullRange => "full-range",
            Rounding::Search => "search",
            Rounding::Gptq => "gptq",
        }
    }

    pub fn parse(s: &str) -> Option<Rounding> {
        Rounding::ALL.into_iter().find(|r| r.name() == s)
    }
}

/// `Rounding::Search` tries scales within ±SEARCH_STEPS/64 (±1/8) of each
/// orientation's full-range scale, in steps of 1/64.
const SEARCH_STEPS: i32 = 8;

/// Group `g` of `row` (zero-padded past the row's end) and its importance
/// weights (zero on the padding; 1 without importance).
pub(crate) fn group_values(row: &[f32], importance: Option<&[f32]>, g: usize, chunk: &mut [f32; QGROUP], weight: &mut [f32; QGROUP]) {
    for i in 0..QGROUP {
        let c = g * QGROUP + i;
        chunk[i] = row.get(c).copied().unwrap_or(0.0);
        weight[i] = match importance {
            Some(imp) if c < row.len() => imp[c],
            Some(_) => 0.0,
            None => 1.0,
        };
    }
}

/// Stores group `g` of row `r` (scale `d`, integers `q`) into a Q-format
/// matrix's words.
#[allow(clippy::too_many_arguments)]
pub(crate) fn write_group(words: &mut [u32], format: QuantFormat, rows: usize, cols: usize, r: usize, g: usize, d: f16, q: &[i32; QGROUP]) {
    let row_words = format.row_words(cols);
    let groups = format.groups(cols);
    let words_per_group = row_words / groups.max(1);
    let per_word = QGROUP / words_per_group; // 4 (q8) or 8 (q4)
    let bits = 32 / per_word as u32;
    let si = r * groups + g;
    words[rows * row_words + si / 2] |= (d.to_bits() as u32) << (16 * (si % 2));
    for (i, &qi) in q.iter().enumerate() {
        let stored = match format {
            QuantFormat::Q8 => (qi as i8 as u8) as u32,
            _ => (qi + 8) as u32,
        };
        words[r * row_words + g * words_per_group + i / per_word] |= stored << (bits * (i % per_word) as u32);
    }
}

/// Quantises one group of [`QGROUP`] values (zero-padded): returns the f16
/// scale and the integers (each within the format's level range).
pub(crate) fn quantise_group(format: QuantFormat, rounding: Rounding, x: &[f32; QGROUP], weight: &[f32; QGROUP]) -> (f16, [i32; QGROUP]) {
    let qmax = format.qmax().expect("a Q format");
    // Most negative level: -8 (q4), -128 (q8).
    let qlo = -(qmax + 1.0);
    let quantise = |d: f16, lo: f32| -> [i32; QGROUP] {
        let df = d.to_f32();
        let inv = if df != 0.0 { 1.0 / df } else { 0.0 };
        let mut q = [0i32; QGROUP];
        for i in 0..QGROUP {
            q[i] = (x[i] * inv).round().clamp(lo, qmax) as i32;
        }
        q
    };
    let (imax, absmax) = x.iter().enumerate().fold((0, 0f32), |(bi, bm), (i, v)| if v.abs() > bm { (i, v.abs()) } else { (bi, bm) });
    match rounding {
        Rounding::Absmax => {
            let mut d = f16::from_f32(absmax / qmax);
            if d.to_f32() * (qmax + 0.5) < absmax {
                // Rounded too far down (f16 subnormals): the next f16 up
                // keeps every |q| within qmax, unclamped.
                d = f16::from_bits(d.to_bits() + 1);
            }
            (d, quantise(d, -qmax))
        }
        Rounding::FullRange | Rounding::Search | Rounding::Gptq => {
            // The largest-magnitude element lands on qlo: d = x[imax] / qlo.
            let base = x[imax] / qlo;
            if base == 0.0 {
                return (f16::from_f32(0.0), [0; QGROUP]);
            }
            let err = |d: f16, q: &[i32; QGROUP]| -> f64 {
                let df = d.to_f32() as f64;
                (0..QGROUP).map(|i| weight[i] as f64 * (x[i] as f64 - df * q[i] as f64).powi(2)).sum()
            };
            let d = f16::from_f32(base);
            let mut best = (d, quantise(d, qlo));
            if rounding != Rounding::FullRange {
                let mut best_err = err(best.0, &best.1);
                // Both orientations: the extreme element on the negative
                // level, or on the positive one (d = x[imax] / qmax).
                for (anchor, steps) in [(base, SEARCH_STEPS), (x[imax] / qmax, SEARCH_STEPS)] {
                    for k in -steps..=steps {
                        let d = f16::from_f32(anchor * (1.0 + k as f32 / 64.0));
                        let q = quantise(d, qlo);
                        let e = err(d, &q);
                        if e < best_err {
                            best_err = e;
                            best = (d, q);
                        }
                    }
                }
            }
            best
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuantFormat {
    F32,
    F16,
    Q8,
    Q4,
}

impl QuantFormat {
    pub const ALL: [QuantFormat; 4] = [QuantFormat::F32, QuantFormat::F16, QuantFormat::Q8, QuantFormat::Q4];

    /// The code the WGSL kernels use for this format (`FORMAT` override).
    pub fn shader_code(self) -> u32 {
        match self {
            QuantFormat::F32 => 0,
            QuantFormat::F16 => 1,
            QuantFormat::Q8 => 2,
            QuantFormat::Q4 => 3,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            QuantFormat::F32 => "f32",
            QuantFormat::F16 => "f16",
            QuantFormat::Q8 => "q8",
            QuantFormat::Q4 => "q4",
        }
    }

    pub fn parse(s: &str) -> Option<QuantFormat> {
        QuantFormat::ALL.into_iter().find(|f| f.name() == s)
    }

    /// Largest quantised magnitude, for the Q formats.
    fn qmax(self) -> Option<f32> {
        match self {
            QuantFormat::Q8 => Some(127.0),
            QuantFormat::Q4 => Some(7.0),
            _ => None,
        }
    }

    /// u32 words of quants (or raw values) per row of `cols` elements.
    pub fn row_words(self, cols: usize) -> usize {
        match self {
            QuantFormat::F32 => cols,
            QuantFormat::F16 => cols.div_ceil(2),
            QuantFormat::Q8 => cols.div_ceil(QGROUP) * 8,
            QuantFormat::Q4 => cols.div_ceil(QGROUP) * 4,
        }
    }

    /// Scale groups per row (0 for the float formats).
    pub fn groups(self, cols: usize) -> usize {
        match self {
            QuantFormat::Q8 | QuantFormat::Q4 => cols.div_ceil(QGROUP),
            _ => 0,
        }
    }

    /// Total words for a `rows × cols` matrix (quants, then scales).
    pub fn total_words(self, rows: usize, cols: usize) -> usize {
        rows * self.row_words(cols) + (rows * self.groups(cols)).div_ceil(2)
    }

    /// Bytes a matrix of this shape occupies in this format.
    pub fn bytes(self, rows: usize, cols: usize) -> u64 {
        4 * self.total_words(rows, cols) as u64
    }
}

/// A packed `rows × cols` matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct PackedMatrix {
    pub format: QuantFormat,
    pub rows: usize,
    pub cols: usize,
    pub words: Vec<u32>,
}

impl PackedMatrix {
    pub fn row_words(&self) -> usize {
        self.format.row_words(self.cols)
    }

    /// Word index at which the f16 scales start.
    pub fn scale_base(&self) -> usize {
        self.rows * self.row_words()
    }

    pub fn groups(&self) -> usize {
        self.format.groups(self.cols)
    }

    /// The scale of group `g` of row `r` (Q formats only).
    pub fn scale(&self, r: usize, g: usize) -> f32 {
        let i = r * self.groups() + g;
        let word = self.words[self.scale_base() + i / 2];
        f16::from_bits((word >> (16 * (i % 2))) as u16).to_f32()
    }

    /// Packs a row-major `rows × cols` f32 matrix with absmax rounding
    /// (the converter's default; see [`Rounding::Absmax`]).
    pub fn pack(format: QuantFormat, rows: usize, cols: usize, data: &[f32]) -> PackedMatrix {
        Self::pack_with(format, rows, cols, data, Rounding::Absmax, None)
    }

    /// Packs a row-major `rows × cols` f32 matrix. For the Q formats,
    /// `rounding` chooses each group's scale and integers; `importance`
    /// (one non-negative weight per column, e.g. the mean square of the
    /// activations that column multiplies) weights the squared error that
    /// [`Rounding::Search`] minimises. The float formats ignore both.
    pub fn pack_with(format: QuantFormat, rows: usize, cols: usize, data: &[f32], rounding: Rounding, importance: Option<&[f32]>) -> PackedMatrix {
        assert_eq!(data.len(), rows * cols, "pack: data length does not match rows × cols");
        if let Some(imp) = importance {
            assert_eq!(imp.len(), cols, "pack: one importance weight per column");
        }
        let row_words = format.row_words(cols);
        let groups = format.groups(cols);
        let mut words = vec![0u32; format.total_words(rows, cols)];
        match format {
            QuantFormat::F32 => {
                for (w, x) in words.iter_mut().zip(data) {
                    *w = x.to_bits();
                }
            }
            QuantFormat::F16 => {
                for r in 0..rows {
                    for c in 0..cols {
                        let h = f16::from_f32(data[r * cols + c]).to_bits() as u32;
                        words[r * row_words + c / 2] |= h << (16 * (c % 2));
                    }
                }
            }
            QuantFormat::Q8 | QuantFormat::Q4 => {
                let mut chunk = [0f32; QGROUP];
                let mut weight = [1f32; QGROUP];
                for r in 0..rows {
                    let row = &data[r * cols..(r + 1) * cols];
                    for g in 0..groups {
                        group_values(row, importance, g, &mut chunk, &mut weight);
                        let (d, q) = quantise_group(format, rounding, &chunk, &weight);
                        write_group(&mut words, format, rows, cols, r, g, d, &q);
                    }
                }
            }
        }
        PackedMatrix { format, rows, cols, words }
    }

    /// Element (r, c) as the kernels see it.
    pub fn get(&self, r: usize, c: usize) -> f32 {
        let row_words = self.row_words();
        match self.format {
            QuantFormat::F32 => f32::from_bits(self.words[r * self.cols + c]),
            QuantFormat::F16 => {
                let w = self.words[r * row_words + c / 2];
                f16::from_bits((w >> (16 * (c % 2))) as u16).to_f32()
            }
            QuantFormat::Q8 => {
                let w = self.words[r * row_words + c / 4];
                let q = ((w >> (8 * (c % 4))) & 0xff) as u8 as i8;
                q as f32 * self.scale(r, c / QGROUP)
            }
            QuantFormat::Q4 => {
                let w = self.words[r * row_words + c / 8];
                let q = ((w >> (4 * (c % 8))) & 0xf) as i32 - 8;
                q as f32 * self.scale(r, c / QGROUP)
            }
        }
    }

    /// The dequantised matrix, row-major f32: the reference kernels use this.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.rows * self.cols);
        for r in 0..self.rows {
            for c in 0..self.cols {
                out.push(self.get(r, c));
            }
        }
        out
    }

    /// Rows `[start, end)` as a matrix of their own (same packing).
    pub fn row_block(&self, start: usize, end: usize) -> PackedMatrix {
        let row_words = self.row_words();
        let groups = self.groups();
        let rows = end - start;
        let mut words = Vec::with_capacity(self.format.total_words(rows, self.cols));
        words.extend_from_slice(&self.words[start * row_words..end * row_words]);
        if groups > 0 {
            let mut scales = vec![0u32; (rows * groups).div_ceil(2)];
            for r in 0..rows {
                for g in 0..groups {
                    let bits = f16::from_f32(self.scale(start + r, g)).to_bits() as u32;
                    let i = r * groups + g;
                    scales[i / 2] |= bits << (16 * (i % 2));
                }
            }
            words.extend_from_slice(&scales);
        }
        PackedMatrix { format: self.format, rows, cols: self.cols, words }
    }

    /// Splits the matrix into row blocks of at most `max_bytes` each (the
    /// largest storage binding the device allows). Returns (first row, block).
    pub fn split_rows(&self, max_bytes: u64) -> Vec<(usize, PackedMatrix)> {
        let rows_per_block = rows_per_block(self.format, self.cols, max_bytes).max(1);
        if rows_per_block >= self.rows {
            return vec![(0, self.clone())];
        }
        (0..self.rows)
            .step_by(rows_per_block)
            .map(|start| (start, self.row_block(start, (start + rows_per_block).min(self.rows))))
            .collect()
    }
}

/// How many rows of a `cols`-wide matrix fit in `max_bytes` (quants plus scales).
pub fn rows_per_block(format: QuantFormat, cols: usize, max_bytes: u64) -> usize {
    let max_words = (max_bytes / 4) as usize;
    let row_words = format.row_words(cols);
    let groups = format.groups(cols);
    // rows·row_words + ceil(rows·groups/2) ≤ max_words
    let mut rows = (2 * max_words) / (2 * row_words + groups).max(1);
    while rows > 0 && rows * row_words + (rows * groups).div_ceil(2) > max_words {
        rows -= 1;
    }
    rows
}
