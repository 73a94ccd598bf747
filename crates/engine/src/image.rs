//! Image decoding and preprocessing: file or bytes → `[3, H, W]` f32 pixel values for the vision
//! tower, as Hugging Face's `SiglipImageProcessor` (torchvision backend) produces them.
//!
//! Steps: sniff the format from the content (PNG, JPEG, WebP, GIF first frame, BMP), refuse
//! oversized images from their header before anything is decoded, decode, apply the EXIF
//! orientation, drop alpha (what torchvision's RGB decode does), resize with torch's antialiased
//! bilinear uint8 kernel (fixed-point, horizontal pass then vertical, each rounded to u8), rescale
//! and, only if configured, normalise.

use std::io::Cursor;
use std::path::Path;

use candle_core::{Device, Tensor};
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits, RgbImage};
use rayon::prelude::*;
use serde::Deserialize;

use crate::{Error, Result};

/// Images above this many pixels are refused before decoding (decompression bombs).
pub const DEFAULT_MAX_PIXELS: u64 = 100_000_000;

/// The image half of `preprocessor_config.json` / `processor_config.json`'s `image_processor`.
#[derive(Debug, Clone, Deserialize)]
struct ImageProcessorConfig {
    #[serde(default = "yes")]
    do_resize: bool,
    #[serde(default)]
    size: Option<Size>,
    #[serde(default)]
    resample: Option<u32>,
    #[serde(default = "yes")]
    do_rescale: bool,
    #[serde(default = "default_rescale")]
    rescale_factor: f64,
    /// The Siglip processor's own default is to normalise; the Gemma 3n files turn it off.
    #[serde(default = "yes")]
    do_normalize: bool,
    #[serde(default = "half")]
    image_mean: Vec<f32>,
    #[serde(default = "half")]
    image_std: Vec<f32>,
}

#[derive(Debug, Clone, Deserialize)]
struct Size {
    height: u32,
    width: u32,
}

fn yes() -> bool {
    true
}
fn default_rescale() -> f64 {
    1.0 / 255.0
}
fn half() -> Vec<f32> {
    vec![0.5; 3]
}

/// PIL's `Resampling.BILINEAR`, the only filter the Gemma 3n processor uses.
const RESAMPLE_BILINEAR: u32 = 2;

/// Turns image files into the pixel values the vision tower expects.
#[derive(Debug, Clone)]
pub struct ImageProcessor {
    /// `(height, width)` to resize to, if resizing.
    size: Option<(u32, u32)>,
    rescale: Option<f32>,
    normalize: Option<([f32; 3], [f32; 3])>,
    max_pixels: u64,
}

impl ImageProcessor {
    /// Read the processor settings of a model folder: `processor_config.json` (nested
    /// `image_processor`, transformers 5) or `preprocessor_config.json` (flat, hub checkpoints).
    pub fn from_model_dir(dir: &Path) -> Result<Self> {
        let nested = dir.join("processor_config.json");
        let flat = dir.join("preprocessor_config.json");
        let read = |path: &Path| -> Result<serde_json::Value> {
            let text = std::fs::read_to_string(path)
                .map_err(|e| Error::ModelFiles(format!("cannot read {}: {e}", path.display())))?;
            serde_json::from_str(&text).map_err(|e| {
                Error::ModelFiles(format!("{} is not valid JSON: {e}", path.display()))
            })
        };
        let (value, source) = match read(&nested).ok().and_then(|v| v.get("image_processor").cloned()) {
            Some(v) => (v, nested),
            None if flat.is_file() => (read(&flat)?, flat),
            None => {
                return Err(Error::ModelFiles(format!(
                    "{} has neither preprocessor_config.json nor an image_processor section in processor_config.json",
                    dir.display()
                )))
            }
        };
        let cfg: ImageProcessorConfig = serde_json::from_value(value)
            .map_err(|e| Error::ModelFiles(format!("{}: {e}", source.display())))?;
        Self::from_config(cfg).map_err(|e| Error::ModelFiles(format!("{}: {e}", source.display())))
    }

