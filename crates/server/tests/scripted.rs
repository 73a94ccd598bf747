//! The server against a scripted backend: errors, auth, queueing, cancellation, stop strings,
//! loading, binding and stopping — everything that does not need a real model.

mod common;

use std::io::BufReader;
use std::net::{Ipv4Addr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use engine::{GenerationReport, Message, SamplingParams, StopReason};
use serde_json::{json, Value};
use server::{Backend, BackendError, ModelCard, Server, ServerConfig, Unavailable};

const TOKEN_TIME: Duration = Duration::from_millis(20);

/// Replies with the last user text's words (or the fixed script to the text "scripted"), one
/// per token time.
struct Scripted {
    loading: AtomicBool,
    script: Mutex<Option<Vec<String>>>,
    started: AtomicUsize,
    /// When each generation started, to time how soon the next one follows a cancellation.
    starts: Mutex<Vec<Instant>>,
}

impl Scripted {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            loading: AtomicBool::new(false),
            script: Mutex::new(None),
            started: AtomicUsize::new(0),
            starts: Mutex::new(Vec::new()),
        })
    }
}

impl Backend for Scripted {
    fn model(&self) -> Result<ModelCard, Unavailable> {
        if self.loading.load(Ordering::Relaxed) {
            return Err(Unavailable::Loading);
        }
        Ok(ModelCard {
            id: "scripted".into(),
            context_length: 4096,
            defaults: SamplingParams::default(),
            created: 1,
        })
    }

    fn generate(
        &self,
        messages: &[Message],
        params: &SamplingParams,
        cancel: &AtomicBool,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<GenerationReport, BackendError> {
        self.started.fetch_add(1, Ordering::Relaxed);
        self.starts.lock().unwrap().push(Instant::now());
        let text = messages.last().unwrap().text_content();
        if text == "panic" {
            panic!("scripted panic");
        }
        let script = self
            .script
            .lock()
            .unwrap()
            .clone()
            .filter(|_| text == "scripted");
        let pieces = script.unwrap_or_else(|| text.split(' ').map(|w| format!("{w} ")).collect());
        let mut stop_reason = StopReason::Eos;
        let mut out = String::new();
        let mut ids = Vec::new();
        for (i, piece) in pieces.iter().enumerate() {
            if cancel.load(Ordering::Relaxed) {
                stop_reason = StopReason::Cancelled;
                break;
            }
            if i == params.max_new_tokens {
                stop_reason = StopReason::MaxTokens;
                break;
            }
            std::thread::sleep(TOKEN_TIME);
            on_text(piece);
            out.push_str(piece);
            ids.push(i as u32);
        }
        Ok(GenerationReport {
            token_ids: ids,
            text: out,
            prompt_tokens: 7,
            reused_tokens: 0,
            stop_reason,
            ttft_ms: 0.0,
            prefill_tok_s: 0.0,
            decode_tok_s: 0.0,
            audio_splits: Vec::new(),
        })
    }
}

fn start(backend: Arc<Scripted>, tweak: impl FnOnce(&mut ServerConfig)) -> Server {
    let mut cfg = ServerConfig {
        port: 0,
        ..ServerConfig::default()
    };
    tweak(&mut cfg);
    Server::start(cfg, backend).unwrap()
}

fn ask(text: &str) -> Value {
    json!({"model": "scripted", "messages": [{"role": "user", "content": text}]})
}

fn assert_error(r: &Response, status: u16, needle: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    let e = &r.json()["error"];
    let message = e["message"].as_str().unwrap();
    assert!(message.contains(needle), "{message:?} lacks {needle:?}");
    assert!(e["type"].is_string() && e.get("param").is_some() && e.get("code").is_some());
}

#[test]
fn completions_streamed_and_not_carry_the_reply_and_usage() {
    let server = start(Scripted::new(), |_| {});
    let addr = server.local_addr();
    let r = chat(addr, &ask("one two three"));
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["content"], "one two three ");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["prompt_tokens"], 7);
    assert_eq!(v["usage"]["completion_tokens"], 3);
    assert_eq!(v["usage"]["total_tokens"], 10);

    let mut body = ask("one two three");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let r = chat(addr, &body);
    assert_eq!(streamed_text(&r), ("one two three ".into(), "stop".into()));
    let data = r.sse_data();
    let usage: Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 3);

    let mut body = ask("a b c d e");
    body["max_tokens"] = json!(2);
    let v = chat(addr, &body).json();
    assert_eq!(v["choices"][0]["message"]["content"], "a b ");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
}

#[test]
fn stop_strings_end_the_reply_and_are_not_emitted() {
    let backend = Scripted::new();
    *backend.script.lock().unwrap() =
        Some(["Hel", "lo E", "N", "D never"].map(String::from).to_vec());
    let server = start(backend.clone(), |_| {});
    let mut body = ask("scripted");
    body["stop"] = json!("END");
    let v = chat(server.local_addr(), &body).json();
    assert_eq!(v["choices"][0]["message"]["content"], "Hello ");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    body["stop"] = json!(["zzz", "lo"]);
    body["stream"] = json!(true);
    let r = chat(server.local_addr(), &body);
    assert_eq!(streamed_text(&r), ("Hel".into(), "stop".into()));
}

