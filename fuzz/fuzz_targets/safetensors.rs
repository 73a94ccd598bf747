//! A checkpoint folder: `model.safetensors` (the input), or, for inputs starting with `{`,
//! `model.safetensors.index.json` (the input) beside one small valid shard.  The folder is opened
//! as the model loader opens it, then the tensors the seeds name are read.
#![no_main]

use std::sync::Once;

use gemma3n::Checkpoint;
use gemma_chat_fuzz::{scratch_dir, scratch_file};
use libfuzzer_sys::fuzz_target;

/// The shard an index input may list.
const SHARD: &str = "model-00001-of-00001.safetensors";

fuzz_target!(|data: &[u8]| {
    static SHARD_WRITTEN: Once = Once::new();
    SHARD_WRITTEN.call_once(|| {
        scratch_file(
            SHARD,
            include_bytes!("../corpus/safetensors/two_tensors.safetensors"),
        );
    });
    let dir = scratch_dir();
    let (written, other) = if data.first() == Some(&b'{') {
        ("model.safetensors.index.json", "model.safetensors")
    } else {
        ("model.safetensors", "model.safetensors.index.json")
    };
    let _ = std::fs::remove_file(dir.join(other));
    scratch_file(written, data);
    if let Ok(checkpoint) = Checkpoint::open(dir) {
        gemma_chat_fuzz::read_tensors(&checkpoint);
    }
});
