//! Conversations and the checkpoint's own chat template.
//!
//! Messages use the Hugging Face shape: `{"role": "user", "content": "text"}` or a list of parts
//! `{"type": "text", "text": ..}`, `{"type": "image", "path": ..}`, `{"type": "audio", "path": ..}`.
//! The template is rendered with minijinja and Python-compatible string methods.

use std::path::{Path, PathBuf};

use minijinja::{context, Environment, ErrorKind};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

/// One item of a message's content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Part {
    Text { text: String },
    Image { path: PathBuf },
    Audio { path: PathBuf },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    #[serde(deserialize_with = "content_from_json")]
    pub content: Vec<Part>,
}

/// Content is either a bare string or a list of parts.
fn content_from_json<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Vec<Part>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Content {
        Text(String),
        Parts(Vec<Part>),
    }
    Ok(match Content::deserialize(d)? {
        Content::Text(text) => vec![Part::Text { text }],
        Content::Parts(parts) => parts,
    })
}

impl Message {
    pub fn text(role: Role, text: impl Into<String>) -> Self {
        Self {
            role,
            content: vec![Part::Text { text: text.into() }],
        }
    }

    /// The concatenated text parts.
    pub fn text_content(&self) -> String {
        self.content
            .iter()
            .filter_map(|p| match p {
                Part::Text { text } => Some(text.as_str()),
                _ => None,
            })
            .collect()
    }
}

/// Parse a messages file; relative media paths resolve against the file's folder.
pub fn load_messages(path: &Path) -> Result<Vec<Message>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::Conversation(format!("cannot read messages file {}: {e}", path.display()))
    })?;
    let mut messages: Vec<Message> = serde_json::from_str(&text).map_err(|e| {
        Error::Conversation(format!(
            "{} is not a valid messages list (expected [{{\"role\": .., \"content\": ..}}, ..]): {e}",
            path.display()
        ))
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    for message in &mut messages {
        for part in &mut message.content {
            if let Part::Image { path } | Part::Audio { path } = part {
                if path.is_relative() {
                    *path = base.join(&*path);
                }
            }
        }
    }
    Ok(messages)
}

/// Check the conversation shape the Gemma template requires: an optional leading system
/// message, then user/assistant turns alternating and starting with the user.
pub fn validate(messages: &[Message]) -> Result<()> {
    let rest = match messages.first() {
        None => return Err(Error::Conversation("the conversation is empty".into())),
        Some(m) if m.role == Role::System => &messages[1..],
        Some(_) => messages,
    };
    if rest.is_empty() {
        return Err(Error::Conversation(
            "the conversation has no user message".into(),
        ));
    }
    for (i, m) in rest.iter().enumerate() {
        let expected = if i % 2 == 0 {
            Role::User
        } else {
            Role::Assistant
        };
        if m.role != expected {
            return Err(Error::Conversation(format!(
                "message {} has role {:?} but roles must alternate user/assistant after an optional system message",
                i + messages.len() - rest.len() + 1,
                m.role
            )));
        }
    }
    Ok(())
}

/// The checkpoint's chat template, ready to render.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
}

const TEMPLATE_NAME: &str = "chat";

impl ChatTemplate {
    /// `chat_template.jinja`, else `chat_template.json`, else `chat_template` in
    /// `tokenizer_config.json` (a string or a list of named templates).
    pub fn from_model_dir(dir: &Path) -> Result<Self> {
        let tokenizer_config = read_json(&dir.join("tokenizer_config.json"))?;
        let bos_token = tokenizer_config
            .as_ref()
            .and_then(|c| token_content(c.get("bos_token")?))
            .unwrap_or_else(|| "<bos>".to_string());
        let source = if let Ok(s) = std::fs::read_to_string(dir.join("chat_template.jinja")) {
            s
        } else if let Some(s) = read_json(&dir.join("chat_template.json"))?
            .and_then(|j| j.get("chat_template")?.as_str().map(str::to_owned))
        {
            s
        } else {
            tokenizer_config
                .as_ref()
                .and_then(|c| template_from_config(c.get("chat_template")?))
                .ok_or_else(|| {
                    Error::ModelFiles(format!(
                        "no chat template in {} (chat_template.jinja or tokenizer_config.json)",
                        dir.display()
                    ))
                })?
        };
        Self::new(source, bos_token)
    }

    pub fn new(source: String, bos_token: String) -> Result<Self> {
        let mut env = Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_template_owned(TEMPLATE_NAME, source)
            .map_err(|e| Error::Template(e.to_string()))?;
        Ok(Self { env, bos_token })
    }

    pub fn bos_token(&self) -> &str {
        &self.bos_token
    }

    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| Error::Template(e.to_string()))?;
        template
            .render(context! {
                messages => messages,
                bos_token => &self.bos_token,
                add_generation_prompt => add_generation_prompt,
            })
            .map_err(|e| match e.kind() {
                ErrorKind::InvalidOperation => Error::Conversation(
                    e.detail()
                        .unwrap_or("rejected by the chat template")
                        .to_string(),
                ),
                _ => Error::Template(e.to_string()),
            })
    }
}

fn read_json(path: &Path) -> Result<Option<serde_json::Value>> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| Error::ModelFiles(format!("{} is not valid JSON: {e}", path.display()))),
        Err(_) => Ok(None),
    }
}

/// Special tokens appear as plain strings or as `{"content": ..}` objects.
fn token_content(v: &serde_json::Value) -> Option<String> {
    v.as_str()
        .or_else(|| v.get("content")?.as_str())
        .map(str::to_owned)
}

fn template_from_config(v: &serde_json::Value) -> Option<String> {
    if let Some(s) = v.as_str() {
        return Some(s.to_owned());
    }
    let list = v.as_array()?;
    let named = |name: &str| {
        list.iter()
            .find(|t| t.get("name").and_then(|n| n.as_str()) == Some(name))
            .and_then(|t| t.get("template")?.as_str().map(str::to_owned))
    };
    named("default").or_else(|| {
        list.first()
            .and_then(|t| t.get("template")?.as_str().map(str::to_owned))
    })
}
