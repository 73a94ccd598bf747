//! One conformer block: half-step feed-forward, local self-attention, light convolution,
//! half-step feed-forward, norm.
//!
//! The reference clamps activations to `±gradient_clipping` before most norms (a no-op for the
//! released 1e10, kept so other checkpoints behave the same); [`ClippedRmsNorm`] does both.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::attention::LocalAttention;
use super::kernels::{self, ClippedRmsNorm, Linear};
use crate::config::AudioConfig;

fn norm(cfg: &AudioConfig, vb: VarBuilder) -> Result<ClippedRmsNorm> {
    ClippedRmsNorm::new(cfg.hidden_size, cfg.rms_norm_eps, cfg.gradient_clipping, vb)
}

#[derive(Debug, Clone)]
struct FeedForward {
    pre_layer_norm: ClippedRmsNorm,
    ffw_layer_1: Linear,
    ffw_layer_2: Linear,
    post_layer_norm: ClippedRmsNorm,
    residual_weight: f64,
}

impl FeedForward {
    fn new(cfg: &AudioConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        Ok(Self {
            pre_layer_norm: norm(cfg, vb.pp("pre_layer_norm"))?,
            ffw_layer_1: Linear::new(d, 4 * d, vb.pp("ffw_layer_1"))?,
            ffw_layer_2: Linear::new(4 * d, d, vb.pp("ffw_layer_2"))?,
            post_layer_norm: norm(cfg, vb.pp("post_layer_norm"))?,
            residual_weight: cfg.conf_residual_weight,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.pre_layer_norm.forward(x)?;
        let y = kernels::silu(&self.ffw_layer_1.forward(&y)?)?;
        self.post_layer_norm.forward_residual(
            &self.ffw_layer_2.forward(&y)?,
            x,
            self.residual_weight,
        )
    }
}

#[derive(Debug, Clone)]
struct ConformerAttention {
    pre_attn_norm: ClippedRmsNorm,
    attn: LocalAttention,
    post: Linear,
    post_norm: ClippedRmsNorm,
}

impl ConformerAttention {
    fn new(cfg: &AudioConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        Ok(Self {
            pre_attn_norm: norm(cfg, vb.pp("pre_attn_norm"))?,
            attn: LocalAttention::new(cfg, vb.pp("attn"))?,
            post: Linear::new(d, d, vb.pp("post"))?,
            post_norm: norm(cfg, vb.pp("post_norm"))?,
        })
    }

    fn forward(&self, x: &Tensor, valid: &Tensor) -> Result<Tensor> {
        let y = self.pre_attn_norm.forward(x)?;
        let y = self.post.forward(&self.attn.forward(&y, valid)?)?;
        self.post_norm.forward_residual(&y, x, 1.0)
    }
}

/// Gated linear unit, causal depthwise convolution over time, norm, SiLU, projection.
#[derive(Debug, Clone)]
struct LightConv1d {
    pre_layer_norm: ClippedRmsNorm,
    linear_start: Linear,
    /// `[kernel, hidden]`: tap k multiplies the frame `kernel - 1 - k` steps back.
    depthwise_taps: Tensor,
    conv_norm: ClippedRmsNorm,
    linear_end: Linear,
}

impl LightConv1d {
    fn new(cfg: &AudioConfig, vb: VarBuilder) -> Result<Self> {
        let (d, k) = (cfg.hidden_size, cfg.conf_conv_kernel_size);
        let weight = vb.get((d, 1, k), "depthwise_conv1d.weight")?;
        Ok(Self {
            // The only norm the reference does not clip before.
            pre_layer_norm: ClippedRmsNorm::new(
                d,
                cfg.rms_norm_eps,
                f64::INFINITY,
                vb.pp("pre_layer_norm"),
            )?,
            linear_start: Linear::new(d, 2 * d, vb.pp("linear_start"))?,
            depthwise_taps: weight.squeeze(1)?.t()?.contiguous()?,
            conv_norm: norm(cfg, vb.pp("conv_norm"))?,
            linear_end: Linear::new(d, d, vb.pp("linear_end"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self
            .linear_start
            .forward(&self.pre_layer_norm.forward(x)?)?;
        // Each output frame of the depthwise convolution sees only itself and the past.
        let y = kernels::causal_conv_norm_silu(
            &kernels::glu(&y)?,
            &self.depthwise_taps,
            &self.conv_norm,
        )?;
        self.linear_end.forward(&y)? + x
    }
}

#[derive(Debug, Clone)]
pub struct ConformerBlock {
    ffw_layer_start: FeedForward,
    attention: ConformerAttention,
    lconv1d: LightConv1d,
    ffw_layer_end: FeedForward,
    norm: ClippedRmsNorm,
}

impl ConformerBlock {
    pub fn new(cfg: &AudioConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            ffw_layer_start: FeedForward::new(cfg, vb.pp("ffw_layer_start"))?,
            attention: ConformerAttention::new(cfg, vb.pp("attention"))?,
            lconv1d: LightConv1d::new(cfg, vb.pp("lconv1d"))?,
            ffw_layer_end: FeedForward::new(cfg, vb.pp("ffw_layer_end"))?,
            norm: norm(cfg, vb.pp("norm"))?,
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
        self.norm.forward(&x)
    }
}
