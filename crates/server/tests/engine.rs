//! The server over the real engine on the tiny fixture C: replies equal the engine's own at
//! temperature 0, for text, image and audio, streamed or not, alone or under 16 clients.

mod common;

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use common::*;
use engine::{Engine, LoadOptions, Message, Part, Role, SamplingParams};
use serde_json::{json, Value};
use server::{EngineBackend, Server, ServerConfig};

const MAX_TOKENS: usize = 12;

fn load() -> Engine {
    Engine::load(&fixtures::model_dir("C"), &LoadOptions::default()).unwrap()
}

fn serve(queue: usize) -> Server {
    let cfg = ServerConfig {
        port: 0,
        queue,
        ..ServerConfig::default()
    };
    Server::start(cfg, Arc::new(EngineBackend::new("fixture-c", load()))).unwrap()
}

fn greedy() -> SamplingParams {
    SamplingParams {
        temperature: 0.0,
        top_k: None,
        top_p: None,
        max_new_tokens: MAX_TOKENS,
        seed: 0,
    }
}

/// What the engine itself answers, from a fresh engine.
fn direct(messages: &[Message]) -> String {
    load()
        .generate(messages, &greedy(), &AtomicBool::new(false), &mut |_| {})
        .unwrap()
        .text
}

fn request(messages: Value, stream: bool) -> Value {
    json!({"model": "fixture-c", "messages": messages, "temperature": 0,
           "max_tokens": MAX_TOKENS, "stream": stream})
}

