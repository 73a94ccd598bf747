//! The capture conversion path with synthetic sources (no device needed), and the no-device error.

use mic::{Converter, MicError, MicOptions};

fn tone(freq: f32, rate: u32, frames: usize) -> Vec<f32> {
    (0..frames)
        .map(|i| 0.5 * (2.0 * std::f32::consts::PI * freq * i as f32 / rate as f32).sin())
        .collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Feed `interleaved` in device-sized buffers of `buffer` frames.
fn convert<T>(interleaved: &[T], rate: u32, channels: usize, buffer: usize) -> Vec<f32>
where
    T: cpal::Sample,
    f32: cpal::FromSample<T>,
{
    let mut c = Converter::new(rate, channels, 60.0).unwrap();
    for chunk in interleaved.chunks(buffer * channels) {
        c.push(chunk).unwrap();
    }
    c.finish().unwrap()
}

#[test]
fn stereo_i16_48k_becomes_mono_16k() {
    let rate = 48_000;
    let left = tone(440.0, rate, 48_000);
    let interleaved: Vec<i16> = left
        .iter()
        .flat_map(|&s| {
            let v = (s * 32767.0) as i16;
            [v, v]
        })
        .collect();
    let out = convert(&interleaved, rate, 2, 480);
    assert_eq!(out.len(), 16_000);
    let expected = tone(440.0, 16_000, 16_000);
    // Away from the edges the tone is reproduced (the filter's edge ramps aside).
    let d = max_diff(&out[200..15_800], &expected[200..15_800]);
    assert!(d < 2e-3, "max diff {d}");
}

#[test]
fn buffer_sizes_do_not_change_the_result() {
    let rate = 44_100;
    let x = tone(1000.0, rate, 30_000);
    let whole = convert(&x, rate, 1, 30_000);
    let pieces = convert(&x, rate, 1, 441);
    let odd = convert(&x, rate, 1, 97);
    assert_eq!(whole.len(), (30_000u64 * 16_000).div_ceil(44_100) as usize);
    assert_eq!(whole, pieces);
    assert_eq!(whole, odd);
}

#[test]
fn formats_are_scaled_to_unit_range() {
    let x = tone(300.0, 16_000, 1600);
    let u8s: Vec<u8> = x
        .iter()
        .map(|&s| (s * 127.0 + 128.0).round() as u8)
        .collect();
    let i32s: Vec<i32> = x
        .iter()
        .map(|&s| (s as f64 * 2_147_483_647.0) as i32)
        .collect();
    let f64s: Vec<f64> = x.iter().map(|&s| s as f64).collect();
    // 16 kHz input passes through without resampling.
    assert!(max_diff(&convert(&u8s, 16_000, 1, 160), &x) < 1.0 / 64.0);
    assert!(max_diff(&convert(&i32s, 16_000, 1, 160), &x) < 1e-6);
    assert_eq!(convert(&f64s, 16_000, 1, 160), x);
}

#[test]
fn channels_are_averaged() {
    let interleaved = [0.5f32, -0.5, 0.25, 0.75, 1.0, 0.0];
    assert_eq!(convert(&interleaved, 16_000, 2, 10), vec![0.0, 0.5, 0.5]);
}

#[test]
fn level_and_maximum_length() {
    let mut c = Converter::new(16_000, 1, 0.5).unwrap();
    let quiet = vec![0.01f32; 1600];
    let loud: Vec<f32> = (0..1600)
        .map(|i| if i % 2 == 0 { 0.8 } else { -0.8 })
        .collect();
    let l1 = c.push(&quiet).unwrap();
    let l2 = c.push(&loud).unwrap();
    assert!((l1.rms - 0.01).abs() < 1e-6 && (l1.peak - 0.01).abs() < 1e-6);
    assert!((l2.rms - 0.8).abs() < 1e-6 && (l2.peak - 0.8).abs() < 1e-6);
    assert!((l2.seconds - 0.2).abs() < 1e-9);
    assert!(!c.is_full());
    for _ in 0..10 {
        c.push(&loud).unwrap();
    }
    assert!(c.is_full());
    assert_eq!(c.seconds(), 0.5);
    assert_eq!(c.finish().unwrap().len(), 8000);
}

#[test]
fn bad_converter_settings_are_rejected() {
    assert!(matches!(
        Converter::new(0, 1, 1.0),
        Err(MicError::Convert(_))
    ));
    assert!(matches!(
        Converter::new(16_000, 0, 1.0),
        Err(MicError::Convert(_))
    ));
    assert!(matches!(
        Converter::new(16_000, 1, 0.0),
        Err(MicError::Convert(_))
    ));
    assert!(matches!(
        Converter::new(16_000, 1, f64::NAN),
        Err(MicError::Convert(_))
    ));
}

#[test]
fn unknown_device_is_named_in_the_error() {
    let options = MicOptions {
        device: Some("no such microphone 4711".into()),
        ..MicOptions::default()
    };
    match mic::record(&options, |_| {}) {
        Err(MicError::DeviceNotFound { name, .. }) => assert_eq!(name, "no such microphone 4711"),
        Err(e) => panic!("expected DeviceNotFound, got {e}"),
        Ok(_) => panic!("a device with that name cannot exist"),
    }
}

/// On machines without any capture hardware (CI), the default device gives a clear error, not a
/// panic or a silent empty recording.
#[test]
fn missing_default_device_is_a_clear_error() {
    use cpal::traits::HostTrait;
    let has_hardware = !mic::input_device_names().unwrap_or_default().is_empty()
        && cpal::default_host().default_input_device().is_some();
    match mic::record(&MicOptions::default(), |_| {}) {
        Ok(recorder) => {
            assert!(has_hardware, "recording started without an input device");
            drop(recorder);
        }
        Err(e @ (MicError::NoInputDevice | MicError::Device { .. })) => {
            let text = e.to_string();
            assert!(
                text.starts_with("no microphone") || text.starts_with("microphone "),
                "{text}"
            );
        }
        Err(e) => panic!("unexpected error {e}"),
    }
}
