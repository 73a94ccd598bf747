//! The OpenAI request schema, turned into engine messages and sampling settings.
//!
//! Unknown fields are ignored, as OpenAI-compatible servers do.  Message content is read from
//! JSON by hand so that every malformed part gets an error naming it.

use engine::{Message, Part, Role, SamplingParams};
use serde::Deserialize;
use serde_json::Value;

use crate::error::ApiError;
use crate::media::{self, MediaStore};
use crate::ModelCard;

#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    #[serde(default)]
    pub model: Option<String>,
    pub messages: Vec<ChatMessage>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub top_k: Option<i64>,
    #[serde(default)]
    pub max_tokens: Option<i64>,
    #[serde(default)]
    pub max_completion_tokens: Option<i64>,
    #[serde(default)]
    pub stop: Option<Stop>,
    #[serde(default)]
    pub seed: Option<i64>,
    #[serde(default)]
    pub n: Option<i64>,
}

#[derive(Debug, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    #[serde(default)]
    pub content: Value,
}

/// Sampling settings a request asks for, over the model's defaults.
pub struct Sampling {
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<i64>,
    pub max_tokens: Option<i64>,
    pub seed: Option<i64>,
}

impl Sampling {
    /// Check each value and fill in the defaults.  Without a token limit the reply may run to
    /// the end of the context.
    pub fn resolve(&self, card: &ModelCard) -> Result<SamplingParams, ApiError> {
        let d = &card.defaults;
        let temperature = self.temperature.unwrap_or(d.temperature);
        if !temperature.is_finite() || temperature < 0.0 {
            return Err(ApiError::invalid_param(
                "temperature",
                format!("temperature must be a number ≥ 0, not {temperature}"),
            ));
        }
        let top_p = match self.top_p {
            Some(p) if !(p > 0.0 && p <= 1.0) => {
                return Err(ApiError::invalid_param(
                    "top_p",
                    format!("top_p must be in (0, 1], not {p}"),
                ))
            }
            Some(p) => Some(p),
            None => d.top_p,
        };
        let top_k = match self.top_k {
            Some(k) if k < 0 => {
                return Err(ApiError::invalid_param(
                    "top_k",
                    format!("top_k must be ≥ 0 (0 turns it off), not {k}"),
                ))
            }
            Some(0) => None,
            Some(k) => Some(k as usize),
            None => d.top_k,
        };
        let max_new_tokens = match self.max_tokens {
            Some(n) if n < 1 => {
                return Err(ApiError::invalid_param(
                    "max_tokens",
                    format!("max_tokens must be at least 1, not {n}"),
                ))
            }
            Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
            None => card.context_length,
        };
        Ok(SamplingParams {
            temperature,
            top_k,
            top_p,
            max_new_tokens,
            // OpenAI's seed is any integer; its bits make the engine's.
            seed: self.seed.map_or(d.seed, |s| s as u64),
        })
    }
}

impl ChatRequest {
    pub fn sampling(&self) -> Sampling {
        Sampling {
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            max_tokens: self.max_completion_tokens.or(self.max_tokens),
            seed: self.seed,
        }
    }

    pub fn stop_strings(&self) -> Vec<String> {
        match &self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(list)) => list.clone(),
        }
    }

    /// The conversation as engine messages, media stored as files.
    pub fn messages(&self, store: &MediaStore) -> Result<Vec<Message>, ApiError> {
        let messages = self
            .messages
            .iter()
            .enumerate()
            .map(|(i, m)| message(i, m, store))
            .collect::<Result<Vec<_>, _>>()?;
        engine::chat::validate(&messages)
            .map_err(|e| ApiError::invalid_param("messages", e.to_string()))?;
        Ok(messages)
    }
}

fn message(index: usize, m: &ChatMessage, store: &MediaStore) -> Result<Message, ApiError> {
    let role = match m.role.as_str() {
        "system" | "developer" => Role::System,
        "user" => Role::User,
        "assistant" => Role::Assistant,
        other => {
            return Err(ApiError::invalid_param(
                "messages",
                format!("messages[{index}]: role `{other}` is not supported (system, developer, user or assistant)"),
            ))
        }
    };
    let content = match &m.content {
        Value::Null => Vec::new(),
        Value::String(text) => vec![Part::Text { text: text.clone() }],
        Value::Array(parts) => parts
            .iter()
            .enumerate()
            .map(|(j, p)| part(index, j, p, store))
            .collect::<Result<_, _>>()?,
        _ => {
            return Err(ApiError::invalid_param(
                "messages",
                format!("messages[{index}].content must be a string or a list of content parts"),
            ))
        }
    };
    if role != Role::User && content.iter().any(|p| !matches!(p, Part::Text { .. })) {
        return Err(ApiError::invalid_param(
            "messages",
            format!("messages[{index}]: only user messages may carry images or audio"),
        ));
    }
    Ok(Message { role, content })
}

fn part(i: usize, j: usize, p: &Value, store: &MediaStore) -> Result<Part, ApiError> {
    let bad = |what: String| {
        ApiError::invalid_param("messages", format!("messages[{i}].content[{j}]: {what}"))
    };
    let kind = p
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("a content part needs a string `type`".into()))?;
    let field = |name: &str| {
        p.get(name)
            .ok_or_else(|| bad(format!("a `{kind}` part needs a `{name}` field")))
    };
    // `image_url` and `audio_url` are objects with a `url`; some clients send the bare string.
    let url = |name: &str| -> Result<String, ApiError> {
        let v = field(name)?;
        v.as_str()
            .or_else(|| v.get("url")?.as_str())
            .map(str::to_owned)
            .ok_or_else(|| bad(format!("`{name}` needs a string `url`")))
    };
    let stored = |m: media::Media| {
        store
            .put(&m)
            .map_err(|e| ApiError::internal(format!("cannot store the media: {e}")))
    };
    let relabel = |e: ApiError| bad(e.message);
    Ok(match kind {
        "text" => Part::Text {
            text: field("text")?
                .as_str()
                .ok_or_else(|| bad("`text` must be a string".into()))?
                .to_owned(),
        },
        "image_url" => Part::Image {
            path: stored(media::image_from_url(&url("image_url")?, "image_url").map_err(relabel)?)?,
        },
        "audio_url" => Part::Audio {
            path: stored(media::audio_from_url(&url("audio_url")?, "audio_url").map_err(relabel)?)?,
        },
        "input_audio" => {
            let audio = field("input_audio")?;
            let text = |name: &str| {
                audio
                    .get(name)
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad(format!("`input_audio` needs a string `{name}`")))
            };
            Part::Audio {
                path: stored(
                    media::input_audio(text("data")?, text("format")?, "input_audio")
                        .map_err(relabel)?,
                )?,
            }
        }
        other => {
            return Err(bad(format!(
                "content part type `{other}` is not supported (text, image_url, input_audio, audio_url)"
            )));
        }
    })
}