    fn from_config(cfg: ImageProcessorConfig) -> std::result::Result<Self, String> {
        let size = if cfg.do_resize {
            let s = cfg
                .size
                .ok_or("do_resize is set but size {height, width} is missing")?;
            if s.height == 0 || s.width == 0 {
                return Err(format!("image size {}x{} is empty", s.width, s.height));
            }
            if let Some(r) = cfg.resample.filter(|&r| r != RESAMPLE_BILINEAR) {
                return Err(format!("resample {r} is not supported (only 2, bilinear)"));
            }
            Some((s.height, s.width))
        } else {
            None
        };
        let three = |v: &[f32], what: &str| -> std::result::Result<[f32; 3], String> {
            v.try_into()
                .map_err(|_| format!("{what} must have 3 values, has {}", v.len()))
        };
        let normalize = if cfg.do_normalize {
            let std = three(&cfg.image_std, "image_std")?;
            if std.contains(&0.0) {
                return Err("image_std contains 0".into());
            }
            Some((three(&cfg.image_mean, "image_mean")?, std))
        } else {
            None
        };
        Ok(Self {
            size,
            rescale: cfg.do_rescale.then_some(cfg.rescale_factor as f32),
            normalize,
            max_pixels: DEFAULT_MAX_PIXELS,
        })
    }

    /// Refuse images with more than `max_pixels` pixels (checked from the header).
    pub fn with_max_pixels(mut self, max_pixels: u64) -> Self {
        self.max_pixels = max_pixels;
        self
    }

    /// `(height, width)` of the pixel values this processor produces, when it resizes.
    pub fn output_size(&self) -> Option<(u32, u32)> {
        self.size
    }

    /// `[3, H, W]` f32 pixel values for one image file.
    pub fn load_file(&self, path: &Path) -> Result<Tensor> {
        let name = path.display().to_string();
        let bytes =
            std::fs::read(path).map_err(|e| image_error(&name, format!("cannot open: {e}")))?;
        self.load_bytes(&bytes, &name)
    }

    /// `[3, H, W]` f32 pixel values for an encoded image in memory (e.g. pasted from the
    /// clipboard); `name` is used in error messages.
    pub fn load_bytes(&self, bytes: &[u8], name: &str) -> Result<Tensor> {
        let rgb = self.decode(bytes, name)?;
        self.preprocess(&rgb, name)
    }

    /// `[3, H, W]` f32 pixel values for an already decoded image.
    pub fn preprocess(&self, rgb: &RgbImage, name: &str) -> Result<Tensor> {
        let resized;
        let img = match self.size {
            Some((h, w)) if (h, w) != (rgb.height(), rgb.width()) => {
                self.check_resize_work(rgb, w, h, name)?;
                resized = resize_bilinear_antialiased(rgb, w, h);
                &resized
            }
            _ => rgb,
        };
        let (w, h) = img.dimensions();
        let plane = (w * h) as usize;
        let mut chw = vec![0f32; 3 * plane];
        for (i, px) in img.pixels().enumerate() {
            for c in 0..3 {
                chw[c * plane + i] = self.value(px.0[c], c);
            }
        }
        Tensor::from_vec(chw, (3, h as usize, w as usize), &Device::Cpu)
            .map_err(|e| image_error(name, format!("cannot build pixel tensor: {e}")))
    }

    /// The resize's horizontal pass makes an `input height × output width` image, and the
    /// vertical pass reads every input row for each output column; both grow with that product,
    /// which an extreme aspect ratio (a 8x65000 strip, say) makes far larger than the image.  It
    /// is held to the pixel limit, so that no image costs more to resize than to decode.
    fn check_resize_work(&self, rgb: &RgbImage, width: u32, height: u32, name: &str) -> Result<()> {
        let (w, h) = rgb.dimensions();
        let rows_times_width = h as u64 * width as u64;
        let cols_times_height = w as u64 * height as u64;
        if rows_times_width.max(cols_times_height) > self.max_pixels {
            return Err(image_error(
                name,
                format!(
                    "a {w}x{h} image is too narrow or too wide to resize to {width}x{height} \
                     (an aspect ratio of {:.0}:1)",
                    w.max(h) as f64 / w.min(h) as f64
                ),
            ));
        }
        Ok(())
    }

    /// One channel value: rescale (an f32 multiply, as torch does), then normalise if configured.
    fn value(&self, v: u8, channel: usize) -> f32 {
        let mut x = v as f32;
        if let Some(factor) = self.rescale {
            x *= factor;
        }
        if let Some((mean, std)) = &self.normalize {
            x = (x - mean[channel]) / std[channel];
        }
        x
    }

