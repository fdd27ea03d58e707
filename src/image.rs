//! CLIP image preprocessing (spec §4): CLIP's `_transform(224)` as torchvision
//! applies it to a PIL image, reproduced bit for bit.
//!
//! 1. decode PNG/JPEG to 8-bit RGB ([`decode_rgb8`]);
//! 2. resize the shorter side to `size` with Pillow's BICUBIC resampler
//!    ([`resize_bicubic_pil`]), the long side being `int(size * long / short)`;
//! 3. centre-crop `size`×`size`, offsets `int(round((H - size) / 2))`;
//! 4. ToTensor (`/255`) and Normalize with [`CLIP_MEAN`]/[`CLIP_STD`], CHW f32.
//!
//! Parity needs Pillow's exact arithmetic, not a generic bicubic: Pillow
//! resamples in two separable passes, each rounding to an 8-bit image, with
//! weights quantised to 22-bit fixed point. Given the same decoded pixels,
//! this module reproduces Pillow's (13.0) resized uint8 image byte for byte,
//! and the f32 normalisation matches torchvision's float32 ops bit for bit.
//! PNG decoding matches Pillow exactly. JPEG decoding does not quite: the
//! `image` crate uses zune-jpeg, whose colour output differs from
//! libjpeg-turbo's (Pillow's and cv2's) by a level or so on under 1% of the
//! samples, so JPEG inputs agree to about one uint8 level.
//!
//! Pure computation (no threads, no filesystem), so it builds for
//! `wasm32-unknown-unknown`.

use std::io::Cursor;
use std::ops::Range;

use ::image::{DynamicImage, ImageFormat, ImageReader, RgbImage};

pub use crate::limits::{MAX_IMAGE_DECODED_BYTES, MAX_IMAGE_SIDE};
use crate::model::config::ChannelOrder;

/// CLIP's per-channel normalisation mean, in R, G, B order.
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// CLIP's per-channel normalisation standard deviation, in R, G, B order.
// Written as in CLIP's source; each literal rounds to the same f32 as torch's.
#[allow(clippy::excessive_precision)]
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

/// The side of the square CLIP ViT-L/14 input.
pub const CLIP_SIZE: u32 = 224;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The bytes are not in a format we decode (PNG or JPEG).
    #[error("not a PNG or JPEG image: {0}")]
    NotAnImage(String),
    /// The format was recognised but the data is corrupt or truncated.
    #[error("could not decode the image: {0}")]
    Decode(String),
    /// The image is too large to decode within the decoder's memory limits.
    #[error("image exceeds decoding limits: {0}")]
    Limits(String),
    /// A side is zero (image or requested output), so there is nothing to resample.
    #[error(
        "image is {width}x{height} and the output {size}x{size}: every side must be at least 1"
    )]
    TooSmall { width: u32, height: u32, size: u32 },
}

/// Decodes PNG or JPEG bytes to 8-bit RGB, like PIL's `Image.open(..).convert("RGB")`:
/// alpha is dropped (not composited), grey is replicated to three channels,
/// 16-bit samples are reduced to 8 bits. EXIF orientation is ignored, as PIL does.
pub fn decode_rgb8(bytes: &[u8]) -> Result<RgbImage, ImageError> {
    // Sniff the format from the magic bytes; the file name is not known here.
    let format = ::image::guess_format(bytes).map_err(|e| ImageError::NotAnImage(e.to_string()))?;
    if !matches!(format, ImageFormat::Png | ImageFormat::Jpeg) {
        return Err(ImageError::NotAnImage(format!(
            "{format:?} is not supported"
        )));
    }
    let mut reader = ImageReader::new(Cursor::new(bytes));
    reader.set_format(format);
    reader.limits(decode_limits());
    let decoded = reader.decode().map_err(|e| match e {
        ::image::ImageError::Unsupported(e) => ImageError::NotAnImage(e.to_string()),
        ::image::ImageError::Limits(e) => ImageError::Limits(e.to_string()),
        other => ImageError::Decode(other.to_string()),
    })?;
    Ok(to_rgb8(decoded))
}