#[test]
fn bad_requests_get_4xx_json_errors_and_the_server_goes_on() {
    let server = start(Scripted::new(), |c| c.max_body_bytes = 4096);
    let addr = server.local_addr();
    let raw = |body: &[u8]| {
        request(
            addr,
            "POST",
            "/v1/chat/completions",
            &[("Content-Type", "application/json")],
            body,
        )
    };
    assert_error(
        &raw(b"{\"messages\": [oops"),
        400,
        "not a valid chat completion request",
    );
    assert_error(&raw(&vec![b' '; 10_000]), 413, "4096 bytes");
    let image = |url: &str| {
        json!({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": url}},
            {"type": "text", "text": "what is this?"}]}]})
    };
    assert_error(
        &chat(addr, &image("data:image/png;base64,@@@not-base64")),
        400,
        "not valid base64",
    );
    assert_error(
        &chat(addr, &image(&data_url("text/plain", b"hello"))),
        400,
        "must be an image",
    );
    assert_error(
        &chat(addr, &image(&data_url("image/png", b"hello, not a png"))),
        400,
        "not a PNG",
    );
    assert_error(
        &chat(addr, &image("https://example.com/cat.png")),
        400,
        "never goes to the network",
    );
    let audio = json!({"messages": [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": "!!", "format": "wav"}}]}]});
    assert_error(&chat(addr, &audio), 400, "not valid base64");
    let audio = json!({"messages": [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "opus"}}]}]});
    assert_error(&chat(addr, &audio), 400, "format `opus`");
    let mut n3 = ask("hi");
    n3["n"] = json!(3);
    let r = chat(addr, &n3);
    assert_error(&r, 400, "n = 1");
    assert_eq!(r.json()["error"]["param"], "n");
    let mut unknown = ask("hi");
    unknown["model"] = json!("gpt-4o");
    let r = chat(addr, &unknown);
    assert_error(&r, 404, "`gpt-4o` does not exist");
    assert_eq!(r.json()["error"]["code"], "model_not_found");
    assert_error(&get(addr, "/v1/models/gpt-4o"), 404, "gpt-4o");
    assert_error(
        &chat(
            addr,
            &json!({"messages": [{"role": "assistant", "content": "hi"}]}),
        ),
        400,
        "alternate",
    );
    assert_error(
        &chat(
            addr,
            &json!({"messages": [{"role": "tool", "content": "hi"}]}),
        ),
        400,
        "role `tool`",
    );
    let mut hot = ask("hi");
    hot["temperature"] = json!(-1);
    assert_error(&chat(addr, &hot), 400, "temperature");
    assert_error(&get(addr, "/v1/nothing"), 404, "/v1/nothing");
    assert_error(&chat(addr, &ask("panic")), 500, "scripted panic");
    // Unknown fields are ignored, and after all that the server still answers.
    let mut extra = ask("still here");
    extra["frequency_penalty"] = json!(0.5);
    extra["user"] = json!("me");
    let r = chat(addr, &extra);
    assert_eq!(r.json()["choices"][0]["message"]["content"], "still here ");
}

#[test]
fn models_lists_the_served_model_and_loading_is_503() {
    let backend = Scripted::new();
    let server = start(backend.clone(), |_| {});
    let v = get(server.local_addr(), "/v1/models").json();
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["id"], "scripted");
    assert_eq!(
        get(server.local_addr(), "/v1/models/scripted").json()["id"],
        "scripted"
    );
    backend.loading.store(true, Ordering::Relaxed);
    assert_error(&get(server.local_addr(), "/v1/models"), 503, "loading");
    assert_error(&chat(server.local_addr(), &ask("hi")), 503, "loading");
}

#[test]
fn with_a_key_a_missing_or_wrong_key_gets_401() {
    let server = start(Scripted::new(), |c| c.api_key = Some("sekrit".into()));
    let addr = server.local_addr();
    let body = ask("hi").to_string();
    let with = |auth: &[(&str, &str)]| {
        let mut headers = vec![("Content-Type", "application/json")];
        headers.extend_from_slice(auth);
        request(
            addr,
            "POST",
            "/v1/chat/completions",
            &headers,
            body.as_bytes(),
        )
    };
    assert_error(&with(&[]), 401, "Authorization: Bearer");
    assert_error(&with(&[("Authorization", "Bearer wrong")]), 401, "wrong");
    assert_error(&get(addr, "/v1/models"), 401, "API key");
    assert_eq!(with(&[("Authorization", "Bearer sekrit")]).status, 200);
}

