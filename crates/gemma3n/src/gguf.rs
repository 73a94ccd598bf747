//! llama.cpp GGUF files of Gemma 3n (`general.architecture = gemma3n`): the text decoder only.
//!
//! The file is indexed under the Hugging Face tensor names, so the rest of the crate loads it
//! like a safetensors checkpoint: llama.cpp's names (`blk.N.attn_q`, `per_layer_token_embd`, the
//! stacked `altup_proj`, ...) are mapped back, and its metadata becomes a `text_config`.  Matrices
//! stored in ggml blocks (bf16 and f16 included) stay in them, whatever `--quant` says
//! ([`crate::Checkpoint::linear`]); the embedding tables are gathered from the map a row at a
//! time, decoding each row.

mod header;

use std::collections::HashMap;
use std::io::Cursor;
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::GgmlDType;
use candle_core::DType;
use serde_json::{json, Value as Json};

use crate::loader::{map_file, Checkpoint, Encoding, Entry};
use crate::{Error, Result};
use kernels::ggml_bytes;

const PREFIX: &str = "model.language_model";

/// Per-layer tensors: llama.cpp's name after `blk.N.`, ours after `layers.N.`.
const LAYER_TENSORS: [(&str, &str); 24] = [
    ("attn_q.weight", "self_attn.q_proj.weight"),
    ("attn_k.weight", "self_attn.k_proj.weight"),
    ("attn_v.weight", "self_attn.v_proj.weight"),
    ("attn_output.weight", "self_attn.o_proj.weight"),
    ("attn_q_norm.weight", "self_attn.q_norm.weight"),
    ("attn_k_norm.weight", "self_attn.k_norm.weight"),
    ("ffn_gate.weight", "mlp.gate_proj.weight"),
    ("ffn_up.weight", "mlp.up_proj.weight"),
    ("ffn_down.weight", "mlp.down_proj.weight"),
    ("attn_norm.weight", "input_layernorm.weight"),
    (
        "post_attention_norm.weight",
        "post_attention_layernorm.weight",
    ),
    ("ffn_norm.weight", "pre_feedforward_layernorm.weight"),
    ("post_ffw_norm.weight", "post_feedforward_layernorm.weight"),
    ("altup_correct_scale.weight", "altup.correct_output_scale"),
    ("altup_correct_coef.weight", "altup.correction_coefs.weight"),
    ("altup_predict_coef.weight", "altup.prediction_coefs.weight"),
    ("altup_router.weight", "altup.modality_router.weight"),
    ("altup_router_norm.weight", "altup.router_norm.weight"),
    ("laurel_l.weight", "laurel.linear_left.weight"),
    ("laurel_r.weight", "laurel.linear_right.weight"),
    ("laurel_post_norm.weight", "laurel.post_laurel_norm.weight"),
    ("inp_gate.weight", "per_layer_input_gate.weight"),
    ("proj.weight", "per_layer_projection.weight"),
    ("post_norm.weight", "post_per_layer_input_norm.weight"),
];

const GLOBAL_TENSORS: [(&str, &str); 5] = [
    ("token_embd.weight", "embed_tokens.weight"),
    (
        "per_layer_token_embd.weight",
        "embed_tokens_per_layer.weight",
    ),
    (
        "per_layer_model_proj.weight",
        "per_layer_model_projection.weight",
    ),
    (
        "per_layer_proj_norm.weight",
        "per_layer_projection_norm.weight",
    ),
    ("output_norm.weight", "norm.weight"),
];

/// AltUp projections, stacked `[N - 1, D, D]` in the file.
const STACKED_TENSORS: [(&str, &str); 2] = [
    ("altup_proj.weight", "altup_projections"),
    ("altup_unembd_proj.weight", "altup_unembed_projections"),
];

