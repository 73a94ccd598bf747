//! Gemma Chat: the Tauri shell around the engine.

pub mod api_server;
pub mod app;
pub mod backend;
pub mod commands;
pub mod error;
pub mod model_backend;
pub mod models;
pub mod recorder;
pub mod store;
pub mod worker;

#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tauri::{Emitter, Manager, Runtime};
use tracing_appender::rolling::{RollingFileAppender, Rotation};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter};

use api_server::ApiServer;
use app::AppState;
use models::{hub_sources, Downloads, Keychain, Tokens};
use recorder::{FileSource, Microphone, Recorder};
use store::Store;
use worker::Worker;

/// Every command the UI may call (also listed in `build.rs` for the capability file).
macro_rules! handlers {
    () => {
        tauri::generate_handler![
            $crate::commands::model_status,
            $crate::commands::open_model,
            $crate::commands::models_overview,
            $crate::commands::save_token,
            $crate::commands::forget_token,
            $crate::commands::download_model,
            $crate::commands::cancel_download,
            $crate::commands::set_load_settings,
            $crate::commands::list_conversations,
            $crate::commands::create_conversation,
            $crate::commands::rename_conversation,
            $crate::commands::delete_conversation,
            $crate::commands::get_conversation,
            $crate::commands::set_system_prompt,
            $crate::commands::set_sampling,
            $crate::commands::save_attachment,
            $crate::commands::read_attachment,
            $crate::commands::send_message,
            $crate::commands::regenerate,
            $crate::commands::edit_and_resend,
            $crate::commands::stop_generation,
            $crate::commands::export_conversation,
            $crate::commands::start_recording,
            $crate::commands::stop_recording,
            $crate::commands::cancel_recording,
            $crate::commands::api_server_status,
            $crate::commands::set_api_server,
        ]
    };
}
#[cfg(test)]
pub(crate) use handlers;

/// The model to load at start: `GEMMA_CHAT_MODEL_DIR`, else the folder the user opened last,
/// else the bundled demo model (the tiny test fixture).
/// Longest microphone recording; a longer one is split into clips by the engine anyway, this
/// only bounds memory if the user forgets to stop.
const MAX_RECORDING_SECONDS: f64 = 600.0;

fn model_to_load<R: Runtime>(app: &tauri::AppHandle<R>, store: &Store) -> (PathBuf, bool) {
    if let Some(dir) = std::env::var_os("GEMMA_CHAT_MODEL_DIR") {
        return (dir.into(), false);
    }
    if let Ok(Some(dir)) = store.setting("model_dir") {
        return (dir.into(), false);
    }
    let bundled = app
        .path()
        .resource_dir()
        .map(|d| d.join("demo-model"))
        .ok()
        .filter(|d| d.join("config.json").is_file());
    let dir = bundled.unwrap_or_else(|| {
        PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/C/model"
        ))
    });
    (dir, true)
}

fn init<R: Runtime>(app: &tauri::AppHandle<R>) -> Result<AppState, Box<dyn std::error::Error>> {
    // `GEMMA_CHAT_DATA_DIR` keeps test runs away from the user's history.
    let data_dir = match std::env::var_os("GEMMA_CHAT_DATA_DIR") {
        Some(d) => PathBuf::from(d),
        None => app.path().app_data_dir()?,
    };
    let store = Arc::new(Store::open(&data_dir)?);
    let exports_dir = app
        .path()
        .download_dir()
        .unwrap_or_else(|_| data_dir.join("exports"));
    let events = app.clone();
    let worker = Arc::new(Worker::spawn(move |status| {
        if let Err(e) = events.emit("model-status", status) {
            tracing::warn!("telling the window the model status: {e}");
        }
    }));
    let recorder: Box<dyn Recorder> = match std::env::var_os("GEMMA_CHAT_TEST_MIC") {
        Some(path) => Box::new(FileSource::new(path.into())),
        None => Box::new(Microphone::new(MAX_RECORDING_SECONDS)),
    };
    let (model_dir, demo) = model_to_load(app, &store);
    let state = AppState {
        api_server: ApiServer::new(worker.clone(), store.clone()),
        store,
        worker,
        recorder: Mutex::new(recorder),
        exports_dir,
        downloads: Downloads::new(hf_hub::Cache::from_env(), hub_sources()),
        tokens: Tokens::new(Box::new(Keychain)),
    };
    state.load_model(model_dir, demo)?;
    // Left on last time: serving again (or saying why not) before the window asks.
    state.api_server.resume();
    Ok(state)
}