    fn decode(&self, bytes: &[u8], name: &str) -> Result<RgbImage> {
        let fail = |reason: String| image_error(name, reason);
        let mut reader = ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| fail(format!("cannot read: {e}")))?;
        match reader.format() {
            None => {
                return Err(fail(
                    "not a supported image (expected PNG, JPEG, WebP, GIF or BMP content)".into(),
                ))
            }
            // The JPEG decoder fills in missing scans silently; a cut file must not pass as an image.
            Some(ImageFormat::Jpeg) if !jpeg_is_complete(bytes) => {
                return Err(fail(
                    "cannot decode: the JPEG data is truncated (no end-of-image marker after the last scan)".into(),
                ))
            }
            Some(_) => {}
        }
        // The decoder may allocate up to this much for one image (RGBA16 at the pixel cap).
        let mut limits = Limits::default();
        limits.max_alloc = Some(self.max_pixels.saturating_mul(8).max(1 << 29));
        reader.limits(limits);
        let mut decoder = reader
            .into_decoder()
            .map_err(|e| fail(format!("cannot decode: {e}")))?;
        let (w, h) = decoder.dimensions();
        if w == 0 || h == 0 {
            return Err(fail(format!("the image is empty ({w}x{h} pixels)")));
        }
        let pixels = w as u64 * h as u64;
        if pixels > self.max_pixels {
            return Err(fail(format!(
                "{w}x{h} pixels ({:.0} megapixels) exceeds the limit of {:.0} megapixels",
                pixels as f64 / 1e6,
                self.max_pixels as f64 / 1e6
            )));
        }
        let orientation = decoder
            .orientation()
            .map_err(|e| fail(format!("cannot read the orientation: {e}")))?;
        let mut img = DynamicImage::from_decoder(decoder)
            .map_err(|e| fail(format!("cannot decode (truncated or corrupt file?): {e}")))?;
        img.apply_orientation(orientation);
        Ok(img.into_rgb8())
    }
}

/// A complete JPEG has an end-of-image marker after its last start-of-scan.  Entropy-coded data
/// byte-stuffs 0xFF, so neither marker can occur by accident; an embedded EXIF thumbnail's markers
/// come before the main image's scans.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let last = |marker: u8| bytes.windows(2).rposition(|w| w == [0xFF, marker]);
    matches!((last(0xDA), last(0xD9)), (Some(sos), Some(eoi)) if eoi > sos)
}

fn image_error(name: &str, reason: String) -> Error {
    Error::Image {
        path: name.to_string(),
        reason,
    }
}

/// Per-output-pixel taps of torch's antialiased bilinear resampling along one axis, as int16
/// fixed-point weights with a shared precision (ATen's uint8 antialias path).
struct AxisTaps {
    start: Vec<usize>,
    weights: Vec<Vec<i16>>,
    precision: u32,
}

impl AxisTaps {
    fn new(input: usize, output: usize) -> Self {
        let scale = input as f64 / output as f64;
        // The triangle filter widens with the scale when shrinking (antialiasing).
        let (support, invscale) = if scale >= 1.0 {
            (scale, 1.0 / scale)
        } else {
            (1.0, 1.0)
        };
        let max_taps = support.ceil() as i64 * 2 + 1;
        let mut start = Vec::with_capacity(output);
        let mut float_weights = Vec::with_capacity(output);
        let mut w_max = 0f64;
        for i in 0..output {
            let center = scale * (i as f64 + 0.5);
            // `as i64` truncates toward zero, as the C++ casts do.
            let lo = ((center - support + 0.5) as i64).max(0);
            let hi = ((center + support + 0.5) as i64).min(input as i64);
            let n = (hi - lo).clamp(0, max_taps);
            let mut w: Vec<f64> = (0..n)
                .map(|j| {
                    let x = ((j + lo) as f64 - center + 0.5) * invscale;
                    (1.0 - x.abs()).max(0.0)
                })
                .collect();
            let total: f64 = w.iter().sum();
            if total != 0.0 {
                w.iter_mut().for_each(|v| *v /= total);
                w_max = w.iter().copied().fold(w_max, f64::max);
            }
            start.push(lo as usize);
            float_weights.push(w);
        }
        // The largest precision whose doubled maximum weight still fits in an i16.
        let mut precision = 0u32;
        while precision < 22
            && ((0.5 + w_max * (1u64 << (precision + 1)) as f64) as i64) < (1 << 15)
        {
            precision += 1;
        }
        let unit = (1u64 << precision) as f64;
        let weights = float_weights
            .into_iter()
            .map(|w| {
                w.into_iter()
                    .map(|v| {
                        let v = v * unit;
                        (if v < 0.0 { v - 0.5 } else { v + 0.5 }) as i16
                    })
                    .collect()
            })
            .collect();
        Self {
            start,
            weights,
            precision,
        }
    }

