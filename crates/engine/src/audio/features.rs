//! The log-mel front end of `Gemma3nAudioFeatureExtractor`: per-frame HTK pre-emphasis, periodic
//! Hann window, zero-padded real FFT, magnitude, triangular HTK mel filterbank, natural log.
//!
//! The reference frames the waveform in f32 and computes the spectrum and mel energies in f64;
//! this does the same, so the features agree to float rounding.

use std::sync::Arc;

use realfft::{RealFftPlanner, RealToComplex};
use serde::Deserialize;

/// Feature-extractor settings as stored in `preprocessor_config.json` (flat) or in the
/// `feature_extractor` section of `processor_config.json`.  Missing keys take the reference's
/// class defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct FeatureExtractorConfig {
    pub feature_size: usize,
    pub sampling_rate: u32,
    pub padding_value: f32,
    /// Window length in ms; when absent, `frame_length` (samples) is used.
    pub frame_length_ms: Option<f64>,
    pub frame_length: Option<usize>,
    pub hop_length_ms: Option<f64>,
    pub hop_length: Option<usize>,
    pub min_frequency: f64,
    pub max_frequency: f64,
    pub preemphasis: f64,
    pub preemphasis_htk_flavor: bool,
    pub fft_overdrive: bool,
    pub dither: f64,
    pub input_scale_factor: f64,
    pub mel_floor: f64,
    pub per_bin_mean: Option<Vec<f64>>,
    pub per_bin_stddev: Option<Vec<f64>>,
    /// Longest clip in samples (the reference truncates to 480 000 = 30 s at 16 kHz).
    pub max_length: Option<usize>,
    /// Batches are padded to a multiple of this many samples.
    pub pad_to_multiple_of: Option<usize>,
}

impl Default for FeatureExtractorConfig {
    fn default() -> Self {
        Self {
            feature_size: 128,
            sampling_rate: 16_000,
            padding_value: 0.0,
            frame_length_ms: None,
            frame_length: None,
            hop_length_ms: None,
            hop_length: None,
            min_frequency: 125.0,
            max_frequency: 7600.0,
            preemphasis: 0.97,
            preemphasis_htk_flavor: true,
            fft_overdrive: true,
            dither: 0.0,
            input_scale_factor: 1.0,
            mel_floor: 1e-5,
            per_bin_mean: None,
            per_bin_stddev: None,
            max_length: None,
            pad_to_multiple_of: None,
        }
    }
}

impl FeatureExtractorConfig {
    fn samples(&self, ms: Option<f64>, samples: Option<usize>, default_ms: f64) -> usize {
        match (ms, samples) {
            (Some(ms), _) => (self.sampling_rate as f64 * ms / 1000.0).round() as usize,
            (None, Some(n)) => n,
            (None, None) => (self.sampling_rate as f64 * default_ms / 1000.0).round() as usize,
        }
    }

    pub fn frame_length(&self) -> usize {
        self.samples(self.frame_length_ms, self.frame_length, 32.0)
    }

    pub fn hop_length(&self) -> usize {
        self.samples(self.hop_length_ms, self.hop_length, 10.0)
    }

    /// Next power of two of the frame, doubled with `fft_overdrive` (the stored `fft_length` is
    /// derived the same way by the reference, which ignores the stored value).
    pub fn fft_length(&self) -> usize {
        let n = self.frame_length().next_power_of_two();
        if self.fft_overdrive {
            2 * n
        } else {
            n
        }
    }

    pub fn max_length(&self) -> usize {
        self.max_length.unwrap_or(30 * self.sampling_rate as usize)
    }

    pub fn pad_to_multiple_of(&self) -> usize {
        self.pad_to_multiple_of.unwrap_or(128).max(1)
    }

