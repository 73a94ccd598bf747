//! Chunked local self-attention with relative position embeddings (`attention.attn`).
//!
//! Queries are cut into blocks of `chunk` frames; each block attends to a context of
//! `chunk + max_past + max_future` key frames starting `max_past` frames before it.  Logits are
//! content (`q·k`) plus position (`q·R(t - u)`), soft-capped, then masked to the local causal band
//! and to valid key frames.  The block/shift layout follows the reference so that padded and
//! fully masked rows behave identically.
//!
//! On CPU in f32 one fused kernel does it all, block by block in parallel, straight from the
//! projections: candle's version needs a dozen copies and a thousand tiny matmuls per layer.

use candle_core::{
    bail, CpuStorage, CustomOp3, DType, Device, Layout, Module, Result, Shape, Tensor,
};
use candle_nn::VarBuilder;
use rayon::prelude::*;

use super::kernels::Linear;
use crate::config::AudioConfig;
use crate::nn::softcap;

/// `pos_proj` of sinusoidal signals for the relative distances `max_past, ..., -max_future`:
/// `[span, hidden]`, projected once at load (it depends on no input).
fn relative_position_table(
    cfg: &AudioConfig,
    max_past: usize,
    max_future: usize,
    vb: VarBuilder,
) -> Result<Tensor> {
    let hidden = cfg.hidden_size;
    let pos_proj = Linear::new(hidden, hidden, vb.pp("pos_proj"))?;
    let n = hidden / 2;
    // Timescales from 1 to 1e4, computed in f32 as the reference does.
    let step = (1.0e4f64.ln() / (n.max(2) - 1) as f64) as f32;
    let inv: Vec<f32> = (0..n).map(|i| (i as f32 * -step).exp()).collect();
    let span = max_past + max_future + 1;
    let mut timing = Vec::with_capacity(span * hidden);
    for pos in (-(max_future as i64)..=max_past as i64).rev() {
        let scaled: Vec<f32> = inv.iter().map(|&s| pos as f32 * s).collect();
        timing.extend(scaled.iter().map(|v| v.sin()));
        timing.extend(scaled.iter().map(|v| v.cos()));
    }
    let timing = Tensor::from_vec(timing, (span, hidden), vb.device())?.to_dtype(vb.dtype())?;
    pos_proj.forward(&timing)
}

#[derive(Debug, Clone)]
pub struct LocalAttention {
    /// `q_proj` with the query scale (`head_dim^-0.5 / softplus(0) * softplus(per_dim_scale)`)
    /// folded into its rows.
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    /// `[span, hidden]`: the projected position vector of each distance, heads side by side.
    position_table: Tensor,
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
        let per_dim_scale = vb.get(head_dim, "per_dim_scale")?.to_dtype(DType::F32)?;
        // softplus(x) = ln(1 + e^x), computed in f32.
        let softplus = (per_dim_scale.exp()? + 1.0)?.log()?;
        let q_scale = ((head_dim as f32).powf(-0.5) * (1.0 / 2f32.ln())) as f64;
        let row_scale = (softplus * q_scale)?.repeat(heads)?.unsqueeze(1)?;
        let q_weight = vb.get((hidden, hidden), "q_proj.weight")?;
        let q_weight = q_weight
            .to_dtype(DType::F32)?
            .broadcast_mul(&row_scale)?
            .to_dtype(q_weight.dtype())?;
        Ok(Self {
            q_proj: Linear::from_weight(&q_weight)?,
            k_proj: Linear::new(hidden, hidden, vb.pp("k_proj"))?,
            v_proj: Linear::new(hidden, hidden, vb.pp("v_proj"))?,
            position_table: relative_position_table(
                cfg,
                max_past,
                max_future,
                vb.pp("relative_position_embedding"),
            )?,
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

    /// `x` `[B, T, hidden]`, `valid` `[B, T]` (1 = real frame) -> `[B, T, hidden]`.
    pub fn forward(&self, x: &Tensor, valid: &Tensor) -> Result<Tensor> {
        let q = self.q_proj.forward(x)?;
        let k = self.k_proj.forward(x)?;
        let v = self.v_proj.forward(x)?;
        if x.device().is_cpu() && x.dtype() == DType::F32 {
            let op = FusedLocalAttention {
                attn: self,
                table: self.position_table.flatten_all()?.to_vec1()?,
                valid: valid.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?,
            };
            return q
                .contiguous()?
                .apply_op3_no_bwd(&k.contiguous()?, &v.contiguous()?, &op);
        }
        self.composed(&q, &k, &v, valid)
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

    /// The same computation as candle ops, for other devices and dtypes: `q`, `k`, `v` are the
    /// projections `[B, T, hidden]`.
    fn composed(&self, q: &Tensor, k: &Tensor, v: &Tensor, valid: &Tensor) -> Result<Tensor> {
        let (b, t, _) = q.dims3()?;
        let (n, h, w, c) = (self.heads, self.head_dim, self.chunk, self.context());
        let blocks = t.div_ceil(w);
        let dev = q.device();
        let q = q.reshape((b, t, n, h))?;
        let k = k.reshape((b, t, n, h))?;
        let v = v.reshape((b, t, n, h))?;

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
        // [span, N*H] -> [N, H, span].
        let span = self.position_table.dim(0)?;
        let table = self
            .position_table
            .reshape((span, n, h))?
            .permute((1, 2, 0))?
            .contiguous()?;
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

/// The whole local attention on CPU in f32: `q`, `k`, `v` `[B, T, hidden]` (heads side by side)
/// to `[B, T, hidden]`, one task per block of `chunk` query frames.
struct FusedLocalAttention<'a> {
    attn: &'a LocalAttention,
    /// `[span, hidden]` projected position vectors.
    table: Vec<f32>,
    /// `[B * T]`, 1 = real frame.
    valid: Vec<f32>,
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for ((s, &x), &y) in acc.iter_mut().zip(x).zip(y) {
            *s += x * y;
        }
    }
    acc.iter().sum::<f32>() + tail
}

fn f32_data<'s>(storage: &'s CpuStorage, layout: &Layout) -> Result<&'s [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((start, end))) => Ok(&v[start..end]),
        _ => bail!("fused attention takes contiguous f32 input"),
    }
}

