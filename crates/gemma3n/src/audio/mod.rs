//! The USM conformer audio tower (`model.audio_tower`): log-mel frames in, one feature vector per
//! `4 × reduction_factor` frames out (160 ms of audio per token in the released checkpoints).

mod attention;
mod conformer;
mod kernels;
pub(crate) mod sscp;

use candle_core::{DType, Result, Tensor};
use candle_nn::VarBuilder;

use crate::config::AudioConfig;
use conformer::ConformerBlock;
use sscp::SubSampleConvProjection;

/// Activations recorded during [`AudioEncoder::forward`] (for parity tests and debugging).
#[derive(Debug, Default)]
pub struct AudioTrace {
    pub sscp_output: Option<Tensor>,
    pub conformer_outputs: Vec<Tensor>,
}

/// Encoder output: `features` `[B, N, hidden]` (padded positions zeroed) and `valid` `[B, N]`
/// (u8, 1 = real token).
#[derive(Debug, Clone)]
pub struct AudioEncoding {
    pub features: Tensor,
    pub valid: Tensor,
}

#[derive(Debug, Clone)]
pub struct AudioEncoder {
    subsample_conv_projection: SubSampleConvProjection,
    conformer: Vec<ConformerBlock>,
    reduction_factor: usize,
}

impl AudioEncoder {
    pub fn new(cfg: &AudioConfig, vb: VarBuilder) -> Result<Self> {
        let subsample_conv_projection =
            SubSampleConvProjection::new(cfg, vb.pp("subsample_conv_projection"))?;
        let conformer = (0..cfg.conf_num_hidden_layers)
            .map(|i| ConformerBlock::new(cfg, vb.pp("conformer").pp(i)))
            .collect::<Result<_>>()?;
        Ok(Self {
            subsample_conv_projection,
            conformer,
            reduction_factor: cfg.conf_reduction_factor.max(1),
        })
    }

    /// `mel` `[B, T, mel_bins]`, `valid` `[B, T]` (u8, 1 = real frame).
    pub fn forward(
        &self,
        mel: &Tensor,
        valid: &Tensor,
        trace: Option<&mut AudioTrace>,
    ) -> Result<AudioEncoding> {
        ::kernels::pool::busy(|| self.encode(mel, valid, trace))
    }

    fn encode(
        &self,
        mel: &Tensor,
        valid: &Tensor,
        mut trace: Option<&mut AudioTrace>,
    ) -> Result<AudioEncoding> {
        let frames = mel.dim(1)?;
        let mut x = self.subsample_conv_projection.forward(mel)?;
        let (_, t, _) = x.dims3()?;
        // A sub-sampled step is valid iff the first input frame it starts at is.
        let stride = self.subsample_conv_projection.time_stride();
        let picks: Vec<u32> = (0..t)
            .map(|i| (i * stride).min(frames - 1) as u32)
            .collect();
        let mut valid = valid.index_select(&Tensor::new(picks, mel.device())?, 1)?;
        let valid_act = valid.to_dtype(x.dtype())?;
        if let Some(tr) = trace.as_deref_mut() {
            tr.sscp_output = Some(x.clone());
        }
        for block in &self.conformer {
            x = block.forward(&x, &valid_act)?;
            if let Some(tr) = trace.as_deref_mut() {
                tr.conformer_outputs.push(x.clone());
            }
        }
        if self.reduction_factor > 1 {
            let keep =
                Tensor::arange_step(0u32, t as u32, self.reduction_factor as u32, x.device())?;
            x = x.index_select(&keep, 1)?;
            valid = valid.index_select(&keep, 1)?;
        }
        let features = x.broadcast_mul(&valid.to_dtype(x.dtype())?.unsqueeze(2)?)?;
        Ok(AudioEncoding {
            features,
            valid: valid.to_dtype(DType::U8)?,
        })
    }
}

/// Tokens the tower makes of `frames` log-mel frames.
pub fn tokens_for_frames(cfg: &AudioConfig, frames: usize) -> usize {
    if frames == 0 {
        return 0;
    }
    sscp::output_frames(cfg, frames).div_ceil(cfg.conf_reduction_factor.max(1))
}
