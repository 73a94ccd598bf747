//! The HTTP side: the runtime and listener, authentication, and one handler per endpoint.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::multipart::{Multipart, MultipartError, MultipartRejection};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use engine::{Message, Part, Role};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api::{ChatRequest, Sampling};
use crate::error::ApiError;
use crate::media::{self, MediaStore};
use crate::queue::{Event, Finished, Job, Queue, Ticket};
use crate::{Backend, ModelCard, ServerConfig, StartError};

/// How long open connections get to finish once the server is stopping.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

struct AppState {
    backend: Arc<dyn Backend>,
    queue: Arc<Queue>,
    store: MediaStore,
    cfg: ServerConfig,
}

/// The server thread and how to stop it.
pub struct Running {
    addr: SocketAddr,
    queue: Arc<Queue>,
    shutdown: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    pub fn start(cfg: ServerConfig, backend: Arc<dyn Backend>) -> Result<Self, StartError> {
        if cfg.api_key.as_deref().is_some_and(|k| k.trim().is_empty()) {
            return Err(StartError::Config("the API key is empty".into()));
        }
        if cfg.max_body_bytes == 0 {
            return Err(StartError::Config(
                "the body size limit must be at least 1 byte".into(),
            ));
        }
        // Bound and run without touching the caller's thread's runtime, so that the app can
        // start the server from inside an async command.
        let wanted = SocketAddr::new(cfg.host, cfg.port);
        let bind_error = |source| StartError::Bind {
            addr: wanted,
            source,
        };
        let listener = std::net::TcpListener::bind(wanted).map_err(bind_error)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let queue = Arc::new(Queue::start(backend.clone(), cfg.queue)?);
        let state = Arc::new(AppState {
            backend,
            queue: queue.clone(),
            store: MediaStore::new(cfg.media_dir.clone())?,
            cfg,
        });
        let app = router(state);
        let (shutdown, mut stopping) = watch::channel(false);
        let mut grace_over = stopping.clone();
        // The server thread says whether it is listening before `start` returns.
        let (ready_tx, ready) = std::sync::mpsc::channel::<std::io::Result<()>>();
        let thread = std::thread::Builder::new()
            .name("api-server".into())
            .spawn(move || {
                let listening = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name("api-server")
                    .enable_all()
                    .build()
                    .and_then(|runtime| {
                        let listener =
                            runtime.block_on(async { TcpListener::from_std(listener) })?;
                        Ok((runtime, listener))
                    });
                let (runtime, listener) = match listening {
                    Ok(started) => {
                        let _ = ready_tx.send(Ok(()));
                        started
                    }
                    Err(e) => return drop(ready_tx.send(Err(e))),
                };
                runtime.block_on(async move {
                    let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                        let _ = stopping.wait_for(|s| *s).await;
                    });
                    tokio::select! {
                        result = serve => {
                            if let Err(e) = result {
                                tracing::error!("the API server failed: {e}");
                            }
                        }
                        _ = async {
                            let _ = grace_over.wait_for(|s| *s).await;
                            tokio::time::sleep(SHUTDOWN_GRACE).await;
                        } => {}
                    }
                });
                // Dropping the runtime closes the listener and every connection left.
                runtime.shutdown_timeout(Duration::from_millis(100));
            })?;
        ready.recv().map_err(|_| {
            std::io::Error::other("the API server thread ended before it was listening")
        })??;
        Ok(Self {
            addr,
            queue,
            shutdown,
            thread: Some(thread),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn stop(mut self) {
        self.queue.stop();
        let _ = self.shutdown.send(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn router(state: Arc<AppState>) -> Router {
    let limit = state.cfg.max_body_bytes;
    Router::new()
        .route("/v1/models", get(list_models))
        .route("/v1/models/{id}", get(get_model))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/audio/transcriptions", post(transcriptions))
        .fallback(unknown_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

async fn authenticate(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(key) = &state.cfg.api_key {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        match given {
            None => {
                return ApiError::unauthorized(
                    "this server needs an API key: send `Authorization: Bearer <key>`",
                )
                .into_response()
            }
            Some(given) if !same_secret(given.as_bytes(), key.as_bytes()) => {
                return ApiError::unauthorized("the API key is wrong").into_response()
            }
            Some(_) => {}
        }
    }
    next.run(request).await
}

/// Compares without stopping at the first difference, so timing does not reveal the key.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn unknown_route(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found(format!(
        "there is no {method} {} here; the API is /v1/models, /v1/chat/completions and /v1/audio/transcriptions",
        uri.path()
    ))
}

async fn wrong_method(method: Method, uri: Uri) -> Response {
    let mut e = ApiError::invalid(format!("{} does not take {method}", uri.path()));
    e.status = StatusCode::METHOD_NOT_ALLOWED;
    e.into_response()
}

fn model_json(card: &ModelCard) -> Value {
    json!({
        "id": card.id,
        "object": "model",
        "created": card.created,
        "owned_by": "gemma-chat",
        "context_length": card.context_length,
    })
}

async fn list_models(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let card = state.backend.model()?;
    Ok(Json(json!({"object": "list", "data": [model_json(&card)]})))
}

async fn get_model(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let card = state.backend.model()?;
    check_model(Some(&id), &card)?;
    Ok(Json(model_json(&card)))
}

fn check_model(asked: Option<&str>, card: &ModelCard) -> Result<(), ApiError> {
    match asked {
        Some(asked) if !asked.is_empty() && asked != card.id => {
            Err(ApiError::unknown_model(asked, &card.id))
        }
        _ => Ok(()),
    }
}

fn body_error(status: StatusCode, text: String, limit: usize) -> ApiError {
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::too_large(limit)
    } else {
        ApiError::invalid(format!("cannot read the request body: {text}"))
    }
}

/// Identifies one response: `id`, `created` and `model` of every object and chunk.
struct Reply {
    id: String,
    created: u64,
    model: String,
}

impl Reply {
    fn new(model: String) -> Self {
        static REPLIES: AtomicU64 = AtomicU64::new(0);
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Self {
            id: format!(
                "chatcmpl-{created:x}{:06x}",
                REPLIES.fetch_add(1, Ordering::Relaxed)
            ),
            created,
            model,
        }
    }

    fn chunk(&self, delta: Value, finish_reason: Option<&str>) -> SseEvent {
        self.chunk_with(
            json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}]),
            None,
        )
    }

    fn chunk_with(&self, choices: Value, usage: Option<Value>) -> SseEvent {
        let mut chunk = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": null,
            "choices": choices,
        });
        if let Some(usage) = usage {
            chunk["usage"] = usage;
        }
        SseEvent::default().data(chunk.to_string())
    }
}

