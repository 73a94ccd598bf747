//! Row quantisers for packing weights at load time.
//!
//! Candle's `GgmlType::from_float` ports ggml's reference quantisers: scalar code that, for the
//! k-quants, searches several candidate scales per sub-block, which made quantising E2B at load
//! take minutes.  These write the same block layouts (what candle's dot products and
//! dequantisers read) in one pass per block with loops the compiler vectorises: q8_0 as ggml does
//! it, the k-quants with plain min/max (or max-abs) scales instead of the search, which costs a
//! little accuracy (see the tests) and none of the speed of the kernels that read them.

use candle_core::quantized::k_quants::{BlockQ4K, BlockQ4_0, BlockQ6K, BlockQ8_0, GgmlType};
use half::{bf16, f16};

use crate::blocks::{view, Q4K};
use crate::cpu::multiversion;

/// A block type that can be filled from f32 rows.
pub(crate) trait Quantise: GgmlType {
    /// `src.len() == dst.len() * Self::BLCK_SIZE`.
    fn quantise(src: &[f32], dst: &mut [Self]) {
        Self::from_float(src, dst)
    }
}

impl Quantise for bf16 {}
impl Quantise for BlockQ4_0 {}

const Q4K_BYTES: usize = 144;
const Q6K_BYTES: usize = 210;
const _: () = assert!(std::mem::size_of::<BlockQ4K>() == Q4K_BYTES);
const _: () = assert!(std::mem::size_of::<BlockQ6K>() == Q6K_BYTES);

/// The bytes of a slice of ggml blocks (`repr(C)` structs of integers and f16s, no padding: the
/// size assertions above pin each layout).
#[inline(always)]
fn block_bytes<T: GgmlType>(blocks: &mut [T]) -> &mut [u8] {
    // SAFETY: every byte pattern is a valid block, and the slice covers exactly the blocks.
    unsafe {
        std::slice::from_raw_parts_mut(
            blocks.as_mut_ptr() as *mut u8,
            std::mem::size_of_val(blocks),
        )
    }
}

#[inline(always)]
pub(crate) fn inverse(d: f32) -> f32 {
    if d > 0.0 {
        1.0 / d
    } else {
        0.0
    }
}

/// Round to nearest (ties to even) for |v| < 2²², by adding 1.5·2²³ so the integer lands in the
/// mantissa bits: plain float and integer arithmetic that vectorises, where the saturating
/// float-to-int casts do not.  Callers' values are bounded by their scales.
#[inline(always)]
pub(crate) fn nearest(v: f32) -> i32 {
    const MAGIC: f32 = 12_582_912.0;
    (v + MAGIC).to_bits() as i32 - MAGIC.to_bits() as i32
}

/// Largest magnitude of a block.  Non-negative floats order like their bit patterns, and an
/// integer maximum vectorises where a float one (NaN rules) does not.
#[inline(always)]
pub(crate) fn max_abs(xs: &[f32]) -> f32 {
    f32::from_bits(
        xs.iter()
            .map(|v| v.to_bits() & 0x7fff_ffff)
            .max()
            .unwrap_or(0),
    )
}

/// An integer that orders like the float `v` (negative floats have their magnitude bits flipped),
/// so block minima and maxima are integer reductions, which vectorise.
#[inline(always)]
fn to_ordered(v: f32) -> i32 {
    let b = v.to_bits() as i32;
    b ^ ((b >> 31) & 0x7fff_ffff)
}

#[inline(always)]
fn from_ordered(o: i32) -> f32 {
    f32::from_bits((o ^ ((o >> 31) & 0x7fff_ffff)) as u32)
}

impl Quantise for BlockQ8_0 {
    /// ggml's q8_0, as activations are quantised.
    fn quantise(src: &[f32], dst: &mut [Self]) {
        crate::dot::quantise_q8_0(src, crate::blocks::view_mut(dst))
    }
}

impl Quantise for BlockQ4K {
    fn quantise(src: &[f32], dst: &mut [Self]) {
        quantise_q4k(src, dst)
    }
}