/// Log files: one a day, a week of them kept.
const LOG_FILES_KEPT: usize = 7;

/// Logs to stderr and to `gemma-chat.<date>.log` in the app's log folder (`GEMMA_CHAT_LOG_DIR`
/// overrides it, so tests keep the log as an artefact). `RUST_LOG` overrides the `info` level.
/// Each line is written as it comes, so a crash or a kill loses none.
fn init_logging<R: Runtime>(app: &tauri::AppHandle<R>) {
    let file = match std::env::var_os("GEMMA_CHAT_LOG_DIR") {
        Some(d) => Ok(PathBuf::from(d)),
        None => app.path().app_log_dir().map_err(|e| e.to_string()),
    }
    .and_then(|dir| {
        let appender = RollingFileAppender::builder()
            .rotation(Rotation::DAILY)
            .filename_prefix("gemma-chat")
            .filename_suffix("log")
            .max_log_files(LOG_FILES_KEPT)
            .build(&dir)
            .map_err(|e| format!("cannot write logs in {}: {e}", dir.display()))?;
        Ok((appender, dir))
    });
    let (file_layer, outcome) = match file {
        Ok((appender, dir)) => (
            Some(
                fmt::layer()
                    .with_ansi(false)
                    .with_thread_names(true)
                    .with_writer(appender),
            ),
            Ok(dir),
        ),
        Err(e) => (None, Err(e)),
    };
    tracing_subscriber::registry()
        .with(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with(
            fmt::layer()
                .with_thread_names(true)
                .with_writer(std::io::stderr),
        )
        .with(file_layer)
        .init();
    let version = env!("CARGO_PKG_VERSION");
    match outcome {
        Ok(dir) => tracing::info!("Gemma Chat {version}; log files in {}", dir.display()),
        Err(e) => tracing::warn!("Gemma Chat {version}; {e}: logging to stderr only"),
    }
}

/// Why no window can be opened, when there is no display to open it on. Checked before Tauri
/// starts, as its windowing library panics without one.
#[cfg(any(
    target_os = "linux",
    target_os = "dragonfly",
    target_os = "freebsd",
    target_os = "netbsd",
    target_os = "openbsd"
))]
fn no_display() -> Option<String> {
    if gtk::init().is_ok() {
        return None;
    }
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let which = match (var("WAYLAND_DISPLAY"), var("DISPLAY")) {
        (None, None) => "DISPLAY and WAYLAND_DISPLAY are unset".to_string(),
        (Some(w), _) => format!("WAYLAND_DISPLAY={w} could not be opened"),
        (None, Some(x)) => format!("DISPLAY={x} could not be opened"),
    };
    Some(format!(
        "Gemma Chat needs a graphical display and found none ({which}); without one, use the \
         command line: `gemma-chat chat --model M` to chat, `gemma-chat serve --model M` for the \
         OpenAI-compatible API"
    ))
}

#[cfg(not(any(
    target_os = "linux",
    target_os = "dragonfly",
    target_os = "freebsd",
    target_os = "netbsd",
    target_os = "openbsd"
)))]
fn no_display() -> Option<String> {
    None
}

/// Exit status when no window can be shown.
const NO_DISPLAY_EXIT: i32 = 2;

pub fn run() {
    if let Some(why) = no_display() {
        eprintln!("{why}");
        std::process::exit(NO_DISPLAY_EXIT);
    }
    tauri::Builder::default()
        .plugin(tauri_plugin_dialog::init())
        .setup(|app| {
            init_logging(app.handle());
            let state = init(app.handle())?;
            app.manage(state);
            Ok(())
        })
        .invoke_handler(handlers!())
        .run(tauri::generate_context!())
        .expect("error while running Gemma Chat");
}
