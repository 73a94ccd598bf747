//! Chunked local self-attention with relative position embeddings (`attention.attn`).
//!
//! Queries are cut into blocks of `chunk` frames; each block attends to a context of
//! `chunk + max_past + max_future` key frames starting `max_past` frames before it.  Logits are
//! content (`q·k`) plus position (`q·R(t - u)`), soft-capped, then masked to the local causal band
//! and to valid key frames.  The block/shift layout follows the reference so that padded and
//! fully masked rows behave identically.

use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::{Linear, VarBuilder};

use crate::config::AudioConfig;
use crate::nn::{linear, softcap};

/// `pos_proj` of sinusoidal signals for the relative distances `max_past, ..., -max_future`.
#[derive(Debug, Clone)]
struct RelativePositionEmbedding {
    pos_proj: Linear,
    /// `[span, hidden]` timing signal (sin half, then cos half), in the activation dtype.
    timing: Tensor,
}

impl RelativePositionEmbedding {
    fn new(cfg: &AudioConfig, max_past: usize, max_future: usize, vb: VarBuilder) -> Result<Self> {
        let hidden = cfg.hidden_size;
        let pos_proj = linear(hidden, hidden, vb.pp("pos_proj"))?;
        let n = hidden / 2;
        // Timescales from 1 to 1e4, computed in f32 as the reference does.
        let step = (1.0e4f64.ln() / (n.max(2) - 1) as f64) as f32;
        let inv: Vec<f32> = (0..n).map(|i| (i as f32 * -step).exp()).collect();
        let mut timing = Vec::with_capacity((max_past + max_future + 1) * hidden);
        for pos in (-(max_future as i64)..=max_past as i64).rev() {
            let scaled: Vec<f32> = inv.iter().map(|&s| pos as f32 * s).collect();
            timing.extend(scaled.iter().map(|v| v.sin()));
            timing.extend(scaled.iter().map(|v| v.cos()));
        }
        let span = max_past + max_future + 1;
        let timing = Tensor::from_vec(timing, (span, hidden), vb.device())?.to_dtype(vb.dtype())?;
        Ok(Self { pos_proj, timing })
    }

    /// `[heads, head_dim, span]`: one projected position vector per head and distance.
    fn table(&self, heads: usize) -> Result<Tensor> {
        let span = self.timing.dim(0)?;
        self.pos_proj
            .forward(&self.timing)?
            .reshape((span, heads, ()))?
            .permute((1, 2, 0))?
            .contiguous()
    }
}

#[derive(Debug, Clone)]
pub struct LocalAttention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    relative_position_embedding: RelativePositionEmbedding,
    /// `softplus(per_dim_scale)`, `[head_dim]`.
    per_dim_scale: Tensor,
    /// `head_dim^-0.5 / softplus(0)`.
    q_scale: f64,
    heads: usize,
    head_dim: usize,
    chunk: usize,
    max_past: usize,
    max_future: usize,
    logit_cap: f64,
}

impl LocalAttention {
    pub fn new(cfg: &AudioConfig, vb: VarBuilder) -> Result<Self> {
        let hidden = cfg.hidden_size;
        let heads = cfg.conf_num_attention_heads;
        let head_dim = hidden / heads;
        let max_past = cfg.conf_attention_context_left.saturating_sub(1);
        let max_future = cfg.conf_attention_context_right;
        let per_dim_scale = vb.get(head_dim, "per_dim_scale")?;
        // softplus(x) = ln(1 + e^x), computed in f32.
        let per_dim_scale = (per_dim_scale.to_dtype(DType::F32)?.exp()? + 1.0)?
            .log()?
            .to_dtype(vb.dtype())?;
        let q_scale = ((head_dim as f32).powf(-0.5) * (1.0 / 2f32.ln())) as f64;
        Ok(Self {
            q_proj: linear(hidden, hidden, vb.pp("q_proj"))?,
            k_proj: linear(hidden, hidden, vb.pp("k_proj"))?,
            v_proj: linear(hidden, hidden, vb.pp("v_proj"))?,
            relative_position_embedding: RelativePositionEmbedding::new(
                cfg,
                max_past,
                max_future,
                vb.pp("relative_position_embedding"),
            )?,
            per_dim_scale,
            q_scale,
            heads,
            head_dim,
            chunk: cfg.conf_attention_chunk_size,
            max_past,
            max_future,
            logit_cap: cfg.conf_attention_logit_cap,
        })
    }

    fn context(&self) -> usize {
        self.chunk + self.max_past + self.max_future
    }

    /// For every block, the frames of its key context: `[blocks * context]` indices into the
    /// time axis padded by `max_past` before and `max_future + chunk - 1` after.
    fn context_index(&self, blocks: usize, device: &Device) -> Result<Tensor> {
        let c = self.context();
        let idx: Vec<u32> = (0..blocks)
            .flat_map(|u| (0..c).map(move |j| (u * self.chunk + j) as u32))
            .collect();
        Tensor::from_vec(idx, blocks * c, device)
    }