/// The decoder's bounds ([`crate::limits`]): each side at most
/// [`MAX_IMAGE_SIDE`], at most [`MAX_IMAGE_DECODED_BYTES`] allocated. The
/// decoders check the header's dimensions against them before they allocate.
pub fn decode_limits() -> ::image::Limits {
    let mut limits = ::image::Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(MAX_IMAGE_DECODED_BYTES);
    limits
}

/// Converts a decoded image to 8-bit RGB the way PIL's `.convert("RGB")` does.
fn to_rgb8(img: DynamicImage) -> RgbImage {
    match img {
        DynamicImage::ImageRgb8(rgb) => rgb,
        // 16-bit samples keep their high byte, as Pillow does for 16-bit
        // colour PNGs and as cv2.imread does for all of them (the image
        // crate's own conversion rounds instead). Pillow differs for 16-bit
        // greyscale, which it clips to 255; we do not copy that.
        DynamicImage::ImageLuma16(_)
        | DynamicImage::ImageLumaA16(_)
        | DynamicImage::ImageRgb16(_)
        | DynamicImage::ImageRgba16(_) => {
            let rgb16 = img.to_rgb16(); // grey replicated, alpha dropped: exact
            let (w, h) = rgb16.dimensions();
            let bytes = rgb16
                .into_raw()
                .into_iter()
                .map(|v| (v >> 8) as u8)
                .collect();
            RgbImage::from_raw(w, h, bytes).expect("same dimensions")
        }
        // 8-bit grey is replicated, alpha dropped without compositing.
        other => other.to_rgb8(),
    }
}

/// Runs the full CLIP preprocessing on encoded image bytes.
///
/// Returns `3 * size * size` floats in CHW order (planes in `order`).
pub fn clip_preprocess(
    bytes: &[u8],
    size: u32,
    order: ChannelOrder,
) -> Result<Vec<f32>, ImageError> {
    let img = decode_rgb8(bytes)?;
    if img.width() == 0 || img.height() == 0 || size == 0 {
        return Err(ImageError::TooSmall {
            width: img.width(),
            height: img.height(),
            size,
        });
    }
    Ok(clip_preprocess_image(&img, size, order))
}

/// Runs resize + centre crop + normalisation on an already decoded image.
///
/// Returns `3 * size * size` floats in CHW order. With [`ChannelOrder::Bgr`]
/// the planes are B, G, R but still normalised with the RGB-ordered
/// mean/std (plane 0 = B with `CLIP_MEAN[0]`), reproducing the official
/// checkpoints' `cv2.imread` quirk (spec §4).
///
/// # Panics
/// If `size` or a side of `img` is zero ([`clip_preprocess`] reports that as
/// [`ImageError::TooSmall`] instead).
pub fn clip_preprocess_image(img: &RgbImage, size: u32, order: ChannelOrder) -> Vec<f32> {
    let (w, h) = img.dimensions();
    assert!(
        w > 0 && h > 0 && size > 0,
        "clip_preprocess_image: {w}x{h} image, size {size}"
    );

    clip_normalize(&clip_crop(img, size), order)
}

/// CLIP's resize (shorter side to `size`, bicubic as Pillow) and centre crop:
/// a `size`×`size` RGB image. The browser keeps this per picture, so that an
/// adapter with another channel order can re-normalise it.
///
/// # Panics
/// If `size` or a side of `img` is zero.
pub fn clip_crop(img: &RgbImage, size: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    assert!(w > 0 && h > 0 && size > 0, "clip_crop: {w}x{h} image, size {size}");
    let (new_w, new_h) = short_side_size(w, h, size);
    let top = center_offset(new_h, size);
    let left = center_offset(new_w, size);
    // Only the centre crop of the resized image is computed: the same pixels,
    // without materialising the whole resize (which, for a 1x100000 image,
    // would be 224x22400000).
    resize_window(img, new_w, new_h, left..left + size, top..top + size)
}

