//! Command tests: through Tauri's IPC router on the mock runtime, and on `AppState` directly
//! where the streamed events are needed.

use std::path::Path;
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use engine::chat::Part;
use serde_json::{json, Value};
use tauri::ipc::{CallbackFn, InvokeBody};
use tauri::test::{get_ipc_response, mock_builder, MockRuntime, INVOKE_KEY};
use tauri::webview::InvokeRequest;
use tauri::{Manager, WebviewWindow};

use crate::api_server::{ApiServer, ApiServerSettings};
use crate::app::{to_engine_messages, AppState, StreamEvent};
use crate::backend::scripted::ScriptedBackend;
use crate::backend::{ChatBackend, StopReason};
use crate::error::AppError;
use crate::models::{DownloadEvent, Downloads, TokenStore, Tokens};
use crate::recorder::{FileSource, Recorder, Unavailable};
use crate::store::{Attachment, Status, Store};
use crate::worker::{ModelStatus, Worker};
use engine::download::{Body, Listing, RemoteFile, Source};
use hf_hub::Cache;

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/C")
        .join(name)
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn state(dir: &Path, backend: ScriptedBackend, recorder: Box<dyn Recorder>) -> AppState {
    let worker = Arc::new(Worker::spawn(|_| {}));
    worker
        .load(
            "scripted".into(),
            Box::new(move |_| Ok(Box::new(backend) as Box<dyn ChatBackend>)),
        )
        .unwrap();
    wait_for("the model", || {
        matches!(worker.status(), ModelStatus::Ready { .. })
    });
    let store = Arc::new(Store::open(dir).unwrap());
    AppState {
        api_server: ApiServer::new(worker.clone(), store.clone()),
        store,
        worker,
        recorder: Mutex::new(recorder),
        exports_dir: dir.join("exports"),
        downloads: Downloads::new(Cache::new(dir.join("hub")), FakeHub::sources(FakeHub::ok())),
        tokens: Tokens::new(Box::new(MemoryTokens::default())),
    }
}

fn collector() -> (impl Fn(StreamEvent) + Send + 'static, Receiver<StreamEvent>) {
    let (tx, rx) = channel();
    (move |e| tx.send(e).unwrap(), rx)
}

/// Events until the reply ends.
fn drain(rx: &Receiver<StreamEvent>) -> Vec<StreamEvent> {
    let mut events = Vec::new();
    loop {
        let e = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("reply ended");
        let end = !matches!(e, StreamEvent::Token { .. } | StreamEvent::Waiting);
        events.push(e);
        if end {
            return events;
        }
    }
}

fn mock_app(state: AppState) -> (tauri::App<MockRuntime>, WebviewWindow<MockRuntime>) {
    let app = mock_builder()
        .plugin(tauri_plugin_dialog::init())
        .manage(state)
        .invoke_handler(crate::handlers!())
        .build(tauri::generate_context!())
        .unwrap();
    let webview = tauri::WebviewWindowBuilder::new(&app, "main", Default::default())
        .build()
        .unwrap();
    (app, webview)
}

fn invoke(webview: &WebviewWindow<MockRuntime>, cmd: &str, args: Value) -> Result<Value, Value> {
    get_ipc_response(
        webview,
        InvokeRequest {
            cmd: cmd.into(),
            callback: CallbackFn(0),
            error: CallbackFn(1),
            // The app's own origin, to which the capability file applies.
            url: if cfg!(windows) {
                "http://tauri.localhost"
            } else {
                "tauri://localhost"
            }
            .parse()
            .unwrap(),
            body: InvokeBody::Json(args),
            headers: Default::default(),
            invoke_key: INVOKE_KEY.to_string(),
        },
    )
    .map(|body| body.deserialize::<Value>().unwrap())
}

#[test]
fn conversations_through_ipc() {
    let dir = tempfile::tempdir().unwrap();
    let (_app, w) = mock_app(state(
        dir.path(),
        ScriptedBackend::new(&[]),
        Box::new(Unavailable),
    ));
    let a = invoke(&w, "create_conversation", json!({})).unwrap();
    assert_eq!(a["title"], "New chat");
    let b = invoke(&w, "create_conversation", json!({"title": "Plants"})).unwrap();
    invoke(
        &w,
        "rename_conversation",
        json!({"id": a["id"], "title": "Birds"}),
    )
    .unwrap();
    let all = invoke(&w, "list_conversations", json!({})).unwrap();
    assert_eq!(all.as_array().unwrap().len(), 2);
    let found = invoke(&w, "list_conversations", json!({"query": "bird"})).unwrap();
    assert_eq!(found[0]["title"], "Birds");
    assert_eq!(found.as_array().unwrap().len(), 1);
    invoke(&w, "delete_conversation", json!({"id": b["id"]})).unwrap();
    let err = invoke(&w, "get_conversation", json!({"id": b["id"]})).unwrap_err();
    assert_eq!(err["kind"], "notFound");
    assert!(err["message"].as_str().unwrap().contains("does not exist"));
    let err = invoke(
        &w,
        "rename_conversation",
        json!({"id": a["id"], "title": "  "}),
    )
    .unwrap_err();
    assert_eq!(err["kind"], "invalidInput");
    let err = invoke(
        &w,
        "set_sampling",
        json!({"id": a["id"], "sampling":
        {"temperature": -1.0, "topK": 5, "topP": 0.9, "maxNewTokens": 10, "seed": 0}}),
    )
    .unwrap_err();
    assert_eq!(err["kind"], "invalidInput");
    assert!(err["message"].as_str().unwrap().contains("temperature"));
    let status = invoke(&w, "model_status", json!({})).unwrap();
    assert_eq!(status["state"], "ready");
    assert_eq!(status["model"]["demo"], true);
}

