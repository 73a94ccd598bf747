//! Audio decoding, resampling, splitting and log-mel features against the reference fixtures.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use engine::audio::{AudioProcessor, SplitAudio};
use engine::Error;
use fixtures::{fixture_dir, Golden};

fn processor(variant: &str) -> AudioProcessor {
    AudioProcessor::from_model_dir(&fixture_dir(variant).join("model")).expect("audio processor")
}

/// A golden bool mask as bytes (1 = true).
fn mask_u8(golden: &Golden, name: &str) -> Vec<u8> {
    golden.mask(name).flatten_all().unwrap().to_vec1().unwrap()
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn abs_diffs(a: &[f32], b: &[f32]) -> Vec<f32> {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).collect()
}

fn max(v: &[f32]) -> f32 {
    v.iter().copied().fold(0.0, f32::max)
}

fn load_one(proc: &AudioProcessor, path: &Path) -> Vec<f32> {
    let split = proc.load(path).unwrap();
    assert_eq!(
        split.clips.len(),
        1,
        "{}: {}",
        path.display(),
        split.describe()
    );
    split.clips.into_iter().next().unwrap().samples
}

fn decodes_exactly(variant: &str) {
    let proc = processor(variant);
    let golden = Golden::open(variant);
    let dir = fixture_dir(variant);
    let wave = load_one(&proc, &dir.join("audio_16k_mono.wav"));
    assert_eq!(
        wave,
        golden.vec("audio.waveform"),
        "{variant}: decoded test clip"
    );
    let short = load_one(&proc, &dir.join("audio_16k_mono_short.wav"));
    assert_eq!(short, golden.vec("audio_batch.waveform_short"));
}

fn features_match(variant: &str) {
    let proc = processor(variant);
    let golden = Golden::open(variant);
    let wave = golden.vec("audio.waveform");
    let short = golden.vec("audio_batch.waveform_short");

    let one = proc.features(std::slice::from_ref(&wave)).unwrap();
    let expected = golden.f32("audio.input_features");
    assert_eq!(one.features.dims(), expected.dims());
    let d = max(&abs_diffs(&flat(&one.features), &flat(&expected)));
    eprintln!("{variant} audio.input_features: max abs diff {d:.3e}");
    assert!(d <= 1e-4, "{variant}: features differ by {d}");
    let mask: Vec<u8> = one.mask.flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(mask, mask_u8(&golden, "audio.input_features_mask"));

    let batch = proc.features(&[wave, short]).unwrap();
    let expected = golden.f32("audio_batch.input_features");
    assert_eq!(batch.features.dims(), expected.dims());
    let ours = flat(&batch.features);
    let theirs = flat(&expected);
    let d = max(&abs_diffs(&ours, &theirs));
    eprintln!("{variant} audio_batch.input_features: max abs diff {d:.3e}");
    assert!(d <= 1e-4, "{variant}: batch features differ by {d}");
    let mask: Vec<u8> = batch.mask.flatten_all().unwrap().to_vec1().unwrap();
    let golden_mask = mask_u8(&golden, "audio_batch.input_features_mask");
    assert_eq!(mask, golden_mask);
    // Padded frames are exactly the log floor, as in the reference.
    let mel = expected.dim(2).unwrap();
    let mut padded = 0;
    for (frame, _) in golden_mask.iter().enumerate().filter(|(_, &m)| m == 0) {
        let rows = frame * mel..(frame + 1) * mel;
        assert_eq!(ours[rows.clone()], theirs[rows], "padded frame {frame}");
        padded += 1;
    }
    assert!(padded > 0, "the short clip should have padded frames");
}

fn stereo_44k_close(variant: &str) {
    let proc = processor(variant);
    let golden = Golden::open(variant);
    let wave = load_one(&proc, &fixture_dir(variant).join("audio_44k_stereo.wav"));
    let reference = golden.vec("audio44k.waveform_16k_mono");
    let wd = abs_diffs(&wave, &reference);
    eprintln!(
        "{variant} 44.1 kHz -> 16 kHz waveform: max abs diff {:.3e}",
        max(&wd)
    );
    assert!(
        max(&wd) < 1e-2,
        "resampled waveform differs by {}",
        max(&wd)
    );

    let feats = proc.features(&[wave]).unwrap();
    let expected = golden.f32("audio44k.input_features");
    assert_eq!(feats.features.dims(), expected.dims());
    let mut d = abs_diffs(&flat(&feats.features), &flat(&expected));
    let mean = d.iter().map(|&x| x as f64).sum::<f64>() / d.len() as f64;
    d.sort_by(f32::total_cmp);
    let p99 = d[(d.len() as f64 * 0.99) as usize];
    eprintln!(
        "{variant} audio44k features: mean {mean:.3e}, p99 {p99:.3e}, max {:.3e}",
        d[d.len() - 1]
    );
    assert!(mean <= 5e-3 && p99 <= 0.1, "mean {mean}, p99 {p99}");
    let mask: Vec<u8> = feats.mask.flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(mask, mask_u8(&golden, "audio44k.input_features_mask"));
}