fn usage(f: &Finished) -> Value {
    json!({
        "prompt_tokens": f.prompt_tokens,
        "completion_tokens": f.completion_tokens,
        "total_tokens": f.prompt_tokens + f.completion_tokens,
    })
}

async fn chat_completions(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    chat(state, body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn chat(
    state: Arc<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|e| body_error(e.status(), e.body_text(), state.cfg.max_body_bytes))?;
    let card = state.backend.model()?;
    let request: ChatRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::invalid(format!(
            "the body is not a valid chat completion request: {e}"
        ))
    })?;
    check_model(request.model.as_deref(), &card)?;
    if let Some(n) = request.n.filter(|&n| n != 1) {
        return Err(ApiError::invalid_param(
            "n",
            format!("only n = 1 is supported (one reply per request), not n = {n}"),
        ));
    }
    let params = request.sampling().resolve(&card)?;
    let stop = request.stop_strings();
    let streamed = request.stream.unwrap_or(false);
    let include_usage = request
        .stream_options
        .as_ref()
        .and_then(|o| o.include_usage)
        .unwrap_or(false);
    // Decoding base64 and writing files is blocking work.
    let store_state = state.clone();
    let messages = tokio::task::spawn_blocking(move || request.messages(&store_state.store))
        .await
        .map_err(|e| ApiError::internal(format!("reading the messages failed: {e}")))??;
    let (ticket, first) = enqueue(&state, messages, params, stop).await?;
    let reply = Reply::new(card.id);
    if streamed {
        return Ok(stream(reply, ticket, first, include_usage).into_response());
    }
    let (text, finished) = collect(ticket, first).await?;
    Ok(Json(json!({
        "id": reply.id,
        "object": "chat.completion",
        "created": reply.created,
        "model": reply.model,
        "system_fingerprint": null,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "logprobs": null,
            "finish_reason": finished.finish_reason,
        }],
        "usage": usage(&finished),
    }))
    .into_response())
}

