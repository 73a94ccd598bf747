//! The real model: a thin adapter from the app's `ChatBackend` contract to `engine::Engine`,
//! which owns the prompt, the media towers and the KV cache reused across turns.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use engine::chat::Message;
use engine::{Engine, GenerationReport, LoadOptions, SamplingParams, WeightFormat};
use gemma3n::matformer::{self, Size};
use gemma3n::{Gemma3nConfig, SlicePlan, TextConfig};

use crate::backend::{ChatBackend, FormatBytes, ModelInfo, SizeChoice};
use crate::error::{AppError, AppResult};

pub struct ModelBackend {
    engine: Engine,
    info: ModelInfo,
}

impl ModelBackend {
    /// Load the model in `dir`, or its MatFormer slice `size` (an id its sizes offer).
    pub fn load(
        dir: &Path,
        demo: bool,
        options: &LoadOptions,
        size: Option<&str>,
    ) -> AppResult<Self> {
        if !dir.join("config.json").is_file() && !gemma3n::gguf::is_gguf(dir) {
            return Err(AppError::Model(format!(
                "{} is not a model folder: it has no config.json",
                dir.display()
            )));
        }
        let cannot = |e: &dyn std::fmt::Display| {
            AppError::Model(format!("cannot load the model in {}: {e}", dir.display()))
        };
        let full = Gemma3nConfig::of_model(dir).map_err(|e| cannot(&e))?;
        let mut options = options.clone();
        if let Some(id) = size {
            options.slice =
                Some(matformer::find_for(dir, &full.text_config, id).map_err(|e| cannot(&e))?);
        }
        let engine = Engine::load(dir, &options).map_err(|e| cannot(&e))?;
        let name = if demo {
            "Demo model — replies are noise".to_string()
        } else {
            display_name(dir)
        };
        Ok(Self {
            info: ModelInfo {
                name,
                path: dir.display().to_string(),
                demo,
                defaults: engine.default_sampling(),
                context_length: engine.context_length(),
                compute: engine.compute_description(),
                size: size.map(str::to_string),
                sizes: size_choices(dir, &full.text_config),
            },
            engine,
        })
    }
}

/// The slices the model in `dir` offers, smallest first, then the whole model; none when it
/// offers no slice smaller than itself.
fn size_choices(dir: &Path, cfg: &TextConfig) -> Vec<SizeChoice> {
    let full = Size::of(cfg, None);
    let mut choices: Vec<SizeChoice> = matformer::offered(dir, cfg)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|p| {
            let size = Size::of(cfg, Some(&SlicePlan::new(cfg, &p.slice).ok()?));
            (size != full).then(|| size_choice(Some(p.id), size))
        })
        .collect();
    if choices.is_empty() {
        return choices;
    }
    choices.sort_by_key(|c| c.effective_params);
    choices.push(size_choice(None, full));
    choices
}

fn size_choice(id: Option<String>, size: Size) -> SizeChoice {
    let formats = [
        WeightFormat::Q4K,
        WeightFormat::Q8_0,
        WeightFormat::Bf16,
        WeightFormat::Dense,
    ];
    SizeChoice {
        id,
        layers: size.layers,
        effective_params: size.effective_params,
        weight_bytes: formats
            .into_iter()
            .map(|f| FormatBytes {
                weights: f.to_string(),
                bytes: size.bytes_per_token(f),
            })
            .collect(),
    }
}

impl ChatBackend for ModelBackend {
    fn info(&self) -> ModelInfo {
        self.info.clone()
    }

    fn generate(
        &mut self,
        messages: &[Message],
        params: &SamplingParams,
        cancel: &AtomicBool,
        on_text: &mut dyn FnMut(&str),
    ) -> AppResult<GenerationReport> {
        Ok(self.engine.generate(messages, params, cancel, on_text)?)
    }
}

/// The repo id for a folder of hf-hub's cache (`models--google--gemma-3n-E2B-it/snapshots/<commit>`),
/// else the folder's name.
fn display_name(dir: &Path) -> String {
    let from_cache = dir
        .parent()
        .filter(|p| p.ends_with("snapshots"))
        .and_then(Path::parent)
        .and_then(|repo| repo.file_name()?.to_str()?.strip_prefix("models--"))
        .map(|name| name.replacen("--", "/", 1));
    from_cache
        .or_else(|| dir.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| dir.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(variant: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../tests/fixtures/{variant}/model"))
    }

    /// A MatFormer model offers its slices smallest first and itself last; the chosen one loads
    /// and is named; a size the model does not offer is refused with the ones it does.
    #[test]
    fn a_matformer_model_loads_at_a_chosen_size() {
        let dir = fixture("M");
        let whole = ModelBackend::load(&dir, false, &LoadOptions::default(), None).unwrap();
        let info = whole.info();
        let ids: Vec<Option<&str>> = info.sizes.iter().map(|c| c.id.as_deref()).collect();
        assert_eq!(ids, [Some("e2b_like"), Some("skip"), Some("narrow"), None]);
        assert_eq!(info.size, None);
        let layers: Vec<usize> = info.sizes.iter().map(|c| c.layers).collect();
        assert_eq!(layers, [10, 11, 15, 15]);
        let q4k = |c: &SizeChoice| {
            c.weight_bytes
                .iter()
                .find(|b| b.weights == "q4k")
                .unwrap()
                .bytes
        };
        assert!(info.sizes.windows(2).all(|w| q4k(&w[0]) <= q4k(&w[1])));

        let sliced =
            ModelBackend::load(&dir, false, &LoadOptions::default(), Some("skip")).unwrap();
        assert_eq!(sliced.info().size.as_deref(), Some("skip"));
        assert_eq!(
            sliced.engine.model().config().text_config.num_hidden_layers,
            11
        );
        // The choices describe the full model's sizes, whatever size is loaded.
        assert_eq!(sliced.info().sizes, info.sizes);

        let err = match ModelBackend::load(&dir, false, &LoadOptions::default(), Some("E2B")) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("a size the model does not offer loaded"),
        };
        assert!(err.contains("narrow, skip, e2b_like"), "{err}");
        // A model that nests nothing offers no sizes.
        let plain =
            ModelBackend::load(&fixture("D"), false, &LoadOptions::default(), None).unwrap();
        assert!(plain.info().sizes.is_empty());
    }

    #[test]
    fn hub_snapshots_are_named_by_repo() {
        let name = |p: &str| super::display_name(std::path::Path::new(p));
        assert_eq!(
            name("/c/hub/models--google--gemma-3n-E2B-it/snapshots/0abc"),
            "google/gemma-3n-E2B-it"
        );
        assert_eq!(name("/models/gemma-3n-E4B-it"), "gemma-3n-E4B-it");
    }
}
