//! Decoding audio files with symphonia into one mono channel.

use std::fs::File;
use std::io::ErrorKind;
use std::path::Path;

use symphonia::core::audio::SampleBuffer;
use symphonia::core::codecs::{DecoderOptions, CODEC_TYPE_NULL};
use symphonia::core::errors::Error as SymphoniaError;
use symphonia::core::formats::FormatOptions;
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;
use symphonia::core::probe::Hint;

use super::{check_format, flac, MAX_SECONDS};

/// A decoded file: the mean of its channels at its own sample rate.
#[derive(Debug)]
pub struct Decoded {
    pub mono: Vec<f32>,
    pub rate: u32,
}

/// Mean of the channels of interleaved samples, accumulated in f64.
pub fn downmix(interleaved: &[f32], channels: usize) -> Vec<f32> {
    if channels == 1 {
        return interleaved.to_vec();
    }
    interleaved
        .chunks_exact(channels)
        .map(|frame| (frame.iter().map(|&s| s as f64).sum::<f64>() / channels as f64) as f32)
        .collect()
}

fn is_eof(e: &SymphoniaError) -> bool {
    matches!(e, SymphoniaError::IoError(io) if io.kind() == ErrorKind::UnexpectedEof)
}

/// Decode a whole file.  Some malformed headers (e.g. a zero sample rate) make the decoders
/// panic; that is reported as a malformed file instead of taking the application down.
pub fn decode_file(path: &Path) -> Result<Decoded, String> {
    std::panic::catch_unwind(|| decode(path)).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Err(format!("the file is malformed ({what})"))
    })
}

fn decode(path: &Path) -> Result<Decoded, String> {
    let file = File::open(path).map_err(|e| format!("cannot open the file: {e}"))?;
    let len = file
        .metadata()
        .map_err(|e| format!("cannot read the file: {e}"))?
        .len();
    if len == 0 {
        return Err("the file is empty (0 bytes)".into());
    }
    let stream = MediaSourceStream::new(Box::new(file), Default::default());
    let mut hint = Hint::new();
    if let Some(ext) = path.extension().and_then(|e| e.to_str()) {
        hint.with_extension(ext);
    }
    let probed = flac::probe()
        .format(
            &hint,
            stream,
            // Trim encoder delay and padding where the container says how much (LAME/iTunes
            // headers), so compressed files line up with the recording they came from.
            &FormatOptions {
                enable_gapless: true,
                ..Default::default()
            },
            &MetadataOptions::default(),
        )
        .map_err(|e| match damaged_flac(&e) {
            Some(reason) => reason.to_string(),
            None => format!(
                "not a supported audio file (WAV, MP3, FLAC, OGG/Vorbis, M4A/AAC): {}",
                describe(&e)
            ),
        })?;
    let mut format = probed.format;
    let track = format
        .tracks()
        .iter()
        .find(|t| t.codec_params.codec != CODEC_TYPE_NULL)
        .ok_or("the file has no audio track")?;
    let track_id = track.id;
    let params = track.codec_params.clone();
    if let (Some(rate), Some(channels)) = (params.sample_rate, params.channels) {
        check_format(rate, channels.count())?;
    }
    if let (Some(rate), Some(frames)) = (params.sample_rate, params.n_frames) {
        if frames as f64 / rate as f64 > MAX_SECONDS {
            return Err(format!(
                "the recording lasts {:.0} minutes; at most {:.0} minutes are accepted",
                frames as f64 / rate as f64 / 60.0,
                MAX_SECONDS / 60.0
            ));
        }
    }
    let mut decoder = symphonia::default::get_codecs()
        .make(&params, &DecoderOptions::default())
        .map_err(|e| format!("unsupported audio codec: {}", describe(&e)))?;

    let mut mono = Vec::new();
    let mut rate = None;
    let mut buffer: Option<SampleBuffer<f32>> = None;
    let (mut good, mut bad) = (0usize, 0usize);
    let mut last_error = String::new();
    loop {
        let packet = match format.next_packet() {
            Ok(p) => p,
            Err(e) if is_eof(&e) => break,
            Err(SymphoniaError::ResetRequired) => break,
            Err(e) => return Err(format!("the file is corrupt: {}", describe(&e))),
        };
        if packet.track_id() != track_id {
            continue;
        }
        let decoded = match decoder.decode(&packet) {
            Ok(d) => d,
            // A damaged packet is skipped (as players do); a file of nothing but is rejected below.
            Err(SymphoniaError::DecodeError(e)) => {
                bad += 1;
                last_error = e.to_string();
                continue;
            }
            Err(e) if is_eof(&e) => break,
            Err(e) => return Err(format!("cannot decode the audio: {}", describe(&e))),
        };
        let spec = *decoded.spec();
        let channels = spec.channels.count();
        check_format(spec.rate, channels)?;
        match rate {
            None => rate = Some(spec.rate),
            Some(r) if r != spec.rate => {
                return Err(format!(
                    "the sample rate changes mid-stream ({r} Hz, then {} Hz)",
                    spec.rate
                ))
            }
            Some(_) => {}
        }
        if decoded.frames() == 0 {
            continue;
        }
        let buf = match &mut buffer {
            Some(b) if b.capacity() >= decoded.capacity() * channels => b,
            slot => slot.insert(SampleBuffer::new(decoded.capacity() as u64, spec)),
        };
        buf.copy_interleaved_ref(decoded);
        mono.extend(downmix(buf.samples(), channels));
        good += 1;
        if mono.len() as f64 / spec.rate as f64 > MAX_SECONDS {
            return Err(format!(
                "the recording is longer than {:.0} minutes",
                MAX_SECONDS / 60.0
            ));
        }
    }
    if bad > 0 && (good == 0 || bad * 10 > good) {
        return Err(format!(
            "the audio data is corrupt ({bad} of {} packets undecodable: {last_error})",
            good + bad
        ));
    }
    let Some(rate) = rate.or(params.sample_rate) else {
        return Err("the file contains no audio samples".into());
    };
    if mono.is_empty() {
        return Err("the file contains no audio samples".into());
    }
    if let Some(expected) = params.n_frames {
        // Compressed formats may trim encoder delay and padding; a real cut loses far more.
        let slack = params.max_frames_per_packet.unwrap_or(4096).max(4096);
        if (mono.len() as u64) + slack < expected {
            return Err(format!(
                "the file is truncated: it declares {expected} frames but only {} could be read",
                mono.len()
            ));
        }
    }
    if let Some(i) = mono.iter().position(|s| !s.is_finite()) {
        return Err(format!("sample {i} is not a finite number"));
    }
    Ok(Decoded { mono, rate })
}

/// The reason a FLAC stream failed the metadata check, when that is why the probe failed.
fn damaged_flac(e: &SymphoniaError) -> Option<&flac::Damaged> {
    match e {
        SymphoniaError::IoError(io) => io.get_ref()?.downcast_ref::<flac::Damaged>(),
        _ => None,
    }
}

fn describe(e: &SymphoniaError) -> String {
    match e {
        SymphoniaError::IoError(io) if io.kind() == ErrorKind::UnexpectedEof => {
            "the file ends too early".into()
        }
        other => other.to_string(),
    }
}