    /// Reject settings the front end cannot run with.
    pub fn validate(&self) -> Result<(), String> {
        let frame = self.frame_length();
        let hop = self.hop_length();
        if self.sampling_rate == 0 || frame < 2 || hop == 0 || self.feature_size == 0 {
            return Err(format!(
                "feature extractor needs a positive sampling rate, frame, hop and mel count \
                 (got {} Hz, frame {frame}, hop {hop}, {} mel bins)",
                self.sampling_rate, self.feature_size
            ));
        }
        let nyquist = self.sampling_rate as f64 / 2.0;
        if !(0.0 <= self.min_frequency
            && self.min_frequency < self.max_frequency
            && self.max_frequency <= nyquist)
        {
            return Err(format!(
                "mel range {}..{} Hz does not fit 0..{nyquist} Hz",
                self.min_frequency, self.max_frequency
            ));
        }
        for (name, v) in [
            ("per_bin_mean", &self.per_bin_mean),
            ("per_bin_stddev", &self.per_bin_stddev),
        ] {
            if let Some(v) = v {
                if v.len() != self.feature_size {
                    return Err(format!(
                        "{name} has {} values but feature_size is {}",
                        v.len(),
                        self.feature_size
                    ));
                }
            }
        }
        Ok(())
    }
}

/// One triangular mel filter, stored as its non-zero span of FFT bins.
#[derive(Debug, Clone)]
struct MelFilter {
    first_bin: usize,
    weights: Vec<f64>,
}

/// HTK-scale triangular filters without normalisation, as torchaudio's `melscale_fbanks`.
fn mel_filters(cfg: &FeatureExtractorConfig, fft_length: usize) -> Vec<MelFilter> {
    let n_freqs = fft_length / 2 + 1;
    let n_mels = cfg.feature_size;
    let hz_to_mel = |f: f64| 2595.0 * (1.0 + f / 700.0).log10();
    let (m_min, m_max) = (hz_to_mel(cfg.min_frequency), hz_to_mel(cfg.max_frequency));
    // numpy's linspace: start + i * step, with the last point set exactly.
    let step = (m_max - m_min) / (n_mels + 1) as f64;
    let f_pts: Vec<f64> = (0..n_mels + 2)
        .map(|i| {
            let m = if i == n_mels + 1 {
                m_max
            } else {
                m_min + i as f64 * step
            };
            700.0 * (10f64.powf(m / 2595.0) - 1.0)
        })
        .collect();
    // The reference builds the bin frequencies in f32.
    let bin_hz = (cfg.sampling_rate as f64 / fft_length as f64) as f32;
    let freqs: Vec<f64> = (0..n_freqs).map(|k| (k as f32 * bin_hz) as f64).collect();
    (0..n_mels)
        .map(|j| {
            let weight = |f: f64| {
                let down = (f_pts[j] - f) * -1.0 / (f_pts[j + 1] - f_pts[j]);
                let up = (f_pts[j + 2] - f) / (f_pts[j + 2] - f_pts[j + 1]);
                down.min(up).max(0.0)
            };
            let all: Vec<f64> = freqs.iter().map(|&f| weight(f)).collect();
            let first_bin = all.iter().position(|&w| w > 0.0).unwrap_or(0);
            let last = all.iter().rposition(|&w| w > 0.0).unwrap_or(0);
            let weights = if last >= first_bin {
                all[first_bin..=last].to_vec()
            } else {
                Vec::new()
            };
            MelFilter { first_bin, weights }
        })
        .collect()
}

/// Log-mel spectrogram computer for one configuration (FFT plan and filterbank built once).
pub struct LogMel {
    cfg: FeatureExtractorConfig,
    frame_length: usize,
    hop_length: usize,
    window: Vec<f32>,
    fft: Arc<dyn RealToComplex<f64>>,
    filters: Vec<MelFilter>,
}

impl std::fmt::Debug for LogMel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogMel").field("cfg", &self.cfg).finish()
    }
}

