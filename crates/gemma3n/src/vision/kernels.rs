//! CPU kernels over channels-last (NHWC) f32 tensors for what candle has no fast path for:
//! depthwise convolution, the im2col gather of a full convolution (whose product with the weight
//! is then one matmul) and RmsNorm2d fused with GELU.  Zero padding is applied by bounds checks,
//! so TF "SAME" asymmetric padding costs nothing.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape};
use rayon::prelude::*;

use ::kernels::activation::{gelu_tanh, sum_of_squares};

/// Geometry of a 2-D convolution window over an NHWC input.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub kernel: (usize, usize),
    pub stride: usize,
    pub dilation: usize,
    /// Zeros added before the first row / column (the rest of the padding is implied by `out`).
    pub pad_before: (usize, usize),
    pub out: (usize, usize),
}

impl Window {
    /// Input coordinate read by output index `o` and kernel tap `k` along one axis, if inside.
    #[inline]
    fn source(&self, o: usize, k: usize, pad: usize, size: usize) -> Option<usize> {
        (o * self.stride + k * self.dilation)
            .checked_sub(pad)
            .filter(|&i| i < size)
    }
}

fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let (start, end) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg(format!("{what}: input must be contiguous")))?;
    match s {
        CpuStorage::F32(v) => Ok(&v[start..end]),
        _ => candle_core::bail!("{what}: only f32 is supported"),
    }
}

/// Depthwise convolution: input `[B, H, W, C]`, weight `[kh, kw, C]`, output `[B, Ho, Wo, C]`.
pub struct DepthwiseConv(pub Window);

impl CustomOp2 for DepthwiseConv {
    fn name(&self) -> &'static str {
        "depthwise-conv-nhwc"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(xs, xl, self.name())?;
        let w = contiguous_f32(ws, wl, self.name())?;
        let (b, h, wd, c) = xl.shape().dims4()?;
        let win = self.0;
        let (kh, kw) = win.kernel;
        let (ho, wo) = win.out;
        if w.len() != kh * kw * c {
            candle_core::bail!(
                "depthwise weight has {} values, expected {kh}x{kw}x{c}",
                w.len()
            );
        }
        let mut out = vec![0f32; b * ho * wo * c];
        // One output row per task: rows are independent and each is a few KiB to a few MiB.
        out.par_chunks_mut(wo * c)
            .enumerate()
            .for_each(|(row, out_row)| {
                let (bi, oy) = (row / ho, row % ho);
                let image = &x[bi * h * wd * c..(bi + 1) * h * wd * c];
                for ky in 0..kh {
                    let Some(iy) = win.source(oy, ky, win.pad_before.0, h) else {
                        continue;
                    };
                    let in_row = &image[iy * wd * c..(iy + 1) * wd * c];
                    for kx in 0..kw {
                        let tap = &w[(ky * kw + kx) * c..(ky * kw + kx + 1) * c];
                        for ox in 0..wo {
                            let Some(ix) = win.source(ox, kx, win.pad_before.1, wd) else {
                                continue;
                            };
                            let src = &in_row[ix * c..(ix + 1) * c];
                            let dst = &mut out_row[ox * c..(ox + 1) * c];
                            for ((d, s), t) in dst.iter_mut().zip(src).zip(tap) {
                                *d += s * t;
                            }
                        }
                    }
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((b, ho, wo, c))))
    }
}

/// im2col for a full convolution: input `[B, H, W, C]` to patches `[B·Ho·Wo, kh·kw·C]`, each
/// row ordered (ky, kx, c) to match a weight permuted to `[kh, kw, C, out]`.
pub struct Im2Col(pub Window);

impl CustomOp1 for Im2Col {
    fn name(&self) -> &'static str {
        "im2col-nhwc"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(xs, xl, self.name())?;
        let (b, h, wd, c) = xl.shape().dims4()?;
        let win = self.0;
        let (kh, kw) = win.kernel;
        let (ho, wo) = win.out;
        let cols = kh * kw * c;
        let mut out = vec![0f32; b * ho * wo * cols];
        out.par_chunks_mut(wo * cols)
            .enumerate()
            .for_each(|(row, out_row)| {
                let (bi, oy) = (row / ho, row % ho);
                let image = &x[bi * h * wd * c..(bi + 1) * h * wd * c];
                for ox in 0..wo {
                    let patch = &mut out_row[ox * cols..(ox + 1) * cols];
                    for ky in 0..kh {
                        let Some(iy) = win.source(oy, ky, win.pad_before.0, h) else {
                            continue;
                        };
                        for kx in 0..kw {
                            let Some(ix) = win.source(ox, kx, win.pad_before.1, wd) else {
                                continue;
                            };
                            let at = (iy * wd + ix) * c;
                            patch[(ky * kw + kx) * c..(ky * kw + kx + 1) * c]
                                .copy_from_slice(&image[at..at + c]);
                        }
                    }
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((b * ho * wo, cols))))
    }
}

/// RmsNorm2d over the last (channel) axis, optionally followed by GELU (tanh form), fused into one
/// parallel pass: `y = x / sqrt(mean(x²) + eps) · w`, then `gelu(y)`.  Input `[.., C]`, weight `[C]`.
pub struct RmsNormAct {
    pub eps: f32,
    pub act: bool,
}

impl CustomOp2 for RmsNormAct {
    fn name(&self) -> &'static str {
        "rms-norm-act"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(xs, xl, self.name())?;
        let w = contiguous_f32(ws, wl, self.name())?;
        let c = w.len();
        if xl.shape().dims().last() != Some(&c) {
            candle_core::bail!(
                "rms-norm-act: {:?} does not end in {c} channels",
                xl.shape()
            );
        }
        let mut out = vec![0f32; x.len()];
        // Enough rows per task to amortise scheduling, few enough to balance two or more cores.
        let rows_per_task = (16_384 / c).max(1);
        out.par_chunks_mut(rows_per_task * c)
            .zip(x.par_chunks(rows_per_task * c))
            .for_each(|(out, x)| {
                for (y, x) in out.chunks_exact_mut(c).zip(x.chunks_exact(c)) {
                    let mean_sq = sum_of_squares(x) / c as f32;
                    let r = 1.0 / (mean_sq + self.eps).sqrt();
                    for ((y, &x), &w) in y.iter_mut().zip(x).zip(w) {
                        *y = x * r * w;
                    }
                    if self.act {
                        y.iter_mut().for_each(|v| *v = gelu_tanh(*v));
                    }
                }
            });
        Ok((CpuStorage::F32(out), xl.shape().clone()))
    }
}
