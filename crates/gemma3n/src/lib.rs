//! Gemma 3n on candle: text decoder, MobileNet-V5 vision tower, USM conformer audio tower and the
//! multimodal embedders, loaded straight from Hugging Face checkpoints.
//!
//! The module layout follows the checkpoint: [`text`] is `model.language_model`, [`embedder`] is
//! `model.embed_vision` / `model.embed_audio`, [`vision`] is `model.vision_tower`, [`model`] ties them into
//! `Gemma3nForConditionalGeneration`.

pub mod audio;
pub mod bench;
pub mod config;
pub mod embedder;
pub mod expected;
pub mod gguf;
pub mod kv_cache;
pub mod loader;
pub mod matformer;
pub mod model;
pub mod nn;
pub mod quant;
pub mod text;
pub mod vision;

pub use audio::{AudioEncoder, AudioEncoding};
pub use config::{AudioConfig, Gemma3nConfig, LayerType, TextConfig, VisionConfig};
pub use kv_cache::Cache;
pub use loader::{Checkpoint, EmbeddingTable, ProgressFn};
pub use matformer::{Slice, SlicePlan};
pub use model::{parse_device, Gemma3nModel, LoadOptions, MediaEmbeddings};
pub use quant::{QLinear, WeightFormat};

/// Errors of the model library.  Candle errors keep their text, which names the tensor involved.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid config: {0}")]
    Config(String),
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    #[error("invalid input: {0}")]
    Input(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, Error>;
