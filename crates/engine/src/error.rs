//! Engine errors: each says what went wrong with which input, in words a user can act on.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("model: {0}")]
    Model(#[from] gemma3n::Error),
    #[error("model files: {0}")]
    ModelFiles(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    Template(String),
    #[error("invalid conversation: {0}")]
    Conversation(String),
    #[error("image {path}: {reason}")]
    Image { path: String, reason: String },
    #[error("audio {path}: {reason}")]
    Audio { path: String, reason: String },
    #[error("prompt too long: {tokens} tokens, but the model's context holds {context}")]
    PromptTooLong { tokens: usize, context: usize },
    #[error("download: {0}")]
    Download(String),
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T> = std::result::Result<T, Error>;
