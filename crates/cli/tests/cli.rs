//! The `gemma-chat` contract, exercised as a user would: through the binary.

use std::path::PathBuf;
use std::process::{Command, Output};

fn gemma_chat(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gemma-chat"))
        .args(args)
        .output()
        .expect("run gemma-chat")
}

/// A command that must succeed; its stderr says why it did not.
fn assert_succeeded(out: &Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gemma-chat-cli-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

const TEXT_MESSAGES: &str = r#"[
  {"role": "system", "content": [{"type": "text", "text": "You are a helpful assistant."}]},
  {"role": "user", "content": [{"type": "text", "text": "Hello world! Tell me about the quick brown fox."}]},
  {"role": "assistant", "content": "The fox jumps over the lazy dog."},
  {"role": "user", "content": "What is a café? Answer in one short line, please."}
]"#;

/// `generate --json` with 20 greedy tokens: the whole stdout and the parsed JSON line.
fn greedy_json(model: &std::path::Path, messages: &std::path::Path) -> (String, serde_json::Value) {
    greedy_json_with(model, messages, &[])
}

/// [`greedy_json`] with more options (a slice, say).
fn greedy_json_with(
    model: &std::path::Path,
    messages: &std::path::Path,
    options: &[&str],
) -> (String, serde_json::Value) {
    let mut args = vec![
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--messages",
        messages.to_str().unwrap(),
        "--temperature",
        "0",
        "--max-new-tokens",
        "20",
        "--json",
    ];
    args.extend_from_slice(options);
    let out = gemma_chat(&args);
    assert_succeeded(&out);
    let stdout = String::from_utf8(out.stdout).unwrap();
    let report = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    (stdout, report)
}

