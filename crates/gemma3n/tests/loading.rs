//! Checkpoint problems are reported by tensor or file name.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use common::model_dir;
use gemma3n::Gemma3nModel;

/// A copy of the D model folder whose weights are replaced by `edit`.
fn edited_copy(tag: &str, edit: impl FnOnce(&mut HashMap<String, Tensor>)) -> PathBuf {
    edited_copy_of("D", tag, edit)
}

/// A copy of a fixture's model folder (config and weights) with its weights edited by `edit`.
fn edited_copy_of(
    variant: &str,
    tag: &str,
    edit: impl FnOnce(&mut HashMap<String, Tensor>),
) -> PathBuf {
    let src = model_dir(variant);
    let dir = std::env::temp_dir().join(format!("gemma3n-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
    let mut tensors =
        candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
    edit(&mut tensors);
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).unwrap();
    dir
}

fn load_err(dir: &Path) -> String {
    let err = Gemma3nModel::load(dir, DType::F32, &Device::Cpu)
        .err()
        .expect("loading should fail");
    std::fs::remove_dir_all(dir).ok();
    err.to_string()
}

const NORM: &str = "model.language_model.norm.weight";

#[test]
fn wrong_shape_is_reported_by_name() {
    let dir = edited_copy("shape", |t| {
        t.insert(
            NORM.into(),
            Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap(),
        );
    });
    let err = load_err(&dir);
    assert!(err.contains(NORM), "{err}");
    assert!(err.contains("shape"), "{err}");
}

#[test]
fn wrong_dtype_is_reported_by_name() {
    let dir = edited_copy("dtype", |t| {
        let n = t[NORM].dim(0).unwrap();
        t.insert(
            NORM.into(),
            Tensor::zeros(n, DType::I64, &Device::Cpu).unwrap(),
        );
    });
    let err = load_err(&dir);
    assert!(err.contains(NORM) && err.contains("dtype"), "{err}");
}

#[test]
fn missing_tensor_is_reported_by_name() {
    let dir = edited_copy("missing", |t| {
        t.remove(NORM);
    });
    let err = load_err(&dir);
    assert!(err.contains(NORM), "{err}");
}

#[test]
fn kv_shared_layers_ignore_their_own_projections() {
    // Drop the unused k/v weights of the KV-shared layers: the model must still load.
    let cfg = gemma3n::Gemma3nConfig::from_file(&model_dir("D").join("config.json")).unwrap();
    let first = cfg.text_config.first_kv_shared_layer();
    let dir = edited_copy("shared", |t| {
        t.retain(|name, _| {
            !(first..cfg.text_config.num_hidden_layers).any(|l| {
                name.starts_with(&format!("model.language_model.layers.{l}.self_attn.k_"))
                    || name.starts_with(&format!("model.language_model.layers.{l}.self_attn.v_"))
            })
        });
    });
    let loaded = Gemma3nModel::load(&dir, DType::F32, &Device::Cpu);
    std::fs::remove_dir_all(&dir).ok();
    loaded.expect("KV-shared layers must not need k/v weights");
}

#[test]
fn missing_config_is_reported() {
    let dir = std::env::temp_dir().join(format!("gemma3n-noconfig-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let err = load_err(&dir);
    assert!(err.contains("config.json"), "{err}");
}

#[test]
fn load_progress_rises_to_one_and_stops_there() {
    use std::sync::{Arc, Mutex};
    for weights in [gemma3n::WeightFormat::Dense, gemma3n::WeightFormat::Q8_0] {
        let seen = Arc::new(Mutex::new(Vec::<f32>::new()));
        let sink = seen.clone();
        let opts = gemma3n::LoadOptions {
            weights,
            progress: Some(Arc::new(move |f| sink.lock().unwrap().push(f))),
            ..Default::default()
        };
        let model = Gemma3nModel::load_with(&model_dir("C"), &opts).expect("load");
        let reports = seen.lock().unwrap().clone();
        assert!(
            reports.len() > 10,
            "{weights}: only {} reports",
            reports.len()
        );
        assert!(
            reports.windows(2).all(|w| w[0] <= w[1]),
            "{weights}: progress went backwards: {reports:?}"
        );
        assert!(reports.iter().all(|f| (0.0..=1.0).contains(f)));
        // Nearly everything counted is read before the final report.
        assert!(reports[reports.len() - 2] > 0.9, "{weights}: {reports:?}");
        assert_eq!(reports.last(), Some(&1.0));
        // Loading a tower afterwards does not move a finished bar.
        model.audio_tower().expect("audio tower");
        assert_eq!(seen.lock().unwrap().len(), reports.len());
    }
}

/// A copy of fixture C (both towers) with its weights edited.
fn damaged_c(tag: &str, edit: impl FnOnce(&mut HashMap<String, Tensor>)) -> PathBuf {
    edited_copy_of("C", &format!("tower-{tag}"), edit)
}

const VISION_CONV: &str = "model.vision_tower.timm_model.blocks.1.2.pw_exp.conv.weight";
const AUDIO_FFW: &str = "model.audio_tower.conformer.3.ffw_layer_end.ffw_layer_1.weight";

#[test]
fn a_missing_tower_tensor_is_reported_at_open() {
    let dir = damaged_c("missing", |t| {
        t.remove(VISION_CONV);
    });
    let err = load_err(&dir);
    assert!(
        err.contains(&format!(
            "tensor {VISION_CONV} is missing (expected shape [128, 32, 1, 1])"
        )),
        "{err}"
    );
}

#[test]
fn a_tower_tensor_of_the_wrong_shape_is_reported_at_open() {
    let dir = damaged_c("shape", |t| {
        t.insert(
            AUDIO_FFW.into(),
            Tensor::zeros((160, 39), DType::F32, &Device::Cpu).unwrap(),
        );
    });
    let err = load_err(&dir);
    assert!(
        err.contains(&format!(
            "tensor {AUDIO_FFW} has shape [160, 39], config.json implies [160, 40]"
        )),
        "{err}"
    );
}

#[test]
fn a_truncated_weight_file_is_reported_at_open() {
    let dir = damaged_c("truncated", |_| {});
    let file = dir.join("model.safetensors");
    let len = std::fs::metadata(&file).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(len - 1000)
        .unwrap();
    let err = load_err(&dir);
    assert!(
        err.contains("model.safetensors is not a valid safetensors file"),
        "{err}"
    );
}

#[test]
fn kv_shared_projections_are_neither_required_nor_rejected() {
    // Fixture C carries the KV-shared layers' k/v/k_norm weights; with them gone it still opens.
    let cfg = gemma3n::Gemma3nConfig::from_file(&model_dir("C").join("config.json")).unwrap();
    let first = cfg.text_config.first_kv_shared_layer();
    let dir = damaged_c("kvshared", |t| {
        t.retain(|name, _| {
            !(first..cfg.text_config.num_hidden_layers).any(|l| {
                ["k_proj", "v_proj", "k_norm"].iter().any(|w| {
                    name.starts_with(&format!("model.language_model.layers.{l}.self_attn.{w}."))
                })
            })
        });
    });
    let loaded = Gemma3nModel::load(&dir, DType::F32, &Device::Cpu);
    std::fs::remove_dir_all(&dir).ok();
    loaded.expect("KV-shared layers need no k/v weights");
}
