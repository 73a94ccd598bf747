//! timm `MobileNetV5MultiScaleFusionAdapter`: brings the tapped feature maps to the resolution of
//! the first one (nearest), concatenates them on channels, runs a pointwise FFN, shrinks the map
//! to the output grid (average pooling when the size divides, else bilinear) and normalises.

use candle_core::{Device, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::arch::PadType;
use super::blocks::UniversalInvertedResidual;
use super::conv::RmsNorm2d;

#[derive(Debug, Clone)]
pub struct MultiScaleFusionAdapter {
    ffn: UniversalInvertedResidual,
    norm: RmsNorm2d,
    output_resolution: (usize, usize),
}

impl MultiScaleFusionAdapter {
    pub fn new(
        in_chs: usize,
        out_chs: usize,
        output_resolution: (usize, usize),
        pad: PadType,
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(Self {
            ffn: UniversalInvertedResidual::ffn(in_chs, out_chs, 2.0, pad, vb.pp("ffn"))?,
            norm: RmsNorm2d::new(out_chs, false, vb.pp("norm"))?,
            output_resolution,
        })
    }

    /// NHWC feature maps, highest resolution first → `[B, gh, gw, out_chs]`.
    pub fn forward(&self, inputs: &[Tensor]) -> Result<Tensor> {
        let (_, high_h, high_w, _) = inputs[0].dims4()?;
        let resized = inputs
            .iter()
            .map(|x| {
                let (_, h, w, _) = x.dims4()?;
                if h < high_h || w < high_w {
                    resize_nearest(x, high_h, high_w)
                } else {
                    Ok(x.clone())
                }
            })
            .collect::<Result<Vec<_>>>()?;
        let mut y = self.ffn.forward(&Tensor::cat(&resized, 3)?)?;
        let (oh, ow) = self.output_resolution;
        if (high_h, high_w) != (oh, ow) {
            y = if high_h % oh != 0 || high_w % ow != 0 {
                resize_bilinear(&y, oh, ow)?
            } else {
                avg_pool(&y, high_h / oh, high_w / ow)?
            };
        }
        self.norm.forward(&y)
    }
}

/// PyTorch `interpolate(mode="nearest")` source indices: `floor(dst · in/out)` in f32.
fn nearest_index(input: usize, output: usize, device: &Device) -> Result<Tensor> {
    let scale = input as f32 / output as f32;
    let idx: Vec<u32> = (0..output)
        .map(|o| ((o as f32 * scale).floor() as usize).min(input - 1) as u32)
        .collect();
    Tensor::new(idx, device)
}

fn resize_nearest(x: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    let (_, ih, iw, _) = x.dims4()?;
    x.index_select(&nearest_index(ih, h, x.device())?, 1)?
        .index_select(&nearest_index(iw, w, x.device())?, 2)
}

/// Non-overlapping average pooling with kernel = stride = `(kh, kw)`.
fn avg_pool(x: &Tensor, kh: usize, kw: usize) -> Result<Tensor> {
    let (b, h, w, c) = x.dims4()?;
    x.reshape((b, h / kh, kh, w / kw, kw, c))?
        .sum(4)?
        .sum(2)?
        .affine(1.0 / (kh * kw) as f64, 0.0)
}

/// PyTorch `interpolate(mode="bilinear", align_corners=False)` without antialiasing, one axis at
/// a time: `src = (dst + 0.5)·in/out − 0.5`, clamped at 0, between `floor(src)` and the next pixel.
fn resize_bilinear(x: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    let along = |x: &Tensor, dim: usize, out: usize| -> Result<Tensor> {
        let input = x.dim(dim)?;
        let scale = input as f32 / out as f32;
        let (mut lo, mut hi, mut frac) = (Vec::new(), Vec::new(), Vec::new());
        for o in 0..out {
            let src = ((o as f32 + 0.5) * scale - 0.5).max(0.0);
            let i0 = (src.floor() as usize).min(input - 1);
            lo.push(i0 as u32);
            hi.push((i0 + 1).min(input - 1) as u32);
            frac.push(src - i0 as f32);
        }
        let mut shape = vec![1; 4];
        shape[dim] = out;
        let frac = Tensor::new(frac, x.device())?
            .reshape(shape)?
            .to_dtype(x.dtype())?;
        let a = x.index_select(&Tensor::new(lo, x.device())?, dim)?;
        let b = x.index_select(&Tensor::new(hi, x.device())?, dim)?;
        a.broadcast_add(&(b - &a)?.broadcast_mul(&frac)?)
    };
    along(&along(x, 1, h)?, 2, w)
}