// What llama.cpp's Gemma 3n loader assumes for keys older converters did not write.
const DEFAULT_ROPE_BASE_SWA: f64 = 10_000.0;
const DEFAULT_SOFTCAP: f64 = 30.0;
const SLIDING_PERIOD: usize = 5;
/// Layers with their own KV cache (`n_layer_kv_from_start`); the rest reuse them.
const LLAMA_CPP_KV_LAYERS: usize = 20;

/// What a text-only GGUF cannot say about the multimodal model: the released checkpoints' token
/// ids and tower settings.  A `config.json` next to the file takes precedence.
const MULTIMODAL_DEFAULTS: &str = r#"{
  "vision_config": {"architecture": "mobilenetv5_300m_enc", "hidden_size": 2048,
                    "vocab_size": 128, "vocab_offset": 262144, "rms_norm_eps": 1e-06},
  "audio_config": {"vocab_size": 128, "vocab_offset": 262272, "input_feat_size": 128,
                   "hidden_size": 1536, "rms_norm_eps": 1e-06, "gradient_clipping": 1e10,
                   "conf_attention_chunk_size": 12, "conf_attention_context_left": 13,
                   "conf_attention_context_right": 0, "conf_attention_logit_cap": 50.0,
                   "conf_num_attention_heads": 8, "conf_num_hidden_layers": 12,
                   "conf_conv_kernel_size": 5, "conf_reduction_factor": 4,
                   "conf_residual_weight": 0.5, "sscp_conv_channel_size": [128, 32],
                   "sscp_conv_group_norm_eps": 0.001,
                   "sscp_conv_kernel_size": [[3, 3], [3, 3]],
                   "sscp_conv_stride_size": [[2, 2], [2, 2]]},
  "vision_soft_tokens_per_image": 256, "audio_soft_tokens_per_image": 188,
  "boi_token_id": 255999, "eoi_token_id": 262144, "image_token_id": 262145,
  "boa_token_id": 256000, "eoa_token_id": 262272, "audio_token_id": 262273,
  "eos_token_id": [1, 106]
}"#;

/// Whether `path` names a GGUF file (rather than a model folder).
pub fn is_gguf(path: &Path) -> bool {
    path.is_file()
        && path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

/// The SentencePiece vocabulary and chat template a GGUF file carries (`tokenizer.ggml.*`,
/// `tokenizer.chat_template`), as llama.cpp's converter writes them.
#[derive(Debug, Clone)]
pub struct Vocabulary {
    /// `tokenizer.ggml.model`: `llama` for SentencePiece.
    pub model: String,
    pub tokens: Vec<String>,
    pub scores: Vec<f32>,
    /// llama.cpp's token types: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
    pub token_types: Vec<i32>,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub unk_id: Option<u32>,
    pub add_bos: bool,
    pub chat_template: Option<String>,
}

/// The vocabulary of the GGUF file at `path`; `None` when it carries none.
pub fn vocabulary(path: &Path) -> Result<Option<Vocabulary>> {
    let (_, _, content) = read_header(path)?;
    vocabulary_of(&Metadata {
        content: &content,
        path,
    })
}

fn vocabulary_of(meta: &Metadata) -> Result<Option<Vocabulary>> {
    let md = &meta.content.metadata;
    let Some(Value::Array(tokens)) = md.get("tokenizer.ggml.tokens") else {
        return Ok(None);
    };
    let tokens = tokens
        .iter()
        .map(|t| match t {
            Value::String(s) => Some(s.clone()),
            _ => None,
        })
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| meta.wrong("tokenizer.ggml.tokens", "a list of strings"))?;
    let numbers = |key: &str, default: f64| -> Result<Vec<f64>> {
        match md.get(key) {
            None => Ok(vec![default; tokens.len()]),
            Some(Value::Array(values)) if values.len() == tokens.len() => values
                .iter()
                .map(number)
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| meta.wrong(key, "a list of numbers")),
            Some(_) => Err(meta.wrong(key, &format!("a list of {} numbers", tokens.len()))),
        }
    };
    let id = |key: &str| -> Result<Option<u32>> {
        match md.get(key) {
            None => Ok(None),
            Some(v) => match number(v) {
                Some(n) if n >= 0.0 && (n as usize) < tokens.len() => Ok(Some(n as u32)),
                _ => Err(meta.wrong(key, "a token id")),
            },
        }
    };
    Ok(Some(Vocabulary {
        model: meta.string("tokenizer.ggml.model")?.to_string(),
        scores: numbers("tokenizer.ggml.scores", 0.0)?
            .into_iter()
            .map(|s| s as f32)
            .collect(),
        token_types: numbers("tokenizer.ggml.token_type", 1.0)?
            .into_iter()
            .map(|t| t as i32)
            .collect(),
        bos_id: id("tokenizer.ggml.bos_token_id")?,
        eos_id: id("tokenizer.ggml.eos_token_id")?,
        unk_id: id("tokenizer.ggml.unknown_token_id")?,
        add_bos: matches!(
            md.get("tokenizer.ggml.add_bos_token"),
            Some(Value::Bool(true))
        ),
        chat_template: match md.get("tokenizer.chat_template") {
            Some(Value::String(s)) => Some(s.clone()),
            _ => None,
        },
        tokens,
    }))
}

