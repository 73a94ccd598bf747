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

use crate::app::{AppState, StreamEvent};
use crate::backend::scripted::ScriptedBackend;
use crate::backend::{ChatBackend, StopReason};
use crate::error::AppError;
use crate::recorder::{FileSource, Recorder, Unavailable};
use crate::store::{Attachment, Status, Store};
use crate::worker::{ModelStatus, Worker};

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
    let worker = Worker::spawn(|_| {});
    worker
        .load(
            "scripted".into(),
            Box::new(move || Ok(Box::new(backend) as Box<dyn ChatBackend>)),
        )
        .unwrap();
    wait_for("the model", || {
        matches!(worker.status(), ModelStatus::Ready { .. })
    });
    AppState {
        store: Arc::new(Store::open(dir).unwrap()),
        worker,
        recorder: Mutex::new(recorder),
        exports_dir: dir.join("exports"),
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
        let end = !matches!(e, StreamEvent::Token { .. });
        events.push(e);
        if end {
            return events;
        }
    }
}

fn mock_app(state: AppState) -> (tauri::App<MockRuntime>, WebviewWindow<MockRuntime>) {
    let app = mock_builder()
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
    wait_for("the slot", || !s.worker.is_busy());
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
    let s = AppState {
        store: Arc::new(Store::open(dir.path()).unwrap()),
        worker: Worker::spawn(|_| {}),
        recorder: Mutex::new(Box::new(Unavailable)),
        exports_dir: dir.path().join("exports"),
    };
    s.worker
        .load(
            "/missing".into(),
            Box::new(|| {
                Err(AppError::Model(
                    "/missing is not a model folder: it has no config.json".into(),
                ))
            }),
        )
        .unwrap();
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
