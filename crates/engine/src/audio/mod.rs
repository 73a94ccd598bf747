//! Audio files and raw samples to the log-mel features the audio tower expects.
//!
//! Files are decoded with symphonia, averaged to mono and resampled to the feature extractor's
//! rate with a long windowed-sinc filter.  Recordings longer than one clip are split at quiet
//! points into consecutive clips, each short enough to fit the prompt's fixed number of audio
//! soft tokens; nothing is dropped.  [`AudioProcessor::features`] then reproduces
//! `Gemma3nAudioFeatureExtractor` for a batch of clips padded together.

mod decode;
mod features;
mod flac;
mod resample;
mod split;

use std::path::Path;

use candle_core::{Device, Tensor};
use gemma3n::Gemma3nConfig;

pub use features::{FeatureExtractorConfig, LogMel};

use crate::{Error, Result};

/// Highest input sample rate accepted (well above any real recording's).
pub const MAX_SAMPLE_RATE: u32 = 768_000;
/// Lowest input sample rate accepted.
pub const MIN_SAMPLE_RATE: u32 = 1_000;
/// Most input channels accepted.
pub const MAX_CHANNELS: usize = 64;
/// Longest recording accepted, in seconds (longer ones are almost certainly a mistake).
pub const MAX_SECONDS: f64 = 4.0 * 3600.0;

/// Log-mel features of one or more clips: `features` `[n, frames, mel]`, `mask` `[n, frames]`
/// (u8, 1 = valid frame).
#[derive(Debug, Clone)]
pub struct AudioFeatures {
    pub features: Tensor,
    pub mask: Tensor,
}

/// One clip of a recording at the feature extractor's rate, with where it sits in the original.
#[derive(Debug, Clone)]
pub struct Clip {
    pub samples: Vec<f32>,
    /// Start and end in seconds from the beginning of the recording.
    pub start: f64,
    pub end: f64,
}

/// A recording as consecutive clips, in order, covering all of it.
#[derive(Debug, Clone)]
pub struct SplitAudio {
    pub clips: Vec<Clip>,
    /// Length of the whole recording in seconds.
    pub duration: f64,
}

impl SplitAudio {
    pub fn was_split(&self) -> bool {
        self.clips.len() > 1
    }

    /// The clips' samples, in order.
    pub fn into_samples(self) -> Vec<Vec<f32>> {
        self.clips.into_iter().map(|c| c.samples).collect()
    }

    /// One line for users: e.g. `95.0 s recording split into 4 clips: 0:00.0–0:28.7, ...`.
    pub fn describe(&self) -> String {
        let span = |c: &Clip| format!("{}–{}", clock(c.start), clock(c.end));
        if !self.was_split() {
            return format!("{:.1} s recording, one clip", self.duration);
        }
        let spans: Vec<String> = self.clips.iter().map(span).collect();
        format!(
            "{:.1} s recording split into {} clips: {}",
            self.duration,
            self.clips.len(),
            spans.join(", ")
        )
    }
}

fn clock(seconds: f64) -> String {
    let m = (seconds / 60.0).floor();
    format!("{}:{:04.1}", m as u64, seconds - 60.0 * m)
}

/// Turns audio files and raw samples into clips and log-mel features.
#[derive(Debug)]
pub struct AudioProcessor {
    log_mel: LogMel,
    max_clip: usize,
}

impl AudioProcessor {
    /// Settings from `processor_config.json` (nested `feature_extractor`) or
    /// `preprocessor_config.json` (flat), and the clip limit implied by `config.json`.
    pub fn from_model_dir(dir: &Path) -> Result<Self> {
        let cfg = read_feature_config(dir)?;
        let model_config = dir.join("config.json");
        let model = if model_config.is_file() {
            Some(Gemma3nConfig::from_file(&model_config)?)
        } else {
            None
        };
        Self::new(cfg, model.as_ref())
    }

