//! Sample-rate conversion with a long windowed-sinc filter.
//!
//! The reference resamples with soxr "HQ"; the top mel bins (up to 7.6 kHz of the 8 kHz Nyquist
//! frequency) only survive a filter whose passband reaches close to Nyquist, so the filter is long
//! (512 taps) with rubato's matching cutoff (≈0.97), not rubato's shorter default.

use rubato::{FftFixedInOut, Resampler};

/// Input frames per processing block (at least); the anti-aliasing filter spans one block, so
/// this also sets the filter length and how close to Nyquist its cutoff can be.
const CHUNK: usize = 2048;

/// `input` at `from` Hz to `to` Hz; the output has `ceil(len * to / from)` samples and no delay.
pub fn resample(input: &[f32], from: u32, to: u32) -> Result<Vec<f32>, String> {
    if from == to {
        return Ok(input.to_vec());
    }
    // rubato centres its filter on sample `len / 2` of a block of `k * from/gcd` inputs; with
    // `k` even that is a whole number of output samples, so the delay can be removed exactly.
    let period = (from / gcd(from, to)) as usize;
    let chunk = 2 * period * CHUNK.div_ceil(2 * period);
    let mut resampler = FftFixedInOut::<f64>::new(from as usize, to as usize, chunk, 1)
        .map_err(|e| format!("cannot resample {from} Hz to {to} Hz: {e}"))?;
    let wanted = (input.len() as u64 * to as u64).div_ceil(from as u64) as usize;
    let delay = resampler.output_delay();
    let n = resampler.input_frames_next();
    let mut out: Vec<f64> = Vec::with_capacity(wanted + delay + 2 * n);
    let mut block = vec![vec![0f64; n]];
    let mut pos = 0;
    // Whole blocks of input, then zero-padded blocks until the delayed tail is out.
    while out.len() < wanted + delay {
        let take = input.len().saturating_sub(pos).min(n);
        for (dst, src) in block[0].iter_mut().zip(input[pos..pos + take].iter()) {
            *dst = *src as f64;
        }
        block[0][take..].fill(0.0);
        pos += take;
        let produced = resampler
            .process(&block, None)
            .map_err(|e| format!("resampling failed: {e}"))?;
        out.extend_from_slice(&produced[0]);
    }
    Ok(out[delay..delay + wanted]
        .iter()
        .map(|&s| s as f32)
        .collect())
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

    #[test]
    fn impulse_stays_in_place_without_delay() {
        for (from, to) in [
            (48_000u32, 16_000u32),
            (44_100, 16_000),
            (8_000, 16_000),
            (22_050, 16_000),
        ] {
            let mut x = vec![0f32; from as usize];
            x[from as usize / 2] = 1.0;
            let y = resample(&x, from, to).unwrap();
            assert_eq!(y.len(), to as usize);
            let mid = to as usize / 2;
            let peak = (0..y.len()).max_by(|&a, &b| y[a].total_cmp(&y[b])).unwrap();
            assert_eq!(peak, mid, "{from} -> {to}");
            assert!(
                (y[mid - 1] - y[mid + 1]).abs() < 1e-6,
                "{from} -> {to}: asymmetric"
            );
        }
    }

    #[test]
    fn output_length_rounds_up() {
        assert_eq!(resample(&[0.1; 441], 44_100, 16_000).unwrap().len(), 160);
        assert_eq!(resample(&[0.1; 442], 44_100, 16_000).unwrap().len(), 161);
        assert_eq!(resample(&[0.1; 3], 48_000, 16_000).unwrap().len(), 1);
    }
}