/// Map the GGUF file at `path` and parse its header, after the bounds check that keeps candle's
/// reader from allocating what a damaged header claims.
fn read_header(path: &Path) -> Result<(std::fs::File, memmap2::Mmap, Content)> {
    let bad = |why: String| Error::Checkpoint(format!("{}: {why}", path.display()));
    let (handle, map) = map_file(path)?;
    header::check(&map).map_err(bad)?;
    let content = Content::read(&mut Cursor::new(&map[..]))
        .map_err(|e| bad(format!("not a GGUF file this loader can read: {e}")))?;
    Ok((handle, map, content))
}

/// Map and index a GGUF file; returns the checkpoint and the whole model config as JSON (its
/// `text_config` from the file's metadata, the rest from `config.json` beside it or the
/// released models' values).
pub(crate) fn open(path: &Path) -> Result<(Checkpoint, Json)> {
    let bad = |why: String| Error::Checkpoint(format!("{}: {why}", path.display()));
    let (handle, map, content) = read_header(path)?;
    let meta = Metadata {
        content: &content,
        path,
    };
    let arch = meta.string("general.architecture")?;
    if arch != "gemma3n" {
        return Err(bad(format!(
            "a GGUF of architecture {arch:?}; only Gemma 3n (gemma3n) is supported"
        )));
    }
    let mut index = HashMap::new();
    for (name, info) in &content.tensor_infos {
        let shape = info.shape.dims().to_vec();
        // The header check bounds the element count in the file's order of dimensions; with a
        // zero among them, another order can still overflow on the way.
        let elements = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
        let cols = shape.last().copied().unwrap_or(1);
        let bytes = elements
            .and_then(|elements| {
                ggml_bytes(info.ggml_dtype, cols).and(ggml_bytes(info.ggml_dtype, elements))
            })
            .ok_or_else(|| {
                bad(format!(
                    "tensor {name} {shape:?} does not fit {:?} blocks",
                    info.ggml_dtype
                ))
            })?;
        let start = content
            .tensor_data_offset
            .checked_add(info.offset)
            .and_then(|start| usize::try_from(start).ok())
            .filter(|start| start.checked_add(bytes).is_some_and(|end| end <= map.len()))
            .ok_or_else(|| {
                bad(format!(
                    "tensor {name} ends past the end of the file (truncated download?)"
                ))
            })?;
        // Block structs are read in place: their fields need (at most) 4-byte alignment.
        if !start.is_multiple_of(4) {
            return Err(bad(format!("tensor {name} is not aligned")));
        }
        // bf16/f16 count as (one-value) blocks too, so that their matrices stay as stored;
        // f32 ones take the dense path, like a safetensors checkpoint.
        let encoding = match info.ggml_dtype {
            GgmlDType::F32 => Encoding::Float(DType::F32),
            // candle cannot decode it (it is llama.cpp's format for activations, not weights).
            GgmlDType::Q8_1 => {
                return Err(bad(format!(
                    "tensor {name} is stored as Q8_1, which is not supported"
                )))
            }
            other => Encoding::Blocks(other),
        };
        let entry = |start: usize, len: usize, shape: Vec<usize>| Entry {
            file: 0,
            start,
            end: start + len,
            encoding,
            shape,
            part: None,
        };
        if let Some((_, ours)) = STACKED_TENSORS.iter().find(|(g, _)| g == name) {
            let [n, rows, cols] = shape[..] else {
                return Err(bad(format!("{name} is {shape:?}; expected [N-1, D, D]")));
            };
            // One entry per matrix: a count from a damaged file would take forever.
            let inputs = meta.count("gemma3n.altup.num_inputs")?;
            if n.checked_add(1) != Some(inputs) {
                return Err(bad(format!(
                    "{name} stacks {n} matrices; altup.num_inputs {inputs} needs {}",
                    inputs.saturating_sub(1)
                )));
            }
            // Whole rows of blocks, so each of the `n` matrices takes the same bytes.
            let matrix = bytes / n.max(1);
            for i in 0..n {
                let slice = entry(start + i * matrix, matrix, vec![rows, cols]);
                index.insert(format!("{PREFIX}.{ours}.{i}.weight"), slice);
            }
        } else if let Some(ours) = hf_name(name) {
            index.insert(ours, entry(start, bytes, shape));
        }
    }
    let text = text_config(&meta, &index).map_err(|e| bad(e.to_string()))?;
    let beside = path.with_file_name("config.json");
    let mut config: Json = if beside.is_file() {
        let raw = std::fs::read_to_string(&beside)
            .map_err(|e| Error::Config(format!("cannot read {}: {e}", beside.display())))?;
        serde_json::from_str(&raw)
            .map_err(|e| Error::Config(format!("{}: {e}", beside.display())))?
    } else {
        let mut defaults: Json =
            serde_json::from_str(MULTIMODAL_DEFAULTS).expect("built-in defaults are valid JSON");
        if let Some(vocab) = vocabulary_of(&meta)? {
            ids_from_vocabulary(&vocab, &mut defaults);
        }
        defaults
    };
    config["text_config"] = text;
    let dir = path.parent().unwrap_or(Path::new("."));
    let checkpoint = Checkpoint::from_parts(
        dir,
        vec![path.to_path_buf()],
        vec![map],
        vec![handle],
        index,
    );
    Ok((checkpoint, config))
}

