//! A local OpenAI-compatible API server for Gemma 3n: the model's eyes and ears for every tool
//! that speaks the OpenAI chat API.
//!
//! Endpoints (under `/v1`):
//! - `GET /v1/models`;
//! - `POST /v1/chat/completions`, streamed (SSE) or not, with `text`, `image_url` (`data:` URLs),
//!   `input_audio` and `audio_url` (`data:` URLs) content parts;
//! - `POST /v1/audio/transcriptions` (multipart): the model itself listens.
//!
//! Errors use OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`: 400 bad input,
//! 401 wrong or missing key (when one is set), 404 unknown model or route, 413 body over
//! [`ServerConfig::max_body_bytes`], 429 queue full, 503 model loading.
//!
//! The server never goes to the network: `http(s)` media URLs are refused.
//!
//! # Embedding
//!
//! The server does not own a model.  It asks a [`Backend`] for one generation at a time, from
//! one worker thread, in FIFO order; at most [`ServerConfig::queue`] requests wait behind the
//! running one.  The CLI uses [`EngineBackend`] (an [`engine::Engine`] behind a mutex); the
//! desktop app implements [`Backend`] over its own model thread, so that its chats and the API
//! share the one model.
//!
//! ```no_run
//! use std::sync::Arc;
//! use server::{EngineBackend, Server, ServerConfig};
//!
//! let backend = Arc::new(EngineBackend::loading("gemma-3n-E2B-it"));
//! let server = Server::start(ServerConfig::default(), backend.clone())?; // 503 until loaded
//! # let engine: engine::Engine = unimplemented!();
//! backend.set_engine(engine);
//! println!("serving on {}", server.url());
//! server.stop(); // graceful: running generations are cancelled, then the port is closed
//! # Ok::<(), server::StartError>(())
//! ```

mod api;
mod backend;
mod error;
mod media;
mod queue;
mod routes;
mod stop;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use engine::{GenerationReport, Message, SamplingParams};

pub use backend::EngineBackend;

/// What the server needs from a model.
///
/// Calls come from the server's worker thread, one generation at a time; [`Backend::model`]
/// may also be called from request handlers at any time and must be cheap (no model work).
pub trait Backend: Send + Sync + 'static {
    /// The loaded model, or why there is none (the server answers 503).
    fn model(&self) -> Result<ModelCard, Unavailable>;

    /// Generate the reply to `messages` (already validated as a conversation), streaming text
    /// through `on_text`.  Media parts are files (`Part::Image { path }`, `Part::Audio { path }`)
    /// the server wrote under a content-addressed name, so the same content always has the same
    /// path (and an unchanged file): the engine's per-file decoded-media cache and its prefix
    /// KV reuse then work across requests that resend a conversation.
    ///
    /// Generation must stop soon after `cancel` becomes true (the engine checks it every
    /// token): the client went away, a stop string was produced, or the server is stopping.
    /// It may block while the model is busy with something else (e.g. the app's own chat).
    fn generate(
        &self,
        messages: &[Message],
        params: &SamplingParams,
        cancel: &AtomicBool,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<GenerationReport, BackendError>;
}

/// The model a [`Backend`] serves, as `GET /v1/models` lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelCard {
    /// The name clients put in `model`; requests naming another model get a 404.
    pub id: String,
    /// Context window in tokens: a longer prompt gets a 400.
    pub context_length: usize,
    /// Sampling settings for parameters a request leaves out (the checkpoint's defaults).
    pub defaults: SamplingParams,
    /// Unix seconds, shown as `created`.
    pub created: u64,
}

/// Why a [`Backend`] has no model to serve; both are answered with 503.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unavailable {
    #[error("the model is still loading; try again shortly")]
    Loading,
    #[error("no model is loaded: {0}")]
    NoModel(String),
}

/// A generation that did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// The request cannot be answered as it is (unreadable media, prompt longer than the
    /// context, a conversation the template rejects): 400 with this message.
    #[error("{0}")]
    InvalidRequest(String),
    /// 503.
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
    /// Anything else: 500 with this message.
    #[error("{0}")]
    Failed(String),
}

impl From<engine::Error> for BackendError {
    fn from(e: engine::Error) -> Self {
        use engine::Error as E;
        match e {
            E::Conversation(_) | E::Image { .. } | E::Audio { .. } | E::PromptTooLong { .. } => {
                Self::InvalidRequest(e.to_string())
            }
            _ => Self::Failed(e.to_string()),
        }
    }
}

/// How to serve.  [`Default`] listens on 127.0.0.1:8080 with no key.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// Loopback unless set otherwise: anything else exposes the model to the network.
    pub host: IpAddr,
    /// 0 picks a free port ([`Server::local_addr`] tells which).
    pub port: u16,
    /// When set, every request needs `Authorization: Bearer <key>` (else 401).
    pub api_key: Option<String>,
    /// Requests that may wait behind the running one; more get 429.
    pub queue: usize,
    /// Largest request body in bytes; a larger one gets 413.  Base64 media count here: the
    /// default (64 MiB) holds a 10-minute 16 kHz WAV recording.
    pub max_body_bytes: usize,
    /// Where request media are stored, one content-addressed file each (default: a fresh
    /// folder under the system's temporary folder, removed when the server stops).
    pub media_dir: Option<PathBuf>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 8080,
            api_key: None,
            queue: 32,
            max_body_bytes: 64 << 20,
            media_dir: None,
        }
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}{hint}", hint = bind_hint(source))]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("invalid server settings: {0}")]
    Config(String),
    #[error("cannot start the server: {0}")]
    Io(#[from] std::io::Error),
}

fn bind_hint(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::AddrInUse => {
            " (another program is using this port; choose another port)"
        }
        std::io::ErrorKind::PermissionDenied => " (ports below 1024 need special rights)",
        _ => "",
    }
}

/// A running server.  Dropping it stops it, like [`Server::stop`].
pub struct Server {
    addr: SocketAddr,
    running: Option<routes::Running>,
}

impl Server {
    /// Bind and start serving on a thread of its own; returns once the port is open.
    pub fn start(cfg: ServerConfig, backend: Arc<dyn Backend>) -> Result<Self, StartError> {
        let running = routes::Running::start(cfg, backend)?;
        Ok(Self {
            addr: running.local_addr(),
            running: Some(running),
        })
    }

    /// The address it listens on (the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The API's base URL, e.g. `http://127.0.0.1:8080/v1`.
    pub fn url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// A `curl` command that asks the served model one question, for users to copy.
    pub fn curl_example(&self, model: &str, api_key: Option<&str>) -> String {
        let auth = api_key
            .map(|k| format!(" -H 'Authorization: Bearer {k}'"))
            .unwrap_or_default();
        format!(
            "curl {}/chat/completions -H 'Content-Type: application/json'{auth} -d '{{\"model\": \"{model}\", \"messages\": [{{\"role\": \"user\", \"content\": \"Hello!\"}}]}}'",
            self.url()
        )
    }

    /// Stop gracefully: queued requests are refused, the running generation is cancelled at
    /// its next token, open responses end, and the port is closed when this returns.
    pub fn stop(mut self) {
        if let Some(running) = self.running.take() {
            running.stop();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            running.stop();
        }
    }
}
