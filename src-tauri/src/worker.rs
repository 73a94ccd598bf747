//! The thread that owns the model: loads it in the background, then runs one generation at a
//! time, in the order they were asked for: the app's replies and the local API server's requests
//! take turns on the one model.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;

use gemma3n::ProgressFn;

use crate::backend::{ChatBackend, ModelInfo};
use crate::error::{AppError, AppResult};

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "camelCase")]
pub enum ModelStatus {
    /// `progress`: fraction of the weights read, 0..=1.
    Loading {
        path: String,
        progress: f32,
    },
    Ready {
        model: ModelInfo,
    },
    Failed {
        error: AppError,
    },
}

/// Loads a model, reporting the fraction of its weights read through the `ProgressFn`.
pub type Loader = Box<dyn FnOnce(ProgressFn) -> AppResult<Box<dyn ChatBackend>> + Send>;
type Job = Box<dyn FnOnce(&mut dyn ChatBackend) + Send>;

enum Command {
    Load { path: String, loader: Loader },
    Run(Job),
}

pub struct Worker {
    tx: Mutex<Sender<Command>>,
    status: Arc<Mutex<ModelStatus>>,
    busy: Arc<AtomicBool>,
    cancel: Arc<AtomicBool>,
    /// The conversation whose reply is being generated, if any.
    active: Arc<Mutex<Option<i64>>>,
    /// Jobs queued outside the reply slot (the API server's) and not finished yet.
    queued: Arc<AtomicUsize>,
}

/// Clears the busy flag when a job ends, even by panic.
struct BusyGuard(Arc<AtomicBool>, Arc<Mutex<Option<i64>>>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        *self.1.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.0.store(false, Ordering::SeqCst);
    }
}

pub fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

impl Worker {
    /// Start the thread; `on_status` hears every model status change.
    pub fn spawn(on_status: impl Fn(&ModelStatus) + Send + Sync + 'static) -> Self {
        let (tx, rx) = channel::<Command>();
        let status = Arc::new(Mutex::new(ModelStatus::Failed {
            error: AppError::Model("no model is configured".into()),
        }));
        let busy = Arc::new(AtomicBool::new(false));
        let cancel = Arc::new(AtomicBool::new(false));
        let active = Arc::new(Mutex::new(None));
        let thread_status = status.clone();
        std::thread::Builder::new()
            .name("model".into())
            .spawn(move || {
                let mut backend: Option<Box<dyn ChatBackend>> = None;
                let on_status = Arc::new(on_status);
                let set = move |s: ModelStatus| {
                    on_status(&s);
                    *thread_status.lock().unwrap_or_else(|p| p.into_inner()) = s;
                };
                let set = Arc::new(set);
                for command in rx {
                    match command {
                        Command::Load { path, loader } => {
                            tracing::info!("loading the model in {path}");
                            let started = Instant::now();
                            backend = None;
                            set(ModelStatus::Loading {
                                path: path.clone(),
                                progress: 0.0,
                            });
                            let (report, shown) = (set.clone(), Mutex::new(0u8));
                            let progress: ProgressFn = Arc::new(move |fraction: f32| {
                                // Whole percents only: the UI needs no more, IPC no flood.
                                let percent = (fraction.clamp(0.0, 1.0) * 100.0) as u8;
                                let mut shown = shown.lock().unwrap_or_else(|p| p.into_inner());
                                if percent > *shown {
                                    *shown = percent;
                                    report(ModelStatus::Loading {
                                        path: path.clone(),
                                        progress: fraction.clamp(0.0, 1.0),
                                    });
                                }
                            });
                            let loaded = catch_unwind(AssertUnwindSafe(|| loader(progress)))
                                .unwrap_or_else(|p| Err(AppError::Internal(panic_message(p))));
                            match loaded {
                                Ok(b) => {
                                    let model = b.info();
                                    tracing::info!(
                                        "model {:?} ready in {:.1} s",
                                        model.name,
                                        started.elapsed().as_secs_f64()
                                    );
                                    set(ModelStatus::Ready { model });
                                    backend = Some(b);
                                }
                                Err(error) => {
                                    tracing::error!("loading the model failed: {error}");
                                    set(ModelStatus::Failed { error });
                                }
                            }
                        }
                        Command::Run(job) => {
                            // Without a model the job is dropped unrun, which its owner hears.
                            if let Some(b) = backend.as_deref_mut() {
                                // The job reports its own outcome; a panic inside is contained.
                                let _ = catch_unwind(AssertUnwindSafe(|| job(b)));
                            }
                        }
                    }
                }
            })
            .expect("spawning the model thread");
        Self {
            tx: Mutex::new(tx),
            status,
            busy,
            cancel,
            active,
            queued: Arc::default(),
        }
    }

