//! The real model: a thin adapter from the app's `ChatBackend` contract to `engine::Engine`,
//! which owns the prompt, the media towers and the KV cache reused across turns.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use engine::chat::Message;
use engine::{Engine, LoadOptions, SamplingParams};

use crate::backend::{ChatBackend, ModelInfo, ReplyStats, Sampling, StopReason};
use crate::error::{AppError, AppResult};

pub struct ModelBackend {
    engine: Engine,
    info: ModelInfo,
}

impl ModelBackend {
    pub fn load(dir: &Path, demo: bool, options: &LoadOptions) -> AppResult<Self> {
        if !dir.join("config.json").is_file() {
            return Err(AppError::Model(format!(
                "{} is not a model folder: it has no config.json",
                dir.display()
            )));
        }
        let engine = Engine::load(dir, options).map_err(|e| {
            AppError::Model(format!("cannot load the model in {}: {e}", dir.display()))
        })?;
        let d = engine.default_sampling();
        let name = if demo {
            "Demo model — replies are noise".to_string()
        } else {
            dir.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| dir.display().to_string())
        };
        Ok(Self {
            info: ModelInfo {
                name,
                path: dir.display().to_string(),
                demo,
                defaults: Sampling {
                    temperature: d.temperature,
                    top_k: d.top_k,
                    top_p: d.top_p,
                    ..Sampling::default()
                },
            },
            engine,
        })
    }
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
        let params = SamplingParams {
            temperature: params.temperature,
            top_k: params.top_k,
            top_p: params.top_p,
            max_new_tokens: params.max_new_tokens,
            seed: params.seed,
        };
        let report = self.engine.generate(messages, &params, cancel, on_text)?;
        Ok(ReplyStats {
            prompt_tokens: report.prompt_tokens,
            generated_tokens: report.token_ids.len(),
            stop_reason: match report.stop_reason {
                engine::StopReason::Eos => StopReason::Eos,
                engine::StopReason::MaxTokens | engine::StopReason::ContextFull => {
                    StopReason::MaxTokens
                }
                engine::StopReason::Cancelled => StopReason::Cancelled,
            },
            ttft_ms: report.ttft_ms,
            tokens_per_second: report.decode_tok_s,
        })
    }
}
