//! Saving a recording as a 16-bit PCM WAV file, the form in which it is attached to a message.

use std::path::Path;

use crate::{MicError, Recording};

impl Recording {
    pub fn save_wav(&self, path: &Path) -> Result<(), MicError> {
        let fail = |reason: String| MicError::Save {
            path: path.display().to_string(),
            reason,
        };
        let bytes = self.wav_bytes().map_err(fail)?;
        std::fs::write(path, bytes).map_err(|e| fail(e.to_string()))
    }

    /// The recording as the bytes of a 16-bit PCM WAV file.
    pub fn wav_bytes(&self) -> Result<Vec<u8>, String> {
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: self.sample_rate,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut out = std::io::Cursor::new(Vec::new());
        let mut writer = hound::WavWriter::new(&mut out, spec).map_err(|e| e.to_string())?;
        for &s in &self.samples {
            let q = (s.clamp(-1.0, 1.0) * i16::MAX as f32).round() as i16;
            writer.write_sample(q).map_err(|e| e.to_string())?;
        }
        writer.finalize().map_err(|e| e.to_string())?;
        Ok(out.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_wav_reads_back() {
        let rec = Recording {
            samples: (0..1600).map(|i| (i as f32 * 0.01).sin() * 0.5).collect(),
            sample_rate: 16_000,
            reached_max: false,
        };
        let path = std::env::temp_dir().join(format!("mic-wav-{}.wav", std::process::id()));
        rec.save_wav(&path).unwrap();
        let mut reader = hound::WavReader::open(&path).unwrap();
        assert_eq!(reader.spec().sample_rate, 16_000);
        let back: Vec<i16> = reader.samples::<i16>().map(|s| s.unwrap()).collect();
        assert_eq!(back.len(), 1600);
        assert!((back[100] as f32 / i16::MAX as f32 - rec.samples[100]).abs() < 1e-4);
        std::fs::remove_file(path).ok();
    }
}