    pub fn status(&self) -> ModelStatus {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn send(&self, command: Command) -> AppResult<()> {
        self.tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(command)
            .map_err(|_| AppError::Internal("the model thread has stopped".into()))
    }

    /// Replace the model; refused while a reply is being generated.
    pub fn load(&self, path: String, loader: Loader) -> AppResult<()> {
        if self.busy.load(Ordering::SeqCst) {
            return Err(AppError::Busy);
        }
        *self.status.lock().unwrap_or_else(|p| p.into_inner()) = ModelStatus::Loading {
            path: path.clone(),
            progress: 0.0,
        };
        self.send(Command::Load { path, loader })
    }

    /// Claim the single generation slot for `conversation`, before any state is changed.
    pub fn reserve(&self, conversation: i64) -> AppResult<Reservation<'_>> {
        match self.status() {
            ModelStatus::Ready { .. } => {}
            ModelStatus::Loading { .. } => return Err(AppError::ModelLoading),
            ModelStatus::Failed { error } => {
                return Err(AppError::Model(format!("no model is loaded: {error}")))
            }
        }
        if self
            .busy
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return Err(AppError::Busy);
        }
        self.cancel.store(false, Ordering::SeqCst);
        *self.active.lock().unwrap_or_else(|p| p.into_inner()) = Some(conversation);
        Ok(Reservation {
            worker: self,
            guard: Some(BusyGuard(self.busy.clone(), self.active.clone())),
        })
    }

    /// Run `job` on the model thread after the generations already asked for, outside the
    /// app's reply slot: for the local API server, whose own queue allows one at a time.
    pub fn queue(&self, job: impl FnOnce(&mut dyn ChatBackend) + Send + 'static) -> AppResult<()> {
        // Counted until the job ends or is dropped unrun.
        struct Queued(Arc<AtomicUsize>);
        impl Drop for Queued {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        self.queued.fetch_add(1, Ordering::SeqCst);
        let queued = Queued(self.queued.clone());
        self.send(Command::Run(Box::new(move |b: &mut dyn ChatBackend| {
            let _queued = queued;
            job(b)
        })))
    }

    /// Jobs from [`Worker::queue`] that a reply asked for now waits behind.
    pub fn queued_jobs(&self) -> usize {
        self.queued.load(Ordering::SeqCst)
    }

    /// Ask the app's running reply to stop at the next token.
    pub fn stop(&self) {
        self.cancel.store(true, Ordering::SeqCst);
    }

    /// Stop the reply if it belongs to `conversation`.
    pub fn stop_conversation(&self, conversation: i64) {
        if *self.active.lock().unwrap_or_else(|p| p.into_inner()) == Some(conversation) {
            self.stop();
        }
    }

    pub fn is_busy(&self) -> bool {
        self.busy.load(Ordering::SeqCst)
    }
}

/// The generation slot; dropping it unused frees the slot again.
pub struct Reservation<'a> {
    worker: &'a Worker,
    guard: Option<BusyGuard>,
}

impl Reservation<'_> {
    /// Run `job` on the model thread; what it returns runs once the slot is free again, so that
    /// the UI, told there that the reply ended, can send the next message at once.
    pub fn run<Finish: FnOnce() + 'static>(
        mut self,
        job: impl FnOnce(&mut dyn ChatBackend, &AtomicBool) -> Finish + Send + 'static,
    ) -> AppResult<()> {
        let guard = self.guard.take().expect("a reservation runs once");
        let cancel = self.worker.cancel.clone();
        self.worker
            .send(Command::Run(Box::new(move |b: &mut dyn ChatBackend| {
                let finish = job(b, &cancel);
                drop(guard);
                finish()
            })))
    }
}