impl CustomOp3 for FusedLocalAttention<'_> {
    fn name(&self) -> &'static str {
        "audio-local-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        if l2.shape() != l1.shape() || l3.shape() != l1.shape() {
            bail!(
                "attention q/k/v shapes differ: {:?} {:?} {:?}",
                l1.shape(),
                l2.shape(),
                l3.shape()
            )
        }
        let (q, k, v) = (f32_data(s1, l1)?, f32_data(s2, l2)?, f32_data(s3, l3)?);
        let (b, t, hidden) = l1.shape().dims3()?;
        let a = self.attn;
        let (h, w, c) = (a.head_dim, a.chunk, a.context());
        let span = a.max_past + a.max_future + 1;
        let cap = a.logit_cap as f32;
        let mut out = vec![0f32; b * t * hidden];
        // Block u of clip bi owns output frames u*w .. u*w + w (the last block may be shorter).
        let per_clip = out.chunks_mut(t * hidden).enumerate();
        let tasks = per_clip.flat_map(|(bi, clip)| {
            clip.chunks_mut(w * hidden)
                .enumerate()
                .map(move |(u, rows)| (bi, u, rows))
        });
        tasks.par_bridge().for_each(|(bi, u, rows)| {
            let frame = |i: usize| bi * t + i;
            let mut logits = vec![0f32; c];
            for head in 0..a.heads {
                let cols = head * h..(head + 1) * h;
                for (wq, out_row) in rows.chunks_mut(hidden).enumerate() {
                    let qi = &q[frame(u * w + wq) * hidden..][cols.clone()];
                    for (ck, l) in logits.iter_mut().enumerate() {
                        // Context key ck is frame u*w + ck - max_past, at distance index ck - wq.
                        let key = (u * w + ck).checked_sub(a.max_past).filter(|&f| f < t);
                        let dist = ck.checked_sub(wq).filter(|&d| d < span);
                        *l = match (key, dist) {
                            (Some(f), Some(d)) if self.valid[frame(f)] != 0.0 => {
                                let content = dot(qi, &k[frame(f) * hidden..][cols.clone()]);
                                let position = dot(qi, &self.table[d * hidden..][cols.clone()]);
                                cap * ((content + position) / cap).tanh()
                            }
                            _ => f32::MIN,
                        };
                    }
                    let max = logits.iter().copied().fold(f32::MIN, f32::max);
                    let mut sum = 0f32;
                    for l in logits.iter_mut() {
                        *l = (*l - max).exp();
                        sum += *l;
                    }
                    let o = &mut out_row[cols.clone()];
                    for (ck, &p) in logits.iter().enumerate() {
                        if let Some(f) = (u * w + ck).checked_sub(a.max_past).filter(|&f| f < t) {
                            let p = p / sum;
                            for (o, &x) in o.iter_mut().zip(&v[frame(f) * hidden..][cols.clone()]) {
                                *o += p * x;
                            }
                        }
                    }
                }
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}
