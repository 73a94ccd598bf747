//! Generation through the engine on the tiny reference checkpoints.

use std::sync::atomic::{AtomicBool, Ordering};

use engine::{Engine, LoadOptions, Message, Role, SamplingParams, StopReason};

fn engine(variant: &str) -> Engine {
    Engine::load(&fixtures::model_dir(variant), &LoadOptions::default()).unwrap()
}

fn greedy(max_new_tokens: usize) -> SamplingParams {
    SamplingParams {
        temperature: 0.0,
        top_k: None,
        top_p: None,
        max_new_tokens,
        seed: 0,
    }
}

fn text_conversation() -> Vec<Message> {
    vec![
        Message::text(Role::System, "You are a helpful assistant."),
        Message::text(
            Role::User,
            "Hello world! Tell me about the quick brown fox.",
        ),
        Message::text(Role::Assistant, "The fox jumps over the lazy dog."),
        Message::text(
            Role::User,
            "What is a café? Answer in one short line, please.",
        ),
    ]
}

fn golden_generated(variant: &str) -> Vec<u32> {
    fixtures::golden_json(variant)["prompts"]["text"]["generated_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn greedy_generation_matches_the_reference_and_streams_all_text() {
    for variant in ["C", "D", "E"] {
        let mut engine = engine(variant);
        let expected = golden_generated(variant);
        let stop_at = expected
            .iter()
            .position(|id| engine.stop_ids().contains(id));
        let mut streamed = String::new();
        let report = engine
            .generate(
                &text_conversation(),
                &greedy(expected.len()),
                &AtomicBool::new(false),
                &mut |t| streamed.push_str(t),
            )
            .unwrap();
        match stop_at {
            Some(i) => {
                assert_eq!(report.token_ids, expected[..=i]);
                assert_eq!(report.stop_reason, StopReason::Eos);
            }
            None => {
                assert_eq!(report.token_ids, expected, "{variant}");
                assert_eq!(report.stop_reason, StopReason::MaxTokens);
            }
        }
        assert_eq!(streamed, report.text);
        let decoded = engine
            .prompt_encoder()
            .tokenizer()
            .decode(&report.token_ids, true)
            .unwrap();
        if decoded.contains('\u{FFFD}') {
            // The tiny models emit random bytes. The tokenizer's decode blanks a whole run of
            // byte tokens when any of it is invalid; the stream keeps every valid character, so
            // what the decode shows must appear in order in the stream.
            let mut streamed_chars = report.text.chars();
            for c in decoded.chars().filter(|&c| c != '\u{FFFD}') {
                assert!(streamed_chars.any(|s| s == c), "{variant}: {c:?} missing");
            }
        } else {
            assert_eq!(report.text, decoded, "{variant}");
        }
        assert_eq!(report.reused_tokens, 0);
        assert!(report.prompt_tokens > 0);
    }
}

#[test]
fn follow_up_turn_reuses_the_cache_with_identical_logits() {
    let mut warm = engine("C");
    let first = text_conversation();
    let report = warm
        .generate(&first, &greedy(6), &AtomicBool::new(false), &mut |_| {})
        .unwrap();
    let mut second = first.clone();
    second.push(Message::text(Role::Assistant, report.text.clone()));
    second.push(Message::text(Role::User, "And a dog?"));

    let warm_prefill = warm.prefill(&second).unwrap();
    let (reused_logits, prompt_len, reused) = (
        warm_prefill.logits,
        warm_prefill.prompt_tokens,
        warm_prefill.reused_tokens,
    );
    // At least the whole first prompt comes from the cache.
    assert!(
        reused >= report.prompt_tokens,
        "reused {reused} of {prompt_len}, first prompt was {}",
        report.prompt_tokens
    );

    let mut cold = engine("C");
    let fresh = cold.prefill(&second).unwrap();
    assert_eq!((fresh.prompt_tokens, fresh.reused_tokens), (prompt_len, 0));
    let diff = max_diff(&reused_logits, &fresh.logits);
    assert!(diff < 1e-4, "cached vs fresh logits differ by {diff}");

    // Regenerating the same prompt reuses all but the last position.
    let again = warm.prefill(&second).unwrap();
    assert_eq!(again.reused_tokens, again.prompt_tokens - 1);
}

#[test]
fn cancel_stops_between_tokens_and_the_engine_stays_usable() {
    let mut engine = engine("D");
    let cancel = AtomicBool::new(false);
    let mut chunks = 0;
    let report = engine
        .generate(&text_conversation(), &greedy(50), &cancel, &mut |_| {
            chunks += 1;
            cancel.store(true, Ordering::Relaxed);
        })
        .unwrap();
    assert_eq!(report.stop_reason, StopReason::Cancelled);
    assert_eq!(chunks, 1);
    assert!(report.token_ids.len() < 50);
    let again = engine
        .generate(
            &text_conversation(),
            &greedy(3),
            &AtomicBool::new(false),
            &mut |_| {},
        )
        .unwrap();
    assert_eq!(again.stop_reason, StopReason::MaxTokens);
}

#[test]
fn prompt_longer_than_the_context_is_refused() {
    let mut engine = engine("D");
    let context = engine.context_length();
    let long = "fox ".repeat(context);
    let err = engine
        .generate(
            &[Message::text(Role::User, long)],
            &greedy(1),
            &AtomicBool::new(false),
            &mut |_| {},
        )
        .unwrap_err();
    assert!(matches!(err, engine::Error::PromptTooLong { .. }), "{err}");
    assert!(err.to_string().contains("context"), "{err}");
}

#[test]
fn sampling_with_a_seed_is_reproducible() {
    let params = SamplingParams {
        temperature: 1.0,
        top_k: Some(64),
        top_p: Some(0.95),
        max_new_tokens: 12,
        seed: 1234,
    };
    let run = || {
        let mut e = engine("D");
        e.generate(
            &text_conversation(),
            &params,
            &AtomicBool::new(false),
            &mut |_| {},
        )
        .unwrap()
        .token_ids
    };
    assert_eq!(run(), run());
}

#[test]
fn streamed_text_never_splits_a_character() {
    let e = engine("C");
    let tok = e.prompt_encoder().tokenizer();
    // The tiny vocabulary spells "é" with two byte-fallback tokens.
    let ids = tok.encode("café ☕", false).unwrap().get_ids().to_vec();
    assert!(ids.len() > 4);
    let mut stream = e.prompt_encoder().text_stream();
    let mut out = String::new();
    for id in ids {
        if let Some(t) = stream.push(id) {
            assert!(!t.contains('\u{FFFD}'), "broken character streamed: {t:?}");
            out.push_str(&t);
        }
    }
    if let Some(t) = stream.finish() {
        out.push_str(&t);
    }
    assert_eq!(out, "café ☕");
}

#[test]
fn missing_model_files_are_reported_by_name() {
    let dir = std::env::temp_dir().join(format!("gemma-chat-missing-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for f in [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
    ] {
        std::fs::copy(fixtures::model_dir("D").join(f), dir.join(f)).unwrap();
    }
    let err = Engine::load(&dir, &LoadOptions::default()).err().unwrap();
    assert!(err.to_string().contains("model.safetensors"), "{err}");

    // A truncated download.
    let bytes = std::fs::read(fixtures::model_dir("D").join("model.safetensors")).unwrap();
    std::fs::write(dir.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    let err = Engine::load(&dir, &LoadOptions::default()).err().unwrap();
    assert!(err.to_string().contains("truncated"), "{err}");

    // A shard listed in the index but absent.
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        r#"{"weight_map": {"model.language_model.norm.weight": "model-00001-of-00002.safetensors"}}"#,
    )
    .unwrap();
    let err = Engine::load(&dir, &LoadOptions::default()).err().unwrap();
    assert!(
        err.to_string().contains("model-00001-of-00002.safetensors"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn an_attachment_changed_on_disk_is_decoded_again() {
    use engine::Part;
    let dir = std::env::temp_dir().join(format!("engine-media-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("photo.png");
    let fixture = fixtures::fixture_dir("C");
    std::fs::copy(fixture.join("image.png"), &path).unwrap();
    let conversation = vec![Message {
        role: Role::User,
        content: vec![
            Part::Image { path: path.clone() },
            Part::Text {
                text: "What is in this picture?".into(),
            },
        ],
    }];

    let mut warm = engine("C");
    let first = warm.prefill(&conversation).unwrap();
    let again = warm.prefill(&conversation).unwrap();
    assert_eq!(again.reused_tokens, again.prompt_tokens - 1);
    assert!(max_diff(&again.logits, &first.logits) < 1e-4);

    // Same path, new picture: neither the decoded image nor its KV entries may be reused.
    std::fs::copy(fixture.join("image_exact.png"), &path).unwrap();
    let changed = warm.prefill(&conversation).unwrap();
    let fresh = engine("C").prefill(&conversation).unwrap();
    std::fs::remove_dir_all(&dir).ok();
    assert!(changed.reused_tokens < fresh.prompt_tokens - 1);
    let diff = max_diff(&changed.logits, &fresh.logits);
    assert!(diff < 1e-4, "stale image: logits differ by {diff}");
    assert!(max_diff(&first.logits, &changed.logits) > 1e-2);
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// A copy of fixture C's model folder whose `generation_config.json` lists only `<eos>` (1) and
/// whose `config.json` lists `config_eos` at the top level (text_config keeps its `<eos>`).
fn copy_with_eos_lists(tag: &str, config_eos: serde_json::Value) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix(&format!("gemma-chat-stop-{tag}"))
        .tempdir()
        .unwrap();
    let src = fixtures::model_dir("C");
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    let rewrite = |name: &str, key_eos: serde_json::Value| {
        let path = dir.path().join(name);
        let mut json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        json["eos_token_id"] = key_eos;
        std::fs::write(&path, json.to_string()).unwrap();
    };
    rewrite("generation_config.json", serde_json::json!([1]));
    rewrite("config.json", config_eos);
    dir
}

#[test]
fn stop_ids_are_the_union_of_both_configs_plus_end_of_turn() {
    // Fixture C: <eos> = 1, <end_of_turn> = 7, and an unused id 5 to see config.json's list used.
    let end_of_turn = 7;
    let only_eos = copy_with_eos_lists("eos", serde_json::json!(1));
    let engine = Engine::load(only_eos.path(), &LoadOptions::default()).unwrap();
    assert_eq!(engine.stop_ids(), &[1, end_of_turn]);

    let config_adds = copy_with_eos_lists("union", serde_json::json!([1, 5]));
    let engine = Engine::load(config_adds.path(), &LoadOptions::default()).unwrap();
    assert_eq!(engine.stop_ids(), &[1, 5, end_of_turn]);
}
