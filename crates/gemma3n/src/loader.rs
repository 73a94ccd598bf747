//! Finding, validating and memory-mapping a checkpoint's safetensors files.
//!
//! A model folder holds either one `model.safetensors` or shards listed in
//! `model.safetensors.index.json`.  Every file is checked before use so that a missing shard, a
//! truncated download or a tensor of a non-float type is reported by name instead of surfacing as
//! a confusing failure deep inside model construction.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use safetensors::{Dtype, SafeTensors};

use crate::{Error, Result};

const SINGLE_FILE: &str = "model.safetensors";
const INDEX_FILE: &str = "model.safetensors.index.json";

/// The validated weight files of one checkpoint.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub dir: PathBuf,
    pub files: Vec<PathBuf>,
}

impl Checkpoint {
    /// Locate the weight files in `dir` and validate their headers against their sizes.
    pub fn open(dir: &Path) -> Result<Self> {
        let files = weight_files(dir)?;
        for file in &files {
            validate_file(file)?;
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            files,
        })
    }

    /// A var builder over the memory-mapped files; tensors are converted to `dtype` when fetched.
    pub fn var_builder(&self, dtype: DType, device: &Device) -> Result<VarBuilder<'static>> {
        // SAFETY: the files are opened read-only and must not be modified while the model lives;
        // this is the contract of every memory-mapped checkpoint loader.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&self.files, dtype, device)? };
        Ok(vb)
    }
}

fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        return Err(Error::Checkpoint(format!(
            "model folder {} does not exist",
            dir.display()
        )));
    }
    let index = dir.join(INDEX_FILE);
    if index.is_file() {
        let text = std::fs::read_to_string(&index)
            .map_err(|e| Error::Checkpoint(format!("cannot read {}: {e}", index.display())))?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::Checkpoint(format!("{} is not valid JSON: {e}", index.display())))?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| Error::Checkpoint(format!("{} has no weight_map", index.display())))?;
        let shards: BTreeSet<&str> = map.values().filter_map(|v| v.as_str()).collect();
        let mut files = Vec::with_capacity(shards.len());
        for shard in shards {
            let path = dir.join(shard);
            if !path.is_file() {
                return Err(Error::Checkpoint(format!(
                    "shard {shard} listed in {INDEX_FILE} is missing from {}",
                    dir.display()
                )));
            }
            files.push(path);
        }
        return Ok(files);
    }
    let single = dir.join(SINGLE_FILE);
    if single.is_file() {
        return Ok(vec![single]);
    }
    Err(Error::Checkpoint(format!(
        "no {SINGLE_FILE} or {INDEX_FILE} in {}",
        dir.display()
    )))
}

fn validate_file(path: &Path) -> Result<()> {
    let file = std::fs::File::open(path)
        .map_err(|e| Error::Checkpoint(format!("cannot open {}: {e}", path.display())))?;
    // SAFETY: read-only map of a file we only read; see `Checkpoint::var_builder`.
    let mmap = unsafe { memmap2::Mmap::map(&file) }
        .map_err(|e| Error::Checkpoint(format!("cannot map {}: {e}", path.display())))?;
    let tensors = SafeTensors::deserialize(&mmap).map_err(|e| {
        Error::Checkpoint(format!(
            "{} is not a valid safetensors file (truncated or corrupt download?): {e}",
            path.display()
        ))
    })?;
    for (name, view) in tensors.tensors() {
        if !matches!(view.dtype(), Dtype::F32 | Dtype::BF16 | Dtype::F16) {
            return Err(Error::Checkpoint(format!(
                "tensor {name} in {} has dtype {:?}; expected f32, bf16 or f16",
                path.display(),
                view.dtype()
            )));
        }
    }
    Ok(())
}
