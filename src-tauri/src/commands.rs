//! The IPC surface: each command hands straight to `AppState`.

use tauri::ipc::{Channel, InvokeBody, Request, Response};
use tauri::{AppHandle, Manager, Runtime, State};

use crate::api_server::{ApiServerRequest, ApiServerStatus};
use crate::app::{AppState, Exported, ReplyStarted, StreamEvent, DEFAULT_TITLE};
use crate::backend::validate_sampling;
use crate::error::{AppError, AppResult};
use crate::models::{DownloadEvent, LoadSettings, ModelsOverview, TokenState};
use crate::store::{Attachment, Conversation, ConversationSummary};
use crate::worker::ModelStatus;
use engine::SamplingParams;

fn sender(channel: Channel<StreamEvent>) -> impl Fn(StreamEvent) + Send + 'static {
    move |event| {
        // The window may be gone; the reply is saved regardless.
        let _ = channel.send(event);
    }
}

#[tauri::command]
pub fn model_status(state: State<'_, AppState>) -> ModelStatus {
    state.worker.status()
}

/// Load the model in `path` in the background and remember it for the next start.
#[tauri::command]
pub fn open_model(state: State<'_, AppState>, path: String) -> AppResult<()> {
    state.open_model(&path)
}

#[tauri::command]
pub fn models_overview(state: State<'_, AppState>) -> ModelsOverview {
    state.models_overview()
}

#[tauri::command]
pub fn save_token(state: State<'_, AppState>, token: String) -> AppResult<TokenState> {
    state.tokens.save(&token)
}

#[tauri::command]
pub fn forget_token(state: State<'_, AppState>) -> TokenState {
    state.tokens.forget()
}

#[tauri::command]
pub fn download_model(
    state: State<'_, AppState>,
    repo_id: String,
    on_event: Channel<DownloadEvent>,
) -> AppResult<()> {
    state.download_model(&repo_id, move |event| {
        let _ = on_event.send(event);
    })
}

#[tauri::command]
pub fn cancel_download(state: State<'_, AppState>) {
    state.downloads.cancel()
}

#[tauri::command]
pub fn set_load_settings(state: State<'_, AppState>, settings: LoadSettings) -> AppResult<()> {
    state.set_load_settings(&settings)
}

#[tauri::command]
pub fn list_conversations(
    state: State<'_, AppState>,
    query: Option<String>,
) -> AppResult<Vec<ConversationSummary>> {
    state
        .store
        .list_conversations(query.as_deref().unwrap_or(""))
}

#[tauri::command]
pub fn create_conversation(
    state: State<'_, AppState>,
    title: Option<String>,
) -> AppResult<ConversationSummary> {
    state
        .store
        .create_conversation(title.as_deref().unwrap_or(DEFAULT_TITLE))
}

#[tauri::command]
pub fn rename_conversation(state: State<'_, AppState>, id: i64, title: String) -> AppResult<()> {
    if title.trim().is_empty() {
        return Err(AppError::InvalidInput("a chat needs a name".into()));
    }
    state.store.rename_conversation(id, title.trim())
}

#[tauri::command]
pub fn delete_conversation(state: State<'_, AppState>, id: i64) -> AppResult<()> {
    state.delete_conversation(id)
}

#[tauri::command]
pub fn get_conversation(state: State<'_, AppState>, id: i64) -> AppResult<Conversation> {
    state.store.conversation(id)
}

#[tauri::command]
pub fn set_system_prompt(state: State<'_, AppState>, id: i64, prompt: String) -> AppResult<()> {
    state.store.set_system_prompt(id, &prompt)
}

/// `None` goes back to the model's defaults.
#[tauri::command]
pub fn set_sampling(
    state: State<'_, AppState>,
    id: i64,
    sampling: Option<SamplingParams>,
) -> AppResult<()> {
    if let Some(s) = &sampling {
        validate_sampling(s)?;
    }
    state.store.set_sampling(id, sampling.as_ref())
}

/// The raw request body is the file; its name comes in the `x-file-name` header (URI-encoded).
#[tauri::command]
pub fn save_attachment(state: State<'_, AppState>, request: Request<'_>) -> AppResult<Attachment> {
    let InvokeBody::Raw(bytes) = request.body() else {
        return Err(AppError::InvalidInput(
            "the attachment must be sent as raw bytes".into(),
        ));
    };
    let name = request
        .headers()
        .get("x-file-name")
        .and_then(|v| v.to_str().ok())
        .map(percent_decode)
        .unwrap_or_else(|| "attachment".into());
    state.store.save_attachment(&name, bytes)
}

#[tauri::command]
pub fn read_attachment(state: State<'_, AppState>, file_name: String) -> AppResult<Response> {
    let path = state.store.attachment_path(&file_name)?;
    Ok(Response::new(std::fs::read(path)?))
}

#[tauri::command]
pub fn send_message(
    state: State<'_, AppState>,
    conversation_id: i64,
    text: String,
    attachments: Vec<Attachment>,
    on_event: Channel<StreamEvent>,
) -> AppResult<ReplyStarted> {
    state.send_message(conversation_id, &text, &attachments, sender(on_event))
}

#[tauri::command]
pub fn regenerate(
    state: State<'_, AppState>,
    conversation_id: i64,
    on_event: Channel<StreamEvent>,
) -> AppResult<ReplyStarted> {
    state.regenerate(conversation_id, sender(on_event))
}

#[tauri::command]
pub fn edit_and_resend(
    state: State<'_, AppState>,
    conversation_id: i64,
    message_id: i64,
    text: String,
    on_event: Channel<StreamEvent>,
) -> AppResult<ReplyStarted> {
    state.edit_and_resend(conversation_id, message_id, &text, sender(on_event))
}

#[tauri::command]
pub fn stop_generation(state: State<'_, AppState>) {
    state.worker.stop()
}

#[tauri::command]
pub fn export_conversation(
    state: State<'_, AppState>,
    conversation_id: i64,
    format: String,
) -> AppResult<Exported> {
    state.export(conversation_id, &format)
}

#[tauri::command]
pub fn start_recording(state: State<'_, AppState>, on_level: Channel<f32>) -> AppResult<()> {
    state.start_recording(Box::new(move |level| {
        let _ = on_level.send(level);
    }))
}

#[tauri::command]
pub fn stop_recording(state: State<'_, AppState>) -> AppResult<Attachment> {
    state.stop_recording()
}

#[tauri::command]
pub fn cancel_recording(state: State<'_, AppState>) {
    state.cancel_recording()
}

#[tauri::command]
pub fn api_server_status(state: State<'_, AppState>) -> ApiServerStatus {
    state.api_server.status()
}

/// Switch the local API server on or off, or move it to another port. On a blocking thread:
/// stopping waits for a running request to end at its next token, which must not hold up the
/// window.
#[tauri::command]
pub async fn set_api_server<R: Runtime>(
    app: AppHandle<R>,
    settings: ApiServerRequest,
) -> AppResult<ApiServerStatus> {
    let settings = settings.validate()?;
    tauri::async_runtime::spawn_blocking(move || app.state::<AppState>().api_server.set(settings))
        .await
        .map_err(|e| AppError::Internal(format!("switching the API server: {e}")))?
}

/// `%XX` escapes as produced by `encodeURIComponent`.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn file_names_are_decoded_like_encode_uri_component() {
        assert_eq!(
            super::percent_decode("caf%C3%A9%20menu.png"),
            "café menu.png"
        );
        assert_eq!(super::percent_decode("100%"), "100%");
        assert_eq!(super::percent_decode("a%2"), "a%2");
    }
}
