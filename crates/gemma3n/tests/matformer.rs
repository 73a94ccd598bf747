//! MatFormer slices of fixture M (a tiny E4B-like checkpoint) against transformers run on the
//! slices that the MatFormer Lab procedure cuts (`tests/reference/make_matformer.py`): sliced at
//! load, and exported to a new checkpoint folder.

mod common;

use std::path::Path;

use common::{assert_close, assert_close_rel, assert_greedy, fixture_dir, ids_tensor, model_dir};
use common::{Golden, LOGITS_TOL};
use gemma3n::matformer::{self, Slice};
use gemma3n::text::Trace;
use gemma3n::{Gemma3nModel, LoadOptions, MediaEmbeddings};
use serde_json::Value;
use sha2::{Digest, Sha256};

const INTERMEDIATE_REL: f32 = 1e-4;

fn description() -> Value {
    let text = std::fs::read_to_string(fixture_dir("M").join("golden.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn slice(name: &str) -> Slice {
    serde_json::from_value(description()["slices"][name].clone()).unwrap()
}

fn load(dir: &Path, slice: Option<Slice>) -> Gemma3nModel {
    let opts = LoadOptions {
        slice,
        ..LoadOptions::default()
    };
    Gemma3nModel::load_with(dir, &opts).expect("load model")
}

/// The sliced config, every decoder layer's output, the prompt's logits and a greedy
/// continuation through the cache all match the reference run `key`.
fn matches_reference(model: &Gemma3nModel, key: &str) {
    let run = &description()["runs"][key];
    let t = &model.config().text_config;
    assert_eq!(t.num_hidden_layers as u64, run["num_hidden_layers"]);
    assert_eq!(t.num_kv_shared_layers as u64, run["num_kv_shared_layers"]);
    let widths: Vec<usize> = serde_json::from_value(run["intermediate_size"].clone()).unwrap();
    assert_eq!(t.intermediate_sizes(), widths, "{key}: widths");
    let types = serde_json::to_value(t.layer_types()).unwrap();
    assert_eq!(types, run["layer_types"], "{key}: layer types");
    let sparsity: Vec<f64> =
        serde_json::from_value(run["activation_sparsity_pattern"].clone()).unwrap();
    assert_eq!(t.activation_sparsity(), sparsity, "{key}: sparsity");
    // The size the app shows is what transformers counts.
    assert_eq!(
        effective_params_without_unused_kv(t, None),
        run["effective_params"],
        "{key}: parameters"
    );

    let golden = Golden::open("M");
    let input = ids_tensor(&golden.ids(&format!("{key}.input_ids")));
    let mut trace = Trace::default();
    let hidden = model
        .forward_hidden(
            &input,
            &MediaEmbeddings::default(),
            &mut model.new_cache(),
            Some(&mut trace),
        )
        .unwrap();
    assert_eq!(trace.layer_outputs.len(), t.num_hidden_layers);
    for (i, out) in trace.layer_outputs.iter().enumerate() {
        assert_close_rel(
            &format!("{key} layer_output.{i}"),
            out,
            &golden.f32(&format!("{key}.layer_output.{i}")),
            INTERMEDIATE_REL,
        );
    }
    assert_close(
        &format!("{key} logits"),
        &model.text().logits(&hidden).unwrap(),
        &golden.f32(&format!("{key}.logits")),
        LOGITS_TOL,
    );
    assert_greedy(model, &golden, key, MediaEmbeddings::default());
}

#[test]
fn full_model_matches_reference() {
    matches_reference(&load(&model_dir("M"), None), "full");
}

#[test]
fn slice_of_narrower_feed_forward_blocks_matches_reference() {
    matches_reference(&load(&model_dir("M"), Some(slice("narrow"))), "narrow");
}

#[test]
fn slice_that_skips_layers_matches_reference() {
    matches_reference(&load(&model_dir("M"), Some(slice("skip"))), "skip");
}

#[test]
fn e2b_like_slice_matches_reference() {
    matches_reference(&load(&model_dir("M"), Some(slice("e2b_like"))), "e2b_like");
}

/// The slice that keeps everything at full width is the full model.
#[test]
fn slice_of_everything_is_the_full_model() {
    let widths = load(&model_dir("M"), None)
        .config()
        .text_config
        .intermediate_sizes();
    let whole = Slice {
        ffn_dims: widths,
        skip_layers: vec![],
    };
    matches_reference(&load(&model_dir("M"), Some(whole)), "full");
}

/// An exported slice holds exactly the tensors the reference procedure writes (same names,
/// shapes and values), and loads to the same model.
#[test]
fn exported_slices_match_the_reference_procedure() {
    for key in ["narrow", "skip"] {
        let out = tempdir(key);
        let exported = matformer::export(&model_dir("M"), &slice(key), &out).unwrap();
        assert_eq!(exported.files, vec![out.join("model.safetensors")]);
        let expected = description()["slices"][key]["tensors"].clone();
        let expected = expected.as_object().unwrap();
        let st = unsafe { candle_core::safetensors::MmapedSafetensors::new(&exported.files[0]) }
            .unwrap();
        let names: Vec<String> = st.tensors().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names.len(), expected.len(), "{key}: tensor count");
        for (name, view) in st.tensors() {
            let want = &expected[&name];
            assert_eq!(
                view.shape(),
                serde_json::from_value::<Vec<usize>>(want[0].clone()).unwrap()
            );
            let digest = format!("{:x}", Sha256::digest(view.data()));
            assert_eq!(digest, want[1].as_str().unwrap(), "{key}: {name} differs");
        }
        for file in [
            "tokenizer.json",
            "chat_template.jinja",
            "generation_config.json",
        ] {
            assert!(out.join(file).is_file(), "{key}: {file} not copied");
        }
        matches_reference(&load(&out, None), key);
        std::fs::remove_dir_all(&out).ok();
    }
}

/// The folder's own table is offered (Google's E4B rows do not fit this model), and the sizes
/// computed for its slices are transformers' counts.
#[test]
fn the_folder_table_is_offered_with_its_sizes() {
    let dir = model_dir("M");
    let cfg = gemma3n::Gemma3nConfig::from_file(&dir.join("config.json")).unwrap();
    let offered = matformer::offered(&dir, &cfg.text_config).unwrap();
    let ids: Vec<&str> = offered.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(ids, ["narrow", "skip", "e2b_like"]);
    for p in &offered {
        let plan = gemma3n::SlicePlan::new(&cfg.text_config, &p.slice).unwrap();
        assert_eq!(
            effective_params_without_unused_kv(&cfg.text_config, Some(&plan)),
            description()["runs"][&p.id]["effective_params"],
            "{}",
            p.id
        );
    }
    let err = matformer::find_for(&dir, &cfg.text_config, "E2B")
        .unwrap_err()
        .to_string();
    assert!(err.contains("narrow, skip, e2b_like"), "{err}");
}

#[test]
fn export_refuses_a_folder_that_is_not_empty() {
    let out = tempdir("busy");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("notes.txt"), "mine").unwrap();
    let err = matformer::export(&model_dir("M"), &slice("narrow"), &out)
        .unwrap_err()
        .to_string();
    assert!(err.contains("not empty"), "{err}");
    assert_eq!(
        std::fs::read_to_string(out.join("notes.txt")).unwrap(),
        "mine"
    );
    std::fs::remove_dir_all(&out).ok();
}

