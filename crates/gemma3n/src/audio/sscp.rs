//! `subsample_conv_projection`: two strided 2-D convolutions over (time, mel) with cumulative
//! group norm and ReLU, then a linear projection of the flattened (frequency, channel) features.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::kernels::Linear;
use crate::config::AudioConfig;

/// Group norm with one group whose statistics accumulate causally over time: the mean and
/// variance at step t cover every (frequency, channel) value of steps 0..=t.  Input and output
/// are `[B, C, T, F]`; the weight scales each channel.
#[derive(Debug, Clone)]
struct CumulativeGroupNorm {
    weight: Tensor,
    eps: f64,
}

impl CumulativeGroupNorm {
    fn new(channels: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let weight = vb
            .get(channels, "weight")?
            .to_dtype(DType::F32)?
            .reshape((1, channels, 1, 1))?;
        Ok(Self { weight, eps })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let x = x.to_dtype(DType::F32)?;
        let (_, c, t, f) = x.dims4()?;
        let per_step = (c * f) as f64;
        // Elements seen up to and including each step: (t + 1) * C * F.
        let count = (Tensor::arange(1u32, t as u32 + 1, x.device())?.to_dtype(DType::F32)?
            * per_step)?
            .reshape((1, 1, t, 1))?;
        let step_sum = x.sum_keepdim(1)?.sum_keepdim(3)?;
        let mean = step_sum.cumsum(2)?.broadcast_div(&count)?;
        let centered = x.broadcast_sub(&mean)?;
        // Each step's squared deviations use that step's running mean, then accumulate.
        let step_sq = centered.sqr()?.sum_keepdim(1)?.sum_keepdim(3)?;
        let var = step_sq.cumsum(2)?.broadcast_div(&count)?;
        let inv_std = (var + self.eps)?.sqrt()?.recip()?;
        centered
            .broadcast_mul(&inv_std)?
            .broadcast_mul(&self.weight)?
            .to_dtype(dtype)
    }
}

/// Zero padding (time: none before, `kernel - 1` after; frequency: one each side), convolution,
/// cumulative group norm, ReLU.
#[derive(Debug, Clone)]
struct ConvBlock {
    weight: Tensor,
    kernel: (usize, usize),
    stride: (usize, usize),
    norm: CumulativeGroupNorm,
}

/// Width of `input_proj_linear`'s input: the frequency bins left after both convolutions times
/// the last one's channels.
pub(crate) fn input_proj_width(cfg: &AudioConfig) -> usize {
    let mut freq = cfg.input_feat_size;
    for idx in 0..2 {
        freq = ConvBlock::out_len(
            freq,
            2,
            cfg.sscp_conv_kernel_size[idx][1],
            cfg.sscp_conv_stride_size[idx][1],
        );
    }
    freq * cfg.sscp_conv_channel_size[1]
}

impl ConvBlock {
    fn new(cfg: &AudioConfig, idx: usize, vb: VarBuilder) -> Result<Self> {
        let c_in = if idx == 0 {
            1
        } else {
            cfg.sscp_conv_channel_size[idx - 1]
        };
        let c_out = cfg.sscp_conv_channel_size[idx];
        let kernel = (
            cfg.sscp_conv_kernel_size[idx][0],
            cfg.sscp_conv_kernel_size[idx][1],
        );
        let stride = (
            cfg.sscp_conv_stride_size[idx][0],
            cfg.sscp_conv_stride_size[idx][1],
        );
        let weight = vb.get((c_out, c_in, kernel.0, kernel.1), "conv.weight")?;
        let norm = CumulativeGroupNorm::new(c_out, cfg.sscp_conv_group_norm_eps, vb.pp("norm"))?;
        Ok(Self {
            weight,
            kernel,
            stride,
            norm,
        })
    }

    /// Output size along one axis for an input of `len` after this block's padding.
    fn out_len(len: usize, pad: usize, kernel: usize, stride: usize) -> usize {
        (len + pad).saturating_sub(kernel) / stride + 1
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = x
            .pad_with_zeros(2, 0, self.kernel.0 - 1)?
            .pad_with_zeros(3, 1, 1)?;
        let (sh, sw) = self.stride;
        let y = if sh == sw {
            x.conv2d(&self.weight, 0, sh, 1, 1)?
        } else {
            // candle has one stride for both axes: convolve densely, then keep the strided grid.
            let dense = x.conv2d(&self.weight, 0, 1, 1, 1)?;
            let (_, _, th, tw) = dense.dims4()?;
            let rows = Tensor::arange_step(0u32, th as u32, sh as u32, x.device())?;
            let cols = Tensor::arange_step(0u32, tw as u32, sw as u32, x.device())?;
            dense.index_select(&rows, 2)?.index_select(&cols, 3)?
        };
        self.norm.forward(&y)?.relu()
    }
}

#[derive(Debug, Clone)]
pub struct SubSampleConvProjection {
    conv_0: ConvBlock,
    conv_1: ConvBlock,
    input_proj_linear: Linear,
}

impl SubSampleConvProjection {
    pub fn new(cfg: &AudioConfig, vb: VarBuilder) -> Result<Self> {
        let conv_0 = ConvBlock::new(cfg, 0, vb.pp("conv_0"))?;
        let conv_1 = ConvBlock::new(cfg, 1, vb.pp("conv_1"))?;
        let input_proj_linear = Linear::new(
            input_proj_width(cfg),
            cfg.hidden_size,
            vb.pp("input_proj_linear"),
        )?;
        Ok(Self {
            conv_0,
            conv_1,
            input_proj_linear,
        })
    }

    /// Product of the time strides: input frames per output frame.
    pub fn time_stride(&self) -> usize {
        self.conv_0.stride.0 * self.conv_1.stride.0
    }

    /// `[B, T, mel]` log-mel features to `[B, T', hidden]`.
    pub fn forward(&self, mel: &Tensor) -> Result<Tensor> {
        let x = self
            .conv_1
            .forward(&self.conv_0.forward(&mel.unsqueeze(1)?)?)?;
        let (b, _, t, _) = x.dims4()?;
        // [B, C, T, F] -> [B, T, F, C] -> [B, T, F*C] (index f * C + c).
        let x = x.permute((0, 2, 3, 1))?.contiguous()?.reshape((b, t, ()))?;
        self.input_proj_linear.forward(&x)
    }
}

/// Number of sub-sampled frames the projection makes of `frames` (at least one) input frames.
pub fn output_frames(cfg: &AudioConfig, frames: usize) -> usize {
    cfg.sscp_conv_stride_size
        .iter()
        .zip(&cfg.sscp_conv_kernel_size)
        .fold(frames, |t, (s, k)| {
            ConvBlock::out_len(t, k[0] - 1, k[0], s[0])
        })
}