/// The file's own ids for the multimodal and turn tokens, found by name, in place of the
/// released models' values.
fn ids_from_vocabulary(vocab: &Vocabulary, config: &mut Json) {
    let find = |name: &str| vocab.tokens.iter().position(|t| t == name);
    for (key, name) in [
        ("boi_token_id", "<start_of_image>"),
        ("eoi_token_id", "<end_of_image>"),
        ("image_token_id", "<image_soft_token>"),
        ("boa_token_id", "<start_of_audio>"),
        ("eoa_token_id", "<end_of_audio>"),
        ("audio_token_id", "<audio_soft_token>"),
    ] {
        if let Some(id) = find(name) {
            config[key] = json!(id);
        }
    }
    let eos: Vec<usize> = vocab
        .eos_id
        .map(|id| id as usize)
        .into_iter()
        .chain(find("<end_of_turn>"))
        .collect();
    if !eos.is_empty() {
        config["eos_token_id"] = json!(eos);
    }
}

/// Our name for a llama.cpp tensor name; `None` for tensors the text decoder does not use.
fn hf_name(gguf: &str) -> Option<String> {
    if let Some(rest) = gguf.strip_prefix("blk.") {
        let (layer, tensor) = rest.split_once('.')?;
        let layer: usize = layer.parse().ok()?;
        let (_, ours) = LAYER_TENSORS.iter().find(|(g, _)| *g == tensor)?;
        return Some(format!("{PREFIX}.layers.{layer}.{ours}"));
    }
    let (_, ours) = GLOBAL_TENSORS.iter().find(|(g, _)| *g == gguf)?;
    Some(format!("{PREFIX}.{ours}"))
}