#[test]
fn generate_json_reports_the_reference_greedy_tokens() {
    let dir = temp_dir("gen");
    let messages = dir.join("m.json");
    std::fs::write(&messages, TEXT_MESSAGES).unwrap();
    let model = fixtures::fixture_dir("D").join("model");
    let (stdout, report) = greedy_json(&model, &messages);
    let expected = until_stop(
        fixtures::golden_json("D")["prompts"]["text"]["generated_ids"]
            .as_array()
            .unwrap(),
    );
    let stopped = expected.len() < 20;
    let ids: Vec<u64> = report["token_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(ids, expected);
    let reason = if stopped { "eos" } else { "max_tokens" };
    assert_eq!(report["stop_reason"], reason);
    assert_eq!(
        report["prompt_tokens"],
        fixtures::golden_json("D")["prompts"]["text"]["num_tokens"]
    );
    for key in [
        "text",
        "stop_reason",
        "ttft_ms",
        "prefill_tok_s",
        "decode_tok_s",
    ] {
        assert!(report.get(key).is_some(), "missing {key}");
    }
    // The streamed text precedes the JSON line.
    assert!(stdout.starts_with(report["text"].as_str().unwrap()));
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn forward_writes_ids_and_reference_logits() {
    let dir = temp_dir("fwd");
    let messages = dir.join("m.json");
    let out_file = dir.join("out.safetensors");
    std::fs::write(&messages, TEXT_MESSAGES).unwrap();
    let model = fixtures::fixture_dir("C").join("model");
    let out = gemma_chat(&[
        "forward",
        "--model",
        model.to_str().unwrap(),
        "--messages",
        messages.to_str().unwrap(),
        "--out",
        out_file.to_str().unwrap(),
    ]);
    assert_succeeded(&out);
    let ours = candle_core::safetensors::load(&out_file, &candle_core::Device::Cpu).unwrap();
    let gold = fixtures::Golden::open("C");
    let ids: Vec<u32> = ours["input_ids"]
        .to_vec1::<i64>()
        .unwrap()
        .into_iter()
        .map(|v| v as u32)
        .collect();
    assert_eq!(ids, gold.ids("text.input_ids"));
    let logits = gold.f32("text.logits").squeeze(0).unwrap();
    fixtures::assert_close("forward logits", &ours["logits"], &logits, 2e-3);
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn bad_inputs_fail_with_a_message_not_a_panic() {
    let dir = temp_dir("bad");
    let model = fixtures::fixture_dir("D").join("model");
    let model = model.to_str().unwrap();
    let malformed = dir.join("bad.json");
    std::fs::write(&malformed, "[{\"role\": \"user\", ").unwrap();
    let not_alternating = dir.join("roles.json");
    std::fs::write(
        &not_alternating,
        r#"[{"role":"user","content":"a"},{"role":"user","content":"b"}]"#,
    )
    .unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "generate",
                "--model",
                model,
                "--messages",
                malformed.to_str().unwrap(),
            ],
            "not a valid messages list",
        ),
        (
            vec![
                "generate",
                "--model",
                model,
                "--messages",
                not_alternating.to_str().unwrap(),
            ],
            "alternate",
        ),
        (
            vec!["generate", "--model", "/no/such/model", "--prompt", "hi"],
            "neither a model folder",
        ),
        (
            vec![
                "generate", "--model", model, "--prompt", "hi", "--top-p", "1.5",
            ],
            "--top-p",
        ),
    ];
    for (args, expected) in cases {
        let out = gemma_chat(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn every_command_has_help() {
    for cmd in [
        vec!["--help"],
        vec!["generate", "--help"],
        vec!["forward", "--help"],
        vec!["chat", "--help"],
    ] {
        let out = gemma_chat(&cmd);
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stdout).contains("--"));
    }
}

#[test]
fn chat_keeps_the_conversation_across_turns() {
    use std::io::Write;
    let model = fixtures::fixture_dir("D").join("model");
    let mut child = Command::new(env!("CARGO_BIN_EXE_gemma-chat"))
        .args([
            "chat",
            "--model",
            model.to_str().unwrap(),
            "--temperature",
            "0",
            "--max-new-tokens",
            "4",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"Hello\nAnd again\n/quit\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let turns: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("prompt tokens"))
        .collect();
    assert_eq!(turns.len(), 2, "{stderr}");
    // The second turn reuses the first turn's cache.
    assert!(!turns[1].contains("(0 reused)"), "{}", turns[1]);
}

/// The reference's media prompts, from the files on disk: image decoding and resizing, audio
/// decoding and log-mel features, towers and decoder must all agree for the greedy ids to match.
#[test]
fn media_prompts_from_files_give_the_reference_greedy_tokens() {
    for variant in ["C", "D", "E"] {
        let dir = fixtures::fixture_dir(variant);
        let image = dir.join("image.png");
        let audio = dir.join("audio_16k_mono.wav");
        let prompts = [
            (
                "image",
                serde_json::json!([{"role": "user", "content": [
                    {"type": "image", "path": image},
                    {"type": "text", "text": "Describe this image in detail."}]}]),
            ),
            (
                "audio",
                serde_json::json!([{"role": "user", "content": [
                    {"type": "audio", "path": audio},
                    {"type": "text", "text": "Transcribe this audio clip."}]}]),
            ),
            (
                "multimodal",
                serde_json::json!([
                    {"role": "system", "content": [{"type": "text", "text": "You are a helpful assistant."}]},
                    {"role": "user", "content": [
                        {"type": "image", "path": image},
                        {"type": "text", "text": "Look at the picture, then listen:"},
                        {"type": "audio", "path": audio},
                        {"type": "text", "text": "What do you see and hear?"}]}]),
            ),
        ];
        let tmp = temp_dir(&format!("media-{variant}"));
        for (name, messages) in prompts {
            let file = tmp.join(format!("{name}.json"));
            std::fs::write(&file, messages.to_string()).unwrap();
            let model = dir.join("model");
            let (_, report) = greedy_json(&model, &file);
            let reference = &fixtures::golden_json(variant)["prompts"][name];
            assert_eq!(
                report["prompt_tokens"], reference["num_tokens"],
                "{variant}/{name}"
            );
            let expected = until_stop(reference["generated_ids"].as_array().unwrap());
            let ids: Vec<u64> = report["token_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap())
                .collect();
            assert_eq!(ids, expected, "{variant}/{name}");
        }
        std::fs::remove_dir_all(tmp).ok();
    }
}

/// The reference ignores stop tokens; generation stops on <eos>/<end_of_turn> and keeps it.
fn until_stop(reference: &[serde_json::Value]) -> Vec<u64> {
    let ids: Vec<u64> = reference.iter().map(|v| v.as_u64().unwrap()).collect();
    match ids.iter().position(|&id| id == 1 || id == 7) {
        Some(i) => ids[..=i].to_vec(),
        None => ids,
    }
}

#[test]
fn mic_without_an_input_device_is_a_clear_error() {
    use std::io::Write;
    if mic::input_device_names().is_ok_and(|d| !d.is_empty()) {
        return; // a machine with a microphone: nothing to check here
    }
    let model = fixtures::fixture_dir("D").join("model");
    let mut child = Command::new(env!("CARGO_BIN_EXE_gemma-chat"))
        .args(["chat", "--model", model.to_str().unwrap(), "--mic"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"\n/quit\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("microphone") || stderr.contains("input device"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_long_recording_is_split_and_the_split_is_reported() {
    let dir = temp_dir("long");
    let wav = dir.join("long.wav");
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 16_000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(&wav, spec).unwrap();
    for i in 0..16_000 * 8 {
        let t = i as f32 / 16_000.0;
        // A tone with a short pause every second, where a clip can end.
        let on = (t % 1.0) < 0.8;
        let s = if on {
            (t * 440.0 * std::f32::consts::TAU).sin() * 0.3
        } else {
            0.0
        };
        w.write_sample((s * 32767.0) as i16).unwrap();
    }
    w.finalize().unwrap();
    let model = fixtures::fixture_dir("D").join("model");
    let out = gemma_chat(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "What is this?",
        "--audio",
        wav.to_str().unwrap(),
        "--max-new-tokens",
        "2",
        "--json",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // The tiny model's clips hold about a second (its audio_soft_tokens_per_image is small).
    assert!(stderr.contains("8.0 s recording split into"), "{stderr}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let report: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(report["audio_splits"].as_array().unwrap().len(), 1);
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn bench_json_reports_speed_memory_and_tower_times() {
    let model = fixtures::fixture_dir("D").join("model");
    for quant in ["dense", "q8_0"] {
        let out = gemma_chat(&[
            "bench",
            "--model",
            model.to_str().unwrap(),
            "--quant",
            quant,
            "--prompt-tokens",
            "16",
            "--gen-tokens",
            "4",
            "--image",
            "--audio",
            "--json",
        ]);
        assert_succeeded(&out);
        let report: serde_json::Value =
            serde_json::from_str(String::from_utf8(out.stdout).unwrap().trim()).unwrap();
        for key in [
            "load_s",
            "ttft_ms",
            "prefill_tok_s",
            "decode_tok_s",
            "peak_rss_mb",
            "kv_cache_mb",
            "image_encode_ms",
            "audio_encode_ms",
            "effective_params",
            "weight_bytes_per_token",
        ] {
            assert!(
                report[key].as_f64().is_some_and(|v| v > 0.0),
                "{quant}: {key} in {report}"
            );
        }
    }
    let out = gemma_chat(&["bench", "--model", model.to_str().unwrap(), "--quant", "q3"]);
    assert!(!out.status.success());
}

#[test]
fn a_gguf_file_chats_like_its_checkpoint_and_reports_what_is_missing() {
    let dir = temp_dir("gguf");
    let messages = dir.join("m.json");
    std::fs::write(&messages, TEXT_MESSAGES).unwrap();
    let gguf = fixtures::fixture_dir("gguf").join("E-f32.gguf");
    let (_, from_gguf) = greedy_json(&gguf, &messages);
    let (_, from_folder) = greedy_json(&fixtures::model_dir("E"), &messages);
    assert_eq!(from_gguf["token_ids"], from_folder["token_ids"]);

    // Images need the vision tower, which a GGUF file does not hold.
    let image = fixtures::fixture_dir("E").join("image.png");
    let out = gemma_chat(&[
        "generate",
        "--model",
        gguf.to_str().unwrap(),
        "--prompt",
        "What is this?",
        "--image",
        image.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("text decoder"),
        "{stderr}"
    );

    // Alone, the file lacks its tokenizer and template: the error names them.
    let alone = dir.join("alone.gguf");
    std::fs::copy(&gguf, &alone).unwrap();
    let out = gemma_chat(&[
        "generate",
        "--model",
        alone.to_str().unwrap(),
        "--prompt",
        "Hi",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && stderr.contains("tokenizer.json")
            && stderr.contains("chat_template"),
        "{stderr}"
    );
    std::fs::remove_dir_all(dir).ok();
}

/// A GGUF with its own tokenizer and template (llama.cpp's converter wrote it) chats alone, in
/// its own folder, as the checkpoint it came from.
#[test]
fn a_gguf_file_alone_chats_like_its_checkpoint() {
    let dir = temp_dir("gguf-alone");
    let messages = dir.join("m.json");
    std::fs::write(&messages, TEXT_MESSAGES).unwrap();
    let alone = dir.join("G-f32.gguf");
    std::fs::copy(
        fixtures::fixture_dir("gguf").join("lone/G-f32.gguf"),
        &alone,
    )
    .unwrap();
    let (_, from_gguf) = greedy_json(&alone, &messages);
    let (_, from_folder) = greedy_json(&fixtures::fixture_dir("gguf").join("G"), &messages);
    assert_eq!(from_gguf["token_ids"], from_folder["token_ids"]);
    assert_eq!(from_gguf["prompt_tokens"], from_folder["prompt_tokens"]);
    let out = gemma_chat(&[
        "generate",
        "--model",
        alone.to_str().unwrap(),
        "--prompt",
        "Hi",
    ]);
    assert_succeeded(&out);
    std::fs::remove_dir_all(dir).ok();
}

/// A copy of the demo model whose header gives one vision-tower tensor another shape (the same
/// number of values, so the file itself stays valid).
fn demo_model_with_a_reshaped_tower_tensor(dir: &std::path::Path) {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/C/model");
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
    }
    let file = dir.join("model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    let from = br#"pw_exp.conv.weight":{"dtype":"F32","shape":[128,32,1,1]"#;
    let to = br#"pw_exp.conv.weight":{"dtype":"F32","shape":[128,16,2,1]"#;
    let at = bytes
        .windows(from.len())
        .position(|w| w == from)
        .expect("the tensor's header entry");
    let mut bytes = bytes;
    bytes[at..at + to.len()].copy_from_slice(to);
    std::fs::write(&file, bytes).unwrap();
}

#[test]
fn a_damaged_tower_is_reported_when_the_model_is_opened() {
    let dir = temp_dir("tower");
    demo_model_with_a_reshaped_tower_tensor(&dir);
    // A text-only prompt: the tower is never run, yet the open fails.
    let out = gemma_chat(&[
        "generate",
        "--model",
        dir.to_str().unwrap(),
        "--prompt",
        "Hello",
        "--max-new-tokens",
        "1",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "tensor model.vision_tower.timm_model.blocks.1.2.pw_exp.conv.weight has shape \
             [128, 16, 2, 1], config.json implies [128, 32, 1, 1]"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    std::fs::remove_dir_all(&dir).ok();
}

/// `slice` writes a MatFormer slice as a checkpoint folder; it chats like the same slice taken at
/// load (`--ffn-dims`, `--skip-layers`), and both continue the prompt as transformers does on the
/// slice the MatFormer Lab procedure cuts.
#[test]
fn a_sliced_checkpoint_chats_like_the_slice_taken_at_load() {
    let golden = fixtures::golden_json("M");
    let slice = &golden["slices"]["skip"];
    let list = |key: &str| -> String {
        let items: Vec<String> = slice[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.to_string())
            .collect();
        items.join(",")
    };
    let (dims, skip) = (list("ffn_dims"), list("skip_layers"));
    let full = fixtures::model_dir("M");
    let dir = temp_dir("slice");
    let sliced = dir.join("sliced");
    let out = gemma_chat(&[
        "slice",
        "--model",
        full.to_str().unwrap(),
        "--ffn-dims",
        &dims,
        "--skip-layers",
        &skip,
        "--out",
        sliced.to_str().unwrap(),
    ]);
    assert_succeeded(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("11 layers"));

    let messages = dir.join("m.json");
    std::fs::write(&messages, TEXT_MESSAGES).unwrap();
    let (_, exported) = greedy_json(&sliced, &messages);
    let (_, at_load) = greedy_json_with(
        &full,
        &messages,
        &["--ffn-dims", &dims, "--skip-layers", &skip],
    );
    assert_eq!(exported["token_ids"], at_load["token_ids"]);
    let ids: Vec<u64> = exported["token_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    let expected = until_stop(golden["runs"]["skip"]["generated_ids"].as_array().unwrap());
    let n = ids.len().min(expected.len());
    assert_eq!(ids[..n], expected[..n]);

    // A published E4B slice does not fit this 15-layer model, and an unknown name lists the known ones.
    let again = gemma_chat(&[
        "slice",
        "--model",
        full.to_str().unwrap(),
        "--slice",
        "E2B",
        "--out",
        sliced.to_str().unwrap(),
    ]);
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("layer 20 cannot be skipped"), "{err}");
    let unknown = gemma_chat(&[
        "generate", "--model", "x", "--slice", "E9B", "--prompt", "hi",
    ]);
    let err = String::from_utf8_lossy(&unknown.stderr);
    assert!(err.contains("E9B") && err.contains("E2.98B-layer"), "{err}");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn published_slices_are_listed() {
    let out = gemma_chat(&["slices"]);
    assert_succeeded(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    for id in ["E4B", "E2B", "E2.49B-block", "E3.79B-layer"] {
        assert!(text.contains(id), "{text}");
    }
    assert!(text.contains("1.91 B"), "{text}");
}
