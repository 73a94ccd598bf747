//! Image decoding and preprocessing (placeholder until the vision path lands).

use std::path::Path;

use candle_core::Tensor;

use crate::{Error, Result};

/// Turns image files into the pixel values the vision tower expects.
#[derive(Debug, Clone)]
pub struct ImageProcessor {}

impl ImageProcessor {
    pub fn from_model_dir(_dir: &Path) -> Result<Self> {
        Ok(Self {})
    }

    /// `[3, H, W]` f32 pixel values for one image file.
    pub fn load_file(&self, path: &Path) -> Result<Tensor> {
        Err(Error::Image {
            path: path.display().to_string(),
            reason: "images are not supported yet".into(),
        })
    }
}