/// CLIP's normalisation of a square crop: CHW f32 planes in `order`.
pub fn clip_normalize(crop: &RgbImage, order: ChannelOrder) -> Vec<f32> {
    let size = crop.width();
    // Which source channel feeds each output plane.
    let source_channel: [usize; 3] = match order {
        ChannelOrder::Rgb => [0, 1, 2],
        ChannelOrder::Bgr => [2, 1, 0],
    };

    let n = size as usize;
    let mut out = vec![0f32; 3 * n * n];
    for (plane, out_plane) in out.chunks_exact_mut(n * n).enumerate() {
        // Only 256 possible inputs per plane: precompute them. The ops are the
        // same float32 ops torchvision performs (`x / 255`, then `(x - m) / s`).
        let lut: [f32; 256] =
            std::array::from_fn(|v| (v as f32 / 255.0 - CLIP_MEAN[plane]) / CLIP_STD[plane]);
        let ch = source_channel[plane];
        for (o, px) in out_plane.iter_mut().zip(crop.as_raw().chunks_exact(3)) {
            *o = lut[px[ch] as usize];
        }
    }
    out
}

/// torchvision's `Resize(size)` output for a `w`×`h` image: the shorter side
/// becomes `size`, the longer `int(size * long / short)`.
fn short_side_size(w: u32, h: u32, size: u32) -> (u32, u32) {
    // Integer division equals Python's truncated float quotient: a quotient
    // that is not an integer lies at least 1/short from one, far more than
    // the float's rounding error while size * long < 2^52.
    let scaled_long = |long: u32, short: u32| (size as u64 * long as u64 / short as u64) as u32;
    if w <= h {
        (size, scaled_long(h, w))
    } else {
        (scaled_long(w, h), size)
    }
}

/// torchvision's centre-crop offset `int(round((len - crop) / 2))`; Python's
/// `round` sends halves to the even neighbour (1.5 -> 2, 2.5 -> 2).
fn center_offset(len: u32, crop: u32) -> u32 {
    let d = len.saturating_sub(crop);
    let half = d / 2;
    if d % 2 == 1 && half % 2 == 1 {
        half + 1
    } else {
        half
    }
}

/// Resizes to `width`×`height` exactly as Pillow's `Image.resize(.., BICUBIC)`
/// does for an RGB image (no `box`, no `reducing_gap`).
///
/// # Panics
/// If a side of `img` is zero while the output is not empty.
pub fn resize_bicubic_pil(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    resize_window(img, width, height, 0..width, 0..height)
}