    /// With a model config, clips are limited to the length whose tokens fit the prompt's
    /// `audio_soft_tokens_per_image` slots, as well as to the extractor's maximum length.
    pub fn new(cfg: FeatureExtractorConfig, model: Option<&Gemma3nConfig>) -> Result<Self> {
        let bad = |reason: String| Error::ModelFiles(format!("audio feature extractor: {reason}"));
        if let Some(m) = model {
            if m.audio_config.input_feat_size != cfg.feature_size {
                return Err(bad(format!(
                    "feature_size {} differs from the audio tower's input_feat_size {}",
                    cfg.feature_size, m.audio_config.input_feat_size
                )));
            }
        }
        let log_mel = LogMel::new(cfg).map_err(bad)?;
        let mut proc = Self {
            max_clip: log_mel.config().max_length(),
            log_mel,
        };
        if let Some(m) = model {
            proc.max_clip = proc.longest_fitting_clip(m).ok_or_else(|| {
                bad(format!(
                    "even the shortest clip gives more audio tokens than the {} slots per clip",
                    m.audio_soft_tokens_per_image
                ))
            })?;
        }
        Ok(proc)
    }

    /// Longest clip (in samples, at most the extractor's maximum) whose tokens fit the slots.
    fn longest_fitting_clip(&self, model: &Gemma3nConfig) -> Option<usize> {
        let slots = model.audio_soft_tokens_per_image;
        let fits = |len: usize| {
            let frames = self.log_mel.num_frames(self.padded_len(len)).max(1);
            gemma3n::audio::tokens_for_frames(&model.audio_config, frames) <= slots
        };
        let (mut lo, mut hi) = (0usize, self.log_mel.config().max_length());
        if !fits(1) {
            return None;
        }
        if fits(hi) {
            return Some(hi);
        }
        lo = lo.max(1);
        // Invariant: fits(lo), !fits(hi).
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if fits(mid) {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        Some(lo)
    }

    /// Batch length for a longest clip of `len` samples: rounded up to the padding multiple
    /// and to at least one frame.
    fn padded_len(&self, len: usize) -> usize {
        let m = self.log_mel.config().pad_to_multiple_of();
        let min = self.log_mel.config().frame_length() + 1;
        len.max(min).div_ceil(m) * m
    }

    pub fn sampling_rate(&self) -> u32 {
        self.log_mel.config().sampling_rate
    }

    /// Longest clip in samples at [`Self::sampling_rate`].
    pub fn max_clip_samples(&self) -> usize {
        self.max_clip
    }

    pub fn feature_config(&self) -> &FeatureExtractorConfig {
        self.log_mel.config()
    }

    /// Decode, downmix, resample and split one audio file.
    pub fn load(&self, path: &Path) -> Result<SplitAudio> {
        let err = |reason: String| Error::Audio {
            path: path.display().to_string(),
            reason,
        };
        let decoded = decode::decode_file(path).map_err(err)?;
        self.split_mono(decoded.mono, decoded.rate).map_err(err)
    }

    /// 16 kHz mono clips of at most the model's clip length, in order, for one audio file.
    pub fn load_file(&self, path: &Path) -> Result<Vec<Vec<f32>>> {
        Ok(self.load(path)?.into_samples())
    }

    /// Clips from raw interleaved samples (the microphone path): `channels` samples per frame.
    pub fn clips_from_samples(
        &self,
        interleaved: &[f32],
        rate: u32,
        channels: usize,
    ) -> Result<SplitAudio> {
        let err = |reason: String| Error::Audio {
            path: "<samples>".into(),
            reason,
        };
        check_format(rate, channels).map_err(err)?;
        if !interleaved.len().is_multiple_of(channels) {
            return Err(err(format!(
                "{} samples do not divide into {channels} channels",
                interleaved.len()
            )));
        }
        if let Some(i) = interleaved.iter().position(|s| !s.is_finite()) {
            return Err(err(format!("sample {i} is not a finite number")));
        }
        let mono = decode::downmix(interleaved, channels);
        self.split_mono(mono, rate).map_err(err)
    }

    fn split_mono(&self, mono: Vec<f32>, rate: u32) -> std::result::Result<SplitAudio, String> {
        if mono.is_empty() {
            return Err("the audio is empty (zero samples)".into());
        }
        let duration = mono.len() as f64 / rate as f64;
        if duration > MAX_SECONDS {
            return Err(format!(
                "the recording lasts {:.0} minutes; at most {:.0} minutes are accepted",
                duration / 60.0,
                MAX_SECONDS / 60.0
            ));
        }
        let target = self.sampling_rate();
        let wave = resample::resample(&mono, rate, target)?;
        let sr = target as f64;
        let clips = split::split_points(&wave, target, self.max_clip)
            .into_iter()
            .map(|(a, b)| Clip {
                samples: wave[a..b].to_vec(),
                start: a as f64 / sr,
                end: b as f64 / sr,
            })
            .collect();
        Ok(SplitAudio { clips, duration })
    }

    /// Features for a batch of mono clips at [`Self::sampling_rate`], padded together to the
    /// longest (rounded up to the padding multiple) as the reference does.
    pub fn features(&self, clips: &[Vec<f32>]) -> Result<AudioFeatures> {
        let err = |reason: String| Error::Audio {
            path: "<clips>".into(),
            reason,
        };
        if clips.is_empty() {
            return Err(err("no clips to compute features for".into()));
        }
        for (i, clip) in clips.iter().enumerate() {
            if clip.is_empty() {
                return Err(err(format!("clip {i} is empty")));
            }
            if clip.len() > self.max_clip {
                return Err(err(format!(
                    "clip {i} has {} samples, more than the {} of one clip; split it first",
                    clip.len(),
                    self.max_clip
                )));
            }
        }
        let longest = clips.iter().map(Vec::len).max().unwrap_or(0);
        let padded = self.padded_len(longest);
        let frames = self.log_mel.num_frames(padded);
        let mel = self.log_mel.mel_bins();
        let pad_value = self.log_mel.config().padding_value;
        let mut features = Vec::with_capacity(clips.len() * frames * mel);
        let mut mask = Vec::with_capacity(clips.len() * frames);
        for clip in clips {
            let mut wave = clip.clone();
            wave.resize(padded, pad_value);
            features.extend(self.log_mel.compute(&wave));
            mask.extend((0..frames).map(|f| u8::from(self.log_mel.frame_is_valid(f, clip.len()))));
        }
        let n = clips.len();
        Ok(AudioFeatures {
            features: Tensor::from_vec(features, (n, frames, mel), &Device::Cpu)?,
            mask: Tensor::from_vec(mask, (n, frames), &Device::Cpu)?,
        })
    }
}

fn check_format(rate: u32, channels: usize) -> std::result::Result<(), String> {
    if !(MIN_SAMPLE_RATE..=MAX_SAMPLE_RATE).contains(&rate) {
        return Err(format!(
            "sample rate {rate} Hz is outside the supported {MIN_SAMPLE_RATE}–{MAX_SAMPLE_RATE} Hz"
        ));
    }
    if channels == 0 || channels > MAX_CHANNELS {
        return Err(format!(
            "{channels} channels is outside the supported 1–{MAX_CHANNELS}"
        ));
    }
    Ok(())
}

fn read_feature_config(dir: &Path) -> Result<FeatureExtractorConfig> {
    let read = |name: &str| -> Result<Option<serde_json::Value>> {
        let path = dir.join(name);
        if !path.is_file() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path)
            .map_err(|e| Error::ModelFiles(format!("cannot read {}: {e}", path.display())))?;
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| Error::ModelFiles(format!("{} is not valid JSON: {e}", path.display())))
    };
    let section = match read("processor_config.json")? {
        Some(v) if v.get("feature_extractor").is_some() => v["feature_extractor"].clone(),
        _ => read("preprocessor_config.json")?.ok_or_else(|| {
            Error::ModelFiles(format!(
                "{} has neither processor_config.json with a feature_extractor section nor \
                 preprocessor_config.json",
                dir.display()
            ))
        })?,
    };
    serde_json::from_value(section)
        .map_err(|e| Error::ModelFiles(format!("audio feature extractor settings: {e}")))
}