multiversion! {
    /// 256 values in 8 sub-blocks of 32, each `x ≈ d·sc·q − dmin·m` with 4-bit `q` and 6-bit
    /// `sc`, `m`; the sub-block range [min(x, 0), max(x)] sets `sc` and `m`.
    fn quantise_q4k(src: &[f32], dst: &mut [BlockQ4K]) {
        for (x, out) in src
            .chunks_exact(256)
            .zip(block_bytes(dst).chunks_exact_mut(Q4K_BYTES))
        {
            let mut scale = [0f32; 8];
            let mut offset = [0f32; 8];
            for (s, sub) in x.chunks_exact(32).enumerate() {
                let lo = from_ordered(sub.iter().map(|&v| to_ordered(v)).fold(0, i32::min));
                let hi = from_ordered(sub.iter().map(|&v| to_ordered(v)).fold(i32::MIN, i32::max));
                scale[s] = (hi - lo) / 15.0;
                offset[s] = -lo;
            }
            let d = f16::from_f32(scale.iter().fold(0f32, |a, &v| a.max(v)) / 63.0);
            let dmin = f16::from_f32(offset.iter().fold(0f32, |a, &v| a.max(v)) / 63.0);
            let (id, idmin) = (inverse(d.to_f32()), inverse(dmin.to_f32()));
            // A sub-block with any spread keeps a scale of at least 1.
            let ls = scale.map(|v| (v * id).round().clamp((v > 0.0) as u8 as f32, 63.0) as u8);
            let lm = offset.map(|v| (v * idmin).round().min(63.0) as u8);

            out[0..2].copy_from_slice(&d.to_le_bytes());
            out[2..4].copy_from_slice(&dmin.to_le_bytes());
            let (scales, qs) = out[4..].split_at_mut(12);
            scales.fill(0);
            for j in 0..4 {
                scales[j] = ls[j] | ((ls[j + 4] >> 4) << 6);
                scales[j + 4] = lm[j] | ((lm[j + 4] >> 4) << 6);
                scales[j + 8] = (ls[j + 4] & 0xF) | ((lm[j + 4] & 0xF) << 4);
            }
            // Quantised with the scales as stored, so rounding them costs nothing twice.
            let step = ls.map(|l| inverse(d.to_f32() * l as f32));
            let shift = lm.map(|m| dmin.to_f32() * m as f32);
            let quant = |s: usize, l: usize| {
                nearest((x[s * 32 + l] + shift[s]) * step[s]).clamp(0, 15) as u8
            };
            // Sub-blocks 2i and 2i+1 share 32 bytes: low and high nibbles.
            for (pair, q) in qs.chunks_exact_mut(32).enumerate() {
                for (l, byte) in q.iter_mut().enumerate() {
                    *byte = quant(2 * pair, l) | (quant(2 * pair + 1, l) << 4);
                }
            }
        }
    }
}

multiversion! {
    /// Q4_K blocks widened to f32, the same values as candle's `to_float` (same operations, in
    /// the same order) with loops that vectorise: candle's widens the high nibbles one at a time,
    /// and widening is a tenth of a q4k prefill.
    pub(crate) fn widen_q4k(blocks: &[BlockQ4K], out: &mut [f32]) {
        assert_eq!(out.len(), blocks.len() * 256, "widening Q4_K");
        for (b, y) in view::<_, Q4K>(blocks).iter().zip(out.chunks_exact_mut(256)) {
            let (d, dmin) = (b.d.to_f32(), b.dmin.to_f32());
            for (pair, (q, y)) in b.qs.chunks_exact(32).zip(y.chunks_exact_mut(64)).enumerate() {
                let (sc_lo, m_lo) = b.scale_min(2 * pair);
                let (sc_hi, m_hi) = b.scale_min(2 * pair + 1);
                let (d_lo, min_lo) = (d * sc_lo as f32, dmin * m_lo as f32);
                let (d_hi, min_hi) = (d * sc_hi as f32, dmin * m_hi as f32);
                let (lo, hi) = y.split_at_mut(32);
                for ((lo, hi), &q) in lo.iter_mut().zip(hi).zip(q) {
                    *lo = d_lo * (q & 0xF) as f32 - min_lo;
                    *hi = d_hi * (q >> 4) as f32 - min_hi;
                }
            }
        }
    }
}

impl Quantise for BlockQ6K {
    fn quantise(src: &[f32], dst: &mut [Self]) {
        quantise_q6k(src, dst)
    }
}