/// The `cols`×`rows` window of `resize_bicubic_pil(img, width, height)`,
/// computing only that window. Each output pixel depends only on its own
/// taps, so this is exactly the crop of the full resize.
fn resize_window(
    img: &RgbImage,
    width: u32,
    height: u32,
    cols: Range<u32>,
    rows: Range<u32>,
) -> RgbImage {
    let (in_w, in_h) = img.dimensions();
    let (out_w, out_h) = (cols.len() as u32, rows.len() as u32);
    if out_w == 0 || out_h == 0 {
        return RgbImage::new(out_w, out_h);
    }
    assert!(
        in_w > 0 && in_h > 0,
        "resize_bicubic_pil: cannot resample a {in_w}x{in_h} image"
    );

    // Pillow skips the pass of an unchanged dimension (and copies when both
    // are); a one-tap identity pass gives the same bytes.
    let taps = |in_size: u32, out_size: u32, range: Range<u32>| {
        if in_size == out_size {
            Taps::identity(range)
        } else {
            Taps::new(in_size, out_size, range)
        }
    };
    let h_taps = taps(in_w, width, cols);
    let v_taps = taps(in_h, height, rows);

    // Two separable passes, each rounding to uint8, so their order changes
    // the result. Pillow 13 runs the horizontal pass first unless the height
    // shrinks by more than twice as many pixels as the width does, in which
    // case it runs the (then cheaper) vertical pass first. Older Pillow
    // releases always went horizontal first; the rules only disagree for such
    // strongly height-reducing resizes (for a CLIP short-side resize: portrait
    // images more than about twice as tall as wide).
    let shrink_h = in_h as i64 - height as i64;
    let shrink_w = in_w as i64 - width as i64;
    let vertical_first = shrink_h > 0 && shrink_h > 2 * shrink_w;

    let full = Window {
        px: img.as_raw().as_slice(),
        width: in_w as usize,
        x0: 0,
        y0: 0,
    };
    let out = if vertical_first {
        // Only the input columns the horizontal taps read.
        let tmp = vertical_pass(&full, &v_taps, h_taps.input_span());
        horizontal_pass(&tmp.borrowed(), &h_taps)
    } else {
        // Only the input rows the vertical taps read.
        let span = v_taps.input_span();
        let row_len = in_w as usize * 3;
        let band = Window {
            px: &img.as_raw()[span.start * row_len..span.end * row_len],
            width: in_w as usize,
            x0: 0,
            y0: span.start,
        };
        let tmp = horizontal_pass(&band, &h_taps);
        let all_cols = tmp.x0..tmp.x0 + tmp.width;
        vertical_pass(&tmp.borrowed(), &v_taps, all_cols)
    };
    RgbImage::from_raw(out_w, out_h, out.px).expect("buffer matches the window size")
}

/// Part of an interleaved RGB image: `width` columns starting at column
/// `x0`, and as many rows as `px` holds starting at row `y0`, in the
/// coordinates of the image the taps refer to.
struct Window<P> {
    px: P,
    width: usize,
    x0: usize,
    y0: usize,
}

impl Window<Vec<u8>> {
    fn borrowed(&self) -> Window<&[u8]> {
        Window {
            px: &self.px,
            width: self.width,
            x0: self.x0,
            y0: self.y0,
        }
    }
}

/// Fixed-point fraction bits of the weights: 32 bits, minus 8 for the pixel
/// value, minus 2 of headroom for the negative lobes and rounding.
const PRECISION_BITS: u32 = 22;
/// Half a unit in the last place, the rounding bias every sum starts from.
const ROUNDING: i32 = 1 << (PRECISION_BITS - 1);

/// Keys' cubic convolution kernel with a = -0.5 (PIL's BICUBIC), support 2.
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        // (a+2)|x|^3 - (a+3)|x|^2 + 1, in the nested form Pillow evaluates.
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        // a|x|^3 - 5a|x|^2 + 8a|x| - 4a, likewise.
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}
const BICUBIC_SUPPORT: f64 = 2.0;

/// One pass's resampling weights for the output samples `first..first + n`:
/// output `first + i` reads input samples `start[i] .. start[i] + len[i]`
/// with weights `weights[i * stride ..][..len[i]]` (fixed point).
struct Taps {
    first: usize,
    start: Vec<usize>,
    len: Vec<usize>,
    weights: Vec<i32>,
    stride: usize,
}

