//! MobileNet-V5 vision tower, image soft embeddings and an image prompt through the whole model,
//! against Hugging Face transformers + timm on the committed tiny checkpoints.

mod common;

use candle_core::{DType, Device, Tensor};
use common::{assert_close, assert_close_rel, ids_tensor, model_dir, Golden, LOGITS_TOL};
use gemma3n::vision::VisionTrace;
use gemma3n::{Gemma3nModel, MediaEmbeddings};

const INTERMEDIATE_REL: f32 = 1e-4;

fn load(variant: &str) -> Gemma3nModel {
    Gemma3nModel::load(&model_dir(variant), DType::F32, &Device::Cpu).expect("load model")
}

fn tower_matches(variant: &str) {
    let model = load(variant);
    let golden = Golden::open(variant);
    let pixels = golden.f32("image.pixel_values");
    let tower = model.vision_tower().unwrap();
    let mut trace = VisionTrace::default();
    let out = tower.forward_traced(&pixels, Some(&mut trace)).unwrap();
    assert_close_rel(
        "stem_output",
        trace.stem_output.as_ref().unwrap(),
        &golden.f32("image.vision.stem_output"),
        INTERMEDIATE_REL,
    );
    assert_eq!(trace.stage_outputs.len(), 4);
    for (i, stage) in trace.stage_outputs.iter().enumerate() {
        assert_close_rel(
            &format!("stage_output.{i}"),
            stage,
            &golden.f32(&format!("image.vision.stage_output.{i}")),
            INTERMEDIATE_REL,
        );
    }
    assert_close_rel(
        "vision_tower_output",
        &out,
        &golden.f32("image.vision_tower_output"),
        INTERMEDIATE_REL,
    );
    let soft = model.encode_images(&pixels).unwrap();
    assert_close_rel(
        "soft_embeddings",
        &soft,
        &golden.f32("image.soft_embeddings"),
        INTERMEDIATE_REL,
    );
}

/// Full forward of the image prompt, then greedy decoding through the cache, fed with the golden
/// pixel values so that preprocessing differences cannot hide here.
fn image_prompt_matches(variant: &str) {
    let model = load(variant);
    let golden = Golden::open(variant);
    let media = MediaEmbeddings {
        images: Some(
            model
                .encode_images(&golden.f32("image.pixel_values"))
                .unwrap(),
        ),
        audio: None,
    };
    common::assert_prompt_logits(&model, &golden, "image", &media);
    common::assert_greedy(&model, &golden, "image", media);
}

#[test]
fn vision_tower_matches_reference_c() {
    tower_matches("C");
}

#[test]
fn vision_tower_matches_reference_d() {
    tower_matches("D");
}

#[test]
fn image_prompt_matches_reference_c() {
    image_prompt_matches("C");
}

#[test]
fn image_prompt_matches_reference_d() {
    image_prompt_matches("D");
}

/// Two images in one batch give each image's own embeddings (no cross-talk through the batch).
#[test]
fn batched_images_are_independent() {
    let model = load("D");
    let golden = Golden::open("D");
    let a = golden.f32("image.pixel_values");
    let b = a.flip(&[3]).unwrap();
    let both = model
        .encode_images(&Tensor::cat(&[&a, &b], 0).unwrap())
        .unwrap();
    let single_a = model.encode_images(&a).unwrap();
    let single_b = model.encode_images(&b).unwrap();
    assert_close(
        "batch row 0",
        &both.get(0).unwrap(),
        &single_a.get(0).unwrap(),
        1e-5,
    );
    assert_close(
        "batch row 1",
        &both.get(1).unwrap(),
        &single_b.get(0).unwrap(),
        1e-5,
    );
    let diff = common::max_abs_diff(&single_a, &single_b);
    assert!(
        diff > 1e-3,
        "a mirrored image should embed differently ({diff})"
    );
}

