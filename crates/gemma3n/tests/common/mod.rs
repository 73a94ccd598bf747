//! The shared fixtures crate, plus the prompt-level checks every modality's parity test runs.
#![allow(unused_imports, dead_code)]

pub use fixtures::*;

use candle_core::{Device, Tensor};
use gemma3n::{Gemma3nModel, MediaEmbeddings};

pub const LOGITS_TOL: f32 = 2e-3;

pub fn ids_tensor(ids: &[u32]) -> Tensor {
    Tensor::from_vec(ids.to_vec(), (1, ids.len()), &Device::Cpu).unwrap()
}

/// Logits `[1, T, V]` of every position of a text-only `ids`, from a fresh cache.
pub fn prompt_logits(model: &Gemma3nModel, ids: &[u32]) -> Tensor {
    model
        .forward(
            &ids_tensor(ids),
            &MediaEmbeddings::default(),
            &mut model.new_cache(),
        )
        .unwrap()
}

/// Full-prompt logits of golden prompt `prompt` (`text`, `image`, `audio`, `multimodal`).
pub fn assert_prompt_logits(
    model: &Gemma3nModel,
    golden: &Golden,
    prompt: &str,
    media: &MediaEmbeddings,
) {
    let ids = golden.ids(&format!("{prompt}.input_ids"));
    let logits = model
        .forward(&ids_tensor(&ids), media, &mut model.new_cache())
        .unwrap();
    assert_close(
        &format!("{prompt} logits"),
        &logits,
        &golden.f32(&format!("{prompt}.logits")),
        LOGITS_TOL,
    );
}

/// Prefill with the media, then one token at a time through the cache, as `generate()` does:
/// every step's logits and the 20 greedy ids must match.
pub fn assert_greedy(model: &Gemma3nModel, golden: &Golden, prompt: &str, media: MediaEmbeddings) {
    let expected = golden.ids(&format!("{prompt}.generated_ids"));
    let step_logits = golden.f32(&format!("{prompt}.generated_step_logits"));
    let mut cache = model.new_cache();
    let mut input = ids_tensor(&golden.ids(&format!("{prompt}.input_ids")));
    let mut media = media;
    let mut generated = Vec::new();
    for step in 0..expected.len() {
        let logits = model
            .forward_last(&input, &media, &mut cache)
            .unwrap()
            .squeeze(0)
            .unwrap();
        assert_close(
            &format!("{prompt} step {step} logits"),
            &logits,
            &step_logits.get(step).unwrap(),
            LOGITS_TOL,
        );
        let next = logits.argmax(0).unwrap().to_scalar::<u32>().unwrap();
        generated.push(next);
        input = ids_tensor(&[next]);
        media = MediaEmbeddings::default();
    }
    assert_eq!(generated, expected, "{prompt}: greedy ids differ");
}
