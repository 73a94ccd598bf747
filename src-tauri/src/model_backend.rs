//! The model on the CPU through `gemma3n` and the engine's prompt encoder.
//!
//! Interim: the engine's own generation loop (`engine::Engine::generate`, with KV-cache reuse
//! and the vision/audio towers) replaces the loop below when it lands on `main`; the
//! `ChatBackend` contract stays the same.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use engine::chat::{Message, Part};
use engine::prompt::PromptEncoder;
use gemma3n::{Gemma3nModel, MediaEmbeddings};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::backend::{ChatBackend, ModelInfo, ReplyStats, Sampling, StopReason};
use crate::error::{AppError, AppResult};

pub struct ModelBackend {
    model: Gemma3nModel,
    prompt: PromptEncoder,
    eos: Vec<u32>,
    info: ModelInfo,
}

fn model_err(e: impl std::fmt::Display) -> AppError {
    AppError::Model(e.to_string())
}

impl ModelBackend {
    pub fn load(dir: &Path, demo: bool) -> AppResult<Self> {
        if !dir.join("config.json").is_file() {
            return Err(AppError::Model(format!(
                "{} is not a model folder: it has no config.json",
                dir.display()
            )));
        }
        let model = Gemma3nModel::load(dir, DType::F32, &Device::Cpu).map_err(|e| {
            AppError::Model(format!("cannot load the model in {}: {e}", dir.display()))
        })?;
        let prompt = PromptEncoder::from_model_dir(dir, model.config())?;
        let (defaults, eos) = generation_config(dir)?;
        let name = if demo {
            "Demo model — replies are noise".to_string()
        } else {
            dir.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| dir.display().to_string())
        };
        Ok(Self {
            model,
            prompt,
            eos,
            info: ModelInfo {
                name,
                path: dir.display().to_string(),
                demo,
                defaults,
            },
        })
    }
}

/// Default sampling and end-of-turn ids from `generation_config.json`.
fn generation_config(dir: &Path) -> AppResult<(Sampling, Vec<u32>)> {
    let path = dir.join("generation_config.json");
    let json: serde_json::Value = match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text)
            .map_err(|e| AppError::Model(format!("{} is not valid JSON: {e}", path.display())))?,
        Err(_) => serde_json::Value::Null,
    };
    let defaults = Sampling::default();
    let sampling = Sampling {
        temperature: json["temperature"].as_f64().unwrap_or(defaults.temperature),
        top_k: json["top_k"]
            .as_u64()
            .map(|k| k as usize)
            .or(defaults.top_k),
        top_p: json["top_p"].as_f64().or(defaults.top_p),
        ..defaults
    };
    let eos = match &json["eos_token_id"] {
        serde_json::Value::Array(ids) => ids.iter().filter_map(|v| v.as_u64()).collect(),
        v => v.as_u64().into_iter().collect::<Vec<_>>(),
    };
    Ok((sampling, eos.into_iter().map(|id| id as u32).collect()))
}

impl ChatBackend for ModelBackend {
    fn info(&self) -> ModelInfo {
        self.info.clone()
    }

    fn generate(
        &mut self,
        messages: &[Message],
        params: &Sampling,
        cancel: &AtomicBool,
        on_text: &mut dyn FnMut(&str),
    ) -> AppResult<ReplyStats> {
        let has_media = messages
            .iter()
            .flat_map(|m| &m.content)
            .any(|p| !matches!(p, Part::Text { .. }));
        if has_media {
            return Err(AppError::Model(
                "this build of the engine cannot see images or hear audio yet (its vision and \
                 audio towers are not merged); the attachment is saved with the message"
                    .into(),
            ));
        }
        let prompt = self.prompt.encode(messages)?;
        let device = self.model.device().clone();
        let mut cache = self.model.new_cache();
        let media = MediaEmbeddings::default();
        let mut rng = StdRng::seed_from_u64(params.seed);
        let start = Instant::now();
        let mut ttft = None;
        let mut input = prompt.ids.clone();
        let mut generated = Vec::new();
        let mut shown = String::new();
        let mut stop_reason = StopReason::MaxTokens;
        for _ in 0..params.max_new_tokens {
            if cancel.load(Ordering::SeqCst) {
                stop_reason = StopReason::Cancelled;
                break;
            }
            let ids = Tensor::new(input.as_slice(), &device)
                .and_then(|t| t.unsqueeze(0))
                .map_err(model_err)?;
            let logits = self
                .model
                .forward_last(&ids, &media, &mut cache)
                .map_err(model_err)?
                .squeeze(0)
                .and_then(|l| l.to_dtype(DType::F32))
                .and_then(|l| l.to_vec1::<f32>())
                .map_err(model_err)?;
            let next = sample(&logits, params, &mut rng);
            ttft.get_or_insert_with(|| start.elapsed());
            if self.eos.contains(&next) {
                stop_reason = StopReason::Eos;
                break;
            }
            generated.push(next);
            let text = self
                .prompt
                .tokenizer()
                .decode(&generated, true)
                .map_err(model_err)?;
            // Hold back text until a multi-byte character is complete.
            if text.len() > shown.len() && text.starts_with(&shown) && !text.ends_with('\u{FFFD}') {
                on_text(&text[shown.len()..]);
                shown = text;
            }
            input = vec![next];
        }
        let ttft = ttft.unwrap_or_else(|| start.elapsed());
        let decode_secs = (start.elapsed() - ttft).as_secs_f64();
        Ok(ReplyStats {
            prompt_tokens: prompt.ids.len(),
            generated_tokens: generated.len(),
            stop_reason,
            ttft_ms: ttft.as_secs_f64() * 1e3,
            tokens_per_second: if decode_secs > 0.0 && generated.len() > 1 {
                (generated.len() - 1) as f64 / decode_secs
            } else {
                0.0
            },
        })
    }
}

