//! Everything between a conversation and the model: tokenizer and chat template, media
//! preprocessing, sampling, streamed generation with cancellation and prompt-prefix reuse.

pub mod audio;
pub mod chat;
pub mod download;
pub mod engine;
pub mod error;
pub mod files;
mod gguf_tokenizer;
pub mod image;
pub mod prompt;
pub mod sampling;
pub mod stream;

pub use chat::{load_messages, Message, Part, Role};
pub use engine::{Engine, GenerationReport, Prefill, PromptForward, StopReason};
pub use error::{Error, Result};
pub use files::{cached_model, resolve_model};
pub use gemma3n::{LoadOptions, WeightFormat};
pub use sampling::SamplingParams;