#[test]
fn send_message_through_ipc_saves_the_streamed_reply() {
    let dir = tempfile::tempdir().unwrap();
    let (app, w) = mock_app(state(
        dir.path(),
        ScriptedBackend::new(&["Hel", "lo ", "there"]),
        Box::new(Unavailable),
    ));
    let conv = invoke(&w, "create_conversation", json!({})).unwrap();
    let started = invoke(
        &w,
        "send_message",
        json!({"conversationId": conv["id"], "text": "Hi!\nsecond line", "attachments": [],
               "onEvent": "__CHANNEL__:1"}),
    )
    .unwrap();
    assert!(started["replyId"].as_i64().unwrap() > started["userMessageId"].as_i64().unwrap());
    let state = app.state::<AppState>();
    wait_for("the reply", || !state.worker.is_busy());
    let c = invoke(&w, "get_conversation", json!({"id": conv["id"]})).unwrap();
    assert_eq!(c["title"], "Hi!", "the first line names a new chat");
    assert_eq!(c["messages"][0]["text"], "Hi!\nsecond line");
    assert_eq!(c["messages"][1]["text"], "Hello there");
    assert_eq!(c["messages"][1]["status"], "done");
    assert_eq!(c["messages"][1]["stats"]["generatedTokens"], 3);
}

#[test]
fn reply_streams_then_ends_and_a_second_request_is_refused_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    let mut backend = ScriptedBackend::new(&["a", "b", "c", "d"]);
    backend.delay = Duration::from_millis(100);
    let s = state(dir.path(), backend, Box::new(Unavailable));
    let conv = s.store.create_conversation("t").unwrap().id;
    let other = s.store.create_conversation("u").unwrap().id;
    let (tx, rx) = collector();
    s.send_message(conv, "one", &[], tx).unwrap();
    let (tx2, _rx2) = collector();
    assert_eq!(
        s.send_message(other, "two", &[], tx2).unwrap_err(),
        AppError::Busy
    );
    assert_eq!(
        s.store.conversation(other).unwrap().messages.len(),
        0,
        "refusal changes nothing"
    );
    let events = drain(&rx);
    let tokens: String = events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::Token { text } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(tokens, "abcd");
    assert!(
        matches!(events.last(), Some(StreamEvent::Done { stats }) if stats.stop_reason == StopReason::Eos)
    );
    // Free as soon as the end is announced: the next message can be sent at once.
    assert!(!s.worker.is_busy());
    let (tx3, rx3) = collector();
    s.send_message(other, "two", &[], tx3).unwrap();
    drain(&rx3);
}

#[test]
fn stop_keeps_the_partial_reply() {
    let dir = tempfile::tempdir().unwrap();
    let pieces: Vec<String> = (0..200).map(|i| format!("w{i} ")).collect();
    let mut backend = ScriptedBackend::new(&pieces.iter().map(|s| s.as_str()).collect::<Vec<_>>());
    backend.delay = Duration::from_millis(20);
    let s = state(dir.path(), backend, Box::new(Unavailable));
    let conv = s.store.create_conversation("t").unwrap().id;
    let (tx, rx) = collector();
    let started = s.send_message(conv, "go", &[], tx).unwrap();
    assert!(matches!(rx.recv().unwrap(), StreamEvent::Token { .. }));
    s.worker.stop();
    let events = drain(&rx);
    let Some(StreamEvent::Done { stats }) = events.last() else {
        panic!("{events:?}")
    };
    assert_eq!(stats.stop_reason, StopReason::Cancelled);
    assert!(stats.generated_tokens < 200);
    wait_for("the slot", || !s.worker.is_busy());
    let reply = &s.store.conversation(conv).unwrap().messages[1];
    assert_eq!(reply.id, started.reply_id);
    assert_eq!(reply.status, Status::Stopped);
    assert!(reply.text.starts_with("w0 "));
    assert_eq!(
        reply.text.split_whitespace().count(),
        stats.generated_tokens
    );
}

#[test]
fn deleting_a_chat_mid_reply_stops_it_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let pieces: Vec<String> = (0..500).map(|i| i.to_string()).collect();
    let mut backend = ScriptedBackend::new(&pieces.iter().map(|s| s.as_str()).collect::<Vec<_>>());
    backend.delay = Duration::from_millis(10);
    let s = state(dir.path(), backend, Box::new(Unavailable));
    let conv = s.store.create_conversation("t").unwrap().id;
    let (tx, rx) = collector();
    s.send_message(conv, "go", &[], tx).unwrap();
    rx.recv().unwrap();
    s.delete_conversation(conv).unwrap();
    let events = drain(&rx);
    assert!(
        matches!(events.last(), Some(StreamEvent::Done { stats }) if stats.stop_reason == StopReason::Cancelled)
    );
    wait_for("the slot", || !s.worker.is_busy());
    assert!(s.store.list_conversations("").unwrap().is_empty());
}

