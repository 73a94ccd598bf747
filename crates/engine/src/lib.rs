//! Everything between a conversation and the model: tokenizer and chat template, media
//! preprocessing, sampling, streamed generation with cancellation and prompt-prefix reuse.

pub mod audio;
pub mod chat;
pub mod error;
pub mod image;
pub mod prompt;

pub use error::{Error, Result};