/// Slices that would break the model are refused with the reason, before anything is read.
#[test]
fn slices_that_break_the_model_are_refused() {
    let dir = model_dir("M");
    let refused = |slice: Slice| {
        let opts = LoadOptions {
            slice: Some(slice),
            ..LoadOptions::default()
        };
        match Gemma3nModel::load_with(&dir, &opts) {
            Ok(_) => panic!("slice accepted"),
            Err(e) => e.to_string(),
        }
    };
    let err = refused(Slice {
        ffn_dims: vec![64],
        skip_layers: vec![4],
    });
    assert!(err.contains("layer 4") && err.contains("share"), "{err}");
    let err = refused(Slice {
        ffn_dims: vec![64, 64],
        skip_layers: vec![],
    });
    assert!(
        err.contains("2 feed-forward widths") && err.contains("15 layers"),
        "{err}"
    );
    let err = refused(Slice {
        ffn_dims: vec![97],
        skip_layers: vec![],
    });
    assert!(err.contains("layer 0") && err.contains("96 wide"), "{err}");
    let err = refused(Slice {
        ffn_dims: vec![64],
        skip_layers: vec![15],
    });
    assert!(
        err.contains("15 layers") && err.contains("layer 15"),
        "{err}"
    );
}

/// The published table (and transformers 4.53, which the MatFormer Lab notebook ran) count the
/// KV-shared layers' unused key/value weights, as the checkpoints hold them; transformers 5 builds
/// no such parameters, so its count is that much smaller.
fn effective_params_without_unused_kv(
    cfg: &gemma3n::TextConfig,
    plan: Option<&gemma3n::SlicePlan>,
) -> u64 {
    let size = matformer::Size::of(cfg, plan);
    let shared = plan.map_or(cfg.num_kv_shared_layers, |p| p.num_kv_shared_layers());
    let unused =
        (2 * cfg.hidden_size * cfg.num_key_value_heads * cfg.head_dim + cfg.head_dim) as u64;
    size.effective_params - shared as u64 * unused
}

fn tempdir(tag: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("gemma3n-slice-{tag}-{}", std::process::id()))
}