struct Metadata<'a> {
    content: &'a Content,
    path: &'a Path,
}

impl Metadata<'_> {
    fn get(&self, key: &str) -> Result<&Value> {
        self.content.metadata.get(key).ok_or_else(|| {
            Error::Checkpoint(format!(
                "{}: metadata key {key} is missing",
                self.path.display()
            ))
        })
    }

    fn wrong(&self, key: &str, what: &str) -> Error {
        Error::Checkpoint(format!(
            "{}: metadata key {key} is not {what}",
            self.path.display()
        ))
    }

    fn string(&self, key: &str) -> Result<&str> {
        match self.get(key)? {
            Value::String(s) => Ok(s),
            _ => Err(self.wrong(key, "a string")),
        }
    }

    fn number(&self, key: &str) -> Result<f64> {
        number(self.get(key)?).ok_or_else(|| self.wrong(key, "a number"))
    }

    fn count(&self, key: &str) -> Result<usize> {
        let n = self.number(key)?;
        if n >= 0.0 && n.fract() == 0.0 {
            Ok(n as usize)
        } else {
            Err(self.wrong(key, "a count"))
        }
    }

    /// A value stored once or once per layer, as `n` values.
    fn per_layer(&self, key: &str, n: usize) -> Result<Vec<&Value>> {
        match self.get(key)? {
            Value::Array(values) if values.len() == n => Ok(values.iter().collect()),
            Value::Array(_) => Err(self.wrong(key, &format!("a list of {n} values"))),
            value => Ok(vec![value; n]),
        }
    }
}

fn number(v: &Value) -> Option<f64> {
    Some(match v {
        Value::U8(x) => *x as f64,
        Value::I8(x) => *x as f64,
        Value::U16(x) => *x as f64,
        Value::I16(x) => *x as f64,
        Value::U32(x) => *x as f64,
        Value::I32(x) => *x as f64,
        Value::U64(x) => *x as f64,
        Value::I64(x) => *x as f64,
        Value::F32(x) => *x as f64,
        Value::F64(x) => *x,
        _ => return None,
    })
}

