//! The Local API server in the app: the `server` crate's OpenAI-compatible API over the app's
//! model thread, so that chats and API requests share the one model, one generation at a time.
//! Off by default and on loopback only; the switch and the port are remembered.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use engine::chat::Message;
use engine::{GenerationReport, SamplingParams};
use serde::{Deserialize, Serialize};
use server::{Backend, BackendError, ModelCard, Server, ServerConfig, Unavailable};

use crate::backend::ModelInfo;
use crate::error::{AppError, AppResult};
use crate::store::Store;
use crate::worker::{panic_message, ModelStatus, Worker};

/// Where the switch and the port are kept in the settings store.
const SETTINGS_KEY: &str = "api_server";
pub const DEFAULT_PORT: u16 = 8080;
/// How often a waiting request looks whether its client went away.
const CANCEL_POLL: Duration = Duration::from_millis(20);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiServerSettings {
    pub enabled: bool,
    pub port: u16,
}

impl Default for ApiServerSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            port: DEFAULT_PORT,
        }
    }
}

/// The settings as the window sends them: the port as typed, checked here.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiServerRequest {
    pub enabled: bool,
    pub port: Option<f64>,
}

impl ApiServerRequest {
    pub fn validate(&self) -> AppResult<ApiServerSettings> {
        match self.port {
            Some(p) if p.fract() == 0.0 && (1.0..=65535.0).contains(&p) => Ok(ApiServerSettings {
                enabled: self.enabled,
                port: p as u16,
            }),
            _ => Err(AppError::InvalidInput(
                "the port must be a whole number from 1 to 65535".into(),
            )),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiServerStatus {
    pub settings: ApiServerSettings,
    /// While serving: the API's base URL.
    pub url: Option<String>,
    /// The name clients send as `model` (that of the model loaded now).
    pub model: String,
    /// While serving: a `curl` command that asks the model one question.
    pub curl: Option<String>,
    /// Why it is not serving though switched on (say, the port is taken).
    pub error: Option<AppError>,
}

/// The API's name for a model: its repo id or folder name, or `gemma-3n-demo` for the demo.
fn model_id(info: &ModelInfo) -> String {
    if info.demo {
        "gemma-3n-demo".into()
    } else {
        info.name.clone()
    }
}

/// The app's model thread as the server sees it. A request waits for its turn behind the
/// app's reply (and the app's next reply waits behind it).
pub struct WorkerBackend {
    worker: Arc<Worker>,
    /// When the server started, shown as the model's `created`.
    created: u64,
}

enum Piece {
    Text(String),
    Done(AppResult<GenerationReport>),
}

impl Backend for WorkerBackend {
    fn model(&self) -> Result<ModelCard, Unavailable> {
        match self.worker.status() {
            ModelStatus::Ready { model } => Ok(ModelCard {
                id: model_id(&model),
                context_length: model.context_length,
                defaults: model.defaults,
                created: self.created,
            }),
            ModelStatus::Loading { .. } => Err(Unavailable::Loading),
            ModelStatus::Failed { error } => Err(Unavailable::NoModel(error.to_string())),
        }
    }

    fn generate(
        &self,
        messages: &[Message],
        params: &SamplingParams,
        cancel: &AtomicBool,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<GenerationReport, BackendError> {
        let (tx, rx) = channel();
        // The job outlives this borrow of `cancel`: it gets a flag of its own, kept in step.
        let job_cancel = Arc::new(AtomicBool::new(false));
        let (messages, params, flag) = (messages.to_vec(), params.clone(), job_cancel.clone());
        self.worker
            .queue(move |backend| {
                let result = if flag.load(Ordering::SeqCst) {
                    Err(AppError::Internal("cancelled before its turn".into()))
                } else {
                    let tokens = tx.clone();
                    catch_unwind(AssertUnwindSafe(|| {
                        backend.generate(&messages, &params, &flag, &mut |text| {
                            let _ = tokens.send(Piece::Text(text.to_owned()));
                        })
                    }))
                    .unwrap_or_else(|p| Err(AppError::Internal(panic_message(p))))
                };
                let _ = tx.send(Piece::Done(result));
            })
            .map_err(|e| BackendError::Failed(e.to_string()))?;
        loop {
            if cancel.load(Ordering::SeqCst) {
                job_cancel.store(true, Ordering::SeqCst);
            }
            match rx.recv_timeout(CANCEL_POLL) {
                Ok(Piece::Text(text)) => on_text(&text),
                Ok(Piece::Done(result)) => return result.map_err(backend_error),
                Err(RecvTimeoutError::Timeout) => {}
                // The model thread drops a job it has no model for.
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(match self.worker.status() {
                        ModelStatus::Loading { .. } => Unavailable::Loading,
                        _ => Unavailable::NoModel("the model was unloaded".into()),
                    }
                    .into())
                }
            }
        }
    }
}

fn backend_error(e: AppError) -> BackendError {
    match e {
        AppError::InvalidInput(_) | AppError::Attachment(_) => {
            BackendError::InvalidRequest(e.to_string())
        }
        AppError::ModelLoading => Unavailable::Loading.into(),
        other => BackendError::Failed(other.to_string()),
    }
}

/// The server while it runs, and why it is not running when it should be.
#[derive(Default)]
struct Running {
    server: Option<Server>,
    error: Option<AppError>,
}

pub struct ApiServer {
    worker: Arc<Worker>,
    store: Arc<Store>,
    running: Mutex<Running>,
}

impl ApiServer {
    pub fn new(worker: Arc<Worker>, store: Arc<Store>) -> Self {
        Self {
            worker,
            store,
            running: Mutex::default(),
        }
    }

    /// The saved settings; off on the default port when unset or unreadable.
    pub fn settings(&self) -> ApiServerSettings {
        self.store
            .setting(SETTINGS_KEY)
            .ok()
            .flatten()
            .and_then(|json| serde_json::from_str(&json).ok())
            .unwrap_or_default()
    }

    /// At the app's start: serves if it was left on.
    pub fn resume(&self) -> ApiServerStatus {
        let settings = self.settings();
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        self.apply(&mut running, settings);
        self.status_of(&running, settings)
    }

    /// Saves `settings` and starts, restarts or stops the server to match. A port that
    /// cannot be opened is not an error of the call: the status says why it is not serving.
    pub fn set(&self, settings: ApiServerSettings) -> AppResult<ApiServerStatus> {
        let json =
            serde_json::to_string(&settings).map_err(|e| AppError::Internal(e.to_string()))?;
        self.store.set_setting(SETTINGS_KEY, &json)?;
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        self.apply(&mut running, settings);
        Ok(self.status_of(&running, settings))
    }

    pub fn status(&self) -> ApiServerStatus {
        let running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        self.status_of(&running, self.settings())
    }

    fn apply(&self, running: &mut Running, settings: ApiServerSettings) {
        let serving_port = running.server.as_ref().map(|s| s.local_addr().port());
        if settings.enabled && serving_port == Some(settings.port) {
            return;
        }
        if let Some(server) = running.server.take() {
            tracing::info!("stopping the local API server on {}", server.url());
            server.stop();
        }
        running.error = None;
        if !settings.enabled {
            return;
        }
        let config = ServerConfig {
            port: settings.port,
            ..ServerConfig::default()
        };
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let backend = Arc::new(WorkerBackend {
            worker: self.worker.clone(),
            created,
        });
        match Server::start(config, backend) {
            Ok(server) => {
                tracing::info!("local API server serving at {}", server.url());
                running.server = Some(server);
            }
            Err(e) => {
                tracing::warn!("the local API server did not start: {e}");
                running.error = Some(AppError::ApiServer(e.to_string()));
            }
        }
    }

    fn status_of(&self, running: &Running, settings: ApiServerSettings) -> ApiServerStatus {
        let model = match self.worker.status() {
            ModelStatus::Ready { model } => model_id(&model),
            _ => "gemma-3n".into(),
        };
        let server = running.server.as_ref();
        ApiServerStatus {
            settings,
            url: server.map(Server::url),
            curl: server.map(|s| s.curl_example(&model, None)),
            model,
            error: running.error.clone(),
        }
    }
}
