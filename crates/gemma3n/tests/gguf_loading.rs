//! llama.cpp-format GGUF files (`tests/reference/make_gguf.py`) give the safetensors model's logits.

mod common;

use candle_core::{DType, Device, Tensor};
use common::{assert_close, fixture_dir, ids_tensor, model_dir, prompt_logits, Golden, LOGITS_TOL};
use gemma3n::{Gemma3nModel, LoadOptions, MediaEmbeddings, WeightFormat};

fn gguf(name: &str) -> std::path::PathBuf {
    fixture_dir("gguf").join(name)
}

fn load(path: &std::path::Path, weights: WeightFormat) -> Gemma3nModel {
    let opts = LoadOptions {
        weights,
        ..LoadOptions::default()
    };
    Gemma3nModel::load_with(path, &opts).expect("load model")
}

/// Greedy continuation of `ids` through the cache.
fn greedy(model: &Gemma3nModel, ids: &[u32], steps: usize) -> Vec<u32> {
    let mut cache = model.new_cache();
    let mut input = ids_tensor(ids);
    let mut out = Vec::new();
    for _ in 0..steps {
        let logits = model
            .forward_last(&input, &MediaEmbeddings::default(), &mut cache)
            .unwrap();
        let next = logits.squeeze(0).unwrap().argmax(0).unwrap();
        let next = next.to_scalar::<u32>().unwrap();
        out.push(next);
        input = ids_tensor(&[next]);
    }
    out
}

#[test]
fn f32_gguf_matches_the_safetensors_checkpoint() {
    let golden = Golden::open("E");
    let ids = golden.ids("text.input_ids");
    let reference = Gemma3nModel::load(&model_dir("E"), DType::F32, &Device::Cpu).unwrap();
    let model = load(&gguf("E-f32.gguf"), WeightFormat::Dense);
    assert_eq!(
        model.config().text_config.layer_types(),
        reference.config().text_config.layer_types()
    );
    assert_close(
        "GGUF f32 vs safetensors",
        &prompt_logits(&model, &ids),
        &prompt_logits(&reference, &ids),
        1e-4,
    );
    assert_close(
        "GGUF f32 vs transformers",
        &prompt_logits(&model, &ids),
        &golden.f32("text.logits"),
        LOGITS_TOL,
    );
    let expected = golden.ids("text.generated_ids");
    assert_eq!(greedy(&model, &ids, expected.len()), expected);
}

/// Q8_0 blocks are used as they are (packed, with q8 activations): teacher-forced on the f32
/// model's greedy continuation, the top-1 tokens agree.
#[test]
fn q8_0_gguf_agrees_with_f32_on_the_next_token() {
    let prompt = Golden::open("E").ids("text.input_ids");
    let f32_model = load(&gguf("E-f32.gguf"), WeightFormat::Dense);
    let reference = greedy(&f32_model, &prompt, 100);
    let model = load(&gguf("E-q8_0.gguf"), WeightFormat::Dense);
    let mut ids = prompt.clone();
    ids.extend(&reference[..reference.len() - 1]);
    let logits = prompt_logits(&model, &ids).squeeze(0).unwrap();
    let picked: Vec<u32> = logits.argmax(1).unwrap().to_vec1().unwrap();
    let agree = picked[prompt.len() - 1..]
        .iter()
        .zip(&reference)
        .filter(|(a, b)| a == b)
        .count();
    eprintln!("q8_0 GGUF: {agree}/100 top-1 tokens agree with f32");
    assert!(agree >= 90, "only {agree}/100 top-1 tokens agree");
}

/// A packed format asked for at load applies to the GGUF's float matrices.
#[test]
fn f32_gguf_loads_packed() {
    let golden = Golden::open("E");
    let ids = golden.ids("text.input_ids");
    let model = load(&gguf("E-f32.gguf"), WeightFormat::Bf16);
    let want = golden.f32("text.logits");
    assert_close(
        "GGUF f32 packed as bf16",
        &prompt_logits(&model, &ids),
        &want,
        0.05 * common::max_abs(&want),
    );
}

