//! `Gemma3nMultimodalEmbedder`: maps vision/audio tokens into the text model's space, either from
//! a tower's soft features or from a hard token id in the modality's vocabulary range.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Embedding, Linear, VarBuilder};

use crate::nn::{linear, RmsNorm};

#[derive(Debug, Clone)]
pub struct MultimodalEmbedder {
    embedding: Embedding,
    hard_embedding_norm: RmsNorm,
    soft_embedding_norm: RmsNorm,
    embedding_projection: Linear,
    embedding_post_projection_norm: RmsNorm,
    vocab_offset: u32,
    vocab_size: u32,
}

impl MultimodalEmbedder {
    /// `width` is the tower's feature width, `text_hidden` the decoder's.
    pub fn new(
        width: usize,
        text_hidden: usize,
        vocab_offset: usize,
        vocab_size: usize,
        eps: f64,
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(Self {
            embedding: candle_nn::embedding(vocab_size, width, vb.pp("embedding"))?,
            hard_embedding_norm: RmsNorm::new(width, eps, vb.pp("hard_embedding_norm"))?,
            soft_embedding_norm: RmsNorm::new(width, eps, vb.pp("soft_embedding_norm"))?,
            embedding_projection: linear(width, text_hidden, vb.pp("embedding_projection"))?,
            embedding_post_projection_norm: RmsNorm::without_weight(text_hidden, eps, vb.device())?,
            vocab_offset: vocab_offset as u32,
            vocab_size: vocab_size as u32,
        })
    }

    pub fn vocab_offset(&self) -> u32 {
        self.vocab_offset
    }

    pub fn vocab_size(&self) -> u32 {
        self.vocab_size
    }

    fn project(&self, normed: &Tensor) -> Result<Tensor> {
        self.embedding_post_projection_norm
            .forward(&self.embedding_projection.forward(normed)?)
    }

    /// Hard path for ids inside `[vocab_offset, vocab_offset + vocab_size)` (any shape of u32).
    pub fn embed_ids(&self, ids: &Tensor) -> Result<Tensor> {
        let local = (ids.to_dtype(candle_core::DType::I64)? - self.vocab_offset as f64)?
            .to_dtype(candle_core::DType::U32)?;
        self.project(
            &self
                .hard_embedding_norm
                .forward(&self.embedding.forward(&local)?)?,
        )
    }

    /// Soft path for tower features `[.., width]`.
    pub fn embed_features(&self, features: &Tensor) -> Result<Tensor> {
        self.project(&self.soft_embedding_norm.forward(features)?)
    }
}
