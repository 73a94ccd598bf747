//! The FIFO queue in front of the model and the one worker thread that runs it.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex, PoisonError};

use engine::{Message, SamplingParams, StopReason};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use crate::error::ApiError;
use crate::stop::StopFilter;
use crate::Backend;

/// One generation to run.
pub struct Job {
    pub messages: Vec<Message>,
    pub params: SamplingParams,
    pub stop: Vec<String>,
}

/// What the worker reports about a job, in order: text pieces, then one `Done` or `Failed`.
#[derive(Debug)]
pub enum Event {
    Text(String),
    Done(Finished),
    Failed(ApiError),
}

#[derive(Debug, Clone, Copy)]
pub struct Finished {
    /// `"stop"` or `"length"`.
    pub finish_reason: &'static str,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

/// A queued job as its request handler sees it.  Dropping it (the client went away) cancels the
/// generation at its next token, or skips it if it has not started.
pub struct Ticket {
    pub events: UnboundedReceiver<Event>,
    cancel: Arc<AtomicBool>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}

struct Queued {
    job: Job,
    cancel: Arc<AtomicBool>,
    events: UnboundedSender<Event>,
}

/// The sending side of the queue.
pub struct Queue {
    jobs: Sender<Queued>,
    capacity: usize,
    /// Jobs accepted and not yet finished, the running one included.
    in_system: Arc<AtomicUsize>,
    stopping: Arc<AtomicBool>,
    running: Arc<Mutex<Option<Arc<AtomicBool>>>>,
}

impl Queue {
    /// Start the worker; at most `capacity` jobs wait behind the running one.
    pub fn start(backend: Arc<dyn Backend>, capacity: usize) -> std::io::Result<Self> {
        let (jobs, receiver) = channel();
        let in_system = Arc::new(AtomicUsize::new(0));
        let stopping = Arc::new(AtomicBool::new(false));
        let running = Arc::new(Mutex::new(None));
        let worker = Worker {
            backend,
            stopping: stopping.clone(),
            running: running.clone(),
            in_system: in_system.clone(),
        };
        std::thread::Builder::new()
            .name("api-generation".into())
            .spawn(move || worker.run(receiver))?;
        Ok(Self {
            jobs,
            capacity,
            in_system,
            stopping,
            running,
        })
    }

    pub fn submit(&self, job: Job) -> Result<Ticket, ApiError> {
        if self.stopping.load(Ordering::Relaxed) {
            return Err(stopping());
        }
        // Room for the running job plus `capacity` waiting ones.
        self.in_system
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n <= self.capacity).then_some(n + 1)
            })
            .map_err(|_| ApiError::queue_full(self.capacity))?;
        let cancel = Arc::new(AtomicBool::new(false));
        let (events, receiver) = unbounded_channel();
        let queued = Queued {
            job,
            cancel: cancel.clone(),
            events,
        };
        if self.jobs.send(queued).is_err() {
            self.in_system.fetch_sub(1, Ordering::SeqCst);
            return Err(stopping());
        }
        Ok(Ticket {
            events: receiver,
            cancel,
        })
    }

    /// Refuse waiting jobs and cancel the running one.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
        if let Some(cancel) = &*self.running.lock().unwrap_or_else(PoisonError::into_inner) {
            cancel.store(true, Ordering::Relaxed);
        }
    }
}

fn stopping() -> ApiError {
    ApiError::unavailable("the server is stopping")
}

struct Worker {
    backend: Arc<dyn Backend>,
    stopping: Arc<AtomicBool>,
    running: Arc<Mutex<Option<Arc<AtomicBool>>>>,
    in_system: Arc<AtomicUsize>,
}

impl Worker {
    /// Runs until every sender is gone.
    fn run(self, jobs: Receiver<Queued>) {
        for queued in jobs {
            // A job leaves the count before its last event is sent, so that a client sending
            // its next request as soon as this one ends is never refused.
            let finished = || self.in_system.fetch_sub(1, Ordering::SeqCst);
            if self.stopping.load(Ordering::Relaxed) {
                finished();
                let _ = queued.events.send(Event::Failed(stopping()));
                continue;
            }
            if queued.cancel.load(Ordering::Relaxed) {
                finished();
                continue;
            }
            self.set_running(Some(queued.cancel.clone()));
            // Stopping may have begun just before this job was marked running.
            if self.stopping.load(Ordering::Relaxed) {
                queued.cancel.store(true, Ordering::Relaxed);
            }
            let last = self.generate(&queued);
            self.set_running(None);
            finished();
            let _ = queued.events.send(last);
        }
    }

    fn set_running(&self, cancel: Option<Arc<AtomicBool>>) {
        *self.running.lock().unwrap_or_else(PoisonError::into_inner) = cancel;
    }

    /// Run one job, sending its text as it comes; returns the closing event.
    fn generate(&self, queued: &Queued) -> Event {
        let Queued {
            job,
            cancel,
            events,
        } = queued;
        let mut filter = StopFilter::new(job.stop.clone());
        let mut on_text = |text: &str| {
            let shown = filter.push(text);
            if !shown.is_empty() {
                let _ = events.send(Event::Text(shown));
            }
            if filter.stopped() {
                cancel.store(true, Ordering::Relaxed);
            }
        };
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
            self.backend
                .generate(&job.messages, &job.params, cancel, &mut on_text)
        }));
        let report = match result {
            Ok(Ok(report)) => report,
            Ok(Err(e)) => return Event::Failed(e.into()),
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                return Event::Failed(ApiError::internal(format!(
                    "the model failed unexpectedly ({what})"
                )));
            }
        };
        let stopped = filter.stopped();
        let rest = filter.finish();
        if !stopped && !rest.is_empty() {
            let _ = events.send(Event::Text(rest));
        }
        let finish_reason = match report.stop_reason {
            StopReason::MaxTokens | StopReason::ContextFull if !stopped => "length",
            _ => "stop",
        };
        Event::Done(Finished {
            finish_reason,
            prompt_tokens: report.prompt_tokens,
            completion_tokens: report.token_ids.len(),
        })
    }
}
