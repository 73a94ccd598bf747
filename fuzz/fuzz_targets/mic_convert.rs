//! The recorder's conversion of captured buffers: a device format (rate, channels, sample type,
//! maximum length) from the input's first bytes, then the rest of the input as a sequence of
//! buffers of that sample type, converted to 16 kHz mono and finished.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mic::Converter;

/// Split `bytes` into buffers of whole samples of `width` bytes, each buffer's length (in
/// samples) taken from its first byte, and push them.
fn push_all<T, const W: usize>(
    converter: &mut Converter,
    mut bytes: &[u8],
    decode: fn([u8; W]) -> T,
) -> bool
where
    T: cpal::Sample,
    f32: cpal::FromSample<T>,
{
    while let Some((&len, rest)) = bytes.split_first() {
        let take = (len as usize * W).min(rest.len() / W * W);
        let samples: Vec<T> = rest[..take]
            .chunks_exact(W)
            .map(|c| decode(c.try_into().expect("chunks of W bytes")))
            .collect();
        if converter.push(&samples).is_err() {
            return false;
        }
        bytes = &rest[take..];
    }
    true
}

fuzz_target!(|data: &[u8]| {
    let Some((header, body)) = data.split_first_chunk::<8>() else {
        return;
    };
    let rate = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let channels = header[4] as usize;
    let format = header[5];
    let max_seconds = u16::from_le_bytes([header[6], header[7]]) as f64 / 100.0;
    let Ok(mut converter) = Converter::new(rate, channels, max_seconds) else {
        return;
    };
    let pushed = match format % 4 {
        0 => push_all(&mut converter, body, f32::from_le_bytes),
        1 => push_all(&mut converter, body, i16::from_le_bytes),
        2 => push_all(&mut converter, body, i32::from_le_bytes),
        _ => push_all(&mut converter, body, u8::from_le_bytes),
    };
    if pushed {
        let _ = converter.finish();
    }
});