#[test]
fn wav_decodes_exactly_c() {
    decodes_exactly("C");
}

#[test]
fn wav_decodes_exactly_d() {
    decodes_exactly("D");
}

#[test]
fn features_match_reference_c() {
    features_match("C");
}

#[test]
fn features_match_reference_d() {
    features_match("D");
}

#[test]
fn stereo_44k_matches_soxr_reference_c() {
    stereo_44k_close("C");
}

#[test]
fn stereo_44k_matches_soxr_reference_d() {
    stereo_44k_close("D");
}

#[test]
fn flat_and_nested_processor_configs_agree() {
    let dir = tempdir("configs");
    let model = fixture_dir("C").join("model");
    std::fs::copy(
        model.join("preprocessor_config.json"),
        dir.join("preprocessor_config.json"),
    )
    .unwrap();
    let flat_cfg = AudioProcessor::from_model_dir(&dir).unwrap();
    let nested = processor("C");
    assert_eq!(
        format!("{:?}", flat_cfg.feature_config()),
        format!("{:?}", nested.feature_config())
    );
    let wave = Golden::open("C").vec("audio.waveform");
    let a = flat_cfg.features(std::slice::from_ref(&wave)).unwrap();
    let b = nested.features(std::slice::from_ref(&wave)).unwrap();
    assert_eq!(flat(&a.features), flat(&b.features));
    // Without config.json the clip limit is the extractor's 30 s.
    assert_eq!(flat_cfg.max_clip_samples(), 480_000);
    assert!(nested.max_clip_samples() < 480_000);
}

// ---- WAV encodings, raw samples, long audio, bad files --------------------------------------

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gemma-audio-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A canonical RIFF/WAVE file: `format` 1 = PCM, 3 = IEEE float.
fn wav(format: u16, bits: u16, channels: u16, rate: u32, data: &[u8]) -> Vec<u8> {
    let block = channels * bits / 8;
    let mut out = Vec::new();
    out.extend(b"RIFF");
    out.extend((36 + data.len() as u32).to_le_bytes());
    out.extend(b"WAVEfmt ");
    out.extend(16u32.to_le_bytes());
    out.extend(format.to_le_bytes());
    out.extend(channels.to_le_bytes());
    out.extend(rate.to_le_bytes());
    out.extend(rate.wrapping_mul(block as u32).to_le_bytes());
    out.extend(block.to_le_bytes());
    out.extend(bits.to_le_bytes());
    out.extend(b"data");
    out.extend((data.len() as u32).to_le_bytes());
    out.extend(data);
    out
}