/// Queue a job and wait for its first event, so that a request the model cannot take (bad
/// media, too long a prompt) still gets its error status rather than a broken stream.
async fn enqueue(
    state: &AppState,
    messages: Vec<Message>,
    params: engine::SamplingParams,
    stop: Vec<String>,
) -> Result<(Ticket, Event), ApiError> {
    let mut ticket = state.queue.submit(Job {
        messages,
        params,
        stop,
    })?;
    match ticket.events.recv().await {
        Some(Event::Failed(e)) => Err(e),
        Some(first) => Ok((ticket, first)),
        None => Err(ApiError::unavailable("the server is stopping")),
    }
}

/// The whole reply of a job.
async fn collect(mut ticket: Ticket, first: Event) -> Result<(String, Finished), ApiError> {
    let mut text = String::new();
    let mut event = Some(first);
    loop {
        match event {
            Some(Event::Text(piece)) => text.push_str(&piece),
            Some(Event::Done(finished)) => return Ok((text, finished)),
            Some(Event::Failed(e)) => return Err(e),
            None => return Err(ApiError::unavailable("the server is stopping")),
        }
        event = ticket.events.recv().await;
    }
}

/// SSE chunks: the role first, the text as it comes, the finish reason, usage if asked for,
/// then `[DONE]`.  The ticket lives in the stream: a client that goes away drops the stream
/// and so cancels the generation.
fn stream(
    reply: Reply,
    ticket: Ticket,
    first: Event,
    include_usage: bool,
) -> Sse<impl futures_util::Stream<Item = Result<SseEvent, Infallible>>> {
    let to_sse = move |reply: &Reply, event: Option<Event>| -> (Vec<SseEvent>, bool) {
        match event {
            Some(Event::Text(text)) => (vec![reply.chunk(json!({"content": text}), None)], false),
            Some(Event::Done(finished)) => {
                let mut out = vec![reply.chunk(json!({}), Some(finished.finish_reason))];
                if include_usage {
                    out.push(reply.chunk_with(json!([]), Some(usage(&finished))));
                }
                out.push(SseEvent::default().data("[DONE]"));
                (out, true)
            }
            Some(Event::Failed(e)) => (vec![SseEvent::default().data(e.body().to_string())], true),
            None => (
                vec![SseEvent::default().data(
                    ApiError::unavailable("the server is stopping")
                        .body()
                        .to_string(),
                )],
                true,
            ),
        }
    };
    let mut pending =
        VecDeque::from([reply.chunk(json!({"role": "assistant", "content": ""}), None)]);
    let (first, _) = to_sse(&reply, Some(first));
    pending.extend(first);
    let state = (pending, Some(ticket), reply);
    Sse::new(futures_util::stream::unfold(
        state,
        move |(mut pending, mut ticket, reply)| async move {
            loop {
                if let Some(event) = pending.pop_front() {
                    return Some((Ok(event), (pending, ticket, reply)));
                }
                let next = ticket.as_mut()?.events.recv().await;
                let (events, last) = to_sse(&reply, next);
                pending.extend(events);
                if last {
                    ticket = None;
                }
            }
        },
    ))
}

/// Spoken in `language` (if given), with `prompt` as context for names and spelling.
fn transcription_instruction(language: Option<&str>, prompt: Option<&str>) -> String {
    let mut text = String::from(
        "Transcribe this audio exactly, word for word. Reply with the transcription only.",
    );
    if let Some(language) = language.filter(|l| !l.trim().is_empty()) {
        text.push_str(&format!(" The speech is in {}.", language.trim()));
    }
    if let Some(prompt) = prompt.filter(|p| !p.trim().is_empty()) {
        text.push_str(&format!(
            " Context for names and spelling: {}",
            prompt.trim()
        ));
    }
    text
}

/// Room for about ten minutes of speech.
const TRANSCRIPTION_MAX_TOKENS: i64 = 4096;

