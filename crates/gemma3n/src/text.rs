//! The Gemma 3n text decoder (`model.language_model`): per-layer embeddings, AltUp streams,
//! LAuReL, sliding/full attention with KV-cache sharing, sparse gelu MLPs, tied soft-capped head.

use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::{Linear, VarBuilder};

use crate::config::{LayerType, TextConfig};
use crate::kv_cache::Cache;
use crate::loader::{Checkpoint, EmbeddingTable};
use crate::nn::{linear, match_magnitude, rms, softcap, RmsNorm};
use crate::quant::{QLinear, WeightFormat};

/// Rotary tables (rotate-half form) for one theta.
#[derive(Debug, Clone)]
struct Rotary {
    inv_freq: Tensor,
}

impl Rotary {
    fn new(head_dim: usize, theta: f64, device: &Device) -> Result<Self> {
        // Same arithmetic as the reference: exponent and power in f32.
        let inv_freq: Vec<f32> = (0..head_dim / 2)
            .map(|i| 1.0 / (theta as f32).powf((2 * i) as f32 / head_dim as f32))
            .collect();
        let inv_freq = Tensor::from_vec(inv_freq, (1, head_dim / 2), device)?;
        Ok(Self { inv_freq })
    }

    /// cos/sin tables `[T, head_dim]` for positions `start..start+len`.
    fn tables(&self, start: usize, len: usize, dtype: DType) -> Result<(Tensor, Tensor)> {
        let positions = Tensor::arange(start as u32, (start + len) as u32, self.inv_freq.device())?
            .to_dtype(DType::F32)?
            .reshape((len, 1))?;
        let freqs = positions.broadcast_mul(&self.inv_freq)?;
        let freqs = Tensor::cat(&[&freqs, &freqs], D::Minus1)?;
        Ok((freqs.cos()?.to_dtype(dtype)?, freqs.sin()?.to_dtype(dtype)?))
    }
}

/// `x·cos + rotate_half(x)·sin` for `x` of shape `[B, heads, T, head_dim]`.
fn apply_rotary(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    candle_nn::rotary_emb::rope(&x.contiguous()?, &half(cos)?, &half(sin)?)
}

/// candle's `rope` takes the non-duplicated half of the tables.
fn half(t: &Tensor) -> Result<Tensor> {
    let d = t.dim(D::Minus1)?;
    t.narrow(D::Minus1, 0, d / 2)?.contiguous()
}