#[test]
fn regenerate_and_edit_replace_what_follows() {
    let dir = tempfile::tempdir().unwrap();
    let backend = ScriptedBackend::new(&["ok"]);
    let seen = backend.seen.clone();
    let s = state(dir.path(), backend, Box::new(Unavailable));
    let conv = s.store.create_conversation("t").unwrap().id;
    s.store.set_system_prompt(conv, "Be brief.").unwrap();
    for text in ["first", "second"] {
        let (tx, rx) = collector();
        s.send_message(conv, text, &[], tx).unwrap();
        drain(&rx);
        wait_for("the slot", || !s.worker.is_busy());
    }
    let before = s.store.conversation(conv).unwrap().messages;
    assert_eq!(before.len(), 4);
    let (tx, rx) = collector();
    let r = s.regenerate(conv, tx).unwrap();
    drain(&rx);
    wait_for("the slot", || !s.worker.is_busy());
    let after = s.store.conversation(conv).unwrap().messages;
    assert_eq!(after.len(), 4);
    assert_eq!(r.user_message_id, before[2].id);
    assert_ne!(after[3].id, before[3].id, "the old reply is replaced");

    let (tx, _rx) = collector();
    let err = s.edit_and_resend(conv, after[1].id, "x", tx).unwrap_err();
    assert_eq!(err.kind(), "invalidInput", "replies cannot be edited");
    let (tx, rx) = collector();
    s.edit_and_resend(conv, after[0].id, "first, edited", tx)
        .unwrap();
    drain(&rx);
    wait_for("the slot", || !s.worker.is_busy());
    let edited = s.store.conversation(conv).unwrap().messages;
    assert_eq!(edited.len(), 2);
    assert_eq!(edited[0].text, "first, edited");
    let last = seen.lock().unwrap().last().unwrap().clone();
    assert_eq!(
        last.len(),
        2,
        "system prompt + the edited message: {last:?}"
    );
    assert_eq!(last[0].text_content(), "Be brief.");
    assert_eq!(last[1].text_content(), "first, edited");
}

#[test]
fn backend_errors_and_panics_reach_the_ui_as_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let mut backend = ScriptedBackend::new(&[]);
    backend.fail_with = Some(AppError::Attachment("image x.png: cannot decode".into()));
    let s = state(dir.path(), backend, Box::new(Unavailable));
    let conv = s.store.create_conversation("t").unwrap().id;
    let (tx, rx) = collector();
    s.send_message(conv, "look", &[], tx).unwrap();
    let Some(StreamEvent::Error { error }) = drain(&rx).pop() else {
        panic!()
    };
    assert_eq!(error.kind(), "attachment");
    wait_for("the slot", || !s.worker.is_busy());
    let reply = &s.store.conversation(conv).unwrap().messages[1];
    assert_eq!(reply.status, Status::Error);
    assert_eq!(reply.error.as_deref(), Some("image x.png: cannot decode"));

    let dir = tempfile::tempdir().unwrap();
    let mut backend = ScriptedBackend::new(&[]);
    backend.panic = true;
    let s = state(dir.path(), backend, Box::new(Unavailable));
    let conv = s.store.create_conversation("t").unwrap().id;
    let (tx, rx) = collector();
    s.send_message(conv, "boom", &[], tx).unwrap();
    let Some(StreamEvent::Error { error }) = drain(&rx).pop() else {
        panic!()
    };
    assert_eq!(error.kind(), "internal");
    assert!(error.to_string().contains("scripted backend panics"));
    wait_for("the slot", || !s.worker.is_busy());
}

#[test]
fn no_model_means_a_clear_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let (store, worker) = (
        Arc::new(Store::open(dir.path()).unwrap()),
        Arc::new(Worker::spawn(|_| {})),
    );
    let s = AppState {
        api_server: ApiServer::new(worker.clone(), store.clone()),
        store,
        worker,
        recorder: Mutex::new(Box::new(Unavailable)),
        exports_dir: dir.path().join("exports"),
        downloads: Downloads::new(
            Cache::new(dir.path().join("hub")),
            FakeHub::sources(FakeHub::ok()),
        ),
        tokens: Tokens::new(Box::new(MemoryTokens::default())),
    };
    // A model folder that has gone missing since it was last used.
    s.load_model("/missing".into(), false).unwrap();
    wait_for("the load", || {
        matches!(s.worker.status(), ModelStatus::Failed { .. })
    });
    let conv = s.store.create_conversation("t").unwrap().id;
    let (tx, _rx) = collector();
    let err = s.send_message(conv, "hi", &[], tx).unwrap_err();
    assert_eq!(err.kind(), "model");
    assert!(err.to_string().contains("no config.json"), "{err}");
    assert!(s.store.conversation(conv).unwrap().messages.is_empty());
}

