//! Text decoder parity with Hugging Face transformers on the committed tiny checkpoints.

mod common;

use candle_core::{DType, Device};
use common::{
    assert_close, assert_close_rel, ids_tensor, model_dir, prompt_logits, Golden, LOGITS_TOL,
};
use gemma3n::text::Trace;
use gemma3n::{Gemma3nModel, MediaEmbeddings};

const INTERMEDIATE_REL: f32 = 1e-4;
/// Two computations of the same logits that differ only in f32 rounding.
const SAME_LOGITS: f32 = 1e-4;

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

/// Generation runs the KV-shared layers for the last position only; its logits must be those of
/// the full forward pass, for a prompt prefilled in one piece or after cached tokens (to f32
/// rounding: the skipped rows change which kernels the products take).
#[test]
fn last_position_logits_match_the_full_forward() {
    let model = load("E");
    let ids = Golden::open("E").ids("text.input_ids");
    let none = MediaEmbeddings::default();
    let full = prompt_logits(&model, &ids).squeeze(0).unwrap();
    let t = ids.len();
    let whole = model
        .forward_last(&ids_tensor(&ids), &none, &mut model.new_cache())
        .unwrap()
        .squeeze(0)
        .unwrap();
    assert_close(
        "one prefill",
        &whole,
        &full.get(t - 1).unwrap(),
        SAME_LOGITS,
    );
    let mut cache = model.new_cache();
    let split = t / 2;
    let first = model
        .forward_last(&ids_tensor(&ids[..split]), &none, &mut cache)
        .unwrap()
        .squeeze(0)
        .unwrap();
    assert_close(
        "first half",
        &first,
        &full.get(split - 1).unwrap(),
        SAME_LOGITS,
    );
    let rest = model
        .forward_last(&ids_tensor(&ids[split..]), &none, &mut cache)
        .unwrap()
        .squeeze(0)
        .unwrap();
    assert_close(
        "after cached tokens",
        &rest,
        &full.get(t - 1).unwrap(),
        SAME_LOGITS,
    );
}

/// A config in which no layer shares keys and values still gets the last position only.
#[test]
fn last_position_logits_without_kv_sharing() {
    let src = model_dir("E");
    let dir = std::env::temp_dir().join(format!("gemma3n-no-kv-sharing-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(src.join("config.json")).unwrap()).unwrap();
    config["text_config"]["num_kv_shared_layers"] = 0.into();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    std::fs::copy(src.join("model.safetensors"), dir.join("model.safetensors")).unwrap();
    let model = Gemma3nModel::load(&dir, DType::F32, &Device::Cpu).unwrap();
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(model.config().text_config.num_kv_shared_layers, 0);
    let ids = Golden::open("E").ids("text.input_ids");
    let full = prompt_logits(&model, &ids).squeeze(0).unwrap();
    let last = model
        .forward_last(
            &ids_tensor(&ids),
            &MediaEmbeddings::default(),
            &mut model.new_cache(),
        )
        .unwrap()
        .squeeze(0)
        .unwrap();
    assert_close(
        "last position, no KV sharing",
        &last,
        &full.get(ids.len() - 1).unwrap(),
        SAME_LOGITS,
    );
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

/// With the context 20× past E's window of 4, the rolling cache (fed in uneven chunks, cut back
/// and refilled like a new chat turn) gives the logits of one uncached pass over every position.
#[test]
fn rolling_cache_matches_a_full_pass_far_past_the_window() {
    let model = load("E");
    let window = model.config().text_config.sliding_window;
    let vocab = model.config().text_config.vocab_size_per_layer_input as u32;
    let ids: Vec<u32> = (0..80u32).map(|i| (i * 37 + 11) % vocab).collect();
    assert!(ids.len() >= 20 * window);
    let none = MediaEmbeddings::default();
    let full = prompt_logits(&model, &ids).squeeze(0).unwrap();

    let mut cache = model.new_cache();
    let run = |cache: &mut gemma3n::Cache, from: usize, to: usize| {
        let logits = model
            .forward(&ids_tensor(&ids[from..to]), &none, cache)
            .unwrap()
            .squeeze(0)
            .unwrap();
        assert_close(
            &format!("positions {from}..{to}"),
            &logits,
            &full.narrow(0, from, to - from).unwrap(),
            1e-4,
        );
    };
    let mut pos = 0;
    for chunk in [9, 1, 1, 3, 17, 1, 1, 1, 2] {
        run(&mut cache, pos, pos + chunk);
        pos += chunk;
    }
    // A new turn that shares all but the last 3 positions reuses the cache...
    assert_eq!(cache.truncate(pos - 3), pos - 3);
    pos -= 3;
    while pos < ids.len() {
        run(&mut cache, pos, pos + 1);
        pos += 1;
    }
    assert!(cache.bytes() > 0);
    // ...one that goes back further than the sliding layers keep starts over.
    assert_eq!(cache.truncate(pos - 3 * window), 0);
    assert_eq!(cache.seq_len(), 0);
    run(&mut cache, 0, 12);
}

/// Q has the widths the packed CPU formats take (hidden 256), so it is the quantised-agreement
/// checkpoint; its f32 path must match the reference like the others.
#[test]
fn text_forward_matches_reference_q() {
    full_forward_matches("Q");
}

#[test]
fn text_greedy_matches_reference_q() {
    greedy_matches("Q", "text");
}