/// Additive attention mask `[T, S]` for queries at `start..start+len` over keys `0..start+len`.
fn attention_mask(
    start: usize,
    len: usize,
    window: Option<usize>,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    let keys = start + len;
    let mask: Vec<f32> = (0..len)
        .flat_map(|i| {
            let q = start + i;
            (0..keys).map(move |k| {
                let visible = k <= q && window.is_none_or(|w| q - k < w);
                if visible {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
        })
        .collect();
    Tensor::from_vec(mask, (len, keys), device)?.to_dtype(dtype)
}

/// Where the decoder's matrices come from and how they are stored.
#[derive(Clone, Copy)]
struct Matrices<'a> {
    checkpoint: &'a Checkpoint,
    fmt: WeightFormat,
}

impl Matrices<'_> {
    fn load(&self, in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<QLinear> {
        self.checkpoint.linear(in_dim, out_dim, self.fmt, vb)
    }
}

#[derive(Debug, Clone)]
struct Attention {
    q_proj: QLinear,
    /// Present only on layers that compute their own keys and values.
    kv: Option<KeyValueProjection>,
    o_proj: QLinear,
    q_norm: RmsNorm,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
}

#[derive(Debug, Clone)]
struct KeyValueProjection {
    k_proj: QLinear,
    v_proj: QLinear,
    k_norm: RmsNorm,
    v_norm: RmsNorm,
}

impl Attention {
    fn new(cfg: &TextConfig, owns_kv: bool, m: Matrices, vb: VarBuilder) -> Result<Self> {
        let (h, kvh, hd, d) = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
            cfg.hidden_size,
        );
        let eps = cfg.rms_norm_eps;
        let kv = if owns_kv {
            Some(KeyValueProjection {
                k_proj: m.load(d, kvh * hd, vb.pp("k_proj"))?,
                v_proj: m.load(d, kvh * hd, vb.pp("v_proj"))?,
                k_norm: RmsNorm::new(hd, eps, vb.pp("k_norm"))?,
                v_norm: RmsNorm::without_weight(hd, eps, vb.device())?,
            })
        } else {
            None
        };
        Ok(Self {
            q_proj: m.load(d, h * hd, vb.pp("q_proj"))?,
            kv,
            o_proj: m.load(h * hd, d, vb.pp("o_proj"))?,
            q_norm: RmsNorm::new(hd, eps, vb.pp("q_norm"))?,
            num_heads: h,
            num_kv_heads: kvh,
            head_dim: hd,
        })
    }

    /// `x` is `[B, T, D]`; keys/values come from `cache` entry `kv_layer`, which this layer
    /// extends first when it owns it.
    fn forward(
        &self,
        x: &Tensor,
        rope: &(Tensor, Tensor),
        mask: &Tensor,
        cache: &mut Cache,
        kv_layer: usize,
    ) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let (cos, sin) = rope;
        let q = self
            .q_proj
            .forward(x)?
            .reshape((b, t, self.num_heads, self.head_dim))?;
        let q = self.q_norm.forward(&q)?.transpose(1, 2)?;
        let q = apply_rotary(&q, cos, sin)?;

        let view = match &self.kv {
            Some(p) => {
                let shape = (b, t, self.num_kv_heads, self.head_dim);
                let k = p.k_norm.forward(&p.k_proj.forward(x)?.reshape(shape)?)?;
                let k = apply_rotary(&k.transpose(1, 2)?, cos, sin)?;
                let v = p.v_norm.forward(&p.v_proj.forward(x)?.reshape(shape)?)?;
                cache.layer_mut(kv_layer).append(&k, &v.transpose(1, 2)?)?
            }
            None => cache.layer(kv_layer).current()?,
        };
        // The cache returns only the keys these queries can see (a sliding layer's last
        // `window`), starting at position `first`: O(window) attention per token.
        let (k, v) = (view.keys, view.values);
        let mask = mask.narrow(1, view.first, k.dim(2)?)?;

        // Grouped-query attention: fold the query heads sharing a KV head into the time axis.
        let groups = self.num_heads / self.num_kv_heads;
        let s = k.dim(2)?;
        let q = q
            .contiguous()?
            .reshape((b, self.num_kv_heads, groups * t, self.head_dim))?;
        // Gemma 3n scales attention logits by 1.0: q and k are RMS-normalised.
        let scores = q.matmul(&k.contiguous()?.transpose(2, 3)?)?;
        let scores = scores
            .reshape((b, self.num_kv_heads, groups, t, s))?
            .to_dtype(DType::F32)?
            .broadcast_add(&mask.to_dtype(DType::F32)?)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?
            .to_dtype(v.dtype())?
            .reshape((b, self.num_kv_heads, groups * t, s))?;
        let out = probs
            .matmul(&v.contiguous()?)?
            .reshape((b, self.num_heads, t, self.head_dim))?
            .transpose(1, 2)?
            .reshape((b, t, self.num_heads * self.head_dim))?;
        self.o_proj.forward(&out)
    }
}

#[derive(Debug, Clone)]
struct Mlp {
    gate_proj: QLinear,
    up_proj: QLinear,
    down_proj: QLinear,
    /// `Φ⁻¹(sparsity)` for Gaussian top-k layers; `None` for dense layers.
    sparsity_std_multiplier: Option<f64>,
}

impl Mlp {
    fn new(
        hidden: usize,
        intermediate: usize,
        sparsity: f64,
        m: Matrices,
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(Self {
            gate_proj: m.load(hidden, intermediate, vb.pp("gate_proj"))?,
            up_proj: m.load(hidden, intermediate, vb.pp("up_proj"))?,
            down_proj: m.load(intermediate, hidden, vb.pp("down_proj"))?,
            sparsity_std_multiplier: (sparsity > 0.0).then(|| standard_normal_quantile(sparsity)),
        })
    }