#[test]
fn attachments_reach_the_model_as_media_parts_and_are_exported() {
    let dir = tempfile::tempdir().unwrap();
    let backend = ScriptedBackend::new(&["A ", "cat."]);
    let seen = backend.seen.clone();
    let s = state(dir.path(), backend, Box::new(Unavailable));
    let (_app, w) = mock_app(s);
    let s = _app.state::<AppState>();
    let image = s
        .store
        .save_attachment("cat.png", &std::fs::read(fixture("image.png")).unwrap())
        .unwrap();
    let audio = s
        .store
        .save_attachment(
            "hi.wav",
            &std::fs::read(fixture("audio_16k_mono.wav")).unwrap(),
        )
        .unwrap();
    let conv = s.store.create_conversation("New chat").unwrap().id;

    let forged = Attachment {
        hash: "0".repeat(64),
        ..image.clone()
    };
    let (tx, _rx) = collector();
    assert_eq!(
        s.send_message(conv, "x", &[forged], tx).unwrap_err().kind(),
        "notFound"
    );

    let (tx, rx) = collector();
    s.send_message(conv, "", &[image.clone(), audio.clone()], tx)
        .unwrap();
    drain(&rx);
    wait_for("the slot", || !s.worker.is_busy());
    let history = seen.lock().unwrap()[0].clone();
    match &history[0].content[..] {
        [Part::Image { path: i }, Part::Audio { path: a }, Part::Text { .. }] => {
            assert!(i.is_file() && a.is_file());
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(s.store.conversation(conv).unwrap().title, "cat.png");

    let bytes = invoke(
        &w,
        "read_attachment",
        json!({"fileName": image.file_name()}),
    );
    assert!(bytes.is_ok());
    let md = invoke(
        &w,
        "export_conversation",
        json!({"conversationId": conv, "format": "markdown"}),
    )
    .unwrap();
    let content = md["content"].as_str().unwrap();
    assert!(content.contains("## Gemma\n\nA cat."), "{content}");
    assert!(content.contains(&format!("![cat.png](attachments/{})", image.file_name())));
    assert!(Path::new(md["path"].as_str().unwrap()).is_file());
    let js = invoke(
        &w,
        "export_conversation",
        json!({"conversationId": conv, "format": "json"}),
    )
    .unwrap();
    let parsed: Value = serde_json::from_str(js["content"].as_str().unwrap()).unwrap();
    assert_eq!(parsed["messages"][1]["text"], "A cat.");
    let err = invoke(
        &w,
        "export_conversation",
        json!({"conversationId": conv, "format": "pdf"}),
    )
    .unwrap_err();
    assert_eq!(err["kind"], "invalidInput");
}

#[test]
fn recording_from_a_test_source_and_without_a_microphone() {
    let dir = tempfile::tempdir().unwrap();
    let s = state(dir.path(), ScriptedBackend::new(&[]), Box::new(Unavailable));
    let err = s.start_recording(Box::new(|_| {})).unwrap_err();
    assert_eq!(err.kind(), "recording");
    assert!(err.to_string().contains("attach an audio file instead"));

    let source = fixture("audio_16k_mono.wav");
    let s = state(
        dir.path(),
        ScriptedBackend::new(&[]),
        Box::new(FileSource::new(source.clone())),
    );
    let (tx, rx) = channel();
    s.start_recording(Box::new(move |level| {
        let _ = tx.send(level);
    }))
    .unwrap();
    let level = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert!((0.0..=1.0).contains(&level));
    assert_eq!(
        s.start_recording(Box::new(|_| {})).unwrap_err().kind(),
        "recording"
    );
    let clip = s.stop_recording().unwrap();
    assert_eq!(clip.mime, "audio/wav");
    let stored = s.store.attachment_path(&clip.file_name()).unwrap();
    assert_eq!(
        std::fs::read(stored).unwrap(),
        std::fs::read(source).unwrap()
    );
    assert_eq!(s.stop_recording().unwrap_err().kind(), "recording");
}

// ---- Model download, token, load settings ----

#[derive(Default)]
struct MemoryTokens(Mutex<Option<String>>);

impl TokenStore for MemoryTokens {
    fn get(&self) -> Result<Option<String>, String> {
        Ok(self.0.lock().unwrap().clone())
    }
    fn set(&self, token: &str) -> Result<(), String> {
        *self.0.lock().unwrap() = Some(token.into());
        Ok(())
    }
    fn delete(&self) -> Result<(), String> {
        *self.0.lock().unwrap() = None;
        Ok(())
    }
}

/// A keychain that is not there, as in CI (no D-Bus session).
struct NoKeychain;

impl TokenStore for NoKeychain {
    fn get(&self) -> Result<Option<String>, String> {
        Err("no D-Bus session".into())
    }
    fn set(&self, _: &str) -> Result<(), String> {
        Err("no D-Bus session".into())
    }
    fn delete(&self) -> Result<(), String> {
        Err("no D-Bus session".into())
    }
}

/// Serves a tiny repo from memory; the weights arrive in pieces, and with a `Gate` the reader
/// stops after the first piece until the test lets it go (so a test can cancel at a known
/// point), then, if `fail`, breaks like a dropped connection.
struct FakeHub {
    weights: Vec<u8>,
    gate: Mutex<Option<Gate>>,
    fail: bool,
    tokens_seen: Mutex<Vec<Option<String>>>,
}

const E2B: &str = "google/gemma-3n-E2B-it";

impl FakeHub {
    fn ok() -> Arc<Self> {
        Arc::new(Self {
            weights: vec![7; 200_000],
            gate: Mutex::new(None),
            fail: false,
            tokens_seen: Mutex::default(),
        })
    }

    fn gated(fail: bool) -> (Arc<Self>, GateKey) {
        let ((waiting_tx, waiting), (go, go_rx)) = (channel(), channel());
        let hub = Self {
            gate: Mutex::new(Some(Gate {
                waiting: waiting_tx,
                go: go_rx,
            })),
            fail,
            ..Arc::into_inner(Self::ok()).unwrap()
        };
        (Arc::new(hub), GateKey { waiting, go })
    }

    fn sources(hub: Arc<Self>) -> crate::models::SourceFactory {
        Box::new(move |token| {
            hub.tokens_seen.lock().unwrap().push(token);
            Ok(Box::new(Served(hub.clone())) as Box<dyn Source>)
        })
    }

    fn files(&self) -> Vec<(&'static str, Vec<u8>)> {
        vec![
            ("config.json", b"{}".to_vec()),
            ("tokenizer.json", b"{}".to_vec()),
            ("model.safetensors", self.weights.clone()),
        ]
    }
}

/// The reader's side: says it is waiting, then waits.
struct Gate {
    waiting: std::sync::mpsc::Sender<()>,
    go: Receiver<()>,
}

/// The test's side.
struct GateKey {
    waiting: Receiver<()>,
    go: std::sync::mpsc::Sender<()>,
}

struct Pieces {
    bytes: Vec<u8>,
    at: usize,
    gate: Option<Gate>,
    fail: bool,
}

impl std::io::Read for Pieces {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.at > 0 {
            if let Some(gate) = self.gate.take() {
                let _ = gate.waiting.send(());
                let _ = gate.go.recv();
                if self.fail {
                    return Err(std::io::ErrorKind::ConnectionReset.into());
                }
            }
        }
        let n = buf.len().min(50_000).min(self.bytes.len() - self.at);
        buf[..n].copy_from_slice(&self.bytes[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// What a download reads from (a local trait needs a local type).
struct Served(Arc<FakeHub>);

impl Source for Served {
    fn listing(&self, _repo_id: &str) -> engine::Result<Listing> {
        Ok(Listing {
            commit: "c0ffee".into(),
            files: self
                .0
                .files()
                .into_iter()
                .enumerate()
                .map(|(i, (name, bytes))| RemoteFile {
                    name: name.into(),
                    size: bytes.len() as u64,
                    etag: format!("blob{i}"),
                    sha256: None,
                })
                .collect(),
        })
    }

    fn open(&self, _: &str, _: &str, file: &str, offset: u64) -> engine::Result<Body> {
        let bytes = self
            .0
            .files()
            .into_iter()
            .find(|(n, _)| *n == file)
            .unwrap()
            .1;
        let weights = file == "model.safetensors";
        Ok(Body {
            reader: Box::new(Pieces {
                bytes: bytes[offset as usize..].to_vec(),
                at: 0,
                gate: if weights {
                    self.0.gate.lock().unwrap().take()
                } else {
                    None
                },
                fail: self.0.fail,
            }),
            offset,
        })
    }
}

fn download_events() -> (
    impl Fn(DownloadEvent) + Send + 'static,
    Receiver<DownloadEvent>,
) {
    let (tx, rx) = channel();
    (move |e| tx.send(e).unwrap(), rx)
}

/// Events until the download ends.
fn until_end(rx: &Receiver<DownloadEvent>) -> Vec<DownloadEvent> {
    let mut events = Vec::new();
    loop {
        let e = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("download ended");
        let end = !matches!(e, DownloadEvent::Progress { .. });
        events.push(e);
        if end {
            return events;
        }
    }
}

#[test]
fn a_download_reports_progress_and_the_model_is_then_present_offline() {
    let dir = tempfile::tempdir().unwrap();
    let (_app, w) = mock_app(state(
        dir.path(),
        ScriptedBackend::new(&[]),
        Box::new(Unavailable),
    ));
    let overview = invoke(&w, "models_overview", json!({})).unwrap();
    assert_eq!(overview["choices"][0]["id"], E2B);
    assert_eq!(overview["choices"][0]["localPath"], Value::Null);
    assert!(overview["choices"][0]["downloadBytes"].as_u64().unwrap() > 10_000_000_000);
    assert!(overview["freeBytes"].as_u64().unwrap() > 0);
    assert_eq!(overview["token"]["keychain"], true);

    let err = invoke(
        &w,
        "download_model",
        json!({"repoId": "someone/else", "onEvent": "__CHANNEL__:1"}),
    )
    .unwrap_err();
    assert_eq!(err["kind"], "invalidInput");

    let state = _app.state::<AppState>();
    let (tx, rx) = download_events();
    state.download_model(E2B, tx).unwrap();
    let events = until_end(&rx);
    let DownloadEvent::Done { path } = events.last().unwrap() else {
        panic!("{events:?}")
    };
    let DownloadEvent::Progress { progress } = &events[events.len() - 2] else {
        panic!("{events:?}")
    };
    assert_eq!(progress.done_bytes, progress.total_bytes);
    assert_eq!(progress.total_bytes, 200_004);

    let overview = invoke(&w, "models_overview", json!({})).unwrap();
    assert_eq!(overview["choices"][0]["localPath"], path.as_str());
    assert_eq!(overview["downloading"], Value::Null);
    // The downloaded folder is what `open_model` loads.
    invoke(&w, "open_model", json!({"path": path})).unwrap();
    assert_eq!(
        state.store.setting("model_dir").unwrap().as_deref(),
        Some(path.as_str())
    );
}

#[test]
fn cancel_keeps_the_partial_download_and_a_failed_one_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = state(dir.path(), ScriptedBackend::new(&[]), Box::new(Unavailable));
    let (hub, key) = FakeHub::gated(false);
    s.downloads = Downloads::new(Cache::new(dir.path().join("hub")), FakeHub::sources(hub));
    let (tx, rx) = download_events();
    s.download_model(E2B, tx).unwrap();
    // The first piece of the weights is on disk; the reader now waits for the second.
    key.waiting.recv_timeout(Duration::from_secs(20)).unwrap();
    let (tx2, _rx2) = download_events();
    let busy = s.download_model(E2B, tx2).unwrap_err();
    assert!(busy.to_string().contains("already downloading"), "{busy}");
    s.downloads.cancel();
    key.go.send(()).unwrap();
    assert_eq!(until_end(&rx).last(), Some(&DownloadEvent::Cancelled));
    let choice = &s.models_overview().choices[0];
    assert_eq!(choice.local_path, None);
    assert_eq!(choice.partial_bytes, 100_000);

    // The next try breaks mid-file: a clear error, the partial file grows, nothing complete.
    let (hub, key) = FakeHub::gated(true);
    s.downloads = Downloads::new(Cache::new(dir.path().join("hub")), FakeHub::sources(hub));
    let (tx, rx) = download_events();
    s.download_model(E2B, tx).unwrap();
    key.go.send(()).unwrap();
    let Some(DownloadEvent::Error { error }) = until_end(&rx).pop() else {
        panic!("the download should fail")
    };
    assert_eq!(error.kind(), "download");
    assert!(error.to_string().contains("connection was lost"), "{error}");
    let choice = &s.models_overview().choices[0];
    assert_eq!(choice.local_path, None);
    assert_eq!(choice.partial_bytes, 150_000);

    // And the third completes from there.
    let (tx, rx) = download_events();
    s.downloads = Downloads::new(
        Cache::new(dir.path().join("hub")),
        FakeHub::sources(FakeHub::ok()),
    );
    s.download_model(E2B, tx).unwrap();
    assert!(matches!(
        until_end(&rx).last(),
        Some(DownloadEvent::Done { .. })
    ));
    assert_eq!(s.models_overview().choices[0].partial_bytes, 0);
}

#[test]
fn the_token_goes_to_the_keychain_or_lasts_the_session_without_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = state(dir.path(), ScriptedBackend::new(&[]), Box::new(Unavailable));
    let hub = FakeHub::ok();
    s.downloads = Downloads::new(
        Cache::new(dir.path().join("hub")),
        FakeHub::sources(hub.clone()),
    );
    let saved = s.tokens.save(" hf_abc ").unwrap();
    assert!(saved.saved && saved.keychain && saved.message.is_none());
    let (tx, rx) = download_events();
    s.download_model(E2B, tx).unwrap();
    until_end(&rx);
    assert_eq!(
        hub.tokens_seen.lock().unwrap()[0].as_deref(),
        Some("hf_abc")
    );
    assert!(!s.tokens.forget().saved);
    assert_eq!(s.tokens.save("  ").unwrap_err().kind(), "invalidInput");

    let tokens = Tokens::new(Box::new(NoKeychain));
    assert!(!tokens.state().keychain);
    let state = tokens.save("hf_session").unwrap();
    assert!(state.saved && !state.keychain);
    let message = state.message.unwrap();
    assert!(
        message.contains("No OS keychain") && message.contains("session only"),
        "{message}"
    );
    assert_eq!(tokens.token().as_deref(), Some("hf_session"));
    assert!(tokens.state().saved);
    assert!(!tokens.forget().saved);
    assert_eq!(tokens.token(), None);
}

#[test]
fn load_settings_are_checked_saved_and_used_for_the_next_load() {
    let dir = tempfile::tempdir().unwrap();
    let (app, w) = mock_app(state(
        dir.path(),
        ScriptedBackend::new(&[]),
        Box::new(Unavailable),
    ));
    let err = invoke(
        &w,
        "set_load_settings",
        json!({"settings": {"weights": "q3", "threads": 2}}),
    )
    .unwrap_err();
    assert!(err["message"].as_str().unwrap().contains("q4k"), "{err}");
    let err = invoke(
        &w,
        "set_load_settings",
        json!({"settings": {"weights": "q8_0", "threads": 0}}),
    )
    .unwrap_err();
    assert!(
        err["message"].as_str().unwrap().contains("threads"),
        "{err}"
    );
    invoke(
        &w,
        "set_load_settings",
        json!({"settings": {"weights": "q4k", "threads": 2}}),
    )
    .unwrap();
    let overview = invoke(&w, "models_overview", json!({})).unwrap();
    // Settings saved before model sizes existed read as "every model whole".
    assert_eq!(
        overview["loadSettings"],
        json!({"weights": "q4k", "threads": 2, "sizes": {}})
    );
    let options = app
        .state::<AppState>()
        .load_settings()
        .to_options()
        .unwrap();
    assert_eq!(options.weights, engine::WeightFormat::Q4K);
    assert_eq!(options.threads, Some(2));

    // The real model loads with them; a missing folder is refused before anything changes.
    let err = invoke(&w, "open_model", json!({"path": "/no/such/model"})).unwrap_err();
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("not a model folder"),
        "{err}"
    );
    invoke(&w, "open_model", json!({"path": fixture("model")})).unwrap();
    let state = app.state::<AppState>();
    wait_for("the model", || {
        !matches!(state.worker.status(), ModelStatus::Loading { .. })
    });
    assert!(
        matches!(state.worker.status(), ModelStatus::Ready { .. }),
        "{:?}",
        state.worker.status()
    );
    // So does a GGUF file with nothing beside it.
    let lone = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/gguf/lone/G-f32.gguf");
    invoke(&w, "open_model", json!({"path": lone})).unwrap();
    wait_for("the GGUF model", || {
        !matches!(state.worker.status(), ModelStatus::Loading { .. })
    });
    assert!(
        matches!(state.worker.status(), ModelStatus::Ready { .. }),
        "{:?}",
        state.worker.status()
    );
}

#[test]
fn a_damaged_tower_fails_the_load_with_the_tensor_named() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    std::fs::create_dir_all(&model).unwrap();
    for entry in std::fs::read_dir(fixture("model")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, model.join(path.file_name().unwrap())).unwrap();
    }
    // One audio-tower tensor's header shape changed, the value count kept: a valid file.
    let file = model.join("model.safetensors");
    let mut bytes = std::fs::read(&file).unwrap();
    let from = br#"conformer.3.ffw_layer_end.ffw_layer_1.weight":{"dtype":"F32","shape":[160,40]"#;
    let to = br#"conformer.3.ffw_layer_end.ffw_layer_1.weight":{"dtype":"F32","shape":[320,20]"#;
    let at = bytes
        .windows(from.len())
        .position(|w| w == from)
        .expect("the tensor's header entry");
    bytes[at..at + to.len()].copy_from_slice(to);
    std::fs::write(&file, bytes).unwrap();

    let (app, w) = mock_app(state(
        dir.path(),
        ScriptedBackend::new(&[]),
        Box::new(Unavailable),
    ));
    invoke(&w, "open_model", json!({"path": model})).unwrap();
    let state = app.state::<AppState>();
    wait_for("the load", || {
        !matches!(state.worker.status(), ModelStatus::Loading { .. })
    });
    let ModelStatus::Failed { error } = state.worker.status() else {
        panic!("the load did not fail: {:?}", state.worker.status());
    };
    let message = error.to_string();
    assert!(
        message.contains(
            "tensor model.audio_tower.conformer.3.ffw_layer_end.ffw_layer_1.weight has shape \
             [320, 20], config.json implies [160, 40]"
        ),
        "{message}"
    );
}

