//! The models the app offers to download, the Hugging Face token, and the download itself.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use engine::download::{self, Outcome, Progress, Source};
use engine::{LoadOptions, WeightFormat};
use hf_hub::Cache;
use serde::{Deserialize, Serialize};

use crate::error::{AppError, AppResult};
use crate::worker::panic_message;

/// A model the first-run view offers, with what it costs.
pub struct Known {
    pub id: &'static str,
    pub label: &'static str,
    pub download_bytes: u64,
    /// Peak resident memory per weight format.
    pub ram: [RamNeed; 4],
}

/// Memory a model needs in one weight format.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RamNeed {
    pub weights: &'static str,
    pub bytes: u64,
    /// Peak RSS measured in docs/benchmarks.md (E2B sitting C; E4B at q4k), or estimated.
    pub measured: bool,
}

const fn ram(weights: &'static str, mib: u64, measured: bool) -> RamNeed {
    RamNeed {
        weights,
        bytes: mib << 20,
        measured,
    }
}

pub const KNOWN: [Known; 2] = [
    Known {
        id: "google/gemma-3n-E2B-it",
        label: "Gemma 3n E2B (instruction-tuned)",
        download_bytes: 10_900_000_000,
        ram: [
            ram("q4k", 1_582, true),
            ram("q8_0", 2_605, true),
            ram("bf16", 4_770, true),
            ram("f32", 9_000, false),
        ],
    },
    Known {
        id: "google/gemma-3n-E4B-it",
        label: "Gemma 3n E4B (instruction-tuned)",
        download_bytes: 15_700_000_000,
        ram: [
            ram("q4k", 2_805, true),
            ram("q8_0", 4_200, false),
            ram("bf16", 7_700, false),
            ram("f32", 15_000, false),
        ],
    },
];

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelChoice {
    pub id: &'static str,
    pub label: &'static str,
    pub download_bytes: u64,
    pub ram: Vec<RamNeed>,
    /// The folder to load when every file is in the cache: no network needed.
    pub local_path: Option<String>,
    /// Bytes a previous, interrupted download left, which the next one continues from.
    pub partial_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenState {
    pub saved: bool,
    /// False when there is no OS keychain (e.g. no D-Bus session): the token lasts the session.
    pub keychain: bool,
    pub message: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelsOverview {
    pub choices: Vec<ModelChoice>,
    pub cache_dir: String,
    pub free_bytes: Option<u64>,
    pub token: TokenState,
    /// The repo being downloaded, if any.
    pub downloading: Option<String>,
    pub load_settings: LoadSettings,
}

/// What a download sends to the UI.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "camelCase")]
pub enum DownloadEvent {
    Progress { progress: Progress },
    Done { path: String },
    Cancelled,
    Error { error: AppError },
}

/// Where the token is kept between runs.
pub trait TokenStore: Send + Sync {
    fn get(&self) -> Result<Option<String>, String>;
    fn set(&self, token: &str) -> Result<(), String>;
    fn delete(&self) -> Result<(), String>;
}

/// The OS keychain: Secret Service on Linux, Keychain on macOS, Credential Manager on Windows.
pub struct Keychain;

impl Keychain {
    fn entry() -> Result<keyring::Entry, String> {
        keyring::Entry::new("dev.gemmachat.app", "huggingface-token").map_err(|e| e.to_string())
    }
}

impl TokenStore for Keychain {
    fn get(&self) -> Result<Option<String>, String> {
        match Self::entry()?.get_password() {
            Ok(t) => Ok(Some(t)),
            Err(keyring::Error::NoEntry) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }

    fn set(&self, token: &str) -> Result<(), String> {
        Self::entry()?
            .set_password(token)
            .map_err(|e| e.to_string())
    }

    fn delete(&self) -> Result<(), String> {
        match Self::entry()?.delete_credential() {
            Ok(()) | Err(keyring::Error::NoEntry) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// The token: in the keychain when there is one, else in memory for this session only. Never
/// in a file.
pub struct Tokens {
    store: Box<dyn TokenStore>,
    session: Mutex<Option<String>>,
}

fn no_keychain(why: &str) -> TokenState {
    TokenState {
        saved: false,
        keychain: false,
        message: Some(format!(
            "No OS keychain is available ({why}), so the token is kept for this session only."
        )),
    }
}

impl Tokens {
    pub fn new(store: Box<dyn TokenStore>) -> Self {
        Self {
            store,
            session: Mutex::new(None),
        }
    }

    fn session(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.session.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn token(&self) -> Option<String> {
        self.session()
            .clone()
            .or_else(|| self.store.get().ok().flatten())
    }

    pub fn state(&self) -> TokenState {
        let in_session = self.session().is_some();
        match self.store.get() {
            Ok(saved) => TokenState {
                saved: saved.is_some() || in_session,
                keychain: true,
                message: None,
            },
            Err(e) => TokenState {
                saved: in_session,
                ..no_keychain(&e)
            },
        }
    }

    pub fn save(&self, token: &str) -> AppResult<TokenState> {
        let token = token.trim();
        if token.is_empty() || token.chars().any(char::is_whitespace) {
            return Err(AppError::InvalidInput(
                "paste a Hugging Face access token (it starts with hf_)".into(),
            ));
        }
        Ok(match self.store.set(token) {
            Ok(()) => {
                *self.session() = None;
                TokenState {
                    saved: true,
                    keychain: true,
                    message: None,
                }
            }
            Err(e) => {
                *self.session() = Some(token.to_string());
                TokenState {
                    saved: true,
                    ..no_keychain(&e)
                }
            }
        })
    }

    pub fn forget(&self) -> TokenState {
        *self.session() = None;
        let _ = self.store.delete();
        self.state()
    }
}

/// Makes the source for a download from the token (the Hub in the app, a fake in tests).
pub type SourceFactory =
    Box<dyn Fn(Option<String>) -> engine::Result<Box<dyn Source>> + Send + Sync>;

pub fn hub_sources() -> SourceFactory {
    Box::new(|token| Ok(Box::new(download::HubSource::new(None, token)?) as Box<dyn Source>))
}

/// How often a download's progress goes to the log.
const LOG_EVERY_BYTES: u64 = 100_000_000;

/// The download under way: its repo, and the flag that stops it.
struct Running {
    repo_id: String,
    cancel: Arc<AtomicBool>,
}

/// One download at a time, into hf-hub's cache.
pub struct Downloads {
    pub cache: Cache,
    sources: SourceFactory,
    /// Shared with the download thread, which empties it when done.
    slot: Arc<Mutex<Option<Running>>>,
}

impl Downloads {
    pub fn new(cache: Cache, sources: SourceFactory) -> Self {
        Self {
            cache,
            sources,
            slot: Arc::default(),
        }
    }

    fn running(&self) -> std::sync::MutexGuard<'_, Option<Running>> {
        self.slot.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn current(&self) -> Option<String> {
        self.running().as_ref().map(|r| r.repo_id.clone())
    }

    pub fn choices(&self) -> Vec<ModelChoice> {
        KNOWN
            .iter()
            .map(|k| ModelChoice {
                id: k.id,
                label: k.label,
                download_bytes: k.download_bytes,
                ram: k.ram.to_vec(),
                local_path: engine::cached_model(&self.cache, k.id)
                    .map(|p| p.display().to_string()),
                partial_bytes: download::partial_bytes(&self.cache, k.id),
            })
            .collect()
    }

    /// Starts fetching `repo_id` on its own thread; `on_event` hears progress and the end.
    pub fn start(
        &self,
        repo_id: &str,
        token: Option<String>,
        on_event: impl Fn(DownloadEvent) + Send + 'static,
    ) -> AppResult<()> {
        let mut running = self.running();
        if let Some(r) = running.as_ref() {
            return Err(AppError::InvalidInput(format!(
                "{} is already downloading; cancel it first",
                r.repo_id
            )));
        }
        let source = (self.sources)(token).map_err(|e| AppError::Download(e.to_string()))?;
        let cancel = Arc::new(AtomicBool::new(false));
        *running = Some(Running {
            repo_id: repo_id.to_string(),
            cancel: cancel.clone(),
        });
        let (cache, repo_id, slot) = (self.cache.clone(), repo_id.to_string(), self.slot.clone());
        std::thread::Builder::new()
            .name("download".into())
            .spawn(move || {
                tracing::info!("downloading {repo_id} into {}", cache.path().display());
                let started = Instant::now();
                let mut logged = 0;
                let result = catch_unwind(AssertUnwindSafe(|| {
                    download::download(&*source, &cache, &repo_id, &cancel, &mut |p| {
                        if p.done_bytes >= logged + LOG_EVERY_BYTES {
                            logged = p.done_bytes;
                            tracing::info!(
                                "{repo_id}: {} of {} MB, {:.1} MB/s",
                                p.done_bytes / 1_000_000,
                                p.total_bytes / 1_000_000,
                                p.bytes_per_second / 1e6
                            );
                        }
                        on_event(DownloadEvent::Progress {
                            progress: p.clone(),
                        })
                    })
                    .map_err(|e| AppError::Download(e.to_string()))
                }))
                .unwrap_or_else(|p| Err(AppError::Internal(panic_message(p))));
                let seconds = started.elapsed().as_secs_f64();
                match &result {
                    Ok(Outcome::Complete(path)) => {
                        tracing::info!("{repo_id} downloaded in {seconds:.1} s: {}", path.display())
                    }
                    Ok(Outcome::Cancelled) => {
                        tracing::info!("{repo_id}: download cancelled after {seconds:.1} s")
                    }
                    Err(e) => tracing::error!("{repo_id}: download failed: {e}"),
                }
                // Free the slot before the last event, so the UI can start another at once.
                *slot.lock().unwrap_or_else(|p| p.into_inner()) = None;
                on_event(match result {
                    Ok(Outcome::Complete(path)) => DownloadEvent::Done {
                        path: path.display().to_string(),
                    },
                    Ok(Outcome::Cancelled) => DownloadEvent::Cancelled,
                    Err(error) => DownloadEvent::Error { error },
                });
            })
            .map_err(|e| {
                *running = None;
                AppError::Internal(format!("cannot start the download: {e}"))
            })?;
        Ok(())
    }

    pub fn cancel(&self) {
        if let Some(r) = self.running().as_ref() {
            r.cancel.store(true, Ordering::SeqCst);
        }
    }
}

/// Weight format, threads and model sizes for the next model load (the CLI's `--quant`,
/// `--threads` and `--slice`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadSettings {
    /// `f32`, `bf16`, `q8_0` or `q4k`.
    pub weights: String,
    /// `None`: one per core.
    pub threads: Option<usize>,
    /// The MatFormer slice chosen for a model, by its path; a model not listed loads whole.
    #[serde(default)]
    pub sizes: BTreeMap<String, String>,
}

impl Default for LoadSettings {
    fn default() -> Self {
        Self {
            weights: "f32".into(),
            threads: None,
            sizes: BTreeMap::new(),
        }
    }
}

impl LoadSettings {
    pub fn to_options(&self) -> AppResult<LoadOptions> {
        if !["f32", "bf16", "q8_0", "q4k"].contains(&self.weights.as_str()) {
            return Err(AppError::InvalidInput(format!(
                "unknown weight format {:?}; choose f32, bf16, q8_0 or q4k",
                self.weights
            )));
        }
        let weights = WeightFormat::from_str(&self.weights)
            .map_err(|e| AppError::InvalidInput(e.to_string()))?;
        if self.threads.is_some_and(|t| t == 0 || t > 1024) {
            return Err(AppError::InvalidInput(
                "threads must be between 1 and 1024 (or empty for one per core)".into(),
            ));
        }
        Ok(LoadOptions {
            weights,
            threads: self.threads,
            ..LoadOptions::default()
        })
    }
}