    /// Keep only activations more than `k` population standard deviations above the mean.
    fn gaussian_top_k(gate: &Tensor, k: f64) -> Result<Tensor> {
        let mean = gate.mean_keepdim(D::Minus1)?;
        let centered = gate.broadcast_sub(&mean)?;
        let std = centered.sqr()?.mean_keepdim(D::Minus1)?.sqrt()?;
        let cutoff = (mean + (std * k)?)?;
        gate.broadcast_sub(&cutoff)?.relu()
    }
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut gate = self.gate_proj.forward(x)?;
        if let Some(k) = self.sparsity_std_multiplier {
            gate = Self::gaussian_top_k(&gate, k)?;
        }
        let up = self.up_proj.forward(x)?;
        self.down_proj.forward(&crate::nn::gelu_mul(&gate, &up)?)
    }
}

/// Inverse CDF of the standard normal distribution, by bisection on `erf` (exact to f64).
fn standard_normal_quantile(p: f64) -> f64 {
    let cdf = |x: f64| 0.5 * (1.0 + libm::erf(x / std::f64::consts::SQRT_2));
    let (mut lo, mut hi) = (-40.0f64, 40.0f64);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if cdf(mid) < p {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    // The reference evaluates the quantile in f32.
    (0.5 * (lo + hi)) as f32 as f64
}

/// AltUp: several copies of the hidden state, one of which (the active one) goes through the
/// layer; the others are predicted from it and corrected afterwards.
#[derive(Debug, Clone)]
struct AltUp {
    correct_output_scale: Tensor,
    correction_coefs: Linear,
    prediction_coefs: Linear,
    modality_router: Linear,
    router_norm: RmsNorm,
    active: usize,
    router_scale: f64,
}

impl AltUp {
    fn new(cfg: &TextConfig, vb: VarBuilder) -> Result<Self> {
        let (n, d) = (cfg.altup_num_inputs, cfg.hidden_size);
        let clip = |l: Linear| -> Result<Linear> {
            match cfg.altup_coef_clip {
                Some(c) => Ok(Linear::new(l.weight().clamp(-c, c)?, None)),
                None => Ok(l),
            }
        };
        Ok(Self {
            correct_output_scale: vb.get(d, "correct_output_scale")?,
            correction_coefs: clip(linear(n, n, vb.pp("correction_coefs"))?)?,
            prediction_coefs: clip(linear(n, n * n, vb.pp("prediction_coefs"))?)?,
            modality_router: linear(d, n, vb.pp("modality_router"))?,
            router_norm: RmsNorm::new(d, cfg.rms_norm_eps, vb.pp("router_norm"))?,
            active: cfg.altup_active_idx,
            router_scale: 1.0 / d as f64,
        })
    }

    fn router_modalities(&self, x: &Tensor) -> Result<Tensor> {
        let routed = self
            .modality_router
            .forward(&(self.router_norm.forward(x)? * self.router_scale)?)?;
        routed.to_dtype(DType::F32)?.tanh()?.to_dtype(x.dtype())
    }

    /// `streams` is `[N, B, T, D]`; stream i becomes `H_i + Σ_j c[N·i + j] · H_j`.
    fn predict(&self, streams: &Tensor) -> Result<Tensor> {
        let (n, b, t, _) = streams.dims4()?;
        let modalities = self.router_modalities(&streams.get(self.active)?)?;
        // coefs[j][i] = c[N·i + j], so that [.., D, N] x [.., N, N] mixes the streams.
        let coefs = self
            .prediction_coefs
            .forward(&modalities)?
            .reshape((b, t, n, n))?
            .transpose(2, 3)?
            .contiguous()?;
        let mixed = streams
            .permute((1, 2, 3, 0))?
            .contiguous()?
            .matmul(&coefs)?
            .permute((3, 0, 1, 2))?;
        mixed + streams
    }

    /// Spread the innovation of the active stream over all predicted streams.
    fn correct(&self, predictions: &Tensor, activated: &Tensor) -> Result<Tensor> {
        let modalities = self.router_modalities(activated)?;
        let innovation = (activated - predictions.get(self.active)?)?;
        let coefs = (self.correction_coefs.forward(&modalities)? + 1.0)?; // [B, T, N]
        let coefs = coefs.permute((2, 0, 1))?.unsqueeze(D::Minus1)?; // [N, B, T, 1]
        coefs.broadcast_mul(&innovation.unsqueeze(0)?)? + predictions
    }

    fn scale_corrected_output(&self, x: &Tensor) -> Result<Tensor> {
        x.broadcast_mul(&self.correct_output_scale.to_dtype(x.dtype())?)
    }
}

/// LAuReL: a low-rank learned residual, `x + norm(right(left(x)))`.
#[derive(Debug, Clone)]
struct Laurel {
    linear_left: QLinear,
    linear_right: QLinear,
    post_laurel_norm: RmsNorm,
}

impl Laurel {
    fn new(cfg: &TextConfig, m: Matrices, vb: VarBuilder) -> Result<Self> {
        let (d, r) = (cfg.hidden_size, cfg.laurel_rank);
        Ok(Self {
            linear_left: m.load(d, r, vb.pp("linear_left"))?,
            linear_right: m.load(r, d, vb.pp("linear_right"))?,
            post_laurel_norm: RmsNorm::new(d, cfg.rms_norm_eps, vb.pp("post_laurel_norm"))?,
        })
    }
}

impl Module for Laurel {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let low_rank = self.linear_right.forward(&self.linear_left.forward(x)?)?;
        x + self.post_laurel_norm.forward(&low_rank)?
    }
}

