//! Audio tower, audio embeddings and audio prompts against Hugging Face transformers, fed the
//! golden log-mel features so that front-end and model errors stay apart.

mod common;

use candle_core::{DType, Device, Tensor};
use common::{assert_close_rel, model_dir, Golden};
use gemma3n::audio::AudioTrace;
use gemma3n::{AudioEncoder, Checkpoint, Gemma3nConfig, Gemma3nModel, MediaEmbeddings};

const INTERMEDIATE_REL: f32 = 1e-4;

fn load(variant: &str) -> Gemma3nModel {
    Gemma3nModel::load(&model_dir(variant), DType::F32, &Device::Cpu).expect("load model")
}

/// Golden features and the u8 validity mask (golden masks are bool, True = valid frame).
fn features(golden: &Golden, prefix: &str) -> (Tensor, Tensor) {
    let mel = golden.f32(&format!("{prefix}.input_features"));
    let valid = golden.mask(&format!("{prefix}.input_features_mask"));
    (mel, valid)
}

/// The golden encoder mask is True for padding; ours is 1 for real tokens.
fn assert_valid_matches(what: &str, valid: &Tensor, golden_padding: &Tensor) {
    let ours: Vec<u8> = valid.flatten_all().unwrap().to_vec1().unwrap();
    let theirs: Vec<u8> = golden_padding.flatten_all().unwrap().to_vec1().unwrap();
    let expected: Vec<u8> = theirs.iter().map(|&p| 1 - p).collect();
    assert_eq!(ours, expected, "{what}: token mask differs");
}

fn tower_matches(variant: &str) {
    let model = load(variant);
    let golden = Golden::open(variant);
    let (mel, valid) = features(&golden, "audio");
    let mut trace = AudioTrace::default();
    let enc = model
        .audio_encoding(&mel, &valid, Some(&mut trace))
        .unwrap();
    assert_close_rel(
        &format!("{variant} sscp_output"),
        trace.sscp_output.as_ref().unwrap(),
        &golden.f32("audio.encoder.sscp_output"),
        INTERMEDIATE_REL,
    );
    for (i, out) in trace.conformer_outputs.iter().enumerate() {
        assert_close_rel(
            &format!("{variant} conformer_output.{i}"),
            out,
            &golden.f32(&format!("audio.encoder.conformer_output.{i}")),
            INTERMEDIATE_REL,
        );
    }
    assert_eq!(
        trace.conformer_outputs.len(),
        model.config().audio_config.conf_num_hidden_layers
    );
    assert_close_rel(
        &format!("{variant} encoder_output"),
        &enc.features,
        &golden.f32("audio.encoder_output"),
        INTERMEDIATE_REL,
    );
    assert_valid_matches(
        variant,
        &enc.valid,
        &golden.mask("audio.encoder_output_mask"),
    );

    let soft = model
        .embed_audio()
        .unwrap()
        .embed_features(&enc.features)
        .unwrap();
    assert_close_rel(
        &format!("{variant} soft_embeddings"),
        &soft,
        &golden.f32("audio.soft_embeddings"),
        INTERMEDIATE_REL,
    );
}

/// The tower in f64 takes the plain candle-op path instead of the fused f32 CPU kernels (the
/// path of GPUs and other dtypes); it must agree with the reference too.
fn composed_tower_matches(variant: &str) {
    let dir = model_dir(variant);
    let cfg = Gemma3nConfig::from_file(&dir.join("config.json")).unwrap();
    let vb = Checkpoint::open(&dir)
        .unwrap()
        .var_builder(DType::F64, &Device::Cpu)
        .unwrap();
    let tower = AudioEncoder::new(&cfg.audio_config, vb.pp("model").pp("audio_tower")).unwrap();
    let golden = Golden::open(variant);
    for prefix in ["audio", "audio_batch"] {
        let (mel, valid) = features(&golden, prefix);
        let enc = tower
            .forward(&mel.to_dtype(DType::F64).unwrap(), &valid, None)
            .unwrap();
        assert_close_rel(
            &format!("{variant} {prefix} encoder_output, f64 candle ops"),
            &enc.features.to_dtype(DType::F32).unwrap(),
            &golden.f32(&format!("{prefix}.encoder_output")),
            INTERMEDIATE_REL,
        );
        assert_valid_matches(
            variant,
            &enc.valid,
            &golden.mask(&format!("{prefix}.encoder_output_mask")),
        );
    }
}

fn padded_embeddings_match(variant: &str) {
    let model = load(variant);
    let golden = Golden::open(variant);
    let (mel, valid) = features(&golden, "audio");
    let emb = model.encode_audio(&mel, &valid).unwrap();
    let slots = model.config().audio_soft_tokens_per_image;
    let soft = golden.f32("audio.soft_embeddings");
    let real = soft.dim(1).unwrap();
    assert_eq!(emb.dims()[..2], [1, slots]);
    assert_close_rel(
        &format!("{variant} encode_audio real rows"),
        &emb.narrow(1, 0, real).unwrap(),
        &soft,
        INTERMEDIATE_REL,
    );
    let pad = golden.f32("audio.padding_embedding");
    for row in real..slots {
        assert_close_rel(
            &format!("{variant} padding row {row}"),
            &emb.get(0).unwrap().get(row).unwrap(),
            &pad,
            INTERMEDIATE_REL,
        );
    }
}

