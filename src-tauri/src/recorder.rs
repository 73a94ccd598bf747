//! Microphone recording behind a trait: the real microphone through `crates/mic` (cpal), or a
//! test audio source (a WAV file named by `GEMMA_CHAT_TEST_MIC`, played back as if it were the
//! microphone) for end-to-end tests on machines without one.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use crate::error::{AppError, AppResult};

pub trait Recorder: Send {
    /// Start capturing; `on_level` receives the input level (0..1) about ten times a second.
    fn start(&mut self, on_level: Box<dyn FnMut(f32) + Send>) -> AppResult<()>;
    /// Stop and return the clip as a WAV file.
    fn stop(&mut self) -> AppResult<Vec<u8>>;
    /// Stop and discard the clip.
    fn cancel(&mut self);
}

/// The system's default input device.  cpal streams are not `Send` everywhere, so each
/// recording lives on a thread of its own, controlled through channels.
pub struct Microphone {
    max_seconds: f64,
    /// Tells the capture thread to stop: `true` keeps the clip, `false` discards it.
    stop: Option<mpsc::Sender<bool>>,
    clip: Option<mpsc::Receiver<AppResult<Vec<u8>>>>,
}

impl Microphone {
    pub fn new(max_seconds: f64) -> Self {
        Self {
            max_seconds,
            stop: None,
            clip: None,
        }
    }
}

impl Recorder for Microphone {
    fn start(&mut self, mut on_level: Box<dyn FnMut(f32) + Send>) -> AppResult<()> {
        if self.stop.is_some() {
            return Err(AppError::Recording(
                "a recording is already in progress".into(),
            ));
        }
        let options = mic::MicOptions {
            device: None,
            max_seconds: self.max_seconds,
        };
        let (stop_tx, stop_rx) = mpsc::channel::<bool>();
        let (clip_tx, clip_rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let recorder =
                match mic::record(&options, move |level: mic::Level| on_level(level.peak)) {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = ready_tx.send(Err(AppError::Recording(e.to_string())));
                        return;
                    }
                };
            let _ = ready_tx.send(Ok(()));
            let keep = stop_rx.recv().unwrap_or(false);
            let result = recorder
                .stop()
                .map_err(|e| AppError::Recording(e.to_string()))
                .and_then(|r| r.wav_bytes().map_err(AppError::Recording));
            if keep {
                let _ = clip_tx.send(result);
            }
        });
        ready_rx
            .recv()
            .map_err(|_| AppError::Recording("the capture thread stopped".into()))??;
        self.stop = Some(stop_tx);
        self.clip = Some(clip_rx);
        Ok(())
    }

    fn stop(&mut self) -> AppResult<Vec<u8>> {
        let (stop, clip) = self
            .stop
            .take()
            .zip(self.clip.take())
            .ok_or_else(|| AppError::Recording("no recording is in progress".into()))?;
        let _ = stop.send(true);
        clip.recv()
            .map_err(|_| AppError::Recording("the capture thread stopped".into()))?
    }

    fn cancel(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(false);
        }
        self.clip = None;
    }
}

/// A recorder that refuses to record (command tests).
#[cfg(test)]
pub struct Unavailable;

#[cfg(test)]
impl Recorder for Unavailable {
    fn start(&mut self, _: Box<dyn FnMut(f32) + Send>) -> AppResult<()> {
        Err(AppError::Recording(
            "recording is not available in this build (the microphone backend is not included \
             yet); attach an audio file instead"
                .into(),
        ))
    }

    fn stop(&mut self) -> AppResult<Vec<u8>> {
        Err(AppError::Recording("no recording is in progress".into()))
    }

    fn cancel(&mut self) {}
}

/// Plays a WAV file as the microphone: levels follow its samples, the clip is the file.
pub struct FileSource {
    path: PathBuf,
    running: Option<Arc<AtomicBool>>,
}

impl FileSource {
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            running: None,
        }
    }
}

/// Peak level of each 100 ms of 16-bit PCM after a 44-byte header (enough for a test source).
fn levels(wav: &[u8]) -> Vec<f32> {
    let samples: Vec<i16> = wav
        .get(44..)
        .unwrap_or_default()
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    samples
        .chunks(1600)
        .map(|c| c.iter().map(|s| s.unsigned_abs()).max().unwrap_or(0) as f32 / 32768.0)
        .collect()
}

impl Recorder for FileSource {
    fn start(&mut self, mut on_level: Box<dyn FnMut(f32) + Send>) -> AppResult<()> {
        if self.running.is_some() {
            return Err(AppError::Recording(
                "a recording is already in progress".into(),
            ));
        }
        let wav = std::fs::read(&self.path).map_err(|e| {
            AppError::Recording(format!(
                "cannot read the test source {}: {e}",
                self.path.display()
            ))
        })?;
        let running = Arc::new(AtomicBool::new(true));
        let flag = running.clone();
        std::thread::spawn(move || {
            for level in levels(&wav).into_iter().cycle() {
                if !flag.load(Ordering::SeqCst) {
                    break;
                }
                on_level(level);
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        self.running = Some(running);
        Ok(())
    }

    fn stop(&mut self) -> AppResult<Vec<u8>> {
        let running = self
            .running
            .take()
            .ok_or_else(|| AppError::Recording("no recording is in progress".into()))?;
        running.store(false, Ordering::SeqCst);
        Ok(std::fs::read(&self.path)?)
    }

    fn cancel(&mut self) {
        if let Some(r) = self.running.take() {
            r.store(false, Ordering::SeqCst);
        }
    }
}
