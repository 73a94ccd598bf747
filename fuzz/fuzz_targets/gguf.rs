//! A llama.cpp GGUF file (the input), opened as the model loader opens one (header, metadata to
//! `text_config`, tensor index), then the tensors the seeds name are read.
#![no_main]

use gemma3n::Checkpoint;
use gemma_chat_fuzz::{read_tensors, scratch_file};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = scratch_file("model.gguf", data);
    if let Ok(checkpoint) = Checkpoint::open(&path) {
        read_tensors(&checkpoint);
    }
});