fn batch_matches(variant: &str) {
    let model = load(variant);
    let golden = Golden::open(variant);
    let (mel, valid) = features(&golden, "audio_batch");
    let enc = model.audio_encoding(&mel, &valid, None).unwrap();
    assert_close_rel(
        &format!("{variant} batch encoder_output"),
        &enc.features,
        &golden.f32("audio_batch.encoder_output"),
        INTERMEDIATE_REL,
    );
    let padding = golden.mask("audio_batch.encoder_output_mask");
    assert_valid_matches(variant, &enc.valid, &padding);
    // The reference embeds every row, padded ones included (they are zero vectors there too).
    let soft = model
        .embed_audio()
        .unwrap()
        .embed_features(&enc.features)
        .unwrap();
    assert_close_rel(
        &format!("{variant} batch soft_embeddings"),
        &soft,
        &golden.f32("audio_batch.soft_embeddings"),
        INTERMEDIATE_REL,
    );
    // The short clip's padded tokens become the padding embedding.
    let emb = model.encode_audio(&mel, &valid).unwrap();
    let pad = golden.f32("audio.padding_embedding");
    let padded: Vec<u8> = padding.get(1).unwrap().to_vec1().unwrap();
    assert!(
        padded.contains(&1),
        "{variant}: short clip should have padded tokens"
    );
    for (row, _) in padded.iter().enumerate().filter(|(_, &p)| p == 1) {
        assert_close_rel(
            &format!("{variant} short clip padded row {row}"),
            &emb.get(1).unwrap().get(row).unwrap(),
            &pad,
            INTERMEDIATE_REL,
        );
    }
}

/// Full forward and a 20-step greedy continuation of the audio prompt through the KV cache.
fn audio_prompt_matches(variant: &str) {
    let model = load(variant);
    let golden = Golden::open(variant);
    let (mel, valid) = features(&golden, "audio");
    let media = MediaEmbeddings {
        images: None,
        audio: Some(model.encode_audio(&mel, &valid).unwrap()),
    };
    common::assert_prompt_logits(&model, &golden, "audio", &media);
    common::assert_greedy(&model, &golden, "audio", media);
}

#[test]
fn audio_tower_matches_reference_c() {
    tower_matches("C");
}

#[test]
fn audio_tower_matches_reference_d() {
    tower_matches("D");
}

#[test]
fn composed_audio_tower_matches_reference_c() {
    composed_tower_matches("C");
}

#[test]
fn composed_audio_tower_matches_reference_d() {
    composed_tower_matches("D");
}

#[test]
fn audio_padding_matches_reference_c() {
    padded_embeddings_match("C");
}

#[test]
fn audio_padding_matches_reference_d() {
    padded_embeddings_match("D");
}

#[test]
fn audio_batch_matches_reference_c() {
    batch_matches("C");
}

#[test]
fn audio_batch_matches_reference_d() {
    batch_matches("D");
}

#[test]
fn audio_prompt_matches_reference_c() {
    audio_prompt_matches("C");
}

#[test]
fn audio_prompt_matches_reference_d() {
    audio_prompt_matches("D");
}

#[test]
fn bad_audio_inputs_are_rejected() {
    let model = load("D");
    let mel_bins = model.config().audio_config.input_feat_size;
    let dev = Device::Cpu;
    let cases = [
        (
            Tensor::zeros((1, 10, mel_bins + 1), DType::F32, &dev).unwrap(),
            Tensor::ones((1, 10), DType::U8, &dev).unwrap(),
            "mel bins",
        ),
        (
            Tensor::zeros((1, 0, mel_bins), DType::F32, &dev).unwrap(),
            Tensor::ones((1, 0), DType::U8, &dev).unwrap(),
            "no frames",
        ),
        (
            Tensor::zeros((1, 10, mel_bins), DType::F32, &dev).unwrap(),
            Tensor::ones((1, 9), DType::U8, &dev).unwrap(),
            "mask",
        ),
        (
            Tensor::zeros((10, mel_bins), DType::F32, &dev).unwrap(),
            Tensor::ones((1, 10), DType::U8, &dev).unwrap(),
            "[clips, frames",
        ),
        // 30 s of frames gives far more tokens than the tiny prompt has slots for.
        (
            Tensor::zeros((1, 3000, mel_bins), DType::F32, &dev).unwrap(),
            Tensor::ones((1, 3000), DType::U8, &dev).unwrap(),
            "split the recording",
        ),
    ];
    for (mel, valid, needle) in cases {
        let err = model.encode_audio(&mel, &valid).unwrap_err().to_string();
        assert!(
            err.contains(needle),
            "error {err:?} should mention {needle:?}"
        );
    }
}
