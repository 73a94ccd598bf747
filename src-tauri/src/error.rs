//! Errors as the UI sees them: `{"kind": "...", "message": "..."}`, with a message a user can act on.

use serde::{Serialize, Serializer};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AppError {
    #[error("A reply is already being generated. Stop it or wait for it to finish.")]
    Busy,
    #[error("The model is still loading. Try again in a moment.")]
    ModelLoading,
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    InvalidInput(String),
    #[error("{0}")]
    Attachment(String),
    #[error("{0}")]
    Model(String),
    #[error("{0}")]
    Recording(String),
    #[error("{0}")]
    Download(String),
    /// The local API server could not start (say, its port is taken).
    #[error("{0}")]
    ApiServer(String),
    #[error("storage: {0}")]
    Storage(String),
    #[error("{0}")]
    Io(String),
    #[error("internal error: {0}")]
    Internal(String),
}

pub type AppResult<T> = Result<T, AppError>;

impl AppError {
    pub fn kind(&self) -> &'static str {
        match self {
            AppError::Busy => "busy",
            AppError::ModelLoading => "modelLoading",
            AppError::NotFound(_) => "notFound",
            AppError::InvalidInput(_) => "invalidInput",
            AppError::Attachment(_) => "attachment",
            AppError::Model(_) => "model",
            AppError::Recording(_) => "recording",
            AppError::Download(_) => "download",
            AppError::ApiServer(_) => "apiServer",
            AppError::Storage(_) => "storage",
            AppError::Io(_) => "io",
            AppError::Internal(_) => "internal",
        }
    }
}

impl Serialize for AppError {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("AppError", 2)?;
        st.serialize_field("kind", self.kind())?;
        st.serialize_field("message", &self.to_string())?;
        st.end()
    }
}

impl From<rusqlite::Error> for AppError {
    fn from(e: rusqlite::Error) -> Self {
        AppError::Storage(e.to_string())
    }
}

impl From<std::io::Error> for AppError {
    fn from(e: std::io::Error) -> Self {
        AppError::Io(e.to_string())
    }
}

impl From<engine::Error> for AppError {
    fn from(e: engine::Error) -> Self {
        match e {
            engine::Error::Image { .. } | engine::Error::Audio { .. } => {
                AppError::Attachment(e.to_string())
            }
            engine::Error::Conversation(_) | engine::Error::PromptTooLong { .. } => {
                AppError::InvalidInput(e.to_string())
            }
            other => AppError::Model(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialises_kind_and_message() {
        let json = serde_json::to_value(AppError::Busy).unwrap();
        assert_eq!(json["kind"], "busy");
        assert!(json["message"]
            .as_str()
            .unwrap()
            .contains("already being generated"));
        let json = serde_json::to_value(AppError::NotFound("no chat 7".into())).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"kind": "notFound", "message": "no chat 7"})
        );
    }
}
