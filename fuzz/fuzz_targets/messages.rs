//! A messages file (the input, JSON) loaded, validated, rendered with fixture C's chat template
//! and tokenised by the prompt encoder with fixture C's tokenizer.
#![no_main]

use std::sync::OnceLock;

use engine::prompt::PromptEncoder;
use gemma3n::Gemma3nConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    static ENCODER: OnceLock<PromptEncoder> = OnceLock::new();
    let encoder = ENCODER.get_or_init(|| {
        let dir = gemma_chat_fuzz::fixtures().join("C/model");
        let cfg = Gemma3nConfig::from_file(&dir.join("config.json")).expect("fixture C config");
        PromptEncoder::from_model_dir(&dir, &cfg).expect("fixture C tokenizer and template")
    });
    let path = gemma_chat_fuzz::scratch_file("messages.json", data);
    let Ok(messages) = engine::load_messages(&path) else {
        return;
    };
    let _ = encoder.render(&messages, false);
    let _ = encoder.encode(&messages);
});