/// Two images in one prompt: the first image's rows fill the first run of soft-token slots.  With
/// causal attention everything up to the end of the first run must equal the single-image
/// reference, and swapping the images must change it.
#[test]
fn two_images_fill_their_slots_in_order() {
    let model = load("C");
    let golden = Golden::open("C");
    let image_token = model.config().image_token_id;
    let ids = golden.ids("image.input_ids");
    let start = ids.iter().position(|&t| t == image_token).unwrap();
    let end = ids.iter().rposition(|&t| t == image_token).unwrap() + 1;
    let two: Vec<u32> = [&ids[..end], &ids[start..end], &ids[end..]].concat();
    let a = golden.f32("image.pixel_values");
    let b = a.flip(&[2]).unwrap();
    let run = |first: &Tensor, second: &Tensor| {
        let images = model
            .encode_images(&Tensor::cat(&[first, second], 0).unwrap())
            .unwrap();
        let media = MediaEmbeddings {
            images: Some(images),
            audio: None,
        };
        model
            .forward(&ids_tensor(&two), &media, &mut model.new_cache())
            .unwrap()
            .narrow(1, 0, end)
            .unwrap()
    };
    let expected = golden.f32("image.logits").narrow(1, 0, end).unwrap();
    assert_close("first image of two", &run(&a, &b), &expected, LOGITS_TOL);
    let swapped = common::max_abs_diff(&run(&b, &a), &expected);
    assert!(
        swapped > 1e-2,
        "swapping the images should change the logits ({swapped})"
    );
}

#[test]
fn bad_pixel_values_are_rejected() {
    let model = load("D");
    let gray = Tensor::zeros((1, 1, 96, 96), DType::F32, &Device::Cpu).unwrap();
    let err = model.encode_images(&gray).unwrap_err().to_string();
    assert!(err.contains("[n, 3, H, W]"), "{err}");
}

/// A tiny timm encoder with the options C and D lack: non-square input, a fifth strided stage
/// (stride turned into dilation), `dw_end`, `noskip`, a grouped edge-residual conv, four MSFA taps
/// with nearest upsampling by non-integer ratios and a bilinear resize to the output grid
/// (`tests/reference/make_vision_extra.py`).
#[test]
fn vision_tower_matches_timm_on_unusual_architecture() {
    let dir = common::fixture_dir("vision_extra");
    let model_args: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("model_args.json")).unwrap())
            .unwrap();
    let cfg: gemma3n::VisionConfig = serde_json::from_value(serde_json::json!({
        "architecture": "mobilenetv5_300m_enc",
        "model_args": model_args,
        "hidden_size": 2048, "vocab_size": 8, "vocab_offset": 100
    }))
    .unwrap();
    let arch = gemma3n::vision::Arch::from_config(&cfg).unwrap();
    assert!(arch.stages.iter().flatten().any(|b| b.dilation == 2));
    let golden = Golden::open("vision_extra");
    let file = dir.join("golden.safetensors");
    let vb = unsafe {
        candle_nn::VarBuilder::from_mmaped_safetensors(&[file], DType::F32, &Device::Cpu).unwrap()
    };
    let tower =
        gemma3n::vision::VisionTower::new(arch, 2048, vb.pp("model.vision_tower.timm_model"))
            .unwrap();
    let mut trace = VisionTrace::default();
    let out = tower
        .forward_traced(&golden.f32("pixel_values"), Some(&mut trace))
        .unwrap();
    assert_close_rel(
        "stem_output",
        trace.stem_output.as_ref().unwrap(),
        &golden.f32("stem_output"),
        INTERMEDIATE_REL,
    );
    assert_eq!(trace.stage_outputs.len(), 5);
    for (i, stage) in trace.stage_outputs.iter().enumerate() {
        assert_close_rel(
            &format!("stage_output.{i}"),
            stage,
            &golden.f32(&format!("stage_output.{i}")),
            INTERMEDIATE_REL,
        );
    }
    assert_close_rel("output", &out, &golden.f32("output"), INTERMEDIATE_REL);
}