impl Taps {
    /// Weights for resampling `in_size` samples to `out_size`, for the
    /// outputs in `range`, computed in f64 with the same expressions (and so
    /// the same roundings) as Pillow, then quantised to `PRECISION_BITS`
    /// fixed point.
    fn new(in_size: u32, out_size: u32, range: Range<u32>) -> Self {
        let scale = in_size as f64 / out_size as f64;
        // When shrinking, stretch the kernel over `scale` input samples so it
        // low-pass filters; when enlarging, use it as is.
        let filter_scale = scale.max(1.0);
        let support = BICUBIC_SUPPORT * filter_scale;
        let inv_filter_scale = 1.0 / filter_scale;
        let stride = support.ceil() as usize * 2 + 1;

        let n = range.len();
        let mut start = Vec::with_capacity(n);
        let mut len = Vec::with_capacity(n);
        let mut weights = vec![0i32; n * stride];
        let mut w = vec![0f64; stride];
        for (i, out) in range.clone().enumerate() {
            // Pixel centres sit at half-integers; `center` is the output
            // sample's centre in input coordinates.
            let center = (out as f64 + 0.5) * scale;
            // `as i32` truncates toward zero like C's (int) cast; clamp to the image.
            let lo = ((center - support + 0.5) as i32).max(0);
            let hi = ((center + support + 0.5) as i32).min(in_size as i32);
            let count = (hi - lo).max(0) as usize;

            let mut total = 0.0;
            for (k, wk) in w[..count].iter_mut().enumerate() {
                let pos = (lo + k as i32) as f64;
                *wk = bicubic((pos - center + 0.5) * inv_filter_scale);
                total += *wk;
            }
            // Normalise so the taps sum to 1 (they do not near the edges).
            if total != 0.0 {
                for wk in &mut w[..count] {
                    *wk /= total;
                }
            }
            // Round half away from zero into fixed point.
            for (dst, &wk) in weights[i * stride..][..count].iter_mut().zip(&w[..count]) {
                let scaled = wk * (1u32 << PRECISION_BITS) as f64;
                *dst = if wk < 0.0 {
                    (scaled - 0.5) as i32
                } else {
                    (scaled + 0.5) as i32
                };
            }
            start.push(lo as usize);
            len.push(count);
        }
        Taps {
            first: range.start as usize,
            start,
            len,
            weights,
            stride,
        }
    }

    /// Output `i` = input `i` (weight 1.0 is exact in fixed point).
    fn identity(range: Range<u32>) -> Self {
        let n = range.len();
        Taps {
            first: range.start as usize,
            start: range.map(|i| i as usize).collect(),
            len: vec![1; n],
            weights: vec![1 << PRECISION_BITS; n],
            stride: 1,
        }
    }

    fn count(&self) -> usize {
        self.start.len()
    }

    fn weights(&self, i: usize) -> &[i32] {
        &self.weights[i * self.stride..][..self.len[i]]
    }

    /// The input samples any of these outputs reads (the starts and ends of
    /// the tap ranges grow with the output index).
    fn input_span(&self) -> Range<usize> {
        let n = self.count();
        self.start[0]..self.start[n - 1] + self.len[n - 1]
    }
}

/// Fixed-point accumulator back to a pixel: drop the fraction bits (the
/// rounding bias was added up front) and clamp to 0..=255.
fn to_u8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Horizontal pass over every row `src` holds: one output pixel per output
/// of `taps`, reading the columns the taps name.
fn horizontal_pass(src: &Window<&[u8]>, taps: &Taps) -> Window<Vec<u8>> {
    let out_w = taps.count();
    let rows = src.px.len() / (src.width * 3);
    let mut dst = vec![0u8; out_w * rows * 3];
    for (src_row, dst_row) in src
        .px
        .chunks_exact(src.width * 3)
        .zip(dst.chunks_exact_mut(out_w * 3))
    {
        for (x, out_px) in dst_row.chunks_exact_mut(3).enumerate() {
            let first = (taps.start[x] - src.x0) * 3;
            let mut acc = [ROUNDING; 3];
            for (k, &wk) in taps.weights(x).iter().enumerate() {
                let px = &src_row[first + k * 3..][..3];
                for c in 0..3 {
                    acc[c] += px[c] as i32 * wk;
                }
            }
            for c in 0..3 {
                out_px[c] = to_u8(acc[c]);
            }
        }
    }
    Window {
        px: dst,
        width: out_w,
        x0: taps.first,
        y0: src.y0,
    }
}

