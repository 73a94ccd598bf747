//! [`EngineBackend`]: an [`Engine`] behind a mutex, for the CLI's `serve`.

use std::sync::atomic::AtomicBool;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use engine::{Engine, GenerationReport, Message, SamplingParams};

use crate::{Backend, BackendError, ModelCard, Unavailable};

/// Serves one [`Engine`].  It can start empty ([`EngineBackend::loading`]) so that the port
/// opens (and answers 503) while the model loads.
pub struct EngineBackend {
    id: String,
    /// Apart from the engine, so that listing the model never waits for a generation.
    card: Mutex<Result<ModelCard, Unavailable>>,
    engine: Mutex<Option<Engine>>,
}

impl EngineBackend {
    /// A backend whose model `id` is still loading.
    pub fn loading(id: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            card: Mutex::new(Err(Unavailable::Loading)),
            engine: Mutex::new(None),
        }
    }

    pub fn new(id: impl Into<String>, engine: Engine) -> Self {
        let backend = Self::loading(id);
        backend.set_engine(engine);
        backend
    }

    /// The model has loaded: serve it.
    pub fn set_engine(&self, engine: Engine) {
        let card = ModelCard {
            id: self.id.clone(),
            context_length: engine.context_length(),
            defaults: engine.default_sampling(),
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        };
        *lock(&self.engine) = Some(engine);
        *lock(&self.card) = Ok(card);
    }

    /// The model could not be loaded: requests get 503 with `reason`.
    pub fn set_failed(&self, reason: impl Into<String>) {
        *lock(&self.card) = Err(Unavailable::NoModel(reason.into()));
        *lock(&self.engine) = None;
    }
}

/// A panic inside a generation is caught by the server; the engine stays usable after it.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Backend for EngineBackend {
    fn model(&self) -> Result<ModelCard, Unavailable> {
        lock(&self.card).clone()
    }

    fn generate(
        &self,
        messages: &[Message],
        params: &SamplingParams,
        cancel: &AtomicBool,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<GenerationReport, BackendError> {
        let mut engine = lock(&self.engine);
        match engine.as_mut() {
            Some(engine) => Ok(engine.generate(messages, params, cancel, on_text)?),
            None => Err(self.model().err().unwrap_or(Unavailable::Loading).into()),
        }
    }
}