fn tone(n: usize, rate: u32) -> Vec<f32> {
    (0..n)
        .map(|i| 0.5 * (2.0 * std::f32::consts::PI * 440.0 * i as f32 / rate as f32).sin())
        .collect()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn wav_sample_formats_decode() {
    let proc = processor("D");
    let dir = tempdir("formats");
    let x = tone(1600, 16_000);
    let encodings: Vec<(&str, Vec<u8>, f32)> = vec![
        (
            "u8.wav",
            wav(
                1,
                8,
                1,
                16_000,
                &x.iter()
                    .map(|&s| (s * 127.0 + 128.0).round() as u8)
                    .collect::<Vec<_>>(),
            ),
            1.0 / 64.0,
        ),
        (
            "s16.wav",
            wav(
                1,
                16,
                1,
                16_000,
                &x.iter()
                    .flat_map(|&s| ((s * 32767.0).round() as i16).to_le_bytes())
                    .collect::<Vec<_>>(),
            ),
            1e-4,
        ),
        (
            "s24.wav",
            wav(
                1,
                24,
                1,
                16_000,
                &x.iter()
                    .flat_map(|&s| ((s * 8_388_607.0).round() as i32).to_le_bytes()[..3].to_vec())
                    .collect::<Vec<_>>(),
            ),
            1e-6,
        ),
        (
            "s32.wav",
            wav(
                1,
                32,
                1,
                16_000,
                &x.iter()
                    .flat_map(|&s| ((s as f64 * 2_147_483_647.0).round() as i32).to_le_bytes())
                    .collect::<Vec<_>>(),
            ),
            1e-6,
        ),
        (
            "f32.wav",
            wav(
                3,
                32,
                1,
                16_000,
                &x.iter().flat_map(|&s| s.to_le_bytes()).collect::<Vec<_>>(),
            ),
            0.0,
        ),
    ];
    for (name, bytes, tol) in encodings {
        let got = load_one(&proc, &write(&dir, name, &bytes));
        let d = max(&abs_diffs(&got, &x));
        assert!(d <= tol, "{name}: max abs diff {d}");
    }
    // Stereo: the mean of the channels.
    let stereo: Vec<u8> = x
        .iter()
        .flat_map(|&s| [s, -0.5 * s])
        .flat_map(|s| s.to_le_bytes())
        .collect();
    let got = load_one(
        &proc,
        &write(&dir, "stereo.wav", &wav(3, 32, 2, 16_000, &stereo)),
    );
    let half: Vec<f32> = x.iter().map(|&s| 0.25 * s).collect();
    assert!(max(&abs_diffs(&got, &half)) < 1e-7);
}

#[test]
fn raw_samples_are_downmixed_and_resampled() {
    let proc = processor("D");
    let rate = 48_000;
    let x = tone(4800, rate);
    let interleaved: Vec<f32> = x.iter().flat_map(|&s| [s, s]).collect();
    let split = proc.clips_from_samples(&interleaved, rate, 2).unwrap();
    assert_eq!(split.clips.len(), 1);
    let clip = &split.clips[0].samples;
    assert_eq!(clip.len(), 1600);
    // 440 Hz survives the conversion: compare against the tone sampled at 16 kHz directly.
    let direct = tone(1600, 16_000);
    let d = max(&abs_diffs(&clip[100..1500], &direct[100..1500]));
    assert!(d < 1e-3, "48 kHz stereo -> 16 kHz mono differs by {d}");

    for (samples, rate, channels, needle) in [
        (vec![0.0f32; 10], 0u32, 1usize, "sample rate"),
        (vec![0.0; 10], 5_000_000, 1, "sample rate"),
        (vec![0.0; 10], 16_000, 0, "channels"),
        (vec![0.0; 10], 16_000, 1000, "channels"),
        (vec![0.0; 9], 16_000, 2, "divide"),
        (vec![], 16_000, 1, "empty"),
        (vec![0.0, f32::NAN], 16_000, 1, "finite"),
    ] {
        let err = proc
            .clips_from_samples(&samples, rate, channels)
            .unwrap_err();
        assert!(matches!(err, Error::Audio { .. }), "{err}");
        assert!(
            err.to_string().contains(needle),
            "{err:?} should mention {needle}"
        );
    }
}

fn check_covering(split: &SplitAudio, total: usize, max_clip: usize) {
    let mut pos = 0;
    for clip in &split.clips {
        assert!(!clip.samples.is_empty() && clip.samples.len() <= max_clip);
        assert!((clip.start - pos as f64 / 16_000.0).abs() < 1e-9);
        pos += clip.samples.len();
        assert!((clip.end - pos as f64 / 16_000.0).abs() < 1e-9);
    }
    assert_eq!(pos, total, "clips must cover the whole recording");
}

#[test]
fn ten_minute_file_is_split_not_rejected() {
    let proc = processor("C");
    let dir = tempdir("long");
    let rate = 16_000u32;
    let n = 600 * rate as usize;
    // Speech-like bursts: 1.3 s of tone, 0.4 s of near-silence.
    let samples: Vec<i16> = (0..n)
        .map(|i| {
            let t = i as f32 / rate as f32;
            let loud = (t % 1.7) < 1.3;
            let a = if loud { 0.4 } else { 0.001 };
            (a * (2.0 * std::f32::consts::PI * 300.0 * t).sin() * 32767.0) as i16
        })
        .collect();
    let data: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
    let path = write(&dir, "ten_minutes.wav", &wav(1, 16, 1, rate, &data));
    let split = proc.load(&path).unwrap();
    assert!(split.was_split());
    assert!((split.duration - 600.0).abs() < 1e-9);
    check_covering(&split, n, proc.max_clip_samples());
    // Cuts land in the quiet stretches.
    for clip in &split.clips[..split.clips.len() - 1] {
        assert!(
            clip.end % 1.7 >= 1.3 - 0.02,
            "cut at {:.3} s is inside a burst",
            clip.end
        );
    }
    let line = split.describe();
    assert!(
        line.contains(&format!("{} clips", split.clips.len())),
        "{line}"
    );
    // Every clip fits the prompt's audio slots once encoded.
    let feats = proc.features(&split.clone().into_samples()[..3]).unwrap();
    assert_eq!(feats.features.dim(0).unwrap(), 3);
    let model =
        gemma3n::Gemma3nConfig::from_file(&fixture_dir("C").join("model/config.json")).unwrap();
    let frames = feats.features.dim(1).unwrap();
    assert!(
        gemma3n::audio::tokens_for_frames(&model.audio_config, frames)
            <= model.audio_soft_tokens_per_image
    );
}

#[test]
fn bad_files_get_clear_errors() {
    let proc = processor("D");
    let dir = tempdir("bad");
    let good = std::fs::read(fixture_dir("D").join("audio_16k_mono.wav")).unwrap();
    let mut cases: Vec<(PathBuf, &str)> = vec![
        (write(&dir, "empty.wav", b""), "empty"),
        (
            write(
                &dir,
                "text.mp3",
                b"this is not audio at all, just some text\n"
                    .repeat(50)
                    .as_slice(),
            ),
            "not a supported audio file",
        ),
        (
            write(
                &dir,
                "noise.wav",
                &(0..4000u32)
                    .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
                    .collect::<Vec<_>>(),
            ),
            "not a supported audio file",
        ),
        (
            write(&dir, "truncated.wav", &good[..good.len() / 3]),
            "truncated",
        ),
        (write(&dir, "header_only.wav", &good[..40]), ""),
        (
            write(&dir, "no_samples.wav", &wav(1, 16, 1, 16_000, &[])),
            "no audio",
        ),
        (
            write(&dir, "rate_zero.wav", &wav(1, 16, 1, 0, &[0; 64])),
            "",
        ),
        (
            write(
                &dir,
                "rate_absurd.wav",
                &wav(1, 16, 1, 4_000_000_000, &[0; 64]),
            ),
            "",
        ),
        (
            write(&dir, "channels_zero.wav", &wav(1, 16, 0, 16_000, &[0; 64])),
            "",
        ),
        (
            write(
                &dir,
                "channels_absurd.wav",
                &wav(1, 16, 200, 16_000, &[0; 6400]),
            ),
            "",
        ),
    ];
    cases.push((dir.join("missing.wav"), "cannot open"));
    for (path, needle) in cases {
        let err = match proc.load(&path) {
            Ok(split) => panic!("{} decoded to {}", path.display(), split.describe()),
            Err(e) => e,
        };
        let Error::Audio { path: p, reason } = &err else {
            panic!("{}: wrong error kind {err:?}", path.display());
        };
        assert!(p.ends_with(path.file_name().unwrap().to_str().unwrap()));
        assert!(!reason.is_empty());
        assert!(
            reason.contains(needle),
            "{}: {reason:?} should mention {needle:?}",
            path.display()
        );
        eprintln!("{}: {reason}", path.file_name().unwrap().to_str().unwrap());
    }
}

/// From the WAV file to logits: decode, features, tower, embeddings, decoder.
fn wav_prompt_matches(variant: &str) {
    let proc = processor(variant);
    let golden = Golden::open(variant);
    let model = gemma3n::Gemma3nModel::load(
        &fixture_dir(variant).join("model"),
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let clips = proc
        .load_file(&fixture_dir(variant).join("audio_16k_mono.wav"))
        .unwrap();
    let feats = proc.features(&clips).unwrap();
    let media = gemma3n::MediaEmbeddings {
        images: None,
        audio: Some(model.encode_audio(&feats.features, &feats.mask).unwrap()),
    };
    let ids = golden.ids("audio.input_ids");
    let input = Tensor::from_vec(ids.clone(), (1, ids.len()), &Device::Cpu).unwrap();
    let logits = model
        .forward(&input, &media, &mut model.new_cache())
        .unwrap();
    let d = max(&abs_diffs(&flat(&logits), &golden.vec("audio.logits")));
    eprintln!("{variant} logits from the WAV file: max abs diff {d:.3e}");
    assert!(d <= 2e-3, "{variant}: logits differ by {d}");
}

#[test]
fn wav_prompt_matches_reference_c() {
    wav_prompt_matches("C");
}

#[test]
fn wav_prompt_matches_reference_d() {
    wav_prompt_matches("D");
}