impl LogMel {
    pub fn new(cfg: FeatureExtractorConfig) -> Result<Self, String> {
        cfg.validate()?;
        let frame_length = cfg.frame_length();
        let fft_length = cfg.fft_length();
        // Periodic Hann window, evaluated in f32 like the reference.
        let window = (0..frame_length)
            .map(|n| {
                let x = 2.0 * std::f32::consts::PI * n as f32 / frame_length as f32;
                0.5 * (1.0 - x.cos())
            })
            .collect();
        let fft = RealFftPlanner::<f64>::new().plan_fft_forward(fft_length);
        let filters = mel_filters(&cfg, fft_length);
        Ok(Self {
            hop_length: cfg.hop_length(),
            frame_length,
            window,
            fft,
            filters,
            cfg,
        })
    }

    pub fn config(&self) -> &FeatureExtractorConfig {
        &self.cfg
    }

    pub fn mel_bins(&self) -> usize {
        self.cfg.feature_size
    }

    /// Frames made of a (padded) waveform of `len` samples: windows of `frame_length + 1`
    /// samples (the extra one feeds the pre-emphasis) every `hop_length`.
    pub fn num_frames(&self, len: usize) -> usize {
        let size = self.frame_length + 1;
        if len < size {
            0
        } else {
            (len - size) / self.hop_length + 1
        }
    }

    /// Frame `i` is a real frame iff its first sample is real audio.
    pub fn frame_is_valid(&self, frame: usize, real_len: usize) -> bool {
        frame * self.hop_length < real_len
    }

    /// `[frames * mel]` row-major log-mel features of one padded waveform.
    pub fn compute(&self, wave: &[f32]) -> Vec<f32> {
        let dithered;
        let wave = if self.cfg.dither > 0.0 {
            dithered = dither(wave, self.cfg.dither);
            &dithered
        } else {
            wave
        };
        let frames = self.num_frames(wave.len());
        let n_mels = self.cfg.feature_size;
        let scale = self.cfg.input_scale_factor as f32;
        let coef = self.cfg.preemphasis as f32;
        let mut input = self.fft.make_input_vec();
        let mut spectrum = self.fft.make_output_vec();
        let mut scratch = self.fft.make_scratch_vec();
        let mut magnitude = vec![0f64; spectrum.len()];
        let mut out = Vec::with_capacity(frames * n_mels);
        for f in 0..frames {
            let w = &wave[f * self.hop_length..f * self.hop_length + self.frame_length + 1];
            let s = |i: usize| w[i] * scale;
            input.fill(0.0);
            for (n, slot) in input[..self.frame_length].iter_mut().enumerate() {
                let y = if coef > 0.0 {
                    if self.cfg.preemphasis_htk_flavor {
                        if n == 0 {
                            s(0) * (1.0 - self.cfg.preemphasis) as f32
                        } else {
                            s(n) - coef * s(n - 1)
                        }
                    } else {
                        s(n + 1) - coef * s(n)
                    }
                } else {
                    s(n)
                };
                *slot = (y * self.window[n]) as f64;
            }
            self.fft
                .process_with_scratch(&mut input, &mut spectrum, &mut scratch)
                .expect("buffers come from the planner");
            for (m, c) in magnitude.iter_mut().zip(&spectrum) {
                *m = c.norm();
            }
            for (j, filter) in self.filters.iter().enumerate() {
                let e: f64 = filter
                    .weights
                    .iter()
                    .zip(&magnitude[filter.first_bin..])
                    .map(|(w, m)| w * m)
                    .sum();
                let mut v = e.max(self.cfg.mel_floor).ln();
                if let Some(mean) = &self.cfg.per_bin_mean {
                    v -= mean[j];
                }
                if let Some(std) = &self.cfg.per_bin_stddev {
                    v /= std[j];
                }
                out.push(v as f32);
            }
        }
        out
    }
}

/// `wave + amount * N(0, 1)` noise (Box-Muller), as the reference's optional dithering.
fn dither(wave: &[f32], amount: f64) -> Vec<f32> {
    use rand::Rng;
    let mut rng = rand::rng();
    wave.iter()
        .map(|&x| {
            let u1: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
            let u2: f64 = rng.random();
            let n = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
            x + (amount * n) as f32
        })
        .collect()
}
