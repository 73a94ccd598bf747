//! What the app needs from a model, behind a trait so the commands can be tested with a
//! scripted backend and the engine can be swapped without touching the UI contract.

use std::sync::atomic::AtomicBool;

use engine::chat::Message;
use engine::{GenerationReport, SamplingParams};
use serde::{Deserialize, Serialize};

use crate::error::AppResult;

/// Checks sampling settings from the UI; the model's defaults come from its
/// `generation_config.json`.
pub fn validate_sampling(s: &SamplingParams) -> AppResult<()> {
    use crate::error::AppError::InvalidInput;
    if !(s.temperature.is_finite() && (0.0..=10.0).contains(&s.temperature)) {
        return Err(InvalidInput("temperature must be between 0 and 10".into()));
    }
    if s.top_k == Some(0) {
        return Err(InvalidInput(
            "top-k must be at least 1 (or empty for no limit)".into(),
        ));
    }
    if let Some(p) = s.top_p {
        if !(p > 0.0 && p <= 1.0) {
            return Err(InvalidInput("top-p must be in (0, 1]".into()));
        }
    }
    if s.max_new_tokens == 0 || s.max_new_tokens > 32_768 {
        return Err(InvalidInput(
            "max tokens must be between 1 and 32768".into(),
        ));
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum StopReason {
    Eos,
    MaxTokens,
    Cancelled,
}

/// Measurements of one reply, shown under it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplyStats {
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    pub stop_reason: StopReason,
    pub ttft_ms: f64,
    pub tokens_per_second: f64,
}

impl From<&GenerationReport> for ReplyStats {
    fn from(report: &GenerationReport) -> Self {
        Self {
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
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelInfo {
    pub name: String,
    pub path: String,
    /// The committed tiny fixture: it works, but its replies are noise.
    pub demo: bool,
    pub defaults: SamplingParams,
    /// Longest prompt plus reply, in tokens.
    pub context_length: usize,
    /// Where it computes, e.g. "CPU, avx2 kernels".
    pub compute: String,
    /// The MatFormer slice loaded (its id); `None` for the whole model.
    pub size: Option<String>,
    /// The sizes this model can be loaded at, smallest first and the whole model last; empty
    /// when it nests no smaller model.
    pub sizes: Vec<SizeChoice>,
}

/// One size a MatFormer model (E4B) can be loaded at.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SizeChoice {
    /// The slice's id (`E2.98B-layer`); `None` for the whole model.
    pub id: Option<String>,
    pub layers: usize,
    /// Parameters without the embedding tables, as the published slice table counts them.
    pub effective_params: u64,
    /// Bytes of weights each decoded token reads, which stay in memory, per weight format.
    pub weight_bytes: Vec<FormatBytes>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FormatBytes {
    pub weights: String,
    pub bytes: u64,
}

pub trait ChatBackend: Send {
    fn info(&self) -> ModelInfo;

    /// Streams the reply to `messages` through `on_text`, checking `cancel` between tokens.
    fn generate(
        &mut self,
        messages: &[Message],
        params: &SamplingParams,
        cancel: &AtomicBool,
        on_text: &mut dyn FnMut(&str),
    ) -> AppResult<GenerationReport>;
}

#[cfg(test)]
pub mod scripted {
    //! A backend that replies with fixed pieces, for command tests.

    use std::sync::atomic::Ordering;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use super::*;
    use crate::error::AppError;

    pub struct ScriptedBackend {
        pub pieces: Vec<String>,
        /// Pause between pieces, so tests can stop a reply midway.
        pub delay: Duration,
        pub fail_with: Option<AppError>,
        pub panic: bool,
        /// Every conversation the backend was asked to continue.
        pub seen: Arc<Mutex<Vec<Vec<Message>>>>,
    }

    impl ScriptedBackend {
        pub fn new(pieces: &[&str]) -> Self {
            Self {
                pieces: pieces.iter().map(|s| s.to_string()).collect(),
                delay: Duration::ZERO,
                fail_with: None,
                panic: false,
                seen: Arc::default(),
            }
        }
    }

    impl ChatBackend for ScriptedBackend {
        fn info(&self) -> ModelInfo {
            ModelInfo {
                name: "scripted".into(),
                path: String::new(),
                demo: true,
                defaults: SamplingParams::default(),
                context_length: 4096,
                compute: "CPU, baseline kernels".to_string(),
                size: None,
                sizes: Vec::new(),
            }
        }

        fn generate(
            &mut self,
            messages: &[Message],
            _params: &SamplingParams,
            cancel: &AtomicBool,
            on_text: &mut dyn FnMut(&str),
        ) -> AppResult<GenerationReport> {
            self.seen.lock().unwrap().push(messages.to_vec());
            if let Some(e) = &self.fail_with {
                return Err(e.clone());
            }
            if self.panic {
                panic!("scripted backend panics");
            }
            let mut stop_reason = engine::StopReason::Eos;
            let mut text = String::new();
            let mut token_ids = Vec::new();
            for (id, piece) in self.pieces.iter().enumerate() {
                if cancel.load(Ordering::SeqCst) {
                    stop_reason = engine::StopReason::Cancelled;
                    break;
                }
                on_text(piece);
                text.push_str(piece);
                token_ids.push(id as u32);
                std::thread::sleep(self.delay);
            }
            Ok(GenerationReport {
                token_ids,
                text,
                prompt_tokens: messages.len(),
                reused_tokens: 0,
                stop_reason,
                ttft_ms: 1.0,
                prefill_tok_s: 100.0,
                decode_tok_s: 100.0,
                audio_splits: Vec::new(),
            })
        }
    }
}