/// Vertical pass: one output row per output of `taps`, over the columns
/// `cols` (image coordinates) of `src`.
fn vertical_pass(src: &Window<&[u8]>, taps: &Taps, cols: Range<usize>) -> Window<Vec<u8>> {
    let src_row_len = src.width * 3;
    let (c0, row_len) = ((cols.start - src.x0) * 3, cols.len() * 3);
    let mut dst = vec![0u8; row_len * taps.count()];
    let mut acc = vec![0i32; row_len];
    for (y, dst_row) in dst.chunks_exact_mut(row_len).enumerate() {
        // Accumulate whole rows at a time: the same sums as per-pixel, in the
        // same tap order, but cache-friendly.
        acc.fill(ROUNDING);
        let first = taps.start[y] - src.y0;
        for (k, &wk) in taps.weights(y).iter().enumerate() {
            let src_row = &src.px[(first + k) * src_row_len + c0..][..row_len];
            for (a, &p) in acc.iter_mut().zip(src_row) {
                *a += p as i32 * wk;
            }
        }
        for (d, &a) in dst_row.iter_mut().zip(&acc) {
            *d = to_u8(a);
        }
    }
    Window {
        px: dst,
        width: cols.len(),
        x0: cols.start,
        y0: taps.first,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_side_truncates() {
        assert_eq!(short_side_size(450, 655, 224), (224, 326)); // 326.04
        assert_eq!(short_side_size(655, 450, 224), (326, 224));
        assert_eq!(short_side_size(300, 451, 224), (224, 336)); // 336.75
        assert_eq!(short_side_size(1, 1, 224), (224, 224));
    }

    #[test]
    fn center_offset_rounds_half_to_even() {
        assert_eq!(center_offset(224, 224), 0);
        assert_eq!(center_offset(225, 224), 0); // 0.5 -> 0
        assert_eq!(center_offset(227, 224), 2); // 1.5 -> 2
        assert_eq!(center_offset(229, 224), 2); // 2.5 -> 2
        assert_eq!(center_offset(326, 224), 51);
    }

    #[test]
    fn weights_sum_to_one_in_fixed_point() {
        for (i, o) in [(1, 224), (450, 224), (655, 326), (7, 3), (3, 7)] {
            let t = Taps::new(i, o, 0..o);
            for x in 0..o as usize {
                let s: i32 = t.weights(x).iter().sum();
                assert!(
                    (s - (1 << PRECISION_BITS)).abs() <= t.len[x] as i32,
                    "{i}->{o} at {x}: {s}"
                );
            }
        }
    }

    #[test]
    fn constant_image_stays_constant() {
        let img = RgbImage::from_pixel(5, 9, ::image::Rgb([10, 128, 250]));
        let out = resize_bicubic_pil(&img, 13, 4);
        assert!(out.pixels().all(|p| p.0 == [10, 128, 250]));
    }

    #[test]
    fn window_is_the_crop_of_the_full_resize() {
        let img = RgbImage::from_fn(37, 23, |x, y| {
            ::image::Rgb([
                (x * 37 % 256) as u8,
                ((x ^ y) * 91 % 256) as u8,
                if (x + y) % 3 == 0 { 255 } else { 0 },
            ])
        });
        // Upscale, downscale, vertical-first, and identity in one dimension.
        for (w, h) in [(80, 51), (9, 5), (40, 4), (37, 60), (11, 23)] {
            let full = resize_bicubic_pil(&img, w, h);
            for (cols, rows) in [(0..w, 0..h), (1..w - 1, 2..h), (w / 2..w / 2 + 1, 0..1)] {
                let win = resize_window(&img, w, h, cols.clone(), rows.clone());
                for (x, y, p) in win.enumerate_pixels() {
                    assert_eq!(
                        *p,
                        *full.get_pixel(cols.start + x, rows.start + y),
                        "{w}x{h} at {x},{y}"
                    );
                }
            }
        }
    }
}