#[derive(Debug, Clone)]
struct DecoderLayer {
    self_attn: Attention,
    mlp: Mlp,
    altup: AltUp,
    laurel: Laurel,
    input_layernorm: RmsNorm,
    post_attention_layernorm: RmsNorm,
    pre_feedforward_layernorm: RmsNorm,
    post_feedforward_layernorm: RmsNorm,
    per_layer_input_gate: QLinear,
    per_layer_projection: QLinear,
    post_per_layer_input_norm: RmsNorm,
    layer_type: LayerType,
    /// Cache entry this layer reads (its own, or its donor's for KV-shared layers).
    kv_layer: usize,
    active: usize,
}

impl DecoderLayer {
    fn new(cfg: &TextConfig, index: usize, m: Matrices, vb: VarBuilder) -> Result<Self> {
        let (d, p, eps) = (
            cfg.hidden_size,
            cfg.hidden_size_per_layer_input,
            cfg.rms_norm_eps,
        );
        let donor = cfg.kv_donor(index);
        let norm = |name: &str| RmsNorm::new(d, eps, vb.pp(name));
        Ok(Self {
            self_attn: Attention::new(cfg, donor.is_none(), m, vb.pp("self_attn"))?,
            mlp: Mlp::new(
                d,
                cfg.intermediate_sizes()[index],
                cfg.activation_sparsity()[index],
                m,
                vb.pp("mlp"),
            )?,
            altup: AltUp::new(cfg, vb.pp("altup"))?,
            laurel: Laurel::new(cfg, m, vb.pp("laurel"))?,
            input_layernorm: norm("input_layernorm")?,
            post_attention_layernorm: norm("post_attention_layernorm")?,
            pre_feedforward_layernorm: norm("pre_feedforward_layernorm")?,
            post_feedforward_layernorm: norm("post_feedforward_layernorm")?,
            per_layer_input_gate: m.load(d, p, vb.pp("per_layer_input_gate"))?,
            per_layer_projection: m.load(p, d, vb.pp("per_layer_projection"))?,
            post_per_layer_input_norm: norm("post_per_layer_input_norm")?,
            layer_type: cfg.layer_types()[index],
            kv_layer: donor.unwrap_or(index),
            active: cfg.altup_active_idx,
        })
    }

