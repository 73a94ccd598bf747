//! `config.json` of a Gemma 3n checkpoint, deserialised as it is on disk.
//!
//! Two dialects exist: transformers 5 writes `text_config.rope_parameters` keyed by layer type,
//! the hub checkpoints carry `rope_theta` / `rope_local_base_freq`.  Both are accepted and resolved
//! into [`TextConfig::rope_theta_for`].  Every size comes from the file; nothing assumes E2B.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

use crate::{Error, Result};

/// Attention kind of a decoder layer (`layer_types` entries).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LayerType {
    SlidingAttention,
    FullAttention,
}

/// A value that checkpoints store either once or once per layer.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PerLayer<T> {
    One(T),
    Each(Vec<T>),
}

impl<T: Copy> PerLayer<T> {
    fn expand(&self, n: usize) -> Vec<T> {
        match self {
            PerLayer::One(v) => vec![*v; n],
            PerLayer::Each(v) => v.clone(),
        }
    }
}

/// One `rope_parameters` entry (transformers 5).
#[derive(Debug, Clone, Deserialize)]
pub struct RopeParameters {
    pub rope_theta: f64,
    #[serde(default)]
    pub rope_type: Option<String>,
}

/// `eos_token_id` is an int in some files and a list in others.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    One(u32),
    Many(Vec<u32>),
}

