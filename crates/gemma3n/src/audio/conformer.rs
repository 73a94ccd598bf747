//! One conformer block: half-step feed-forward, local self-attention, light convolution,
//! half-step feed-forward, norm.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};

use super::attention::LocalAttention;
use crate::config::AudioConfig;
use crate::nn::{linear, RmsNorm};

/// The reference clamps activations to `±gradient_clipping` at fixed points (a no-op for the
/// released 1e10, kept so other checkpoints behave the same).
fn clip(x: &Tensor, limit: f64) -> Result<Tensor> {
    x.clamp(-limit, limit)
}

#[derive(Debug, Clone)]
struct FeedForward {
    pre_layer_norm: RmsNorm,
    ffw_layer_1: Linear,
    ffw_layer_2: Linear,
    post_layer_norm: RmsNorm,
    residual_weight: f64,
    clip: f64,
}

impl FeedForward {
    fn new(cfg: &AudioConfig, vb: VarBuilder) -> Result<Self> {
        let (d, eps) = (cfg.hidden_size, cfg.rms_norm_eps);
        Ok(Self {
            pre_layer_norm: RmsNorm::new(d, eps, vb.pp("pre_layer_norm"))?,
            ffw_layer_1: linear(d, 4 * d, vb.pp("ffw_layer_1"))?,
            ffw_layer_2: linear(4 * d, d, vb.pp("ffw_layer_2"))?,
            post_layer_norm: RmsNorm::new(d, eps, vb.pp("post_layer_norm"))?,
            residual_weight: cfg.conf_residual_weight,
            clip: cfg.gradient_clipping,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.pre_layer_norm.forward(&clip(x, self.clip)?)?;
        let y = self.ffw_layer_1.forward(&y)?.silu()?;
        let y = clip(&self.ffw_layer_2.forward(&y)?, self.clip)?;
        x + (self.post_layer_norm.forward(&y)? * self.residual_weight)?
    }
}

#[derive(Debug, Clone)]
struct ConformerAttention {
    pre_attn_norm: RmsNorm,
    attn: LocalAttention,
    post: Linear,
    post_norm: RmsNorm,
    clip: f64,
}

impl ConformerAttention {
    fn new(cfg: &AudioConfig, vb: VarBuilder) -> Result<Self> {
        let (d, eps) = (cfg.hidden_size, cfg.rms_norm_eps);
        Ok(Self {
            pre_attn_norm: RmsNorm::new(d, eps, vb.pp("pre_attn_norm"))?,
            attn: LocalAttention::new(cfg, vb.pp("attn"))?,
            post: linear(d, d, vb.pp("post"))?,
            post_norm: RmsNorm::new(d, eps, vb.pp("post_norm"))?,
            clip: cfg.gradient_clipping,
        })
    }

    fn forward(&self, x: &Tensor, valid: &Tensor) -> Result<Tensor> {
        let y = self.pre_attn_norm.forward(&clip(x, self.clip)?)?;
        let y = clip(
            &self.post.forward(&self.attn.forward(&y, valid)?)?,
            self.clip,
        )?;
        x + self.post_norm.forward(&y)?
    }
}

/// Gated linear unit, causal depthwise convolution over time, norm, SiLU, projection.
#[derive(Debug, Clone)]
struct LightConv1d {
    pre_layer_norm: RmsNorm,
    linear_start: Linear,
    /// `[kernel, hidden]`: tap k multiplies the frame `kernel - 1 - k` steps back.
    depthwise_taps: Tensor,
    conv_norm: RmsNorm,
    linear_end: Linear,
    clip: f64,
}

impl LightConv1d {
    fn new(cfg: &AudioConfig, vb: VarBuilder) -> Result<Self> {
        let (d, eps, k) = (cfg.hidden_size, cfg.rms_norm_eps, cfg.conf_conv_kernel_size);
        let weight = vb.get((d, 1, k), "depthwise_conv1d.weight")?;
        Ok(Self {
            pre_layer_norm: RmsNorm::new(d, eps, vb.pp("pre_layer_norm"))?,
            linear_start: linear(d, 2 * d, vb.pp("linear_start"))?,
            depthwise_taps: weight.squeeze(1)?.t()?.contiguous()?,
            conv_norm: RmsNorm::new(d, eps, vb.pp("conv_norm"))?,
            linear_end: linear(d, d, vb.pp("linear_end"))?,
            clip: cfg.gradient_clipping,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, t, d) = x.dims3()?;
        let y = self
            .linear_start
            .forward(&self.pre_layer_norm.forward(x)?)?;
        let y = (y.narrow(2, 0, d)? * candle_nn::ops::sigmoid(&y.narrow(2, d, d)?)?)?;
        // Depthwise convolution with `kernel - 1` zeros of left padding: each output frame sees
        // only itself and the past.  A sum of shifted copies beats candle's grouped conv here.
        let taps = self.depthwise_taps.dim(0)?;
        let padded = y.pad_with_zeros(1, taps - 1, 0)?;
        let mut acc = padded
            .narrow(1, 0, t)?
            .broadcast_mul(&self.depthwise_taps.get(0)?)?;
        for k in 1..taps {
            acc = (acc
                + padded
                    .narrow(1, k, t)?
                    .broadcast_mul(&self.depthwise_taps.get(k)?)?)?;
        }
        let y = self.conv_norm.forward(&clip(&acc, self.clip)?)?.silu()?;
        self.linear_end.forward(&y)? + x
    }
}

#[derive(Debug, Clone)]
pub struct ConformerBlock {
    ffw_layer_start: FeedForward,
    attention: ConformerAttention,
    lconv1d: LightConv1d,
    ffw_layer_end: FeedForward,
    norm: RmsNorm,
    clip: f64,
}

impl ConformerBlock {
    pub fn new(cfg: &AudioConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            ffw_layer_start: FeedForward::new(cfg, vb.pp("ffw_layer_start"))?,
            attention: ConformerAttention::new(cfg, vb.pp("attention"))?,
            lconv1d: LightConv1d::new(cfg, vb.pp("lconv1d"))?,
            ffw_layer_end: FeedForward::new(cfg, vb.pp("ffw_layer_end"))?,
            norm: RmsNorm::new(cfg.hidden_size, cfg.rms_norm_eps, vb.pp("norm"))?,
            clip: cfg.gradient_clipping,
        })
    }

    /// `x` `[B, T, hidden]`, `valid` `[B, T]` (1 = real frame, in the activation dtype).
    pub fn forward(&self, x: &Tensor, valid: &Tensor) -> Result<Tensor> {
        let x = self.ffw_layer_start.forward(x)?;
        let x = self.attention.forward(&x, valid)?;
        // Padded frames are zeroed so the causal convolution cannot carry them forward.
        let x = x.broadcast_mul(&valid.unsqueeze(2)?)?;
        let x = self.lconv1d.forward(&x)?;
        let x = self.ffw_layer_end.forward(&x)?;
        self.norm.forward(&clip(&x, self.clip)?)
    }
}