    /// `streams` `[N, B, T, D]`, `per_layer_input` `[B, T, P]` → new streams.
    fn forward(
        &self,
        streams: &Tensor,
        per_layer_input: &Tensor,
        rope: &(Tensor, Tensor),
        mask: &Tensor,
        cache: &mut Cache,
    ) -> Result<Tensor> {
        let predictions = self.altup.predict(streams)?;
        let active = predictions.get(self.active)?;
        let normed = self.input_layernorm.forward(&active)?;
        let laurel = self.laurel.forward(&normed)?;

        let attn = self
            .self_attn
            .forward(&normed, rope, mask, cache, self.kv_layer)?;
        let attn = self.post_attention_layernorm.forward(&attn)?;
        let attn_laurel = (((active + attn)? + laurel)? / std::f64::consts::SQRT_2)?;

        let ffw = self
            .mlp
            .forward(&self.pre_feedforward_layernorm.forward(&attn_laurel)?)?;
        let activated = (&attn_laurel + self.post_feedforward_layernorm.forward(&ffw)?)?;

        let corrected = self.altup.correct(&predictions, &activated)?;

        // The per-layer embedding enters through a gate on the (scaled) active stream and is
        // added to every other stream.
        let first = corrected.get(self.active)?;
        let gate = self
            .per_layer_input_gate
            .forward(&self.altup.scale_corrected_output(&first)?)?;
        let injected = self.post_per_layer_input_norm.forward(
            &self
                .per_layer_projection
                .forward(&crate::nn::gelu_mul(&gate, per_layer_input)?)?,
        )?;
        let n = corrected.dim(0)?;
        let streams: Vec<Tensor> = (0..n)
            .map(|i| {
                let s = corrected.get(i)?;
                // The reference adds it to streams 1.. (the active stream is 0 in every config).
                if i == 0 {
                    Ok(s)
                } else {
                    s + &injected
                }
            })
            .collect::<Result<_>>()?;
        Tensor::stack(&streams, 0)
    }
}

/// Which positions' hidden states a forward pass returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outputs {
    /// Every position (the logits of a whole prompt).
    Every,
    /// The last position only, what generation samples from.
    Last,
}

/// Intermediate activations of one forward pass, for parity tests.
#[derive(Debug, Default)]
pub struct Trace {
    pub per_layer_inputs: Option<Tensor>,
    pub layer_outputs: Vec<Tensor>,
    pub final_norm_output: Option<Tensor>,
}

#[derive(Debug, Clone)]
pub struct TextModel {
    /// Left memory-mapped: gathered a row per token, never loaded whole.
    embed_tokens: EmbeddingTable,
    embed_tokens_per_layer: EmbeddingTable,
    /// The tied LM head: the token embeddings again, as a matrix in the chosen weight format.
    lm_head: QLinear,
    per_layer_model_projection: QLinear,
    per_layer_projection_norm: RmsNorm,
    altup_projections: Vec<QLinear>,
    altup_unembed_projections: Vec<QLinear>,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    rope_sliding: Rotary,
    rope_full: Rotary,
    cfg: TextConfig,
    dtype: DType,
    device: Device,
}

impl TextModel {
    /// `vb` is rooted at `model.language_model`; the embedding tables come straight from the
    /// checkpoint's maps and the large matrices are stored in `fmt`.
    pub fn new(
        cfg: &TextConfig,
        vb: VarBuilder,
        checkpoint: &Checkpoint,
        fmt: WeightFormat,
    ) -> Result<Self> {
        let d = cfg.hidden_size;
        let l = cfg.num_hidden_layers;
        let p = cfg.hidden_size_per_layer_input;
        let n = cfg.altup_num_inputs;
        let dev = vb.device().clone();
        let table = |name: &str, rows: usize, cols: usize| -> Result<EmbeddingTable> {
            let t = checkpoint
                .table(&format!("{}.{name}.weight", vb.prefix()))
                .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
            if (t.rows(), t.cols()) != (rows, cols) {
                candle_core::bail!(
                    "{name} is {}x{}, the config implies {rows}x{cols}",
                    t.rows(),
                    t.cols()
                );
            }
            Ok(t)
        };
        let embed_tokens = table("embed_tokens", cfg.vocab_size, d)?;
        let embed_tokens_per_layer = table(
            "embed_tokens_per_layer",
            cfg.vocab_size_per_layer_input,
            l * p,
        )?;
        let m = Matrices { checkpoint, fmt };
        let lm_head = match embed_tokens.blocks() {
            // A GGUF table in ggml blocks is the head as it is.
            Some((dtype, bytes)) if dev.is_cpu() => {
                let head = QLinear::from_blocks(dtype, cfg.vocab_size, d, bytes)?;
                embed_tokens.release_pages();
                checkpoint.note_read(embed_tokens.bytes());
                head
            }
            _ if fmt == WeightFormat::Dense || !dev.is_cpu() => {
                QLinear::Dense(linear(d, cfg.vocab_size, vb.pp("embed_tokens"))?)
            }
            _ => {
                let head = lm_head_from_table(&embed_tokens, fmt);
                checkpoint.note_read(embed_tokens.bytes());
                head
            }
        };
        let projections = |name: &str| -> Result<Vec<QLinear>> {
            (0..n.saturating_sub(1))
                .map(|i| m.load(d, d, vb.pp(format!("{name}.{i}"))))
                .collect()
        };
        Ok(Self {
            embed_tokens,
            embed_tokens_per_layer,
            lm_head,
            per_layer_model_projection: m.load(d, l * p, vb.pp("per_layer_model_projection"))?,
            per_layer_projection_norm: RmsNorm::new(
                p,
                cfg.rms_norm_eps,
                vb.pp("per_layer_projection_norm"),
            )?,
            altup_projections: projections("altup_projections")?,
            altup_unembed_projections: projections("altup_unembed_projections")?,
            layers: (0..l)
                .map(|i| DecoderLayer::new(cfg, i, m, vb.pp(format!("layers.{i}"))))
                .collect::<Result<_>>()?,
            norm: RmsNorm::new(d, cfg.rms_norm_eps, vb.pp("norm"))?,
            rope_sliding: Rotary::new(
                cfg.head_dim,
                cfg.rope_theta_for(LayerType::SlidingAttention),
                &dev,
            )?,
            rope_full: Rotary::new(
                cfg.head_dim,
                cfg.rope_theta_for(LayerType::FullAttention),
                &dev,
            )?,
            cfg: cfg.clone(),
            dtype: vb.dtype(),
            device: dev,
        })
    }

