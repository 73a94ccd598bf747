//! Activation functions and element-wise passes written so that loops over them vectorise (the
//! standard library's `tanh` is a scalar call: it took an eighth of a prefill's time in the
//! decoder's MLPs); each pass is compiled once per level ([`crate::cpu`]).

use crate::cpu::multiversion;

multiversion! {
    /// `x ← cap · tanh(x / cap)`, the logit soft-cap.
    pub fn softcap(xs: &mut [f32], cap: f32) {
        let inv = 1.0 / cap;
        xs.iter_mut().for_each(|v| *v = cap * tanh(*v * inv));
    }
}

multiversion! {
    /// `x ← gelu(x) · y` (tanh approximation).
    pub fn gelu_mul(xs: &mut [f32], ys: &[f32]) {
        assert_eq!(xs.len(), ys.len(), "gelu_mul operands");
        xs.iter_mut().zip(ys).for_each(|(x, y)| *x = gelu_tanh(*x) * y);
    }
}

/// `Σ x²` with independent partial sums, so that the loop vectorises (a single running sum must
/// keep its order and stays scalar).
#[inline(always)]
fn squares(xs: &[f32]) -> f32 {
    const LANES: usize = 16;
    let mut acc = [0f32; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().map(|v| v * v).sum();
    for c in chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += v * v;
        }
    }
    acc.iter().sum::<f32>() + tail
}

multiversion! {
    /// `Σ x²`.
    pub fn sum_of_squares(xs: &[f32]) -> f32 {
        squares(xs)
    }
}

multiversion! {
    /// RMS norm of each row of `x` (rows of `weight.len()`), scaled by `weight`:
    /// `out = x / sqrt(mean(x²) + eps) · weight`.
    pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
        let dim = weight.len();
        assert!(x.len() == out.len() && x.len().is_multiple_of(dim.max(1)), "rms_norm shapes");
        for (x, out) in x.chunks_exact(dim).zip(out.chunks_exact_mut(dim)) {
            let mean = squares(x) / dim as f32;
            let scale = 1.0 / (mean + eps).sqrt();
            for ((o, v), w) in out.iter_mut().zip(x).zip(weight) {
                *o = v * scale * w;
            }
        }
    }
}

/// `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))` with a branch-free tanh that vectorises.
#[inline(always)]
pub fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    0.5 * x * (1.0 + tanh(SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x)))
}

/// `tanh(z) = sign(z)·(1 − 2 / (e^{2|z|} + 1))`; beyond |z| = 10 tanh is 1 in f32.  Absolute
/// error below 2e-7.
#[inline(always)]
pub fn tanh(z: f32) -> f32 {
    let a = z.abs().min(10.0);
    let t = 1.0 - 2.0 / (exp_non_negative(2.0 * a) + 1.0);
    t.copysign(z)
}

/// `e^x` for `0 ≤ x ≤ 20`: `2^n · e^r` with `|r| ≤ ln2/2` and a degree-7 Taylor polynomial
/// (relative error about 1e-8, below f32 rounding).
#[inline(always)]
fn exp_non_negative(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Truncation is rounding to nearest here because x ≥ 0.
    let n = (x * LOG2_E + 0.5) as i32;
    let nf = n as f32;
    let r = (x - nf * LN2_HI) - nf * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    p * f32::from_bits(((n + 127) as u32) << 23)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_match_plain_arithmetic() {
        let x: Vec<f32> = (0..1003)
            .map(|i| ((i * 37 % 200) as f32 - 100.0) * 0.05)
            .collect();
        let y: Vec<f32> = x.iter().map(|v| 1.0 - v * 0.3).collect();
        let mut capped = x.clone();
        softcap(&mut capped, 3.0);
        let mut gated = x.clone();
        gelu_mul(&mut gated, &y);
        for i in 0..x.len() {
            assert!((capped[i] - 3.0 * (x[i] / 3.0).tanh()).abs() < 1e-5);
            let gelu =
                0.5 * x[i] * (1.0 + (0.797_884_6 * (x[i] + 0.044_715 * x[i].powi(3))).tanh());
            assert!((gated[i] - gelu * y[i]).abs() < 1e-5);
        }
        let squares: f64 = x.iter().map(|v| (*v as f64).powi(2)).sum();
        assert!((sum_of_squares(&x) as f64 - squares).abs() < 1e-4 * squares);
        let (dim, w) = (
            17,
            (0..17).map(|i| 0.5 + i as f32 * 0.1).collect::<Vec<_>>(),
        );
        let rows = &x[..dim * 59];
        let mut out = vec![0f32; rows.len()];
        rms_norm(rows, &w, 1e-6, &mut out);
        for (r, row) in rows.chunks(dim).enumerate() {
            let ms = row.iter().map(|v| v * v).sum::<f32>() / dim as f32;
            for c in 0..dim {
                let want = row[c] / (ms + 1e-6).sqrt() * w[c];
                assert!((out[r * dim + c] - want).abs() < 1e-5 * (1.0 + want.abs()));
            }
        }
    }

    #[test]
    fn fast_tanh_matches_std() {
        let mut worst = 0f32;
        for i in -200_000..=200_000 {
            let z = i as f32 * 1e-4;
            worst = worst.max((tanh(z) - z.tanh()).abs());
        }
        assert!(worst < 3e-7, "max error {worst}");
        assert_eq!(tanh(50.0), 1.0);
        assert_eq!(tanh(-50.0), -1.0);
    }
}