#[test]
fn a_full_queue_gets_429() {
    let backend = Scripted::new();
    *backend.script.lock().unwrap() = Some(vec!["x".to_string(); 50]);
    // No waiting room: while one request runs, the next is refused.
    let server = start(backend.clone(), |c| c.queue = 0);
    let addr = server.local_addr();
    let running = std::thread::spawn(move || chat(addr, &ask("scripted")).status);
    while backend.started.load(Ordering::Relaxed) == 0 {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_error(&chat(addr, &ask("b")), 429, "busy");
    assert_eq!(running.join().unwrap(), 200);
    assert_eq!(
        chat(addr, &ask("c")).status,
        200,
        "served again once the model is free"
    );
}

#[test]
fn a_client_that_goes_away_cancels_and_the_next_request_starts_within_a_token() {
    let backend = Scripted::new();
    *backend.script.lock().unwrap() = Some(vec!["tok ".to_string(); 500]);
    let server = start(backend.clone(), |_| {});
    let addr = server.local_addr();
    let mut body = ask("scripted");
    body["stream"] = json!(true);
    let mut stream = connect(addr);
    send_head(
        &mut stream,
        "POST",
        "/v1/chat/completions",
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    );
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    assert_eq!(read_head(&mut reader).0, 200);
    for _ in 0..5 {
        read_chunk(&mut reader).unwrap();
    }
    // Queue the next request behind the long one, then hang up the long one.
    let next = std::thread::spawn(move || chat(addr, &ask("short reply")));
    std::thread::sleep(Duration::from_millis(100));
    stream.shutdown(std::net::Shutdown::Both).unwrap();
    drop(reader);
    let hung_up = Instant::now();
    let r = next.join().unwrap();
    assert_eq!(r.json()["choices"][0]["message"]["content"], "short reply ");
    let starts = backend.starts.lock().unwrap().clone();
    assert_eq!(starts.len(), 2, "the cancelled generation must not run on");
    let gap = starts[1].saturating_duration_since(hung_up);
    assert!(
        gap < TOKEN_TIME * 4,
        "the next request started {gap:?} after the hang-up (one token is {TOKEN_TIME:?})"
    );
}

#[test]
fn it_binds_to_loopback_by_default_and_stop_closes_the_port() {
    assert_eq!(ServerConfig::default().host, Ipv4Addr::LOCALHOST);
    let server = start(Scripted::new(), |_| {});
    let addr = server.local_addr();
    assert!(addr.ip().is_loopback(), "{addr}");
    assert_eq!(server.url(), format!("http://{addr}/v1"));
    assert!(server
        .curl_example("scripted", None)
        .contains(&server.url()));
    // A second server on the same port fails with a clear error.
    let clash = Server::start(
        ServerConfig {
            port: addr.port(),
            ..ServerConfig::default()
        },
        Scripted::new(),
    );
    let message = clash.err().unwrap().to_string();
    assert!(message.contains("choose another port"), "{message}");
    server.stop();
    assert!(
        TcpStream::connect(addr).is_err(),
        "the port is closed after stop"
    );
}

/// The app starts and stops the server from its async commands, inside a tokio runtime.
#[test]
fn it_starts_and_stops_from_inside_an_async_context() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let addr = runtime.block_on(async {
        let server = start(Scripted::new(), |_| {});
        let addr = server.local_addr();
        assert!(TcpStream::connect(addr).is_ok(), "serving");
        server.stop();
        addr
    });
    assert!(
        TcpStream::connect(addr).is_err(),
        "the port is closed after stop"
    );
}

#[test]
fn stopping_cancels_a_running_generation() {
    let backend = Scripted::new();
    *backend.script.lock().unwrap() = Some(vec!["tok ".to_string(); 5000]);
    let server = start(backend.clone(), |_| {});
    let addr = server.local_addr();
    let client = std::thread::spawn(move || chat(addr, &ask("scripted")).status);
    while backend.started.load(Ordering::Relaxed) == 0 {
        std::thread::sleep(Duration::from_millis(5));
    }
    let t = Instant::now();
    server.stop();
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    let _ = client.join();
}

#[test]
fn transcriptions_send_the_audio_with_an_instruction() {
    let server = start(Scripted::new(), |_| {});
    let (body, kind) = multipart(&[
        ("file", Some("clip.wav"), b"RIFF....WAVE"),
        ("model", None, b"scripted"),
        ("language", None, b"French"),
        ("response_format", None, b"text"),
    ]);
    let r = request(
        server.local_addr(),
        "POST",
        "/v1/audio/transcriptions",
        &[("Content-Type", &kind)],
        &body,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // The scripted model echoes the instruction.
    assert!(
        r.text().starts_with("Transcribe this audio"),
        "{}",
        r.text()
    );
    assert!(r.text().contains("French"));
    let (body, kind) = multipart(&[("model", None, b"scripted")]);
    let r = request(
        server.local_addr(),
        "POST",
        "/v1/audio/transcriptions",
        &[("Content-Type", &kind)],
        &body,
    );
    assert_error(&r, 400, "no `file`");
}