fn form_number<T: std::str::FromStr>(
    value: Option<&str>,
    param: &'static str,
) -> Result<Option<T>, ApiError> {
    value
        .map(|v| {
            v.trim().parse::<T>().map_err(|_| {
                ApiError::invalid_param(param, format!("{param} `{v}` is not a number"))
            })
        })
        .transpose()
}

#[derive(Default)]
struct TranscriptionForm {
    file: Option<(Vec<u8>, Option<String>)>,
    model: Option<String>,
    prompt: Option<String>,
    language: Option<String>,
    response_format: Option<String>,
    temperature: Option<String>,
    max_tokens: Option<String>,
}

async fn read_form(mut form: Multipart, limit: usize) -> Result<TranscriptionForm, ApiError> {
    let field_error = |e: MultipartError| body_error(e.status(), e.body_text(), limit);
    let mut out = TranscriptionForm::default();
    while let Some(field) = form.next_field().await.map_err(field_error)? {
        let name = field.name().unwrap_or_default().to_string();
        if name == "file" {
            let file_name = field.file_name().map(str::to_owned);
            let bytes = field.bytes().await.map_err(field_error)?;
            out.file = Some((bytes.to_vec(), file_name));
            continue;
        }
        let slot = match name.as_str() {
            "model" => &mut out.model,
            "prompt" => &mut out.prompt,
            "language" => &mut out.language,
            "response_format" => &mut out.response_format,
            "temperature" => &mut out.temperature,
            // An extension: OpenAI's transcriptions have no limit.
            "max_tokens" => &mut out.max_tokens,
            // Unknown fields are ignored, like unknown JSON fields.
            _ => continue,
        };
        *slot = Some(field.text().await.map_err(field_error)?);
    }
    Ok(out)
}

async fn transcriptions(
    State(state): State<Arc<AppState>>,
    form: Result<Multipart, MultipartRejection>,
) -> Response {
    transcribe(state, form)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn transcribe(
    state: Arc<AppState>,
    form: Result<Multipart, MultipartRejection>,
) -> Result<Response, ApiError> {
    let limit = state.cfg.max_body_bytes;
    let form = form.map_err(|e| {
        ApiError::invalid(format!(
            "a transcription request is a multipart form with a `file`: {}",
            e.body_text()
        ))
    })?;
    let form = read_form(form, limit).await?;
    let card = state.backend.model()?;
    check_model(form.model.as_deref(), &card)?;
    let as_text = match form.response_format.as_deref() {
        None | Some("json") => false,
        Some("text") => true,
        Some(other) => {
            return Err(ApiError::invalid_param(
                "response_format",
                format!("response_format `{other}` is not supported (json or text)"),
            ))
        }
    };
    let temperature = form_number::<f64>(form.temperature.as_deref(), "temperature")?;
    let max_tokens = form_number::<i64>(form.max_tokens.as_deref(), "max_tokens")?;
    // A transcription is greedy unless asked otherwise.
    let params = Sampling {
        temperature: Some(temperature.unwrap_or(0.0)),
        top_p: None,
        top_k: None,
        max_tokens: Some(max_tokens.unwrap_or(TRANSCRIPTION_MAX_TOKENS)),
        seed: None,
    }
    .resolve(&card)?;
    let (bytes, name) = form
        .file
        .ok_or_else(|| ApiError::invalid_param("file", "the form has no `file` field"))?;
    let instruction = transcription_instruction(form.language.as_deref(), form.prompt.as_deref());
    let store_state = state.clone();
    let messages = tokio::task::spawn_blocking(move || -> Result<Vec<Message>, ApiError> {
        let audio = media::uploaded_audio(bytes, name.as_deref())?;
        let path = store_state
            .store
            .put(&audio)
            .map_err(|e| ApiError::internal(format!("cannot store the audio: {e}")))?;
        Ok(vec![Message {
            role: Role::User,
            content: vec![Part::Audio { path }, Part::Text { text: instruction }],
        }])
    })
    .await
    .map_err(|e| ApiError::internal(format!("reading the audio failed: {e}")))??;
    let (ticket, first) = enqueue(&state, messages, params, Vec::new()).await?;
    let (text, _) = collect(ticket, first).await?;
    let text = text.trim().to_string();
    Ok(if as_text {
        text.into_response()
    } else {
        Json(json!({"text": text})).into_response()
    })
}