    /// Weighted sum of `taps` values read by `at(input index)`, rounded and clamped to u8.
    #[inline]
    fn apply(&self, i: usize, at: impl Fn(usize) -> u8) -> u8 {
        let mut acc: i32 = 1 << (self.precision - 1);
        for (j, &w) in self.weights[i].iter().enumerate() {
            acc += w as i32 * at(self.start[i] + j) as i32;
        }
        (acc >> self.precision).clamp(0, 255) as u8
    }
}

/// torch's `interpolate(uint8, mode="bilinear", antialias=True, align_corners=False)`: a
/// horizontal pass then a vertical pass, each rounded to u8; an axis of unchanged size is skipped.
fn resize_bilinear_antialiased(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (w_in, h_in) = (img.width() as usize, img.height() as usize);
    let (w_out, h_out) = (width as usize, height as usize);
    let mut data = img.as_raw().clone();
    let mut w_cur = w_in;
    if w_out != w_in {
        let taps = AxisTaps::new(w_in, w_out);
        let mut out = vec![0u8; h_in * w_out * 3];
        out.par_chunks_mut(w_out * 3)
            .zip(data.par_chunks(w_in * 3))
            .for_each(|(row_out, row_in)| {
                for x in 0..w_out {
                    for c in 0..3 {
                        row_out[x * 3 + c] = taps.apply(x, |i| row_in[i * 3 + c]);
                    }
                }
            });
        data = out;
        w_cur = w_out;
    }
    if h_out != h_in {
        let taps = AxisTaps::new(h_in, h_out);
        let stride = w_cur * 3;
        let mut out = vec![0u8; h_out * stride];
        out.par_chunks_mut(stride)
            .enumerate()
            .for_each(|(y, row_out)| {
                for (k, v) in row_out.iter_mut().enumerate() {
                    *v = taps.apply(y, |i| data[i * stride + k]);
                }
            });
        data = out;
    }
    RgbImage::from_raw(width, height, data).expect("resized buffer matches its dimensions")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taps_are_normalised_and_cover_the_input() {
        for (input, output) in [(200, 160), (150, 160), (4000, 768), (7, 3)] {
            let taps = AxisTaps::new(input, output);
            for i in 0..output {
                let sum: i32 = taps.weights[i].iter().map(|&w| w as i32).sum();
                let unit = 1i32 << taps.precision;
                assert!(
                    (sum - unit).abs() <= taps.weights[i].len() as i32,
                    "{input}->{output} row {i}"
                );
                assert!(taps.start[i] + taps.weights[i].len() <= input);
            }
        }
    }

    /// Found by the image fuzz target: an 8x65032 JPEG of 427 bytes took 20 s to resize.
    #[test]
    fn extreme_aspect_ratios_are_refused_before_resizing() {
        let processor = ImageProcessor::from_config(ImageProcessorConfig {
            do_resize: true,
            size: Some(Size {
                height: 160,
                width: 160,
            }),
            resample: None,
            do_rescale: true,
            rescale_factor: 1.0 / 255.0,
            do_normalize: false,
            image_mean: half(),
            image_std: half(),
        })
        .unwrap()
        .with_max_pixels(1 << 22);
        let strip = RgbImage::new(8, 65032);
        let err = processor
            .preprocess(&strip, "strip.jpg")
            .unwrap_err()
            .to_string();
        assert!(err.contains("strip.jpg"), "{err}");
        assert!(err.contains("8x65032"), "{err}");
        assert!(err.contains("too narrow or too wide"), "{err}");
        let wide = RgbImage::new(65032, 8);
        assert!(processor.preprocess(&wide, "wide.png").is_err());
        // A panorama well inside the limit still resizes.
        let panorama = processor
            .preprocess(&RgbImage::new(4000, 500), "p.jpg")
            .unwrap();
        assert_eq!(panorama.dims(), &[3, 160, 160]);
    }

    #[test]
    fn constant_image_stays_constant() {
        let img = RgbImage::from_pixel(37, 23, image::Rgb([10, 128, 255]));
        let out = resize_bilinear_antialiased(&img, 16, 16);
        assert!(out.pixels().all(|p| p.0 == [10, 128, 255]));
    }
}
