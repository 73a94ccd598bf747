//! A GGUF file alone is enough: the tokenizer rebuilt from its `tokenizer.ggml.*` metadata (as
//! llama.cpp's converter wrote it, `tests/reference/make_gguf_lone.py`) gives the ids of the
//! checkpoint's own `tokenizer.json`, and its chat template is the checkpoint's.

use engine::chat::{Message, Role};
use engine::engine::Engine;
use gemma3n::LoadOptions;
use tokenizers::Tokenizer;

const CORPUS: &[&str] = &[
    "Hello, world! How are you today?",
    "Bonjour le monde, ça va ? Grüße aus München. ¿Qué tal?",
    "Привет, мир! こんにちは世界。你好，世界。안녕하세요 مرحبا नमस्ते",
    "Unseen scripts fall back to bytes: ᚠᚢᚦ ꦲꦏ 𓀀 and Ελληνικά",
    "emoji 🙂🎉👍❤️ 👩‍👩‍👧 🇫🇷 and a lone 🦀",
    "runs   of    spaces     and\ttabs\t\tand\n\n\nnewlines \n \n",
    "    four leading spaces, trailing    ",
    "fn main() {\n    let x: Vec<u32> = (0..10).map(|i| i * 2).collect();\n}",
    "for (int i = 0; i < 10; i++) { x += i * 2; } // 3.14159 12345",
    "<start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n",
    "<bos><eos><pad><unk><mask>[multimodal]<start_of_image><image_soft_token><end_of_image>",
    "<start_of_audio><audio_soft_token><end_of_audio> <start_of_turn notquite <end_of_turn",
    "",
    " ",
];

fn lone_gguf() -> std::path::PathBuf {
    fixtures::fixture_dir("gguf").join("lone/G-f32.gguf")
}

#[test]
fn the_gguf_tokenizer_gives_the_checkpoints_ids() {
    let engine = Engine::load(&lone_gguf(), &LoadOptions::default()).expect("lone GGUF loads");
    let ours = engine.prompt_encoder().tokenizer();
    let reference =
        Tokenizer::from_file(fixtures::fixture_dir("gguf").join("G/tokenizer.json")).unwrap();
    assert_eq!(ours.get_vocab_size(true), reference.get_vocab_size(true));
    for text in CORPUS {
        let want = reference.encode(*text, false).unwrap();
        let got = ours.encode(*text, false).unwrap();
        assert_eq!(got.get_ids(), want.get_ids(), "{text:?}");
        assert_eq!(
            ours.decode(got.get_ids(), false).unwrap(),
            reference.decode(want.get_ids(), false).unwrap(),
            "{text:?}"
        );
    }
}

#[test]
fn the_gguf_template_and_stop_ids_are_the_checkpoints() {
    let lone = Engine::load(&lone_gguf(), &LoadOptions::default()).unwrap();
    let folder = Engine::load(
        &fixtures::fixture_dir("gguf").join("G"),
        &LoadOptions::default(),
    )
    .unwrap();
    let messages = [
        Message::text(Role::System, "Be brief."),
        Message::text(Role::User, "Hi there <start_of_turn> 🙂"),
    ];
    assert_eq!(
        lone.encode(&messages).unwrap(),
        folder.encode(&messages).unwrap()
    );
    for id in folder.stop_ids() {
        assert!(lone.stop_ids().contains(id), "{:?}", lone.stop_ids());
    }
}
