//! Microphone capture for Gemma Chat: the default or a named input device at its native rate and
//! sample format, converted on the fly to the 16 kHz mono f32 the audio front end expects, with a
//! level callback for a meter and a maximum length.

mod convert;
mod wav;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cpal::traits::{DeviceTrait, HostTrait, StreamTrait};
use cpal::{FromSample, SampleFormat, SizedSample};

pub use convert::{Converter, Level};

/// Rate of every recording handed out.
pub const TARGET_RATE: u32 = 16_000;

#[derive(Debug, thiserror::Error)]
pub enum MicError {
    #[error("no microphone: this system has no audio input device")]
    NoInputDevice,
    #[error("no input device named {name:?} (available: {available})")]
    DeviceNotFound { name: String, available: String },
    #[error("microphone {device}: {reason}")]
    Device { device: String, reason: String },
    #[error("audio conversion: {0}")]
    Convert(String),
    #[error("cannot save the recording to {path}: {reason}")]
    Save { path: String, reason: String },
}

/// What to record from and for how long.
#[derive(Debug, Clone)]
pub struct MicOptions {
    /// Input device name as listed by [`input_device_names`]; `None` = the system default.
    pub device: Option<String>,
    /// Recording stops growing after this many seconds.
    pub max_seconds: f64,
}

impl Default for MicOptions {
    fn default() -> Self {
        Self {
            device: None,
            max_seconds: 30.0,
        }
    }
}

/// A finished recording: mono f32 samples at [`TARGET_RATE`].
#[derive(Debug, Clone)]
pub struct Recording {
    pub samples: Vec<f32>,
    pub sample_rate: u32,
    /// True if the maximum length was reached (the rest of what was said is not in `samples`).
    pub reached_max: bool,
}

/// Names of the input devices of the default host.
pub fn input_device_names() -> Result<Vec<String>, MicError> {
    let host = cpal::default_host();
    let devices = host.input_devices().map_err(|e| MicError::Device {
        device: "(listing devices)".into(),
        reason: e.to_string(),
    })?;
    Ok(devices.filter_map(|d| device_name(&d).ok()).collect())
}

fn device_name(d: &cpal::Device) -> Result<String, cpal::Error> {
    Ok(d.description()?.name().to_string())
}

struct Shared {
    converter: Converter,
    error: Option<String>,
}

/// A running capture; dropping it stops the device, [`Recorder::stop`] also returns the audio.
pub struct Recorder {
    stream: cpal::Stream,
    shared: Arc<Mutex<Shared>>,
    device: String,
}

impl Recorder {
    pub fn device_name(&self) -> &str {
        &self.device
    }

    /// True once the maximum length has been recorded.
    pub fn is_full(&self) -> bool {
        self.shared
            .lock()
            .map(|s| s.converter.is_full())
            .unwrap_or(true)
    }

    pub fn seconds(&self) -> f64 {
        self.shared
            .lock()
            .map(|s| s.converter.seconds())
            .unwrap_or(0.0)
    }

    /// Stop the device and return the 16 kHz mono recording.
    pub fn stop(self) -> Result<Recording, MicError> {
        let device = self.device.clone();
        drop(self.stream);
        let shared = Arc::try_unwrap(self.shared)
            .ok()
            .and_then(|m| m.into_inner().ok())
            .ok_or_else(|| MicError::Device {
                device: device.clone(),
                reason: "the capture thread did not finish".into(),
            })?;
        if let Some(reason) = shared.error {
            return Err(MicError::Device { device, reason });
        }
        let reached_max = shared.converter.is_full();
        Ok(Recording {
            samples: shared.converter.finish()?,
            sample_rate: TARGET_RATE,
            reached_max,
        })
    }
}

/// Start recording; `on_level` is called from the audio thread once per device buffer.
pub fn record<L>(options: &MicOptions, on_level: L) -> Result<Recorder, MicError>
where
    L: FnMut(Level) + Send + 'static,
{
    let host = cpal::default_host();
    let device = match &options.device {
        None => host.default_input_device().ok_or(MicError::NoInputDevice)?,
        Some(name) => {
            let devices: Vec<cpal::Device> = host
                .input_devices()
                .map_err(|e| MicError::Device {
                    device: name.clone(),
                    reason: e.to_string(),
                })?
                .collect();
            let names: Vec<String> = devices.iter().filter_map(|d| device_name(d).ok()).collect();
            devices
                .into_iter()
                .find(|d| device_name(d).is_ok_and(|n| &n == name))
                .ok_or_else(|| MicError::DeviceNotFound {
                    name: name.clone(),
                    available: if names.is_empty() {
                        "none".into()
                    } else {
                        names.join(", ")
                    },
                })?
        }
    };
    let name = device_name(&device).unwrap_or_else(|_| "default input".into());
    let fail = |reason: String| MicError::Device {
        device: name.clone(),
        reason,
    };
    let supported = device
        .default_input_config()
        .map_err(|e| fail(format!("no usable input format: {e}")))?;
    let config = supported.config();
    let converter = Converter::new(
        config.sample_rate,
        config.channels as usize,
        options.max_seconds,
    )?;
    let shared = Arc::new(Mutex::new(Shared {
        converter,
        error: None,
    }));
    let stream = match supported.sample_format() {
        SampleFormat::I8 => build::<i8, L>(&device, &config, &shared, on_level),
        SampleFormat::I16 => build::<i16, L>(&device, &config, &shared, on_level),
        SampleFormat::I32 => build::<i32, L>(&device, &config, &shared, on_level),
        SampleFormat::U8 => build::<u8, L>(&device, &config, &shared, on_level),
        SampleFormat::U16 => build::<u16, L>(&device, &config, &shared, on_level),
        SampleFormat::U32 => build::<u32, L>(&device, &config, &shared, on_level),
        SampleFormat::F32 => build::<f32, L>(&device, &config, &shared, on_level),
        SampleFormat::F64 => build::<f64, L>(&device, &config, &shared, on_level),
        other => return Err(fail(format!("unsupported sample format {other}"))),
    }
    .map_err(|e| fail(format!("cannot open the input stream: {e}")))?;
    stream
        .play()
        .map_err(|e| fail(format!("cannot start recording: {e}")))?;
    Ok(Recorder {
        stream,
        shared,
        device: name,
    })
}

fn build<T, L>(
    device: &cpal::Device,
    config: &cpal::StreamConfig,
    shared: &Arc<Mutex<Shared>>,
    mut on_level: L,
) -> Result<cpal::Stream, cpal::Error>
where
    T: SizedSample,
    f32: FromSample<T>,
    L: FnMut(Level) + Send + 'static,
{
    let data = Arc::clone(shared);
    let errors = Arc::clone(shared);
    device.build_input_stream::<T, _, _>(
        config.clone(),
        move |samples: &[T], _| {
            let Ok(mut s) = data.lock() else { return };
            if s.converter.is_full() || s.error.is_some() {
                return;
            }
            match s.converter.push(samples) {
                Ok(level) => {
                    drop(s);
                    on_level(level);
                }
                Err(e) => s.error = Some(e.to_string()),
            }
        },
        move |e| {
            if let Ok(mut s) = errors.lock() {
                s.error.get_or_insert(e.to_string());
            }
        },
        Some(Duration::from_secs(5)),
    )
}
