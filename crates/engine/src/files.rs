//! Locating a model: a local folder, or a Hugging Face repo id resolved through hf-hub's cache
//! (no network when every file is cached; otherwise a download with progress).

use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Files a Gemma 3n folder needs besides its weights.
const REQUIRED: [&str; 2] = ["config.json", "tokenizer.json"];
const OPTIONAL: [&str; 7] = [
    "generation_config.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "chat_template.json",
    "preprocessor_config.json",
    "processor_config.json",
    "special_tokens_map.json",
];
const INDEX: &str = "model.safetensors.index.json";
const SINGLE: &str = "model.safetensors";

/// `spec` is a folder, a GGUF file, or `owner/name`.
pub fn resolve_model(spec: &str, progress: bool) -> Result<PathBuf> {
    let path = Path::new(spec);
    if path.is_dir() {
        return check_folder(path);
    }
    if gemma3n::gguf::is_gguf(path) {
        return check_gguf(path);
    }
    if looks_like_repo_id(spec) && !path.exists() {
        return from_hub(spec, progress);
    }
    Err(Error::ModelFiles(format!(
        "{spec} is neither a model folder nor a Hugging Face repo id (owner/name)"
    )))
}

fn looks_like_repo_id(spec: &str) -> bool {
    let mut parts = spec.split('/');
    matches!((parts.next(), parts.next(), parts.next()), (Some(a), Some(b), None) if !a.is_empty() && !b.is_empty())
}

fn check_folder(dir: &Path) -> Result<PathBuf> {
    for name in REQUIRED {
        if !dir.join(name).is_file() {
            return Err(Error::ModelFiles(format!(
                "{name} is missing from {}",
                dir.display()
            )));
        }
    }
    Ok(dir.to_path_buf())
}

/// A GGUF file holds the weights and config, and usually its tokenizer and chat template; a file
/// without them needs the Hugging Face files of the same model beside it.
fn check_gguf(path: &Path) -> Result<PathBuf> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let has = |name: &str| dir.join(name).is_file();
    let mut missing = Vec::new();
    if !has("tokenizer.json") {
        missing.push("tokenizer.json");
    }
    if !(has("chat_template.jinja") || has("chat_template.json") || has("tokenizer_config.json")) {
        missing.push("chat_template.jinja (or tokenizer_config.json)");
    }
    // A file with its own vocabulary (and template) needs nothing beside it.
    let own = gemma3n::gguf::vocabulary(path)?;
    if own.as_ref().is_some_and(|v| v.chat_template.is_some()) {
        missing.clear();
    } else if own.is_some() {
        missing.retain(|m| !m.starts_with("tokenizer.json"));
    }
    if missing.is_empty() {
        return Ok(path.to_path_buf());
    }
    Err(Error::ModelFiles(format!(
        "{} is a GGUF file; Gemma Chat reads its tokenizer and chat template from the model's \
         Hugging Face files beside it, and {} missing from {}: copy them from the same model's \
         repository (e.g. google/gemma-3n-E2B-it)",
        path.display(),
        if missing.len() == 1 {
            format!("{} is", missing[0])
        } else {
            format!("{} are", missing.join(" and "))
        },
        dir.display()
    )))
}

fn from_hub(repo_id: &str, progress: bool) -> Result<PathBuf> {
    use hf_hub::api::sync::ApiBuilder;
    let cache = hf_hub::Cache::from_env();
    // Everything already cached: stay offline.
    if let Some(dir) = cached_model(&cache, repo_id) {
        return Ok(dir);
    }
    let mut builder = ApiBuilder::from_cache(cache).with_progress(progress);
    // HF_TOKEN wins over a token saved by `huggingface-cli login`, which the cache provides.
    if let Some(token) = std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty()) {
        builder = builder.with_token(Some(token));
    }
    let api = builder
        .build()
        .map_err(|e| Error::Download(e.to_string()))?;
    let repo = api.model(repo_id.to_string());
    let fetch = |name: &str| {
        repo.get(name)
            .map_err(|e| Error::Download(format!("{repo_id}/{name}: {e}")))
    };
    let config = fetch("config.json")?;
    for name in REQUIRED.iter().skip(1) {
        fetch(name)?;
    }
    for name in OPTIONAL {
        // Optional files are simply absent from some repos.
        let _ = repo.get(name);
    }
    match repo.get(INDEX) {
        Ok(index) => {
            for shard in shard_names(&index)? {
                fetch(&shard)?;
            }
        }
        Err(_) => {
            fetch(SINGLE)?;
        }
    }
    Ok(config.parent().unwrap_or(Path::new(".")).to_path_buf())
}

/// The snapshot folder of `repo_id` in `cache` when every file it needs is there.
pub fn cached_model(cache: &hf_hub::Cache, repo_id: &str) -> Option<PathBuf> {
    let config = cache.model(repo_id.to_string()).get("config.json")?;
    let dir = config.parent()?.to_path_buf();
    (weights_complete(&dir) && check_folder(&dir).is_ok()).then_some(dir)
}

fn shard_names(index: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index)?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::ModelFiles(format!("{}: {e}", index.display())))?;
    let mut names: Vec<String> = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .map(|m| {
            m.values()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names.dedup();
    Ok(names)
}

fn weights_complete(dir: &Path) -> bool {
    let index = dir.join(INDEX);
    if index.is_file() {
        return shard_names(&index).is_ok_and(|names| names.iter().all(|n| dir.join(n).is_file()));
    }
    dir.join(SINGLE).is_file()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids_are_recognised() {
        assert!(looks_like_repo_id("google/gemma-3n-E2B-it"));
        assert!(!looks_like_repo_id("gemma"));
        assert!(!looks_like_repo_id("a/b/c"));
        assert!(!looks_like_repo_id("/abs"));
    }

    #[test]
    fn missing_folder_is_reported() {
        let err = resolve_model("/definitely/not/here", false).unwrap_err();
        assert!(err.to_string().contains("neither a model folder"), "{err}");
    }
}
