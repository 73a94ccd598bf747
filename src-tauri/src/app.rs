//! What the commands do: conversations, replies on the model thread, exports, recording.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use engine::chat::{Message, Part, Role as EngineRole};
use serde::Serialize;

use crate::api_server::ApiServer;
use crate::backend::{ChatBackend, ReplyStats, StopReason};
use crate::error::{AppError, AppResult};
use crate::model_backend::ModelBackend;
use crate::models::{DownloadEvent, Downloads, LoadSettings, ModelsOverview, Tokens, KNOWN};
use crate::recorder::Recorder;
use crate::store::{Attachment, AttachmentKind, Conversation, Role, Status, Store};
use crate::worker::{panic_message, ModelStatus, Reservation, Worker};
use engine::LoadOptions;
use engine::SamplingParams;

/// What a streaming reply sends to the UI.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "camelCase")]
pub enum StreamEvent {
    /// The reply waits for the local API server's requests ahead of it.
    Waiting,
    Token {
        text: String,
    },
    Done {
        stats: ReplyStats,
    },
    Error {
        error: AppError,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplyStarted {
    pub user_message_id: i64,
    pub reply_id: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Exported {
    pub path: String,
    pub content: String,
}

pub const DEFAULT_TITLE: &str = "New chat";

pub struct AppState {
    pub store: Arc<Store>,
    pub worker: Arc<Worker>,
    pub recorder: Mutex<Box<dyn Recorder>>,
    pub exports_dir: PathBuf,
    pub downloads: Downloads,
    pub tokens: Tokens,
    pub api_server: ApiServer,
}

const LOAD_SETTINGS: &str = "load_settings";

impl AppState {
    /// Weight format and threads for loading; the defaults when unset or unreadable.
    pub fn load_settings(&self) -> LoadSettings {
        self.store
            .setting(LOAD_SETTINGS)
            .ok()
            .flatten()
            .and_then(|json| serde_json::from_str(&json).ok())
            .unwrap_or_default()
    }

    /// Takes effect at the next load.
    pub fn set_load_settings(&self, settings: &LoadSettings) -> AppResult<()> {
        settings.to_options()?;
        let json =
            serde_json::to_string(settings).map_err(|e| AppError::Internal(e.to_string()))?;
        self.store.set_setting(LOAD_SETTINGS, &json)
    }

    /// Loads `dir` on the model thread with the saved load settings.
    pub fn load_model(&self, dir: PathBuf, demo: bool) -> AppResult<()> {
        let settings = self.load_settings();
        let options = settings.to_options()?;
        let path = dir.display().to_string();
        let size = settings.sizes.get(&path).cloned();
        self.worker.load(
            path,
            Box::new(move |progress| {
                let options = LoadOptions {
                    progress: Some(progress),
                    ..options
                };
                let backend = ModelBackend::load(&dir, demo, &options, size.as_deref())?;
                Ok(Box::new(backend) as Box<dyn ChatBackend>)
            }),
        )
    }

    /// Loads the model in `path` (a folder or a GGUF file) in the background and remembers it
    /// for the next start.
    pub fn open_model(&self, path: &str) -> AppResult<()> {
        let dir = PathBuf::from(path);
        if gemma3n::gguf::is_gguf(&dir) {
            // A GGUF file: its own tokenizer and template, or the Hugging Face ones beside it.
            engine::files::resolve_model(path, false)
                .map_err(|e| AppError::InvalidInput(e.to_string()))?;
        } else if !dir.join("config.json").is_file() {
            return Err(AppError::InvalidInput(format!(
                "{path} is not a model folder (it has no config.json) nor a GGUF file"
            )));
        }
        tracing::info!("open_model {path}");
        self.load_model(dir, false)?;
        self.store.set_setting("model_dir", path)
    }

    pub fn models_overview(&self) -> ModelsOverview {
        let cache_dir = self.downloads.cache.path().clone();
        ModelsOverview {
            choices: self.downloads.choices(),
            free_bytes: engine::download::free_space(&cache_dir).ok(),
            cache_dir: cache_dir.display().to_string(),
            token: self.tokens.state(),
            downloading: self.downloads.current(),
            load_settings: self.load_settings(),
        }
    }

    /// Only the models the app offers: no other network access.
    pub fn download_model(
        &self,
        repo_id: &str,
        on_event: impl Fn(DownloadEvent) + Send + 'static,
    ) -> AppResult<()> {
        if !KNOWN.iter().any(|k| k.id == repo_id) {
            return Err(AppError::InvalidInput(format!(
                "{repo_id} is not one of the models the app offers"
            )));
        }
        self.downloads.start(repo_id, self.tokens.token(), on_event)
    }

    /// The sampling a conversation uses: its own, else the model's defaults.
    fn sampling(&self, conversation: &Conversation) -> SamplingParams {
        conversation
            .sampling
            .clone()
            .unwrap_or_else(|| match self.worker.status() {
                ModelStatus::Ready { model } => model.defaults,
                _ => SamplingParams::default(),
            })
    }

    pub fn send_message(
        &self,
        conversation_id: i64,
        text: &str,
        attachments: &[Attachment],
        on_event: impl Fn(StreamEvent) + Send + 'static,
    ) -> AppResult<ReplyStarted> {
        if text.trim().is_empty() && attachments.is_empty() {
            return Err(AppError::InvalidInput("the message is empty".into()));
        }
        for a in attachments {
            self.store.attachment_path(&a.file_name())?;
        }
        let reservation = self.worker.reserve(conversation_id)?;
        let conversation = self.store.conversation(conversation_id)?;
        if conversation.messages.is_empty() && conversation.title == DEFAULT_TITLE {
            let title = title_from(text, attachments);
            self.store.rename_conversation(conversation_id, &title)?;
        }
        let user_message_id =
            self.store
                .add_message(conversation_id, Role::User, text, attachments, Status::Done)?;
        let reply_id = self.start_reply(conversation_id, reservation, on_event)?;
        Ok(ReplyStarted {
            user_message_id,
            reply_id,
        })
    }

    /// Replace the last reply with a new one.
    pub fn regenerate(
        &self,
        conversation_id: i64,
        on_event: impl Fn(StreamEvent) + Send + 'static,
    ) -> AppResult<ReplyStarted> {
        let reservation = self.worker.reserve(conversation_id)?;
        let conversation = self.store.conversation(conversation_id)?;
        let last_user = conversation
            .messages
            .iter()
            .rev()
            .find(|m| m.role == Role::User)
            .ok_or_else(|| AppError::InvalidInput("there is no message to reply to".into()))?;
        self.store
            .delete_messages_after(conversation_id, last_user.id)?;
        let reply_id = self.start_reply(conversation_id, reservation, on_event)?;
        Ok(ReplyStarted {
            user_message_id: last_user.id,
            reply_id,
        })
    }

    /// Change one of the user's messages, drop everything after it, and reply again.
    pub fn edit_and_resend(
        &self,
        conversation_id: i64,
        message_id: i64,
        text: &str,
        on_event: impl Fn(StreamEvent) + Send + 'static,
    ) -> AppResult<ReplyStarted> {
        let reservation = self.worker.reserve(conversation_id)?;
        let conversation = self.store.conversation(conversation_id)?;
        let message = conversation
            .messages
            .iter()
            .find(|m| m.id == message_id)
            .ok_or_else(|| AppError::NotFound(format!("message {message_id} does not exist")))?;
        if message.role != Role::User {
            return Err(AppError::InvalidInput(
                "only your own messages can be edited".into(),
            ));
        }
        if text.trim().is_empty() && message.attachments.is_empty() {
            return Err(AppError::InvalidInput("the message is empty".into()));
        }
        self.store.set_message_text(message_id, text)?;
        self.store
            .delete_messages_after(conversation_id, message_id)?;
        let reply_id = self.start_reply(conversation_id, reservation, on_event)?;
        Ok(ReplyStarted {
            user_message_id: message_id,
            reply_id,
        })
    }

    /// Add an empty reply and stream into it on the model thread, saving every piece.
    fn start_reply(
        &self,
        conversation_id: i64,
        reservation: Reservation<'_>,
        on_event: impl Fn(StreamEvent) + Send + 'static,
    ) -> AppResult<i64> {
        let conversation = self.store.conversation(conversation_id)?;
        let history = to_engine_messages(&conversation, self.store.attachments_dir());
        let params = self.sampling(&conversation);
        let reply_id =
            self.store
                .add_message(conversation_id, Role::Assistant, "", &[], Status::Streaming)?;
        let store = self.store.clone();
        tracing::info!(
            "reply {reply_id} in conversation {conversation_id}: {} messages in",
            history.len()
        );
        if self.worker.queued_jobs() > 0 {
            on_event(StreamEvent::Waiting);
        }
        reservation.run(move |backend, cancel| {
            let mut text = String::new();
            let result = catch_unwind(AssertUnwindSafe(|| {
                let report = backend.generate(&history, &params, cancel, &mut |piece| {
                    text.push_str(piece);
                    if let Err(e) =
                        store.update_reply(reply_id, &text, Status::Streaming, None, None)
                    {
                        tracing::warn!("saving reply {reply_id}: {e}");
                    }
                    on_event(StreamEvent::Token {
                        text: piece.to_owned(),
                    });
                })?;
                Ok(ReplyStats::from(&report))
            }))
            .unwrap_or_else(|p| Err(AppError::Internal(panic_message(p))));
            match &result {
                Ok(s) => tracing::info!(
                    "reply {reply_id} ended ({:?}): {} tokens, TTFT {:.0} ms, {:.1} tokens/s",
                    s.stop_reason,
                    s.generated_tokens,
                    s.ttft_ms,
                    s.tokens_per_second
                ),
                Err(e) => tracing::warn!("reply {reply_id} failed: {e}"),
            }
            let saved = match &result {
                Ok(stats) => {
                    let status = match stats.stop_reason {
                        StopReason::Cancelled => Status::Stopped,
                        _ => Status::Done,
                    };
                    store.update_reply(reply_id, &text, status, Some(stats), None)
                }
                Err(e) => {
                    store.update_reply(reply_id, &text, Status::Error, None, Some(&e.to_string()))
                }
            };
            if let Err(e) = saved {
                tracing::warn!("saving reply {reply_id}: {e}");
            }
            move || {
                on_event(match result {
                    Ok(stats) => StreamEvent::Done { stats },
                    Err(error) => StreamEvent::Error { error },
                })
            }
        })?;
        Ok(reply_id)
    }

    pub fn delete_conversation(&self, id: i64) -> AppResult<()> {
        self.worker.stop_conversation(id);
        self.store.delete_conversation(id)
    }

    pub fn export(&self, conversation_id: i64, format: &str) -> AppResult<Exported> {
        let conversation = self.store.conversation(conversation_id)?;
        let (content, ext) = match format {
            "markdown" => (to_markdown(&conversation), "md"),
            "json" => (
                serde_json::to_string_pretty(&conversation)
                    .map_err(|e| AppError::Internal(e.to_string()))?,
                "json",
            ),
            other => {
                return Err(AppError::InvalidInput(format!(
                    "unknown export format {other:?} (use \"markdown\" or \"json\")"
                )))
            }
        };
        std::fs::create_dir_all(&self.exports_dir)?;
        let path = self.exports_dir.join(format!(
            "{}-{conversation_id}.{ext}",
            file_stem(&conversation.title)
        ));
        std::fs::write(&path, &content)
            .map_err(|e| AppError::Io(format!("cannot write {}: {e}", path.display())))?;
        Ok(Exported {
            path: path.display().to_string(),
            content,
        })
    }

    pub fn start_recording(&self, on_level: Box<dyn FnMut(f32) + Send>) -> AppResult<()> {
        self.recorder
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .start(on_level)
    }

    pub fn stop_recording(&self) -> AppResult<Attachment> {
        let wav = self
            .recorder
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .stop()?;
        self.store.save_attachment("Recording.wav", &wav)
    }

    pub fn cancel_recording(&self) {
        self.recorder
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .cancel()
    }
}

fn title_from(text: &str, attachments: &[Attachment]) -> String {
    let line = text
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim();
    if line.is_empty() {
        return attachments
            .first()
            .map_or(DEFAULT_TITLE.into(), |a| a.name.clone());
    }
    let mut title: String = line.chars().take(48).collect();
    if line.chars().count() > 48 {
        title.push('…');
    }
    title
}

fn file_stem(title: &str) -> String {
    let stem: String = title
        .chars()
        .map(|c| if c.is_alphanumeric() { c } else { '-' })
        .take(40)
        .collect();
    let stem = stem.trim_matches('-');
    if stem.is_empty() {
        "chat".into()
    } else {
        stem.into()
    }
}

/// The conversation as the engine sees it: media first, then the text of each message.
///
/// A turn whose reply failed is left out with that reply: the model never answered it, and
/// what made it fail (say, a corrupt attachment) would fail every later reply too. Regenerate
/// or edit-and-resend retries it, since the failed reply is deleted first.
pub fn to_engine_messages(conversation: &Conversation, attachments_dir: &Path) -> Vec<Message> {
    let mut messages = Vec::new();
    if !conversation.system_prompt.trim().is_empty() {
        messages.push(Message::text(
            EngineRole::System,
            conversation.system_prompt.clone(),
        ));
    }
    let all = &conversation.messages;
    let failed = |i: usize| all.get(i).is_some_and(|m| m.status == Status::Error);
    for (i, m) in all.iter().enumerate() {
        if m.status == Status::Streaming || failed(i) || (m.role == Role::User && failed(i + 1)) {
            continue;
        }
        let mut content: Vec<Part> = m
            .attachments
            .iter()
            .map(|a| {
                let path = attachments_dir.join(a.file_name());
                match a.kind {
                    AttachmentKind::Image => Part::Image { path },
                    AttachmentKind::Audio => Part::Audio { path },
                }
            })
            .collect();
        content.push(Part::Text {
            text: m.text.clone(),
        });
        let role = match m.role {
            Role::User => EngineRole::User,
            Role::Assistant => EngineRole::Assistant,
        };
        messages.push(Message { role, content });
    }
    messages
}

fn to_markdown(c: &Conversation) -> String {
    let mut out = format!("# {}\n\n", c.title);
    if !c.system_prompt.trim().is_empty() {
        out.push_str(&format!("> System prompt: {}\n\n", c.system_prompt.trim()));
    }
    for m in &c.messages {
        let who = match m.role {
            Role::User => "You",
            Role::Assistant => "Gemma",
        };
        out.push_str(&format!("## {who}\n\n"));
        for a in &m.attachments {
            match a.kind {
                AttachmentKind::Image => {
                    out.push_str(&format!("![{}](attachments/{})\n\n", a.name, a.file_name()))
                }
                AttachmentKind::Audio => out.push_str(&format!(
                    "[Audio: {}](attachments/{})\n\n",
                    a.name,
                    a.file_name()
                )),
            }
        }
        out.push_str(m.text.trim_end());
        out.push_str("\n\n");
        if let Some(e) = &m.error {
            out.push_str(&format!("> Error: {e}\n\n"));
        }
    }
    out
}