/// `text_config` of the HF layout from llama.cpp's `gemma3n.*` keys and the tensor shapes.
fn text_config(meta: &Metadata, index: &HashMap<String, Entry>) -> Result<Json> {
    let key = |k: &str| format!("gemma3n.{k}");
    let rows = |ours: &str| -> Result<usize> {
        let name = format!("{PREFIX}.{ours}");
        let entry = index
            .get(&name)
            .ok_or_else(|| Error::Checkpoint(format!("the GGUF file has no tensor for {name}")))?;
        // A damaged file may give it no dimensions at all.
        entry.shape.first().copied().ok_or_else(|| {
            Error::Checkpoint(format!(
                "the GGUF tensor for {name} is a scalar, not a table"
            ))
        })
    };
    let layers = meta.count(&key("block_count"))?;
    let intermediate = meta
        .per_layer(&key("feed_forward_length"), layers)?
        .into_iter()
        .map(|v| number(v).map(|n| n as usize))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| meta.wrong(&key("feed_forward_length"), "a list of counts"))?;
    let sparsity_key = key("activation_sparsity_scale");
    // llama.cpp stores the cut-off in standard deviations; the config holds the sparsity.
    let sparsity = match meta.content.metadata.get(&sparsity_key) {
        None => llama_cpp_sparsity(layers),
        Some(_) => meta
            .per_layer(&sparsity_key, layers)?
            .into_iter()
            .map(|v| number(v).map(standard_normal_cdf))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| meta.wrong(&sparsity_key, "a list of numbers"))?,
    };
    let pattern_key = key("attention.sliding_window_pattern");
    let sliding = match meta.content.metadata.get(&pattern_key) {
        // Older converters wrote no pattern: llama.cpp then assumes a period of 5.
        None => sliding_every(SLIDING_PERIOD, layers),
        Some(Value::Array(_)) => meta
            .per_layer(&pattern_key, layers)?
            .into_iter()
            .map(|v| match v {
                Value::Bool(b) => Some(*b),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| meta.wrong(&pattern_key, "a list of booleans"))?,
        Some(_) => sliding_every(meta.count(&pattern_key)?, layers),
    };
    let layer_types: Vec<&str> = sliding
        .iter()
        .map(|&s| {
            if s {
                "sliding_attention"
            } else {
                "full_attention"
            }
        })
        .collect();
    let optional_number = |k: &str, default: f64| -> Result<f64> {
        match meta.content.metadata.get(&key(k)) {
            None => Ok(default),
            Some(_) => meta.number(&key(k)),
        }
    };
    let shared_kv_key = key("attention.shared_kv_layers");
    let shared_kv = match meta.content.metadata.get(&shared_kv_key) {
        None => layers.saturating_sub(LLAMA_CPP_KV_LAYERS),
        Some(_) => meta.count(&shared_kv_key)?,
    };
    Ok(json!({
        "vocab_size": rows("embed_tokens.weight")?,
        "vocab_size_per_layer_input": rows("embed_tokens_per_layer.weight")?,
        "hidden_size": meta.count(&key("embedding_length"))?,
        "hidden_size_per_layer_input": meta.count(&key("embedding_length_per_layer_input"))?,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": meta.count(&key("attention.head_count"))?,
        "num_key_value_heads": meta.count(&key("attention.head_count_kv"))?,
        "head_dim": meta.count(&key("attention.key_length"))?,
        "max_position_embeddings": meta.count(&key("context_length"))?,
        "rms_norm_eps": meta.number(&key("attention.layer_norm_rms_epsilon"))?,
        "rope_theta": meta.number(&key("rope.freq_base"))?,
        "rope_local_base_freq": optional_number("rope.freq_base_swa", DEFAULT_ROPE_BASE_SWA)?,
        "sliding_window": meta.count(&key("attention.sliding_window"))?,
        "layer_types": layer_types,
        "final_logit_softcapping": optional_number("final_logit_softcapping", DEFAULT_SOFTCAP)?,
        "altup_active_idx": meta.count(&key("altup.active_idx"))?,
        "altup_num_inputs": meta.count(&key("altup.num_inputs"))?,
        "num_kv_shared_layers": shared_kv,
        "laurel_rank": rows("layers.0.laurel.linear_left.weight")?,
        "activation_sparsity_pattern": sparsity,
    }))
}

/// Layer `i` of `layers` uses the sliding window unless it ends a period (llama.cpp's
/// `set_swa_pattern`); a period of 0 makes every layer sliding.
fn sliding_every(period: usize, layers: usize) -> Vec<bool> {
    (0..layers)
        .map(|i| period == 0 || i % period < period - 1)
        .collect()
}

/// The activation sparsity llama.cpp's Gemma 3n graph applies whatever the file says: 0.95 on
/// the first ten layers, none after.
fn llama_cpp_sparsity(layers: usize) -> Vec<f64> {
    (0..layers)
        .map(|i| if i < 10 { 0.95 } else { 0.0 })
        .collect()
}