    /// `x` `[B, T, ...]` -> `[B, blocks, context, ...]`, zero-padded outside `0..T`.
    fn block_context(&self, x: &Tensor, index: &Tensor, blocks: usize) -> Result<Tensor> {
        let x = x.pad_with_zeros(1, self.max_past, self.max_future + self.chunk - 1)?;
        let mut shape = x.dims().to_vec();
        let gathered = x.index_select(index, 1)?;
        shape[1] = self.context();
        shape.insert(1, blocks);
        gathered.reshape(shape)
    }

    /// `[chunk, context]` band: query w of a block may see context key c iff
    /// `w <= c <= w + max_past + max_future`.
    fn band(&self, device: &Device) -> Result<Tensor> {
        let c = self.context();
        let span = self.max_past + self.max_future;
        let m: Vec<u8> = (0..self.chunk)
            .flat_map(|w| (0..c).map(move |j| u8::from(j >= w && j <= w + span)))
            .collect();
        Tensor::from_vec(m, (self.chunk, c), device)
    }

    /// `x` `[B, T, hidden]`, `valid` `[B, T]` (1 = real frame) -> `[B, T, hidden]`.
    pub fn forward(&self, x: &Tensor, valid: &Tensor) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let (n, h, w, c) = (self.heads, self.head_dim, self.chunk, self.context());
        let blocks = t.div_ceil(w);
        let dev = x.device();
        let q = self.q_proj.forward(x)?.reshape((b, t, n, h))?;
        let k = self.k_proj.forward(x)?.reshape((b, t, n, h))?;
        let v = self.v_proj.forward(x)?.reshape((b, t, n, h))?;
        let q = (q * self.q_scale)?.broadcast_mul(&self.per_dim_scale)?;

        // Queries [B*N, U, W, H]; keys/values [B*N, U, C, H] (candle multiplies rank <= 4).
        let q = q
            .pad_with_zeros(1, 0, blocks * w - t)?
            .reshape((b, blocks, w, n, h))?
            .permute((0, 3, 1, 2, 4))?
            .reshape((b * n, blocks, w, h))?;
        let index = self.context_index(blocks, dev)?;
        let by_head = |x: &Tensor| -> Result<Tensor> {
            self.block_context(x, &index, blocks)?
                .permute((0, 3, 1, 2, 4))?
                .reshape((b * n, blocks, c, h))
        };
        let (k, v) = (by_head(&k)?, by_head(&v)?);

        let content = q.matmul(&k.transpose(2, 3)?.contiguous()?)?;
        let position = self.position_logits(&q, b, blocks)?;
        let logits = softcap(&(content + position)?.to_dtype(DType::F32)?, self.logit_cap)?
            .reshape((b, n, blocks, w, c))?;

        // A key counts iff it is a real frame and inside the query's local band.
        let key_valid = self
            .block_context(&valid.to_dtype(DType::F32)?, &index, blocks)?
            .reshape((b, 1, blocks, 1, c))?;
        let band = self
            .band(dev)?
            .to_dtype(DType::F32)?
            .reshape((1, 1, 1, w, c))?;
        let allowed = key_valid.broadcast_mul(&band)?.ne(0f32)?;
        let allowed = allowed.broadcast_as(logits.shape())?;
        let floor = Tensor::full(f32::MIN, logits.shape(), dev)?;
        let probs = candle_nn::ops::softmax_last_dim(&allowed.where_cond(&logits, &floor)?)?
            .to_dtype(v.dtype())?
            .reshape((b * n, blocks, w, c))?;

        // [B, N, U, W, H] -> [B, U*W, N*H], dropping the padded query rows.
        probs
            .matmul(&v)?
            .reshape((b, n, blocks, w, h))?
            .permute((0, 2, 3, 1, 4))?
            .reshape((b, blocks * w, n * h))?
            .narrow(1, 0, t)
    }

    /// `q·R(distance)` laid out over each block's key context: computed per distance
    /// `[.., W, span]`, then shifted so that query w, context key c reads distance index c - w
    /// (zero outside the span), by the reference's pad-and-reshape trick.
    fn position_logits(&self, q: &Tensor, b: usize, blocks: usize) -> Result<Tensor> {
        let (n, h, w, c) = (self.heads, self.head_dim, self.chunk, self.context());
        let table = self.relative_position_embedding.table(n)?;
        let span = table.dim(D::Minus1)?;
        let per_distance = q
            .reshape((b, n, blocks * w, h))?
            .broadcast_matmul(&table.unsqueeze(0)?)?
            .reshape((b * n, blocks, w, span))?;
        per_distance
            .pad_with_zeros(3, 0, c + 1 - span)?
            .reshape((b * n, blocks, w * (c + 1)))?
            .narrow(2, 0, w * c)?
            .reshape((b * n, blocks, w, c))
    }
}