// ---- Robustness ----

#[test]
fn closing_the_window_mid_reply_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut backend = ScriptedBackend::new(&["one ", "two ", "three ", "four"]);
    backend.delay = Duration::from_millis(50);
    let (app, w) = mock_app(state(dir.path(), backend, Box::new(Unavailable)));
    let conv = invoke(&w, "create_conversation", json!({})).unwrap();
    let started = invoke(
        &w,
        "send_message",
        json!({"conversationId": conv["id"], "text": "count", "attachments": [],
               "onEvent": "__CHANNEL__:1"}),
    )
    .unwrap();
    let state = app.state::<AppState>();
    let reply = || {
        let c = state
            .store
            .conversation(conv["id"].as_i64().unwrap())
            .unwrap();
        c.messages
            .into_iter()
            .find(|m| Some(m.id) == started["replyId"].as_i64())
            .unwrap()
    };
    wait_for("the first piece", || !reply().text.is_empty());
    // The UI is gone; the reply goes on streaming into nothing and is saved whole.
    w.destroy().unwrap();
    wait_for("the reply", || !state.worker.is_busy());
    let reply = reply();
    assert_eq!(reply.text, "one two three four");
    assert_eq!(reply.status, Status::Done);
}

#[test]
fn a_corrupt_attachment_is_a_clear_error_and_does_not_fail_the_next_message() {
    let dir = tempfile::tempdir().unwrap();
    let s = state(dir.path(), ScriptedBackend::new(&[]), Box::new(Unavailable));
    s.load_model(fixture("model"), true).unwrap();
    wait_for("the model", || {
        matches!(s.worker.status(), ModelStatus::Ready { .. })
    });
    // PNG by its signature, garbage after it: accepted as an image, unreadable by the model.
    let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
    bytes.extend_from_slice(&[0x42; 64]);
    let broken = s.store.save_attachment("broken.png", &bytes).unwrap();
    let conv = s.store.create_conversation("t").unwrap().id;
    let (tx, rx) = collector();
    s.send_message(conv, "what is this?", std::slice::from_ref(&broken), tx)
        .unwrap();
    let events = drain(&rx);
    let Some(StreamEvent::Error { error }) = events.last() else {
        panic!("{events:?}")
    };
    assert_eq!(error.kind(), "attachment", "{error}");
    assert!(
        error.to_string().contains("broken") || error.to_string().contains(".png"),
        "{error}"
    );
    let messages = s.store.conversation(conv).unwrap().messages;
    assert_eq!(
        messages[0].text, "what is this?",
        "the user's message is kept"
    );
    assert_eq!(messages[1].status, Status::Error);
    // The model is still usable.
    wait_for("the slot", || !s.worker.is_busy());
    assert!(matches!(s.worker.status(), ModelStatus::Ready { .. }));
    let other = s.store.create_conversation("u").unwrap().id;
    let (tx, rx) = collector();
    s.send_message(other, "hello", &[], tx).unwrap();
    assert!(matches!(drain(&rx).last(), Some(StreamEvent::Done { .. })));

    // The same chat goes on: the failed turn, attachment and all, is not sent to the model again.
    wait_for("the slot", || !s.worker.is_busy());
    let (tx, rx) = collector();
    s.send_message(conv, "never mind, hello", &[], tx).unwrap();
    let events = drain(&rx);
    assert!(
        matches!(events.last(), Some(StreamEvent::Done { .. })),
        "{events:?}"
    );
    let conversation = s.store.conversation(conv).unwrap();
    assert_eq!(
        conversation.messages.len(),
        4,
        "the failed turn stays shown"
    );
    let history = to_engine_messages(&conversation, s.store.attachments_dir());
    let texts: Vec<_> = history
        .iter()
        .map(|m| match &m.content[..] {
            [Part::Text { text }] => text.as_str(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(texts[0], "never mind, hello");
    assert_eq!(texts.len(), 2);

    // Regenerating the failed turn retries it with its attachment, and says why it fails.
    let retry = s.store.create_conversation("v").unwrap().id;
    let (tx, rx) = collector();
    s.send_message(retry, "and this?", &[broken], tx).unwrap();
    drain(&rx);
    wait_for("the slot", || !s.worker.is_busy());
    let (tx, rx) = collector();
    s.regenerate(retry, tx).unwrap();
    let Some(StreamEvent::Error { error }) = drain(&rx).last().cloned() else {
        panic!("the retry should fail again")
    };
    assert_eq!(error.kind(), "attachment", "{error}");
}

#[test]
fn the_window_may_open_the_folder_picker_and_no_other_dialog() {
    let capability: Value =
        serde_json::from_str(include_str!("../capabilities/default.json")).unwrap();
    let dialog: Vec<&str> = capability["permissions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p.as_str().or_else(|| p["identifier"].as_str()))
        .filter(|p| p.starts_with("dialog:"))
        .collect();
    assert_eq!(dialog, ["dialog:allow-open"]);

    // The ACL built from it refuses the plugin's other dialogs before any is shown.
    let dir = tempfile::tempdir().unwrap();
    let (_app, w) = mock_app(state(
        dir.path(),
        ScriptedBackend::new(&[]),
        Box::new(Unavailable),
    ));
    for (cmd, args) in [
        ("save", json!({"options": {}})),
        ("message", json!({"message": "hi"})),
    ] {
        let err = invoke(&w, &format!("plugin:dialog|{cmd}"), args).unwrap_err();
        assert!(
            err.as_str().is_some_and(|e| e.contains("not allowed")),
            "plugin:dialog|{cmd}: {err}"
        );
    }
}

/// A port nothing listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// POSTs `body` to the local API server; the status code and the JSON answer.
fn api_post(port: u16, path: &str, body: &Value) -> (u16, Value) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let body = body.to_string();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, json) = response.split_once("\r\n\r\n").expect("an HTTP response");
    let code = head.split(' ').nth(1).unwrap().parse().unwrap();
    (code, serde_json::from_str(json).unwrap_or(Value::Null))
}

fn api_chat(port: u16, text: &str) -> (u16, Value) {
    api_post(
        port,
        "/v1/chat/completions",
        &json!({"model": "gemma-3n-demo", "messages": [{"role": "user", "content": text}]}),
    )
}

fn tokens_of(events: &[StreamEvent]) -> String {
    events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::Token { text } => Some(text.as_str()),
            _ => None,
        })
        .collect()
}