/// `Φ(x)`; `Φ(-∞) = 0` marks a dense layer.
fn standard_normal_cdf(x: f64) -> f64 {
    0.5 * (1.0 + libm::erf(x / std::f64::consts::SQRT_2))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kernels::dequantize_into;

    #[test]
    fn llama_cpp_names_map_to_ours() {
        assert_eq!(
            hf_name("blk.12.attn_q.weight").as_deref(),
            Some("model.language_model.layers.12.self_attn.q_proj.weight")
        );
        assert_eq!(
            hf_name("blk.0.altup_correct_scale.weight").as_deref(),
            Some("model.language_model.layers.0.altup.correct_output_scale")
        );
        assert_eq!(
            hf_name("per_layer_token_embd.weight").as_deref(),
            Some("model.language_model.embed_tokens_per_layer.weight")
        );
        assert_eq!(hf_name("blk.x.attn_q.weight"), None);
        assert_eq!(hf_name("mm.input_projection.weight"), None);
    }

    #[test]
    fn a_missing_pattern_is_four_sliding_layers_then_one_full() {
        let full: Vec<usize> = (0..30).filter(|&i| !sliding_every(5, 30)[i]).collect();
        assert_eq!(full, [4, 9, 14, 19, 24, 29]);
        assert!(sliding_every(0, 3).iter().all(|&s| s));
        assert_eq!(&llama_cpp_sparsity(12)[9..], [0.95, 0.0, 0.0]);
    }

    /// Every block type candle reads decodes as gguf-py decodes it (`make_gguf.py` wrote random
    /// blocks of each and gguf-py's values).
    #[test]
    fn every_block_type_decodes_as_gguf_py_does() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/gguf");
        let bytes = std::fs::read(dir.join("quant_types.gguf")).unwrap();
        let content = Content::read(&mut std::io::Cursor::new(&bytes)).unwrap();
        let golden = std::fs::read(dir.join("quant_types.safetensors")).unwrap();
        let golden = safetensors::SafeTensors::deserialize(&golden).unwrap();
        assert_eq!(content.tensor_infos.len(), 12);
        for (name, info) in &content.tensor_infos {
            let want: Vec<f32> = golden
                .tensor(name)
                .unwrap()
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            let start = content.tensor_data_offset as usize + info.offset as usize;
            let len = ggml_bytes(info.ggml_dtype, want.len()).unwrap();
            // An aligned copy: block structs are read in place.
            let mut aligned = vec![0u32; len.div_ceil(4)];
            // SAFETY: a u8 view of a u32 buffer at least `len` bytes long.
            let view =
                unsafe { std::slice::from_raw_parts_mut(aligned.as_mut_ptr().cast::<u8>(), len) };
            view.copy_from_slice(&bytes[start..start + len]);
            let mut got = vec![0f32; want.len()];
            dequantize_into(info.ggml_dtype, view, &mut got);
            let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g - w).abs() <= 1e-6 * scale,
                    "{name} value {i}: {g} vs gguf-py {w}"
                );
            }
        }
    }

    #[test]
    fn i_quants_are_named() {
        assert_eq!(
            header::unreadable_type_name(20).unwrap(),
            "IQ4_NL (ggml type 20)"
        );
        assert_eq!(
            header::unreadable_type_name(16).unwrap(),
            "IQ2_XXS (ggml type 16)"
        );
        assert_eq!(
            header::unreadable_type_name(21).unwrap(),
            "IQ3_S (ggml type 21)"
        );
        for known in [0, 1, 2, 3, 6, 7, 8, 10, 11, 12, 13, 14, 30] {
            assert_eq!(header::unreadable_type_name(known), None);
        }
    }

    #[test]
    fn sparsity_survives_the_round_trip_through_standard_deviations() {
        let scale = 1.644_853_6_f32 as f64; // what the converter stores for 0.95
        assert!((standard_normal_cdf(scale) - 0.95).abs() < 1e-7);
        assert_eq!(standard_normal_cdf(f64::NEG_INFINITY), 0.0);
    }
}