    pub fn config(&self) -> &TextConfig {
        &self.cfg
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// A cache for this decoder: rolling on sliding layers, growing on full-attention ones.
    pub fn new_cache(&self) -> Cache {
        let windows: Vec<Option<usize>> = self.cfg.layer_types()
            [..self.cfg.first_kv_shared_layer()]
            .iter()
            .map(|&kind| (kind == LayerType::SlidingAttention).then_some(self.cfg.sliding_window))
            .collect();
        Cache::new(&windows)
    }

    /// Token embeddings times `sqrt(hidden_size)`; `ids` `[B, T]` u32.
    pub fn embed_tokens(&self, ids: &Tensor) -> Result<Tensor> {
        let scale = (self.cfg.hidden_size as f64).sqrt();
        self.embed_tokens
            .gather(ids, &self.device)?
            .to_dtype(self.dtype)?
            * scale
    }

    /// Token part of the per-layer inputs, `[B, T, L, P]`; `ids` must be below the per-layer vocab.
    fn per_layer_token_embeddings(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let p = self.cfg.hidden_size_per_layer_input;
        let scale = (p as f64).sqrt();
        let rows = self
            .embed_tokens_per_layer
            .gather(ids, &self.device)?
            .to_dtype(self.dtype)?;
        (rows * scale)?.reshape((b, t, self.cfg.num_hidden_layers, p))
    }

    /// Combine the token part with the projection of the (merged) input embeddings.
    fn per_layer_inputs(&self, inputs_embeds: &Tensor, ple_ids: &Tensor) -> Result<Tensor> {
        let (b, t, d) = inputs_embeds.dims3()?;
        let projected = (self.per_layer_model_projection.forward(inputs_embeds)?
            * (1.0 / (d as f64).sqrt()))?
        .reshape((
            b,
            t,
            self.cfg.num_hidden_layers,
            self.cfg.hidden_size_per_layer_input,
        ))?;
        let projected = self.per_layer_projection_norm.forward(&projected)?;
        (projected + self.per_layer_token_embeddings(ple_ids)?)? * std::f64::consts::FRAC_1_SQRT_2
    }

    /// Run the decoder over `inputs_embeds` `[B, T, D]` at positions following `cache`, and return
    /// the final-normed hidden states of the positions `outputs` asks for, `[B, T, D]` or
    /// `[B, 1, D]`.  `ple_ids` are the ids for the per-layer embedding table (multimodal ids
    /// already mapped to 0).
    pub fn forward_hidden(
        &self,
        inputs_embeds: &Tensor,
        ple_ids: &Tensor,
        cache: &mut Cache,
        outputs: Outputs,
        mut trace: Option<&mut Trace>,
    ) -> Result<Tensor> {
        let (_, t, _) = inputs_embeds.dims3()?;
        let start = cache.seq_len();
        let mut per_layer_inputs = self.per_layer_inputs(inputs_embeds, ple_ids)?;
        if let Some(tr) = trace.as_deref_mut() {
            tr.per_layer_inputs = Some(per_layer_inputs.clone());
        }

        // AltUp streams: the embeddings plus projections rescaled to the embeddings' magnitude.
        let target = rms(inputs_embeds)?;
        let mut streams = vec![inputs_embeds.clone()];
        for proj in &self.altup_projections {
            streams.push(match_magnitude(&proj.forward(inputs_embeds)?, &target)?);
        }
        let mut streams = Tensor::stack(&streams, 0)?;

        let dev = inputs_embeds.device();
        let dtype = inputs_embeds.dtype();
        let mut rope_sliding = self.rope_sliding.tables(start, t, dtype)?;
        let mut rope_full = self.rope_full.tables(start, t, dtype)?;
        let mut mask_sliding = attention_mask(start, t, Some(self.cfg.sliding_window), dtype, dev)?;
        let mut mask_full = attention_mask(start, t, None, dtype, dev)?;

        for (i, layer) in self.layers.iter().enumerate() {
            if i == self.cfg.first_kv_shared_layer() && outputs == Outputs::Last && t > 1 {
                // From here on no layer writes the cache, so a position's state feeds nothing
                // but its own output: only the last position is still needed (a third of
                // E2B's layers skipped for all but one prompt token).
                let last = |x: &Tensor, dim: usize| x.narrow(dim, t - 1, 1);
                streams = last(&streams, 2)?;
                per_layer_inputs = last(&per_layer_inputs, 1)?;
                for (cos, sin) in [&mut rope_sliding, &mut rope_full] {
                    (*cos, *sin) = (last(cos, 0)?, last(sin, 0)?);
                }
                mask_sliding = last(&mask_sliding, 0)?;
                mask_full = last(&mask_full, 0)?;
            }
            let (rope, mask) = match layer.layer_type {
                LayerType::SlidingAttention => (&rope_sliding, &mask_sliding),
                LayerType::FullAttention => (&rope_full, &mask_full),
            };
            let pli = per_layer_inputs.narrow(2, i, 1)?.squeeze(2)?;
            streams = layer.forward(&streams, &pli, rope, mask, cache)?;
            if let Some(tr) = trace.as_deref_mut() {
                tr.layer_outputs.push(streams.clone());
            }
        }
        cache.advance(t);
        if outputs == Outputs::Last {
            // Already one position where some layers share keys and values.
            let positions = streams.dim(2)?;
            streams = streams.narrow(2, positions - 1, 1)?;
        }

        // Merge the streams back: rescale each to the active stream's magnitude and average.
        let first = streams.get(0)?;
        let target = rms(&first)?;
        let mut merged = first.clone();
        for (i, proj) in self.altup_unembed_projections.iter().enumerate() {
            let s = match_magnitude(&proj.forward(&streams.get(i + 1)?)?, &target)?;
            merged = (merged + s)?;
        }
        let merged = (merged / self.cfg.altup_num_inputs as f64)?;
        let hidden = self.norm.forward(&merged)?;
        if let Some(tr) = trace {
            tr.final_norm_output = Some(hidden.clone());
        }
        Ok(hidden)
    }

    /// Tied, soft-capped LM head: `[B, T, D]` → `[B, T, V]` in f32.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let logits = self.lm_head.forward(hidden)?.to_dtype(DType::F32)?;
        match self.cfg.final_logit_softcapping {
            Some(cap) => softcap(&logits, cap),
            None => Ok(logits),
        }
    }
}

/// Pack the tied LM head from the mapped table a slice of rows at a time (no f32 copy of the whole
/// table ever exists), then let the pages read go, so the table does not stay resident.
fn lm_head_from_table(table: &EmbeddingTable, fmt: WeightFormat) -> QLinear {
    let cols = table.cols();
    let row = |r: usize, buf: &mut [f32]| table.row_into(r, buf);
    let head = QLinear::pack(table.rows(), cols, fmt, true, &row);
    table.release_pages();
    head
}
