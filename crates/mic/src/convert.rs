//! Streaming conversion of captured audio: interleaved samples of any cpal format at the device's
//! rate to mono f32 at 16 kHz, with a level reading per buffer for a meter.

use cpal::{FromSample, Sample};
use rubato::{FftFixedInOut, Resampler};

use crate::{MicError, TARGET_RATE};

/// Loudness of the latest buffer (mono, before resampling) and the length captured so far.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Level {
    pub rms: f32,
    pub peak: f32,
    pub seconds: f64,
}

/// Input frames per resampling block (at least); the filter spans one block.
const BLOCK: usize = 2048;

/// Device rates accepted (the audio front end's range): a block spans a whole number of
/// `rate/gcd` periods, so an absurd rate would plan an FFT of gigabytes.
const RATES: std::ops::RangeInclusive<u32> = 1_000..=768_000;

pub struct Converter {
    channels: usize,
    rate: u32,
    resampler: Option<FftFixedInOut<f32>>,
    /// Mono input waiting for a whole resampling block.
    pending: Vec<f32>,
    out: Vec<f32>,
    /// Mono frames accepted so far, and the most that will be.
    frames: u64,
    max_frames: u64,
}

impl Converter {
    /// A converter for `channels`-channel audio at `rate` Hz keeping at most `max_seconds`.
    pub fn new(rate: u32, channels: usize, max_seconds: f64) -> Result<Self, MicError> {
        if !RATES.contains(&rate) || channels == 0 {
            return Err(MicError::Convert(format!(
                "cannot capture {channels} channels at {rate} Hz (rates of {} to {} Hz are supported)",
                RATES.start(),
                RATES.end()
            )));
        }
        if max_seconds.is_nan() || max_seconds <= 0.0 {
            return Err(MicError::Convert(format!(
                "maximum length must be positive, got {max_seconds} s"
            )));
        }
        let resampler = if rate == TARGET_RATE {
            None
        } else {
            // A block of an even number of `rate/gcd` periods puts the filter's centre on a
            // whole output sample, so its delay can be dropped exactly.
            let period = (rate / gcd(rate, TARGET_RATE)) as usize;
            let block = 2 * period * BLOCK.div_ceil(2 * period);
            Some(
                FftFixedInOut::new(rate as usize, TARGET_RATE as usize, block, 1).map_err(|e| {
                    MicError::Convert(format!("cannot resample {rate} Hz to 16 kHz: {e}"))
                })?,
            )
        };
        Ok(Self {
            channels,
            rate,
            resampler,
            pending: Vec::new(),
            out: Vec::new(),
            frames: 0,
            max_frames: (max_seconds * rate as f64).round() as u64,
        })
    }

    /// True once the maximum length has been captured; later input is ignored.
    pub fn is_full(&self) -> bool {
        self.frames >= self.max_frames
    }

    /// Seconds of audio captured so far.
    pub fn seconds(&self) -> f64 {
        self.frames as f64 / self.rate as f64
    }

    /// Add one buffer of interleaved samples; whole frames only (a trailing partial frame is
    /// dropped, which devices never deliver).
    pub fn push<T>(&mut self, interleaved: &[T]) -> Result<Level, MicError>
    where
        T: Sample,
        f32: FromSample<T>,
    {
        let room = (self.max_frames - self.frames.min(self.max_frames)) as usize;
        let mono: Vec<f32> = interleaved
            .chunks_exact(self.channels)
            .take(room)
            .map(|frame| {
                let mean =
                    frame.iter().map(|&s| f32::from_sample(s)).sum::<f32>() / self.channels as f32;
                // Float devices may deliver NaN, infinite or huge values, which make the
                // resampler's FFT panic: a non-finite sample is a dropout, the rest is clipped.
                if mean.is_finite() {
                    mean.clamp(-1.0, 1.0)
                } else {
                    0.0
                }
            })
            .collect();
        self.frames += mono.len() as u64;
        let level = Level {
            rms: (mono.iter().map(|&s| (s as f64).powi(2)).sum::<f64>() / mono.len().max(1) as f64)
                .sqrt() as f32,
            peak: mono.iter().fold(0.0, |m, s| m.max(s.abs())),
            seconds: self.seconds(),
        };
        match &mut self.resampler {
            None => self.out.extend_from_slice(&mono),
            Some(r) => {
                self.pending.extend_from_slice(&mono);
                let n = r.input_frames_next();
                let whole = self.pending.len() / n * n;
                for block in self.pending[..whole].chunks_exact(n) {
                    let produced = r
                        .process(&[block], None)
                        .map_err(|e| MicError::Convert(format!("resampling failed: {e}")))?;
                    self.out.extend_from_slice(&produced[0]);
                }
                self.pending.drain(..whole);
            }
        }
        Ok(level)
    }

    /// The whole capture as 16 kHz mono: `ceil(frames * 16000 / rate)` samples, aligned with
    /// the input (the resampler's delay removed).
    pub fn finish(mut self) -> Result<Vec<f32>, MicError> {
        let wanted = (self.frames * TARGET_RATE as u64).div_ceil(self.rate as u64) as usize;
        let Some(mut r) = self.resampler.take() else {
            return Ok(self.out);
        };
        let delay = r.output_delay();
        let n = r.input_frames_next();
        // Zero blocks push the tail and the delayed samples out.
        while self.out.len() < wanted + delay {
            self.pending.resize(n, 0.0);
            let produced = r
                .process(&[&self.pending[..]], None)
                .map_err(|e| MicError::Convert(format!("resampling failed: {e}")))?;
            self.out.extend_from_slice(&produced[0]);
            self.pending.clear();
        }
        Ok(self.out[delay..delay + wanted].to_vec())
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by fuzzing (fuzz/ mic_convert): a device rate of 2.67 GHz planned a resampler
    /// FFT of gigabytes instead of being refused.
    #[test]
    fn absurd_device_rates_are_refused() {
        for rate in [0, 999, 768_001, 2_666_872_448, u32::MAX] {
            let err = Converter::new(rate, 1, 30.0).err().expect("refused");
            assert!(err.to_string().contains(&format!("at {rate} Hz")), "{err}");
        }
        for rate in [1_000, 44_100, 768_000] {
            assert!(Converter::new(rate, 2, 1.0).is_ok(), "{rate} Hz");
        }
    }

    /// Found by fuzzing: a NaN or huge sample made the resampler panic in `finish`.
    #[test]
    fn non_finite_samples_become_silence_and_huge_ones_are_clipped() {
        let mut c = Converter::new(48_000, 1, 1.0).unwrap();
        let mut samples = vec![0.25f32; 4800];
        samples[7] = f32::NAN;
        samples[9] = f32::INFINITY;
        samples[11] = f32::MAX;
        c.push(&samples).unwrap();
        let out = c.finish().unwrap();
        assert_eq!(out.len(), 1600);
        assert!(out.iter().all(|s| s.is_finite() && s.abs() < 2.0));
    }
}