#[test]
fn the_api_server_is_off_by_default_then_serves_the_model_and_remembers_its_settings() {
    let dir = tempfile::tempdir().unwrap();
    let s = state(
        dir.path(),
        ScriptedBackend::new(&["Hel", "lo"]),
        Box::new(Unavailable),
    );
    let off = s.api_server.status();
    assert_eq!(off.settings, ApiServerSettings::default());
    assert_eq!((off.settings.enabled, off.settings.port), (false, 8080));
    assert_eq!((off.url, off.curl, off.error), (None, None, None));

    let port = free_port();
    let on = s
        .api_server
        .set(ApiServerSettings {
            enabled: true,
            port,
        })
        .unwrap();
    let base = format!("http://127.0.0.1:{port}/v1");
    assert_eq!(on.url.as_deref(), Some(base.as_str()));
    assert_eq!(on.model, "gemma-3n-demo");
    let curl = on.curl.unwrap();
    assert!(
        curl.starts_with(&format!("curl {base}/chat/completions")),
        "{curl}"
    );
    assert!(curl.contains("\"model\": \"gemma-3n-demo\""), "{curl}");

    let (code, reply) = api_chat(port, "Hi");
    assert_eq!(code, 200, "{reply}");
    assert_eq!(reply["choices"][0]["message"]["content"], "Hello");
    assert_eq!(reply["choices"][0]["finish_reason"], "stop");
    // The API's conversations are not the app's.
    assert!(s.store.list_conversations("").unwrap().is_empty());

    // Remembered for the next start of the app.
    let next = ApiServer::new(s.worker.clone(), s.store.clone());
    assert_eq!(
        next.settings(),
        ApiServerSettings {
            enabled: true,
            port
        }
    );

    let off = s
        .api_server
        .set(ApiServerSettings {
            enabled: false,
            port,
        })
        .unwrap();
    assert_eq!(off.url, None);
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the port is closed"
    );
}