impl TokenIds {
    pub fn to_vec(&self) -> Vec<u32> {
        match self {
            TokenIds::One(id) => vec![*id],
            TokenIds::Many(ids) => ids.clone(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct TextConfig {
    pub vocab_size: usize,
    pub vocab_size_per_layer_input: usize,
    pub hidden_size: usize,
    pub hidden_size_per_layer_input: usize,
    intermediate_size: PerLayer<usize>,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    #[serde(default = "default_max_positions")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_rms_eps")]
    pub rms_norm_eps: f64,
    #[serde(default)]
    rope_parameters: Option<HashMap<LayerType, RopeParameters>>,
    #[serde(default)]
    rope_theta: Option<f64>,
    #[serde(default)]
    rope_local_base_freq: Option<f64>,
    pub sliding_window: usize,
    #[serde(default)]
    layer_types: Option<Vec<LayerType>>,
    #[serde(default)]
    pub final_logit_softcapping: Option<f64>,
    #[serde(default)]
    pub altup_active_idx: usize,
    #[serde(default = "default_altup_clip")]
    pub altup_coef_clip: Option<f64>,
    #[serde(default = "default_true")]
    pub altup_correct_scale: bool,
    pub altup_num_inputs: usize,
    pub num_kv_shared_layers: usize,
    pub laurel_rank: usize,
    #[serde(default)]
    activation_sparsity_pattern: Option<Vec<f64>>,
    #[serde(default)]
    pub hidden_activation: Option<String>,
    #[serde(default)]
    pub eos_token_id: Option<TokenIds>,
}

fn default_max_positions() -> usize {
    32768
}
fn default_rms_eps() -> f64 {
    1e-6
}
fn default_altup_clip() -> Option<f64> {
    Some(120.0)
}
fn default_true() -> bool {
    true
}

impl TextConfig {
    /// Attention kind of every layer; old configs without `layer_types` use every fifth layer full.
    pub fn layer_types(&self) -> Vec<LayerType> {
        match &self.layer_types {
            Some(t) => t.clone(),
            None => (0..self.num_hidden_layers)
                .map(|i| {
                    if (i + 1).is_multiple_of(5) {
                        LayerType::FullAttention
                    } else {
                        LayerType::SlidingAttention
                    }
                })
                .collect(),
        }
    }

    pub fn intermediate_sizes(&self) -> Vec<usize> {
        self.intermediate_size.expand(self.num_hidden_layers)
    }

    /// Target sparsity per layer (0.0 = dense MLP).
    pub fn activation_sparsity(&self) -> Vec<f64> {
        match &self.activation_sparsity_pattern {
            Some(p) => p.clone(),
            None => (0..self.num_hidden_layers)
                .map(|i| if i < 10 { 0.95 } else { 0.0 })
                .collect(),
        }
    }

    pub fn rope_theta_for(&self, kind: LayerType) -> f64 {
        if let Some(p) = self.rope_parameters.as_ref().and_then(|m| m.get(&kind)) {
            return p.rope_theta;
        }
        match kind {
            LayerType::FullAttention => self.rope_theta.unwrap_or(1_000_000.0),
            LayerType::SlidingAttention => self.rope_local_base_freq.unwrap_or(10_000.0),
        }
    }

    /// First layer that reuses another layer's keys and values.
    pub fn first_kv_shared_layer(&self) -> usize {
        self.num_hidden_layers - self.num_kv_shared_layers
    }

    /// For a KV-sharing layer, the layer whose cache it reads: the last non-shared layer of the
    /// same attention kind.  `None` for layers that compute their own keys and values.
    pub fn kv_donor(&self, layer: usize) -> Option<usize> {
        let first_shared = self.first_kv_shared_layer();
        if layer < first_shared {
            return None;
        }
        let types = self.layer_types();
        (0..first_shared).rev().find(|&l| types[l] == types[layer])
    }

    fn validate(&self) -> Result<()> {
        let n = self.num_hidden_layers;
        let check = |what: &str, len: usize| {
            if len == n {
                Ok(())
            } else {
                Err(Error::Config(format!(
                    "text_config.{what} has {len} entries but num_hidden_layers is {n}"
                )))
            }
        };
        check("layer_types", self.layer_types().len())?;
        check("intermediate_size", self.intermediate_sizes().len())?;
        check(
            "activation_sparsity_pattern",
            self.activation_sparsity().len(),
        )?;
        if self.num_kv_shared_layers >= n {
            return Err(Error::Config(format!(
                "num_kv_shared_layers ({}) must be smaller than num_hidden_layers ({n})",
                self.num_kv_shared_layers
            )));
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads.max(1))
        {
            return Err(Error::Config(format!(
                "num_attention_heads ({}) is not a multiple of num_key_value_heads ({})",
                self.num_attention_heads, self.num_key_value_heads
            )));
        }
        if self.altup_num_inputs == 0 || self.altup_active_idx >= self.altup_num_inputs {
            return Err(Error::Config(
                "altup_active_idx outside altup_num_inputs".into(),
            ));
        }
        for l in self.first_kv_shared_layer()..n {
            if self.kv_donor(l).is_none() {
                return Err(Error::Config(format!(
                    "KV-shared layer {l} has no earlier layer of the same attention type"
                )));
            }
        }
        if self.vocab_size_per_layer_input > self.vocab_size {
            return Err(Error::Config(
                "vocab_size_per_layer_input exceeds vocab_size".into(),
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct VisionConfig {
    #[serde(default)]
    pub architecture: Option<String>,
    /// timm keyword overrides: `block_args`, `stem_size`, `msfa_output_resolution`, ...
    #[serde(default)]
    pub model_args: Option<serde_json::Value>,
    pub hidden_size: usize,
    pub vocab_size: usize,
    pub vocab_offset: usize,
    #[serde(default = "default_rms_eps")]
    pub rms_norm_eps: f64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AudioConfig {
    pub vocab_size: usize,
    pub vocab_offset: usize,
    pub input_feat_size: usize,
    pub hidden_size: usize,
    #[serde(default = "default_rms_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_gradient_clipping")]
    pub gradient_clipping: f64,
    pub conf_attention_chunk_size: usize,
    pub conf_attention_context_left: usize,
    pub conf_attention_context_right: usize,
    pub conf_attention_logit_cap: f64,
    pub conf_num_attention_heads: usize,
    pub conf_num_hidden_layers: usize,
    pub conf_conv_kernel_size: usize,
    pub conf_reduction_factor: usize,
    pub conf_residual_weight: f64,
    pub sscp_conv_channel_size: Vec<usize>,
    pub sscp_conv_group_norm_eps: f64,
    pub sscp_conv_kernel_size: Vec<Vec<usize>>,
    pub sscp_conv_stride_size: Vec<Vec<usize>>,
}

fn default_gradient_clipping() -> f64 {
    1e10
}

/// The whole `config.json` of a `Gemma3nForConditionalGeneration` checkpoint.
#[derive(Debug, Clone, Deserialize)]
pub struct Gemma3nConfig {
    pub text_config: TextConfig,
    pub vision_config: VisionConfig,
    pub audio_config: AudioConfig,
    pub vision_soft_tokens_per_image: usize,
    pub audio_soft_tokens_per_image: usize,
    pub boi_token_id: u32,
    pub eoi_token_id: u32,
    pub image_token_id: u32,
    pub boa_token_id: u32,
    pub eoa_token_id: u32,
    pub audio_token_id: u32,
    #[serde(default)]
    pub eos_token_id: Option<TokenIds>,
}

impl Gemma3nConfig {
    pub fn from_json(text: &str) -> Result<Self> {
        Self::from_value(
            serde_json::from_str(text).map_err(|e| Error::Config(format!("config.json: {e}")))?,
        )
    }

    pub fn from_value(value: serde_json::Value) -> Result<Self> {
        let cfg: Self = serde_json::from_value(value)
            .map_err(|e| Error::Config(format!("config.json: {e}")))?;
        cfg.text_config.validate()?;
        Ok(cfg)
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        Self::from_value(Self::read_json(path)?)
    }

    /// The config of the model at `path`: a folder's `config.json`, or a GGUF file's metadata.
    pub fn of_model(path: &Path) -> Result<Self> {
        if crate::gguf::is_gguf(path) {
            Self::from_value(crate::gguf::open(path)?.1)
        } else {
            Self::from_file(&path.join("config.json"))
        }
    }

    /// `config.json` as JSON, for callers that rewrite it (a MatFormer slice).
    pub fn read_json(path: &Path) -> Result<serde_json::Value> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
        serde_json::from_str(&text).map_err(|e| Error::Config(format!("config.json: {e}")))
    }
}
