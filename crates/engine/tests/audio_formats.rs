//! Compressed formats against their WAV original (`tests/fixtures/audio`, made by
//! `tests/reference/make_audio_formats.py`): lossless FLAC decodes exactly; MP3, Ogg/Vorbis and
//! M4A/AAC keep the length, the timing and the tones of the original; damaged files are errors.

use std::path::PathBuf;

use engine::audio::AudioProcessor;
use engine::Error;
use fixtures::fixture_dir;

fn audio_file(name: &str) -> PathBuf {
    fixture_dir("audio").join(name)
}

fn processor() -> AudioProcessor {
    AudioProcessor::from_model_dir(&fixture_dir("C").join("model")).expect("audio processor")
}

/// The whole recording at 16 kHz (the clips in order).
fn load(proc: &AudioProcessor, name: &str) -> Vec<f32> {
    proc.load(&audio_file(name))
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .into_samples()
        .concat()
}

/// Normalised correlation of `b` shifted by `lag` samples against `a`, over their overlap.
fn correlation(a: &[f32], b: &[f32], lag: isize) -> f64 {
    let (mut ab, mut aa, mut bb) = (0.0f64, 0.0f64, 0.0f64);
    for (i, &x) in a.iter().enumerate() {
        let Some(&y) = b
            .get((i as isize + lag) as usize)
            .filter(|_| i as isize + lag >= 0)
        else {
            continue;
        };
        ab += x as f64 * y as f64;
        aa += x as f64 * x as f64;
        bb += y as f64 * y as f64;
    }
    ab / (aa * bb).sqrt().max(f64::MIN_POSITIVE)
}

/// Power of `x` at `freq` Hz (Goertzel), sampled at 16 kHz.
fn power_at(x: &[f32], freq: f64) -> f64 {
    let w = 2.0 * std::f64::consts::PI * freq / 16_000.0;
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &v in x {
        let s = v as f64 + 2.0 * w.cos() * s1 - s2;
        s2 = s1;
        s1 = s;
    }
    s1 * s1 + s2 * s2 - 2.0 * w.cos() * s1 * s2
}

#[test]
fn flac_is_lossless() {
    let proc = processor();
    let original = load(&proc, "original.wav");
    assert_eq!(original.len(), 32_000, "2 s at 16 kHz");
    assert_eq!(load(&proc, "tone.flac"), original);
}

#[test]
fn lossy_formats_keep_length_timing_and_tones() {
    let proc = processor();
    let original = load(&proc, "original.wav");
    for name in ["tone.mp3", "tone.ogg", "tone.m4a"] {
        let got = load(&proc, name);
        // MP3's LAME header lets the decoder trim delay and padding exactly; the others may add
        // a few frames (AAC priming: 2048 samples at 22 kHz, which symphonia does not trim).
        let slack = if name == "tone.mp3" { 0 } else { 1600 };
        let extra = got.len() as isize - original.len() as isize;
        let (lag, best) = (-1600..=1600)
            .map(|lag| (lag, correlation(&original, &got, lag)))
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .unwrap();
        eprintln!(
            "{name}: {} samples ({extra:+}), best lag {lag}, correlation {best:.4}",
            got.len()
        );
        assert!(
            (0..=slack).contains(&extra),
            "{name}: {} samples",
            got.len()
        );
        assert!(
            (0..=slack).contains(&lag),
            "{name}: shifted by {lag} samples"
        );
        assert!(best > 0.98, "{name}: correlation {best}");
        // 440 Hz dominates the first quarter, 1 kHz the last.
        let start = lag as usize;
        let (head, tail) = (
            &got[start..start + 6000],
            &got[start + 26_000..start + 32_000],
        );
        assert!(
            power_at(head, 440.0) > 100.0 * power_at(head, 1000.0),
            "{name}: head"
        );
        assert!(
            power_at(tail, 1000.0) > 100.0 * power_at(tail, 440.0),
            "{name}: tail"
        );
    }
}

#[test]
fn damaged_files_are_clear_errors() {
    let proc = processor();
    for (name, needle) in [
        ("truncated.mp3", "truncated"),
        ("corrupt_box.m4a", "corrupt"),
    ] {
        let err = proc.load(&audio_file(name)).unwrap_err();
        eprintln!("{name}: {err}");
        assert!(matches!(err, Error::Audio { .. }), "{name}: {err:?}");
        assert!(err.to_string().contains(needle), "{name}: {err}");
    }
}

/// Inputs the `audio` fuzz target found (`crates/engine/tests/fuzz_inputs/audio`): a FLAC file
/// whose Vorbis comment block runs past the end of the file, and whose first comment claims
/// 4 GB, made symphonia allocate the 4 GB; it is refused before that.  So is a FLAC stream
/// after 41 bytes of something else (where symphonia's probe still finds it), whose metadata
/// made it allocate 2.2 GB.
#[test]
fn fuzz_found_files_are_refused_without_huge_allocations() {
    let proc = processor();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_inputs/audio");
    let path = dir.join("flac-comment-4gb.flac");
    let err = proc.load(&path).unwrap_err();
    assert!(matches!(err, Error::Audio { .. }), "{err:?}");
    assert!(
        err.to_string().contains(
            "damaged FLAC file: the Vorbis comment block claims 10240 bytes, 3253 remain"
        ),
        "{err}"
    );
    let err = proc.load(&dir.join("flac-after-junk-2gb.bin")).unwrap_err();
    assert!(matches!(err, Error::Audio { .. }), "{err:?}");
    assert!(err.to_string().contains("damaged FLAC file: "), "{err}");
}
