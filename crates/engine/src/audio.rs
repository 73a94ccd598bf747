//! Audio decoding, resampling and log-mel features (placeholder until the audio path lands).

use std::path::Path;

use candle_core::Tensor;

use crate::{Error, Result};

/// Turns audio files into the log-mel features the audio tower expects.
#[derive(Debug, Clone)]
pub struct AudioProcessor {}

/// Log-mel features of one or more clips: `features` `[n, frames, mel]`, `mask` `[n, frames]`
/// (u8, 1 = valid frame).
#[derive(Debug, Clone)]
pub struct AudioFeatures {
    pub features: Tensor,
    pub mask: Tensor,
}

impl AudioProcessor {
    pub fn from_model_dir(_dir: &Path) -> Result<Self> {
        Ok(Self {})
    }

    /// 16 kHz mono clips of at most the model's clip length, in order, for one audio file.
    pub fn load_file(&self, path: &Path) -> Result<Vec<Vec<f32>>> {
        Err(Error::Audio {
            path: path.display().to_string(),
            reason: "audio is not supported yet".into(),
        })
    }

    /// Features for a batch of 16 kHz mono clips.
    pub fn features(&self, _clips: &[Vec<f32>]) -> Result<AudioFeatures> {
        Err(Error::Audio {
            path: String::new(),
            reason: "audio is not supported yet".into(),
        })
    }
}