/// Temperature, then top-k, then top-p; temperature 0 is greedy.
fn sample(logits: &[f32], params: &Sampling, rng: &mut StdRng) -> u32 {
    let argmax = || {
        logits
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i as u32)
            .unwrap_or(0)
    };
    if params.temperature <= 0.0 {
        return argmax();
    }
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_unstable_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    order.truncate(params.top_k.unwrap_or(order.len()).max(1));
    let max = logits[order[0]] as f64;
    let mut probs: Vec<f64> = order
        .iter()
        .map(|&i| ((logits[i] as f64 - max) / params.temperature).exp())
        .collect();
    let total: f64 = probs.iter().sum();
    if let Some(top_p) = params.top_p {
        let mut cumulative = 0.0;
        let keep = probs
            .iter()
            .position(|p| {
                cumulative += p / total;
                cumulative >= top_p
            })
            .map_or(probs.len(), |i| i + 1);
        probs.truncate(keep);
    }
    let total: f64 = probs.iter().sum();
    let mut r = rng.random::<f64>() * total;
    for (p, &i) in probs.iter().zip(&order) {
        r -= p;
        if r <= 0.0 {
            return i as u32;
        }
    }
    order[probs.len() - 1] as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_and_top_k_one_pick_the_largest_logit() {
        let logits = [0.1, 3.0, -1.0, 2.9];
        let mut rng = StdRng::seed_from_u64(1);
        let greedy = Sampling {
            temperature: 0.0,
            ..Sampling::default()
        };
        assert_eq!(sample(&logits, &greedy, &mut rng), 1);
        let top1 = Sampling {
            temperature: 1.0,
            top_k: Some(1),
            ..Sampling::default()
        };
        for _ in 0..20 {
            assert_eq!(sample(&logits, &top1, &mut rng), 1);
        }
    }

    #[test]
    fn top_p_drops_the_tail() {
        let logits = [10.0, 0.0, 0.0, 0.0];
        let params = Sampling {
            temperature: 1.0,
            top_k: None,
            top_p: Some(0.5),
            ..Sampling::default()
        };
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..50 {
            assert_eq!(sample(&logits, &params, &mut rng), 0);
        }
    }

    #[test]
    fn missing_model_folder_is_a_clear_error() {
        let err = ModelBackend::load(Path::new("/nonexistent/model"), false)
            .err()
            .unwrap();
        assert_eq!(err.kind(), "model");
        assert!(err.to_string().contains("no config.json"), "{err}");
    }

    #[test]
    fn demo_model_streams_text_and_stops_on_cancel() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/C/model");
        let mut backend = ModelBackend::load(&dir, true).unwrap();
        assert!(backend.info().demo);
        assert_eq!(backend.info().defaults.top_k, Some(64));
        let messages = [Message::text(engine::chat::Role::User, "Hello")];
        let params = Sampling {
            max_new_tokens: 8,
            temperature: 0.0,
            ..Sampling::default()
        };
        let mut text = String::new();
        let stats = backend
            .generate(&messages, &params, &AtomicBool::new(false), &mut |t| {
                text.push_str(t)
            })
            .unwrap();
        assert!(stats.prompt_tokens > 3);
        assert!(stats.generated_tokens > 0 || stats.stop_reason == StopReason::Eos);
        let cancelled = backend
            .generate(&messages, &params, &AtomicBool::new(true), &mut |_| {})
            .unwrap();
        assert_eq!(cancelled.stop_reason, StopReason::Cancelled);
        assert_eq!(cancelled.generated_tokens, 0);
    }
}