#[test]
fn chats_and_api_requests_take_turns_on_the_one_model() {
    let dir = tempfile::tempdir().unwrap();
    let mut backend = ScriptedBackend::new(&["a", "b", "c", "d"]);
    backend.delay = Duration::from_millis(60);
    let s = state(dir.path(), backend, Box::new(Unavailable));
    let port = free_port();
    s.api_server
        .set(ApiServerSettings {
            enabled: true,
            port,
        })
        .unwrap();
    let conv = s.store.create_conversation("t").unwrap().id;

    // A request while a chat reply runs waits for it, then gets its own whole answer.
    let (tx, rx) = collector();
    s.send_message(conv, "one", &[], tx).unwrap();
    let api = std::thread::spawn(move || api_chat(port, "two"));
    let events = drain(&rx);
    assert!(!events.contains(&StreamEvent::Waiting));
    assert_eq!(tokens_of(&events), "abcd");
    let (code, reply) = api.join().unwrap();
    assert_eq!(code, 200, "{reply}");
    assert_eq!(reply["choices"][0]["message"]["content"], "abcd");

    // A chat message while a request runs waits too, and says so; the app's Stop is for the
    // app's own reply and leaves the request alone.
    wait_for("the slot", || !s.worker.is_busy());
    let api = std::thread::spawn(move || api_chat(port, "three"));
    wait_for("the request", || s.worker.queued_jobs() > 0);
    s.worker.stop();
    let (tx, rx) = collector();
    s.send_message(conv, "four", &[], tx).unwrap();
    let events = drain(&rx);
    assert_eq!(events.first(), Some(&StreamEvent::Waiting));
    assert_eq!(tokens_of(&events), "abcd");
    assert!(
        matches!(events.last(), Some(StreamEvent::Done { stats }) if stats.stop_reason == StopReason::Eos)
    );
    let (code, reply) = api.join().unwrap();
    assert_eq!(code, 200, "{reply}");
    assert_eq!(reply["choices"][0]["message"]["content"], "abcd");
}

#[test]
fn a_taken_port_is_said_in_the_status_and_a_bad_port_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = state(
        dir.path(),
        ScriptedBackend::new(&["x"]),
        Box::new(Unavailable),
    );
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let (_app, webview) = mock_app(s);
    let status = invoke(
        &webview,
        "set_api_server",
        json!({"settings": {"enabled": true, "port": port}}),
    )
    .unwrap();
    assert_eq!(status["settings"], json!({"enabled": true, "port": port}));
    assert_eq!(status["url"], Value::Null);
    assert_eq!(status["error"]["kind"], "apiServer");
    let message = status["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("127.0.0.1:{port}"))
            && message.contains("another program is using this port"),
        "{message}"
    );
    for bad in [json!(0), json!(70000), json!(80.5), Value::Null] {
        let err = invoke(
            &webview,
            "set_api_server",
            json!({"settings": {"enabled": true, "port": bad}}),
        )
        .unwrap_err();
        assert_eq!(
            err,
            json!({"kind": "invalidInput", "message": "the port must be a whole number from 1 to 65535"})
        );
    }
    assert_eq!(
        invoke(&webview, "api_server_status", json!({})).unwrap()["settings"],
        json!({"enabled": true, "port": port})
    );
}