fn both_ways(addr: std::net::SocketAddr, messages: Value) -> String {
    let plain = chat(addr, &request(messages.clone(), false));
    assert_eq!(plain.status, 200, "{}", plain.text());
    let text = plain.json()["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    let (streamed, _) = streamed_text(&chat(addr, &request(messages, true)));
    assert_eq!(streamed, text, "streamed and non-streamed replies differ");
    text
}

fn conversation(i: usize) -> (Value, Vec<Message>) {
    let first = format!("Client {i} says hello. Tell me about fox number {i}.");
    let json = json!([
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": first}]);
    let engine = vec![
        Message::text(Role::System, "You are a helpful assistant."),
        Message::text(Role::User, first),
    ];
    (json, engine)
}

#[test]
fn text_image_and_audio_replies_equal_the_engines() {
    let server = serve(4);
    let addr = server.local_addr();
    let (json, messages) = conversation(0);
    assert_eq!(both_ways(addr, json), direct(&messages));

    let dir = fixtures::fixture_dir("C");
    let image = std::fs::read(dir.join("image.png")).unwrap();
    let audio = std::fs::read(dir.join("audio_16k_mono.wav")).unwrap();
    let json = json!([{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": data_url("image/png", &image)}},
        {"type": "input_audio", "input_audio": {"data": b64(&audio), "format": "wav"}},
        {"type": "text", "text": "Describe the picture and the sound."}]}]);
    let messages = vec![Message {
        role: Role::User,
        content: vec![
            Part::Image {
                path: dir.join("image.png"),
            },
            Part::Audio {
                path: dir.join("audio_16k_mono.wav"),
            },
            Part::Text {
                text: "Describe the picture and the sound.".into(),
            },
        ],
    }];
    assert_eq!(both_ways(addr, json), direct(&messages));
    // audio_url carries the same recording.
    let json = json!([{"role": "user", "content": [
        {"type": "audio_url", "audio_url": {"url": data_url("audio/wav", &audio)}},
        {"type": "text", "text": "What do you hear?"}]}]);
    let messages = vec![Message {
        role: Role::User,
        content: vec![
            Part::Audio {
                path: dir.join("audio_16k_mono.wav"),
            },
            Part::Text {
                text: "What do you hear?".into(),
            },
        ],
    }];
    assert_eq!(both_ways(addr, json), direct(&messages));
}

#[test]
fn sixteen_concurrent_streaming_clients_get_their_own_complete_replies() {
    const CLIENTS: usize = 16;
    const TURNS: usize = 4;
    // The sequential run: each client's conversation grows by its own replies.
    let sequential = serve(0);
    let expected: Vec<Vec<String>> = (0..CLIENTS)
        .map(|i| client_turns(sequential.local_addr(), i, TURNS))
        .collect();
    sequential.stop();
    let server = serve(CLIENTS);
    let addr = server.local_addr();
    let got: Vec<Vec<String>> = (0..CLIENTS)
        .map(|i| std::thread::spawn(move || client_turns(addr, i, TURNS)))
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    for (i, (got, want)) in got.iter().zip(&expected).enumerate() {
        assert_eq!(got, want, "client {i}");
    }
    let distinct: std::collections::HashSet<_> = expected.iter().map(|t| &t[0]).collect();
    assert!(
        distinct.len() > 1,
        "the clients' prompts must lead to different replies"
    );
}

/// `turns` streamed turns of client `i`, resending the history each time.
fn client_turns(addr: std::net::SocketAddr, i: usize, turns: usize) -> Vec<String> {
    let (mut messages, _) = conversation(i);
    let mut replies = Vec::new();
    for turn in 0..turns {
        let (text, finish) = streamed_text(&chat(addr, &request(messages.clone(), true)));
        assert!(finish == "stop" || finish == "length", "{finish}");
        messages.as_array_mut().unwrap().extend([
            json!({"role": "assistant", "content": text}),
            json!({"role": "user", "content": format!("Turn {turn} of client {i}: go on.")}),
        ]);
        replies.push(text);
    }
    replies
}

#[test]
fn a_ten_minute_recording_is_split_and_answered() {
    let wav = std::env::temp_dir().join(format!(
        "gemma-chat-server-10min-{}.wav",
        std::process::id()
    ));
    write_tone(&wav, 600.0);
    let bytes = std::fs::read(&wav).unwrap();
    let server = serve(1);
    let body = json!({"model": "fixture-c", "temperature": 0, "max_tokens": 4, "messages": [
        {"role": "user", "content": [
            {"type": "input_audio", "input_audio": {"data": b64(&bytes), "format": "wav"}},
            {"type": "text", "text": "Summarise the recording."}]}]});
    let encoded = body.to_string().len();
    assert!(
        encoded < ServerConfig::default().max_body_bytes,
        "{encoded} bytes"
    );
    let r = chat(server.local_addr(), &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert!(v["choices"][0]["message"]["content"].is_string());
    // Every clip has its slot in the prompt: far more than one clip's tokens.
    let messages = vec![Message {
        role: Role::User,
        content: vec![
            Part::Audio { path: wav.clone() },
            Part::Text {
                text: "Summarise the recording.".into(),
            },
        ],
    }];
    let prompt_tokens = load().encode(&messages).unwrap().len();
    assert_eq!(v["usage"]["prompt_tokens"], prompt_tokens);
    assert!(
        prompt_tokens > 100 * 20,
        "{prompt_tokens} prompt tokens for 10 minutes"
    );
    std::fs::remove_file(&wav).unwrap();
}

/// A 16 kHz mono tone with a short pause every 10 s, so the splitter finds quiet points.
fn write_tone(path: &Path, seconds: f64) {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 16_000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    for i in 0..(seconds * 16_000.0) as usize {
        let t = i as f64 / 16_000.0;
        let quiet = t % 10.0 > 9.7;
        let s = if quiet {
            0.0
        } else {
            0.3 * (t * 440.0 * std::f64::consts::TAU).sin()
        };
        w.write_sample((s * 32767.0) as i16).unwrap();
    }
    w.finalize().unwrap();
}

#[test]
fn transcription_is_the_models_reply_to_the_audio_and_an_instruction() {
    let server = serve(1);
    let audio = std::fs::read(fixtures::fixture_dir("C").join("audio_16k_mono.wav")).unwrap();
    let (body, kind) = multipart(&[
        ("file", Some("speech.wav"), &audio),
        ("model", None, b"fixture-c"),
        ("max_tokens", None, b"8"),
    ]);
    let r = common::request(
        server.local_addr(),
        "POST",
        "/v1/audio/transcriptions",
        &[("Content-Type", &kind)],
        &body,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()["text"].is_string());
}

#[test]
fn a_prompt_longer_than_the_context_is_a_400() {
    let server = serve(1);
    let context = load().context_length();
    let long = "fox ".repeat(context + 10);
    let r = chat(
        server.local_addr(),
        &request(json!([{"role": "user", "content": long}]), true),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("prompt too long"));
}
