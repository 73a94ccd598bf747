//! The real model: a thin adapter from the app's `ChatBackend` contract to `engine::Engine`,
//! which owns the prompt, the media towers and the KV cache reused across turns.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use engine::chat::Message;
use engine::{Engine, GenerationReport, LoadOptions, SamplingParams};

use crate::backend::{ChatBackend, ModelInfo};
use crate::error::{AppError, AppResult};

pub struct ModelBackend {
    engine: Engine,
    info: ModelInfo,
}

impl ModelBackend {
    pub fn load(dir: &Path, demo: bool, options: &LoadOptions) -> AppResult<Self> {
        if !dir.join("config.json").is_file() && !gemma3n::gguf::is_gguf(dir) {
            return Err(AppError::Model(format!(
                "{} is not a model folder: it has no config.json",
                dir.display()
            )));
        }
        let engine = Engine::load(dir, options).map_err(|e| {
            AppError::Model(format!("cannot load the model in {}: {e}", dir.display()))
        })?;
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
            },
            engine,
        })
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