#[test]
fn a_gguf_model_refuses_media_and_bad_files_clearly() {
    let model = load(&gguf("E-q8_0.gguf"), WeightFormat::Dense);
    let err = model
        .encode_images(&Tensor::zeros((1, 3, 8, 8), DType::F32, &Device::Cpu).unwrap())
        .unwrap_err()
        .to_string();
    assert!(err.contains("text decoder"), "{err}");

    let dir = std::env::temp_dir().join(format!("gemma3n-gguf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bytes = std::fs::read(gguf("E-f32.gguf")).unwrap();
    let truncated = dir.join("truncated.gguf");
    std::fs::write(&truncated, &bytes[..bytes.len() - 1000]).unwrap();
    let garbage = dir.join("garbage.gguf");
    std::fs::write(&garbage, b"not a gguf file at all").unwrap();
    let iq = gguf("iq4_xs.gguf");
    for (path, expected) in [
        (&truncated, "truncated"),
        (&garbage, "not a GGUF"),
        (&iq, "tensor blk.0.ffn_down.weight is stored as IQ4_XS"),
    ] {
        let err = Gemma3nModel::load_with(path, &LoadOptions::default())
            .err()
            .expect("bad file loaded")
            .to_string();
        assert!(err.contains(expected), "{}: {err}", path.display());
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// The mid-2025 converter's dialect: no `rope.freq_base_swa` or `final_logit_softcapping`
/// (llama.cpp's defaults, 10000 and 30, are this checkpoint's values), `shared_kv_layers` as a
/// float, and `token_embd` cut to the per-layer vocabulary (as 262,400 rows were cut to
/// 262,144): the logits of the rows it keeps are the checkpoint's.
#[test]
fn legacy_gguf_dialect_matches_the_safetensors_checkpoint() {
    let ids = Golden::open("E").ids("text.input_ids");
    let reference = Gemma3nModel::load(&model_dir("E"), DType::F32, &Device::Cpu).unwrap();
    let model = load(&gguf("E-legacy.gguf"), WeightFormat::Dense);
    let (want, got) = (&reference.config().text_config, &model.config().text_config);
    assert_eq!(got.vocab_size, want.vocab_size_per_layer_input);
    assert_eq!(got.num_kv_shared_layers, want.num_kv_shared_layers);
    assert_eq!(got.final_logit_softcapping, want.final_logit_softcapping);
    let rows = got.vocab_size;
    let expected = prompt_logits(&reference, &ids).narrow(2, 0, rows).unwrap();
    assert_close(
        "legacy GGUF vs safetensors",
        &prompt_logits(&model, &ids),
        &expected,
        1e-4,
    );
}

/// llama.cpp's own converter's output (`tests/reference/make_gguf_lone.py`) for checkpoint G,
/// which has the released models' text layout: the logits are the checkpoint's.
#[test]
fn converter_written_gguf_matches_the_safetensors_checkpoint() {
    let dir = fixture_dir("gguf");
    let reference = Gemma3nModel::load(&dir.join("G"), DType::F32, &Device::Cpu).unwrap();
    let model = load(&dir.join("lone/G-f32.gguf"), WeightFormat::Dense);
    assert_eq!(
        model.config().text_config.layer_types(),
        reference.config().text_config.layer_types()
    );
    let ids: Vec<u32> = [2, 6]
        .into_iter()
        .chain((40..70).step_by(3))
        .chain(300..320)
        .collect();
    assert_close(
        "converter GGUF vs safetensors",
        &prompt_logits(&model, &ids),
        &prompt_logits(&reference, &ids),
        1e-4,
    );
}

/// A MatFormer slice taken from a GGUF file is the slice taken from the safetensors checkpoint:
/// skipped layers, narrowed blocks (cut between ggml blocks in the Q8_0 file) and per-layer tables.
#[test]
fn a_slice_of_a_gguf_file_is_the_slice_of_its_checkpoint() {
    // Layer 0 goes; layers 1 and 2 hold the keys and values of the shared layers 3 to 5.
    let slice = gemma3n::Slice {
        ffn_dims: vec![64, 32, 64, 32, 64],
        skip_layers: vec![0],
    };
    let sliced = |path: &std::path::Path| {
        let opts = LoadOptions {
            slice: Some(slice.clone()),
            ..LoadOptions::default()
        };
        Gemma3nModel::load_with(path, &opts).expect("load the slice")
    };
    let ids = Golden::open("E").ids("text.input_ids");
    let from_checkpoint = sliced(&model_dir("E"));
    assert_eq!(from_checkpoint.config().text_config.num_hidden_layers, 5);
    let expected = prompt_logits(&from_checkpoint, &ids);
    assert_close(
        "sliced f32 GGUF logits",
        &prompt_logits(&sliced(&gguf("E-f32.gguf")), &ids),
        &expected,
        1e-4,
    );
    let q8 = prompt_logits(&sliced(&gguf("E-q8_0.gguf")), &ids);
    let top = |t: &Tensor| {
        t.argmax(candle_core::D::Minus1)
            .unwrap()
            .flatten_all()
            .unwrap()
    };
    let agree = top(&q8)
        .eq(&top(&expected))
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .mean_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(agree > 0.8, "q8_0 slice: {agree} of the top-1 tokens agree");
}
