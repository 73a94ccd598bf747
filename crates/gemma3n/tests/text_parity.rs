//! Text decoder parity with Hugging Face transformers on the committed tiny checkpoints.

mod common;

use candle_core::{DType, Device};
use common::{assert_close, assert_close_rel, ids_tensor, model_dir, Golden, LOGITS_TOL};
use gemma3n::text::Trace;
use gemma3n::{Gemma3nModel, MediaEmbeddings};

const INTERMEDIATE_REL: f32 = 1e-4;

fn load(variant: &str) -> Gemma3nModel {
    Gemma3nModel::load(&model_dir(variant), DType::F32, &Device::Cpu).expect("load model")
}

fn full_forward_matches(variant: &str) {
    let model = load(variant);
    let golden = Golden::open(variant);
    let ids = golden.ids("text.input_ids");
    let mut cache = model.new_cache();
    let mut trace = Trace::default();
    let input = ids_tensor(&ids);
    let (embeds, _) = model
        .embed_inputs(&input, &MediaEmbeddings::default())
        .unwrap();
    assert_close_rel(
        "embed_tokens_output",
        &embeds,
        &golden.f32("text.embed_tokens_output"),
        INTERMEDIATE_REL,
    );
    let hidden = model
        .forward_hidden(
            &input,
            &MediaEmbeddings::default(),
            &mut cache,
            Some(&mut trace),
        )
        .unwrap();
    assert_close_rel(
        "per_layer_inputs",
        trace.per_layer_inputs.as_ref().unwrap(),
        &golden.f32("text.per_layer_inputs"),
        INTERMEDIATE_REL,
    );
    for (i, out) in trace.layer_outputs.iter().enumerate() {
        assert_close_rel(
            &format!("layer_output.{i}"),
            out,
            &golden.f32(&format!("text.layer_output.{i}")),
            INTERMEDIATE_REL,
        );
    }
    assert_close_rel(
        "final_norm_output",
        &hidden,
        &golden.f32("text.final_norm_output"),
        INTERMEDIATE_REL,
    );
    let logits = model.text().logits(&hidden).unwrap();
    assert_close(
        "text logits",
        &logits,
        &golden.f32("text.logits"),
        LOGITS_TOL,
    );
}

/// Prefill, then one token at a time through the cache, as `generate()` does.
fn greedy_matches(variant: &str, prompt: &str) {
    let model = load(variant);
    let golden = Golden::open(variant);
    common::assert_greedy(&model, &golden, prompt, MediaEmbeddings::default());
}

#[test]
fn text_forward_matches_reference_c() {
    full_forward_matches("C");
}

#[test]
fn text_forward_matches_reference_d() {
    full_forward_matches("D");
}

#[test]
fn text_greedy_matches_reference_c() {
    greedy_matches("C", "text");
}

#[test]
fn text_greedy_matches_reference_d() {
    greedy_matches("D", "text");
}

#[test]
fn text_forward_matches_reference_e() {
    full_forward_matches("E");
}

#[test]
fn text_greedy_matches_reference_e() {
    greedy_matches("E", "text");
}

/// The hub's config dialect (`rope_theta` / `rope_local_base_freq`) gives the same model.
#[test]
fn legacy_config_dialect_gives_the_same_logits() {
    let src = model_dir("E");
    let dir = std::env::temp_dir().join(format!("gemma3n-legacy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        src.join("config_legacy_format.json"),
        dir.join("config.json"),
    )
    .unwrap();
    std::fs::copy(src.join("model.safetensors"), dir.join("model.safetensors")).unwrap();
    let model = Gemma3nModel::load(&dir, DType::F32, &Device::Cpu).unwrap();
    std::fs::remove_dir_all(&dir).ok();
    let golden = Golden::open("E");
    let ids = ids_tensor(&golden.ids("text.input_ids"));
    let logits = model
        .forward(&ids, &MediaEmbeddings::default(), &mut model.new_cache())
        .unwrap();
    assert_close(
        "legacy-config logits",
        &logits,
        &golden.f32("text.logits"),
        LOGITS_TOL,
    );
}

#[test]
fn legacy_config_gives_same_rope() {
    use gemma3n::{Gemma3nConfig, LayerType};
    for variant in ["C", "D", "E"] {
        let dir = model_dir(variant);
        let new = Gemma3nConfig::from_file(&dir.join("config.json")).unwrap();
        let legacy = Gemma3nConfig::from_file(&dir.join("config_legacy_format.json")).unwrap();
        for kind in [LayerType::SlidingAttention, LayerType::FullAttention] {
            assert_eq!(
                new.text_config.rope_theta_for(kind),
                legacy.text_config.rope_theta_for(kind)
            );
        }
    }
}