multiversion! {
    /// 256 values in 16 sub-blocks of 16, each `x ≈ d·sc·(q − 32)` with 6-bit `q` and an 8-bit
    /// signed `sc` set by the sub-block's largest magnitude.
    fn quantise_q6k(src: &[f32], dst: &mut [BlockQ6K]) {
        for (x, out) in src
            .chunks_exact(256)
            .zip(block_bytes(dst).chunks_exact_mut(Q6K_BYTES))
        {
            let mut scale = [0f32; 16];
            for (s, sub) in x.chunks_exact(16).enumerate() {
                scale[s] = max_abs(sub) / 31.0;
            }
            let d = f16::from_f32(scale.iter().fold(0f32, |a, &v| a.max(v)) / 127.0);
            let id = inverse(d.to_f32());
            let sc = scale.map(|v| (v * id).round().clamp((v > 0.0) as u8 as f32, 127.0) as i8);
            let mut q = [0u8; 256];
            for (s, chunk) in q.chunks_exact_mut(16).enumerate() {
                let step = inverse(d.to_f32() * sc[s] as f32);
                for (qv, v) in chunk.iter_mut().zip(&x[s * 16..]) {
                    *qv = (nearest(v * step).clamp(-32, 31) + 32) as u8;
                }
            }

            let (ql, rest) = out.split_at_mut(128);
            let (qh, rest) = rest.split_at_mut(64);
            let (scales, dbytes) = rest.split_at_mut(16);
            for (dst, s) in scales.iter_mut().zip(sc) {
                *dst = s as u8;
            }
            dbytes.copy_from_slice(&d.to_le_bytes());
            // Each half of 128 values: ql holds the low nibbles of values l, l+64 (bytes 0..32)
            // and l+32, l+96 (bytes 32..64), qh the high 2 bits of all four.
            for half in 0..2 {
                let q = &q[half * 128..];
                let ql = &mut ql[half * 64..];
                let qh = &mut qh[half * 32..];
                for l in 0..32 {
                    let (q1, q2, q3, q4) = (q[l], q[l + 32], q[l + 64], q[l + 96]);
                    ql[l] = (q1 & 0xF) | ((q3 & 0xF) << 4);
                    ql[l + 32] = (q2 & 0xF) | ((q4 & 0xF) << 4);
                    qh[l] = (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6);
                }
            }
        }
    }
}

/// Deterministic, roughly normal test values (a sum of four uniform draws, xorshift).
#[cfg(test)]
pub(crate) fn normal(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            let mut acc = 0.0;
            for _ in 0..4 {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                acc += (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
            }
            acc
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic, roughly normal values with a few outliers, like trained weights.
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut v = normal(n, seed);
        for x in v.iter_mut().step_by(97) {
            *x *= 6.0;
        }
        v
    }

    /// Root-mean-square error of `quantise` then candle's `to_float`.
    fn rms_error<T: GgmlType>(x: &[f32], quantise: fn(&[f32], &mut [T])) -> f32 {
        let mut blocks = vec![T::zeros(); x.len() / T::BLCK_SIZE];
        quantise(x, &mut blocks);
        let mut back = vec![0f32; x.len()];
        T::to_float(&blocks, &mut back);
        let sq: f32 = x.iter().zip(&back).map(|(a, b)| (a - b) * (a - b)).sum();
        (sq / x.len() as f32).sqrt()
    }

    #[test]
    fn q4k_widens_exactly_as_candle() {
        let x = values(256 * 16, 7);
        let mut blocks = vec![BlockQ4K::zeros(); 16];
        BlockQ4K::quantise(&x, &mut blocks);
        let (mut ours, mut candle) = (vec![0f32; x.len()], vec![0f32; x.len()]);
        widen_q4k(&blocks, &mut ours);
        BlockQ4K::to_float(&blocks, &mut candle);
        assert!(ours
            .iter()
            .zip(&candle)
            .all(|(a, b)| a.to_bits() == b.to_bits()));
    }

    /// Ours against candle's reference quantiser on the same values, read back by candle.
    fn compare<T: Quantise>(max_ratio: f32) {
        for seed in 1..4 {
            let x = values(256 * 64, seed);
            let ours = rms_error::<T>(&x, T::quantise);
            let reference = rms_error::<T>(&x, T::from_float);
            assert!(
                ours <= max_ratio * reference,
                "{:?}: rms error {ours} vs candle's {reference}",
                T::DTYPE
            );
        }
    }

    #[test]
    fn q8_0_matches_the_reference() {
        compare::<BlockQ8_0>(1.01);
    }

    #[test]
    fn q4k_is_close_to_the_reference() {
        compare::<BlockQ4K>(1.3);
    }

    #[test]
    fn q6k_is_close_to_the_reference() {
        compare::<BlockQ6K>(1.3);
    }

    #[test]
    fn nearest_rounds_half_to_even() {
        for (v, want) in [
            (0.4, 0),
            (0.5, 0),
            (1.5, 2),
            (-1.5, -2),
            (-0.6, -1),
            (126.7, 127),
        ] {
            assert_eq!(nearest(v), want, "{v}");
        }
    }

    #[test]
    fn zero_and_constant_blocks_round_trip() {
        for x in [vec![0f32; 256], vec![0.5f32; 256], vec![-2.0f32; 256]] {
            assert!(rms_error::<BlockQ8_0>(&x, BlockQ8_0::quantise) < 1e-2);
            assert!(rms_error::<BlockQ4K>(&x, BlockQ4K::quantise) < 2e-2);
            assert!(rms_error::<BlockQ6K>(&x, BlockQ6K::quantise) < 2e-2);
        }
    }
}
