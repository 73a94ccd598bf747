//! Dot products of packed weight blocks with quantised activations, one version per
//! [`Level`], chosen at each call from [`cpu::level`].
//!
//! Each weight format meets its companion activation format: q8_0 and q4_0 weights meet q8_0
//! activations, the k-quants meet [`Q8K`].  The integer sums of a block are exact at every level;
//! The float terms of the blocks are then summed in vector lanes (a horizontal sum per block costs
//! more than the block's own work), which differs from the reference by float rounding only
//! (tests bound it at 1e-5 of the sum of the block terms' magnitudes).

use half::{bf16, f16};

use crate::blocks::{Q4K, Q4_0, Q6K, Q8K, Q8_0};
use crate::cpu::{self, multiversion, Level};
use crate::quantise::{inverse, max_abs, nearest};

impl Q8K {
    pub const ZERO: Q8K = Q8K {
        d: 0.0,
        qs: [0; 256],
        bsums: [0; 16],
    };
}

impl Q8_0 {
    pub const ZERO: Q8_0 = Q8_0 {
        d: f16::ZERO,
        qs: [0; 32],
    };
}

multiversion! {
    /// Activations as [`Q8K`] blocks: `q = round(x / d)` in [−127, 127] with `d = max|x| / 127`
    /// per 256 values, and the sums of each 16.  `x.len() == out.len() · 256`.
    pub fn quantise_q8k(x: &[f32], out: &mut [Q8K]) {
        assert_eq!(x.len(), out.len() * 256, "quantising activations to Q8_K");
        for (x, b) in x.chunks_exact(256).zip(out.iter_mut()) {
            let d = max_abs(x) / 127.0;
            let id = inverse(d);
            b.d = d;
            for (q, v) in b.qs.iter_mut().zip(x) {
                *q = nearest(v * id) as i8;
            }
            for (s, q) in b.bsums.iter_mut().zip(b.qs.chunks_exact(16)) {
                *s = q.iter().map(|&v| v as i16).sum();
            }
        }
    }
}

multiversion! {
    /// Activations as [`Q8_0`] blocks (ggml's q8_0: `d = max|x| / 127` per 32 values).
    pub fn quantise_q8_0(x: &[f32], out: &mut [Q8_0]) {
        assert_eq!(x.len(), out.len() * 32, "quantising activations to Q8_0");
        for (x, b) in x.chunks_exact(32).zip(out.iter_mut()) {
            let d = max_abs(x) / 127.0;
            let id = inverse(d);
            b.d = f16::from_f32(d);
            for (q, v) in b.qs.iter_mut().zip(x) {
                *q = nearest(v * id) as i8;
            }
        }
    }
}

/// The most activation rows a prefill micro-kernel takes per call.
pub const MAX_ROWS: usize = 8;

/// A prefill micro-kernel: one weight row against as many activation rows as it takes (`x`),
/// one result per row in `out`.
type RowKernel<W, A> = fn(&[W], &[&[A]], &mut [f32]);

/// One weight format's kernels at the level in use: the quantiser of its companion activation
/// blocks `A` (laid out as these kernels read them), the one-row dot product, and the prefill
/// micro-kernel (one weight row against a few activation rows, each weight block unpacked once
/// for all of them) where the level has one.  The integer sums are exact; the kernels
/// differ from [`scalar`] by float rounding only.
#[derive(Clone, Copy)]
pub struct Kernels<W: 'static, A: 'static> {
    quantise: fn(&[f32], &mut [A]),
    /// Rearranges a block from ggml's layout into the one `dot` and `rows` read, where they
    /// differ.
    arrange: Option<fn(&mut A)>,
    dot: fn(&[W], &[A]) -> f32,
    /// The micro-kernel and how many activation rows it takes.
    rows: Option<(usize, RowKernel<W, A>)>,
}

impl<W, A> Kernels<W, A> {
    /// Activations `x` (`out.len()` blocks' worth) as these kernels read them.
    pub fn quantise(&self, x: &[f32], out: &mut [A]) {
        (self.quantise)(x, out);
        self.arrange(out);
    }

    /// Blocks already in ggml's layout, made ready for these kernels.
    pub fn arrange(&self, blocks: &mut [A]) {
        if let Some(arrange) = self.arrange {
            blocks.iter_mut().for_each(arrange);
        }
    }

    /// `Σ w·x` over one row of blocks.
    pub fn dot(&self, w: &[W], x: &[A]) -> f32 {
        debug_assert_eq!(w.len(), x.len());
        (self.dot)(w, x)
    }

    /// How many activation rows the micro-kernel takes; `None` where the level has none
    /// (below AVX2, where the widened f32 matrix product is the faster prefill).
    pub fn row_group(&self) -> Option<usize> {
        self.rows.map(|(group, _)| group)
    }

    /// One weight row against [`Kernels::row_group`] activation rows `x`, into `out`.
    pub fn rows(&self, w: &[W], x: &[&[A]], out: &mut [f32]) {
        let (group, rows) = self.rows.expect("a level with row kernels");
        assert!(x.len() == group && out.len() == group);
        debug_assert!(x.iter().all(|x| x.len() == w.len()));
        rows(w, x, out)
    }
}

/// The 512-bit integer kernels run where the level has AVX-512 with VNNI.
#[cfg(target_arch = "x86_64")]
fn wide() -> bool {
    cpu::has_avx512_vnni()
}

#[cfg(target_arch = "x86_64")]
fn avx2() -> bool {
    cpu::level() >= Level::Avx2
}

/// Safe entry points to the `#[target_feature]` kernels, for the [`Kernels`] tables: each is
/// put in a table only at a level that has its features.
#[cfg(target_arch = "x86_64")]
mod entry {
    use super::*;

    macro_rules! entries {
        ($($name:ident = $module:ident::$kernel:ident<$w:ty, $a:ty>;)*) => {$(
            pub fn $name(w: &[$w], x: &[$a]) -> f32 {
                // SAFETY: tabled only where the CPU has the module's features.
                unsafe { $module::$kernel::<1>(w, [x])[0] }
            }
        )*};
    }
    macro_rules! row_entries {
        ($($name:ident = $module:ident::$kernel:ident<$w:ty, $a:ty, $rows:literal>;)*) => {$(
            pub fn $name(w: &[$w], x: &[&[$a]], out: &mut [f32]) {
                let x: [&[$a]; $rows] = x.try_into().expect("the kernel's row count");
                // SAFETY: as above.
                out.copy_from_slice(&unsafe { $module::$kernel::<$rows>(w, x) });
            }
        )*};
    }
    entries! {
        q8_0_avx2 = avx2::q8_0_rows<Q8_0, Q8_0>;
        q4_0_avx2 = avx2::q4_0_rows<Q4_0, Q8_0>;
        q4k_avx2 = avx2::q4k_rows<Q4K, Q8K>;
        q6k_avx2 = avx2::q6k_rows<Q6K, Q8K>;
        q8_0_avx512 = avx512::q8_0_rows<Q8_0, Q8_0>;
        q4k_avx512 = avx512::q4k_rows<Q4K, Q8K>;
        q6k_avx512 = avx512::q6k_rows<Q6K, Q8K>;
    }
    // Four rows fill AVX2's sixteen registers; AVX-512's 32 take eight (measured on Zen 5:
    // eight rows are 10 % faster at AVX-512 and 10 % slower at AVX2).
    row_entries! {
        q4k_rows_avx2 = avx2::q4k_rows<Q4K, Q8K, 4>;
        q6k_rows_avx2 = avx2::q6k_rows<Q6K, Q8K, 4>;
        q4k_rows_avx512 = avx512::q4k_rows<Q4K, Q8K, 8>;
        q6k_rows_avx512 = avx512::q6k_rows<Q6K, Q8K, 8>;
    }
}

/// q8_0 weights against q8_0 activations; no row kernel: for prefill, the widened f32 matrix
/// product measured faster than integer rows of these 32-value blocks (1.6× at AVX-512 on Zen 5).
pub fn q8_0_kernels() -> Kernels<Q8_0, Q8_0> {
    let mut k = Kernels {
        quantise: quantise_q8_0,
        arrange: None,
        dot: scalar::q8_0,
        rows: None,
    };
    #[cfg(target_arch = "x86_64")]
    if wide() {
        k.dot = entry::q8_0_avx512;
    } else if avx2() {
        k.dot = entry::q8_0_avx2;
    }
    k
}

/// q4_0 weights against q8_0 activations (decode only: GGUF files rarely hold them).
pub fn q4_0_kernels() -> Kernels<Q4_0, Q8_0> {
    let mut k = Kernels {
        quantise: quantise_q8_0,
        arrange: None,
        dot: scalar::q4_0,
        rows: None,
    };
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        k.dot = entry::q4_0_avx2;
    }
    k
}

/// Q4_K weights against Q8_K activations.  The 512-bit kernels read the activations' 32-value
/// sub-blocks in the order 0, 2, 1, 3, 4, 6, 5, 7 ([`pair_sub_blocks`]), so that one 64-byte
/// load meets the low (or high) nibbles of 64 bytes of quants.
pub fn q4k_kernels() -> Kernels<Q4K, Q8K> {
    let mut k = Kernels {
        quantise: quantise_q8k,
        arrange: None,
        dot: scalar::q4k,
        rows: None,
    };
    #[cfg(target_arch = "x86_64")]
    if wide() {
        k.arrange = Some(pair_sub_blocks);
        k.dot = entry::q4k_avx512;
        k.rows = Some((8, entry::q4k_rows_avx512));
    } else if avx2() {
        k.dot = entry::q4k_avx2;
        k.rows = Some((4, entry::q4k_rows_avx2));
    }
    k
}

/// Q6_K weights against Q8_K activations.
pub fn q6k_kernels() -> Kernels<Q6K, Q8K> {
    let mut k = Kernels {
        quantise: quantise_q8k,
        arrange: None,
        dot: scalar::q6k,
        rows: None,
    };
    #[cfg(target_arch = "x86_64")]
    if wide() {
        k.dot = entry::q6k_avx512;
        k.rows = Some((8, entry::q6k_rows_avx512));
    } else if avx2() {
        k.dot = entry::q6k_avx2;
        k.rows = Some((4, entry::q6k_rows_avx2));
    }
    k
}

/// Swaps sub-blocks 1 and 2, and 5 and 6, of a Q8_K block (the order [`q4k_kernels`]' 512-bit
/// kernels read); the 16-value sums stay in ggml's order.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
fn pair_sub_blocks(b: &mut Q8K) {
    for first in [32, 160] {
        let (one, two) = b.qs[first..first + 64].split_at_mut(32);
        one.swap_with_slice(two);
    }
}

/// `Σ w·x` with bf16 `w` widened exactly.
pub fn bf16_f32(w: &[bf16], x: &[f32]) -> f32 {
    debug_assert_eq!(w.len(), x.len());
    #[cfg(target_arch = "x86_64")]
    match cpu::level() {
        // SAFETY: the level includes AVX-512F.
        Level::Avx512 | Level::Amx => return unsafe { avx512::bf16_f32(w, x) },
        // SAFETY: the level includes AVX2 and FMA.
        Level::Avx2 => return unsafe { avx2::bf16_f32(w, x) },
        Level::Baseline => {}
    }
    scalar::bf16_f32(w, x)
}

/// The reference versions: plain loops over the block layouts, what every other level must
/// reproduce.
pub mod scalar {
    use super::*;

    pub fn q8_0(w: &[Q8_0], x: &[Q8_0]) -> f32 {
        w.iter()
            .zip(x)
            .map(|(w, x)| {
                let sum: i32 =
                    w.qs.iter()
                        .zip(&x.qs)
                        .map(|(&a, &b)| a as i32 * b as i32)
                        .sum();
                w.d.to_f32() * x.d.to_f32() * sum as f32
            })
            .sum()
    }

    pub fn q4_0(w: &[Q4_0], x: &[Q8_0]) -> f32 {
        w.iter()
            .zip(x)
            .map(|(w, x)| {
                let (lo, hi) = x.qs.split_at(16);
                let sum: i32 =
                    w.qs.iter()
                        .zip(lo.iter().zip(hi))
                        .map(|(&q, (&a, &b))| {
                            ((q & 0xF) as i32 - 8) * a as i32 + ((q >> 4) as i32 - 8) * b as i32
                        })
                        .sum();
                w.d.to_f32() * x.d.to_f32() * sum as f32
            })
            .sum()
    }

    pub fn q4k(w: &[Q4K], x: &[Q8K]) -> f32 {
        let mut acc = 0f32;
        for (w, x) in w.iter().zip(x) {
            let (mut sumi, mut summ) = (0i32, 0i32);
            for pair in 0..4 {
                let q = &w.qs[32 * pair..][..32];
                let (y_lo, y_hi) = x.qs[64 * pair..][..64].split_at(32);
                let (sc_lo, m_lo) = w.scale_min(2 * pair);
                let (sc_hi, m_hi) = w.scale_min(2 * pair + 1);
                let (mut lo, mut hi) = (0i32, 0i32);
                for ((&q, &a), &b) in q.iter().zip(y_lo).zip(y_hi) {
                    lo += (q & 0xF) as i32 * a as i32;
                    hi += (q >> 4) as i32 * b as i32;
                }
                sumi += sc_lo as i32 * lo + sc_hi as i32 * hi;
                let bsum = |j: usize| x.bsums[2 * j] as i32 + x.bsums[2 * j + 1] as i32;
                summ += m_lo as i32 * bsum(2 * pair) + m_hi as i32 * bsum(2 * pair + 1);
            }
            acc += x.d * w.d.to_f32() * sumi as f32 - x.d * w.dmin.to_f32() * summ as f32;
        }
        acc
    }

    pub fn q6k(w: &[Q6K], x: &[Q8K]) -> f32 {
        let mut acc = 0f32;
        for (w, x) in w.iter().zip(x) {
            let mut sumi = 0i32;
            for half in 0..2 {
                let ql = &w.ql[64 * half..];
                let qh = &w.qh[32 * half..];
                let y = &x.qs[128 * half..];
                let sc = &w.scales[8 * half..];
                for l in 0..32 {
                    let q = [
                        (ql[l] & 0xF) | ((qh[l] & 3) << 4),
                        (ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4),
                        (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4),
                        (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4),
                    ];
                    for (i, q) in q.into_iter().enumerate() {
                        let s = sc[2 * i + l / 16] as i32;
                        sumi += s * (q as i32 - 32) * y[32 * i + l] as i32;
                    }
                }
            }
            acc += x.d * w.d.to_f32() * sumi as f32;
        }
        acc
    }

    /// Lane-wise partial sums, so that the loop vectorises (at whatever width the build has).
    pub fn bf16_f32(w: &[bf16], x: &[f32]) -> f32 {
        const LANES: usize = 64;
        let mut acc = [0f32; LANES];
        let (wc, wt) = w.split_at(w.len() / LANES * LANES);
        let (xc, xt) = x.split_at(wc.len());
        for (w, x) in wc.chunks_exact(LANES).zip(xc.chunks_exact(LANES)) {
            for l in 0..LANES {
                acc[l] += f32::from_bits((w[l].to_bits() as u32) << 16) * x[l];
            }
        }
        let tail: f32 = wt.iter().zip(xt).map(|(w, x)| w.to_f32() * x).sum();
        // Halving sums, which vectorise; a plain `sum` adds the lanes one after another.
        let mut width = LANES / 2;
        while width > 0 {
            let (low, high) = acc.split_at_mut(width);
            low.iter_mut()
                .zip(&high[..width])
                .for_each(|(a, b)| *a += b);
            width /= 2;
        }
        acc[0] + tail
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::*;
    use half::bf16;
    use std::arch::x86_64::*;

    #[inline(always)]
    unsafe fn load(p: *const i8) -> __m256i {
        // SAFETY: callers pass 32 readable bytes.
        unsafe { _mm256_loadu_si256(p.cast()) }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn hsum_ps(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
    }

    /// Eight i32 sums of 4 products each of signed bytes `a·b` (the unsigned×signed
    /// instruction, with `a`'s sign moved onto `b`).
    #[target_feature(enable = "avx2,fma,f16c")]
    fn mul_sum_i8(a: __m256i, b: __m256i) -> __m256i {
        let pairs = _mm256_maddubs_epi16(_mm256_sign_epi8(a, a), _mm256_sign_epi8(b, a));
        _mm256_madd_epi16(pairs, _mm256_set1_epi16(1))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    fn scale(a: f16, b: f16) -> __m256 {
        let both = _mm_cvtph_ps(_mm_cvtsi32_si128(
            a.to_bits() as i32 | ((b.to_bits() as i32) << 16),
        ));
        _mm256_set1_ps(_mm_cvtss_f32(both) * _mm_cvtss_f32(_mm_movehdup_ps(both)))
    }

    /// # Safety
    /// The CPU must have AVX2, FMA and F16C; every row of `x` as long as `w`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn q8_0_rows<const R: usize>(w: &[Q8_0], x: [&[Q8_0]; R]) -> [f32; R] {
        // Two sets of accumulators, alternating by block, hide the multiply-add latency.
        let mut acc = [[_mm256_setzero_ps(); R]; 2];
        for (b, w) in w.iter().enumerate() {
            // SAFETY: each block holds 32 quants.
            let a = unsafe { load(w.qs.as_ptr()) };
            for (acc, x) in acc[b & 1].iter_mut().zip(&x) {
                // SAFETY: `x` has a block `b`.
                let x = unsafe { x.get_unchecked(b) };
                // SAFETY: as above.
                let sums = _mm256_cvtepi32_ps(mul_sum_i8(a, unsafe { load(x.qs.as_ptr()) }));
                *acc = _mm256_fmadd_ps(scale(w.d, x.d), sums, *acc);
            }
        }
        let mut out = [0f32; R];
        for r in 0..R {
            out[r] = hsum_ps(_mm256_add_ps(acc[0][r], acc[1][r]));
        }
        out
    }

    /// # Safety
    /// As [`q8_0_rows`].
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn q4_0_rows<const R: usize>(w: &[Q4_0], x: [&[Q8_0]; R]) -> [f32; R] {
        let nibble = _mm256_set1_epi8(0xF);
        let mut acc = [[_mm256_setzero_ps(); R]; 2];
        for (b, w) in w.iter().enumerate() {
            // SAFETY: a Q4_0 block holds 16 bytes.
            let packed = unsafe { _mm_loadu_si128(w.qs.as_ptr().cast()) };
            // Low nibbles are values 0–15, high nibbles 16–31.
            let both = _mm256_set_m128i(_mm_srli_epi16::<4>(packed), packed);
            let a = _mm256_sub_epi8(_mm256_and_si256(both, nibble), _mm256_set1_epi8(8));
            for (acc, x) in acc[b & 1].iter_mut().zip(&x) {
                // SAFETY: `x` has a block `b` of 32 quants.
                let x = unsafe { x.get_unchecked(b) };
                // SAFETY: as above.
                let sums = _mm256_cvtepi32_ps(mul_sum_i8(a, unsafe { load(x.qs.as_ptr()) }));
                *acc = _mm256_fmadd_ps(scale(w.d, x.d), sums, *acc);
            }
        }
        let mut out = [0f32; R];
        for r in 0..R {
            out[r] = hsum_ps(_mm256_add_ps(acc[0][r], acc[1][r]));
        }
        out
    }

    /// The eight 6-bit scales of a Q4_K block as i16s in both 128-bit halves, for
    /// [`scale_lanes`] to broadcast one at a time.
    #[target_feature(enable = "avx2,fma,f16c")]
    fn scales_i16(scales: [u8; 8]) -> __m256i {
        let sc = _mm_cvtepu8_epi16(_mm_cvtsi64_si128(u64::from_le_bytes(scales) as i64));
        _mm256_broadcastsi128_si256(sc)
    }

    /// Scale `J` of [`scales_i16`] in every i16 lane: one byte shuffle instead of a scalar
    /// broadcast.
    #[target_feature(enable = "avx2,fma,f16c")]
    fn scale_lanes<const J: i8>(scales: __m256i) -> __m256i {
        let (lo, hi) = (2 * J, 2 * J + 1);
        _mm256_shuffle_epi8(
            scales,
            _mm256_setr_epi8(
                lo, hi, lo, hi, lo, hi, lo, hi, lo, hi, lo, hi, lo, hi, lo, hi, lo, hi, lo, hi, lo,
                hi, lo, hi, lo, hi, lo, hi, lo, hi, lo, hi,
            ),
        )
    }

    /// Scales `2·pair` and `2·pair + 1` of [`scales_i16`] in every lane.
    #[target_feature(enable = "avx2,fma,f16c")]
    fn pair_scales(scales: __m256i, pair: usize) -> (__m256i, __m256i) {
        match pair {
            0 => (scale_lanes::<0>(scales), scale_lanes::<1>(scales)),
            1 => (scale_lanes::<2>(scales), scale_lanes::<3>(scales)),
            2 => (scale_lanes::<4>(scales), scale_lanes::<5>(scales)),
            _ => (scale_lanes::<6>(scales), scale_lanes::<7>(scales)),
        }
    }

    /// The block's `d` and `dmin` (or any two adjacent f16s) as f32s.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn f16_pair(first: f16, second: f16) -> (f32, f32) {
        let both = _mm_cvtph_ps(_mm_cvtsi32_si128(
            first.to_bits() as i32 | ((second.to_bits() as i32) << 16),
        ));
        (_mm_cvtss_f32(both), _mm_cvtss_f32(_mm_movehdup_ps(both)))
    }

    /// # Safety
    /// As [`q8_0_rows`].
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn q4k_rows<const R: usize>(w: &[Q4K], x: [&[Q8K]; R]) -> [f32; R] {
        let nibble = _mm256_set1_epi8(0xF);
        let mut acc = [_mm256_setzero_ps(); R];
        for (b, w) in w.iter().enumerate() {
            let (scales, mins) = w.scales_mins();
            // Each sub-block's min twice, to meet its two 16-value activation sums.
            let mins = _mm_cvtsi64_si128(u64::from_le_bytes(mins) as i64);
            let mins = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(mins, mins));
            let (d, dmin) = f16_pair(w.d, w.dmin);
            let scales_v = scales_i16(scales);
            let mut sumi = [_mm256_setzero_si256(); R];
            for pair in 0..4 {
                // SAFETY: 32 bytes of quants per pair.
                let q = unsafe { load(w.qs.as_ptr().add(32 * pair).cast()) };
                let lo = _mm256_and_si256(q, nibble);
                let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q), nibble);
                // Measured on Zen 3: byte shuffles win for one row, where the scale broadcasts
                // are a larger share of the work; plain broadcasts win for several.
                let (sc_lo, sc_hi) = if R == 1 {
                    pair_scales(scales_v, pair)
                } else {
                    (
                        _mm256_set1_epi16(scales[2 * pair] as i16),
                        _mm256_set1_epi16(scales[2 * pair + 1] as i16),
                    )
                };
                for (sumi, x) in sumi.iter_mut().zip(&x) {
                    // SAFETY: `x` has a block `b` of 256 activations.
                    let (y_lo, y_hi) = unsafe {
                        let y = x.get_unchecked(b).qs.as_ptr().add(64 * pair);
                        (load(y), load(y.add(32)))
                    };
                    let lo = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, y_lo), sc_lo);
                    let hi = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, y_hi), sc_hi);
                    *sumi = _mm256_add_epi32(*sumi, _mm256_add_epi32(lo, hi));
                }
            }
            for r in 0..R {
                // SAFETY: as above.
                let x = unsafe { x[r].get_unchecked(b) };
                acc[r] =
                    _mm256_fmadd_ps(_mm256_set1_ps(x.d * d), _mm256_cvtepi32_ps(sumi[r]), acc[r]);
                // Minus dmin · Σ_j m_j · (sub-block j's activation sum).
                // SAFETY: 16 i16 sums.
                let bsums = unsafe { _mm256_loadu_si256(x.bsums.as_ptr().cast()) };
                acc[r] = _mm256_fnmadd_ps(
                    _mm256_set1_ps(x.d * dmin),
                    _mm256_cvtepi32_ps(_mm256_madd_epi16(bsums, mins)),
                    acc[r],
                );
            }
        }
        acc.map(|a| hsum_ps(a))
    }

    /// For quarter `I` of a Q6_K half (32 values, two sub-blocks of 16): scale `2I` in the low
    /// 128-bit half's lanes and scale `2I + 1` in the high half's, from the half's eight scales
    /// as i16s.
    #[target_feature(enable = "avx2,fma,f16c")]
    fn quarter_scales<const I: i8>(half_scales: __m256i) -> __m256i {
        let (a, b, c, d) = (4 * I, 4 * I + 1, 4 * I + 2, 4 * I + 3);
        _mm256_shuffle_epi8(
            half_scales,
            _mm256_setr_epi8(
                a, b, a, b, a, b, a, b, a, b, a, b, a, b, a, b, c, d, c, d, c, d, c, d, c, d, c, d,
                c, d, c, d,
            ),
        )
    }

    /// Bits `SHIFT` and `SHIFT + 1` of each byte of `qh`, moved to bits 4 and 5.
    #[target_feature(enable = "avx2,fma,f16c")]
    fn high_bits<const SHIFT: i32>(qh: __m256i) -> __m256i {
        let two = _mm256_and_si256(_mm256_srli_epi16::<SHIFT>(qh), _mm256_set1_epi8(3));
        _mm256_slli_epi16::<4>(two)
    }

    /// # Safety
    /// As [`q8_0_rows`].
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn q6k_rows<const R: usize>(w: &[Q6K], x: [&[Q8K]; R]) -> [f32; R] {
        let nibble = _mm256_set1_epi8(0xF);
        let mut acc = [_mm256_setzero_ps(); R];
        for (b, w) in w.iter().enumerate() {
            let mut sumi = [_mm256_setzero_si256(); R];
            for half in 0..2 {
                // SAFETY: each half has 64 bytes of `ql`, 32 of `qh`, 128 activations.
                let (ql0, ql1, qh) = unsafe {
                    (
                        load(w.ql.as_ptr().add(64 * half).cast()),
                        load(w.ql.as_ptr().add(64 * half + 32).cast()),
                        load(w.qh.as_ptr().add(32 * half).cast()),
                    )
                };
                let q = [
                    _mm256_or_si256(_mm256_and_si256(ql0, nibble), high_bits::<0>(qh)),
                    _mm256_or_si256(_mm256_and_si256(ql1, nibble), high_bits::<2>(qh)),
                    _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16::<4>(ql0), nibble),
                        high_bits::<4>(qh),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16::<4>(ql1), nibble),
                        high_bits::<6>(qh),
                    ),
                ];
                // This half's eight scales as i16s, in both 128-bit halves.
                // SAFETY: 8 of the 16 scales.
                let half_scales = _mm256_broadcastsi128_si256(_mm_cvtepi8_epi16(unsafe {
                    _mm_loadl_epi64(w.scales.as_ptr().add(8 * half).cast())
                }));
                let scales = [
                    quarter_scales::<0>(half_scales),
                    quarter_scales::<1>(half_scales),
                    quarter_scales::<2>(half_scales),
                    quarter_scales::<3>(half_scales),
                ];
                for (i, (q, scales)) in q.into_iter().zip(scales).enumerate() {
                    for (sumi, x) in sumi.iter_mut().zip(&x) {
                        // SAFETY: `x` has a block `b`, 32 activations per quarter.
                        let y = unsafe {
                            load(x.get_unchecked(b).qs.as_ptr().add(128 * half + 32 * i))
                        };
                        let products = _mm256_madd_epi16(_mm256_maddubs_epi16(q, y), scales);
                        *sumi = _mm256_add_epi32(*sumi, products);
                    }
                }
            }
            // The quants are stored offset by 32: Σ sc·(q − 32)·y = Σ sc·q·y − 32·Σ sc·bsum.
            // SAFETY: 16 i8 scales.
            let scales = _mm256_cvtepi8_epi16(unsafe { _mm_loadu_si128(w.scales.as_ptr().cast()) });
            let (d, _) = f16_pair(w.d, f16::ZERO);
            for r in 0..R {
                // SAFETY: as above; 16 i16 sums.
                let x = unsafe { x[r].get_unchecked(b) };
                let bsums = unsafe { _mm256_loadu_si256(x.bsums.as_ptr().cast()) };
                let offset = _mm256_slli_epi32::<5>(_mm256_madd_epi16(bsums, scales));
                let sumi = _mm256_cvtepi32_ps(_mm256_sub_epi32(sumi[r], offset));
                acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(x.d * d), sumi, acc[r]);
            }
        }
        acc.map(|a| hsum_ps(a))
    }

    /// # Safety
    /// The CPU must have AVX2 and FMA; `w.len() == x.len()`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn bf16_f32(w: &[bf16], x: &[f32]) -> f32 {
        let n = w.len().min(x.len());
        let whole = n / 32 * 32;
        let mut acc = [_mm256_setzero_ps(); 4];
        for i in (0..whole).step_by(32) {
            for (j, acc) in acc.iter_mut().enumerate() {
                let at = i + 8 * j;
                // SAFETY: `at + 8 ≤ whole ≤ n`, within both slices.
                let (wv, xv) = unsafe {
                    (
                        _mm_loadu_si128(w.as_ptr().add(at).cast()),
                        _mm256_loadu_ps(x.as_ptr().add(at)),
                    )
                };
                // bf16 → f32 is a 16-bit shift into the high half.
                let wf = _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(wv)));
                *acc = _mm256_fmadd_ps(wf, xv, *acc);
            }
        }
        let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let tail: f32 = w[whole..n]
            .iter()
            .zip(&x[whole..n])
            .map(|(w, x)| w.to_f32() * x)
            .sum();
        hsum_ps(sum) + tail
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::avx2::{f16_pair, hsum_ps};
    use super::*;
    use half::bf16;
    use std::arch::x86_64::*;

    /// 32 i16 lanes: `lo` in the low 256 bits, `hi` in the high ones.
    const fn halves(lo: i16, hi: i16) -> [i16; 32] {
        let mut out = [lo; 32];
        let mut i = 16;
        while i < 32 {
            out[i] = hi;
            i += 1;
        }
        out
    }

    /// 32 i16 lanes counting `first`, `first + 1`, … in runs of eight.
    const fn runs_of_eight(first: i16) -> [i16; 32] {
        let mut out = [0; 32];
        let mut i = 0;
        while i < 32 {
            out[i] = first + i as i16 / 8;
            i += 1;
        }
        out
    }

    /// Which Q4_K scale each i16 product lane of a 64-byte load meets: the low nibbles of quant
    /// bytes `64j..64j + 64` are sub-blocks `4j` and `4j + 2`, the high nibbles `4j + 1` and
    /// `4j + 3`.
    static Q4K_SCALES: [[i16; 32]; 4] = [halves(0, 2), halves(1, 3), halves(4, 6), halves(5, 7)];

    /// Which Q6_K scale (one per 16 values) each i16 product lane meets, for the four 64-value
    /// quarters of a block.
    static Q6K_SCALES: [[i16; 32]; 4] = [
        runs_of_eight(0),
        runs_of_eight(4),
        runs_of_eight(8),
        runs_of_eight(12),
    ];

    /// Shifts that move a Q6_K half's two high bits to bits 4–5: left by 4 and 2 for values
    /// 0–31 and 32–63 (bits 0–1 and 2–3 of `qh`), right by 0 and 2 for values 64–127.
    static Q6K_LOW_SHIFTS: [i16; 32] = halves(4, 2);
    static Q6K_HIGH_SHIFTS: [i16; 32] = halves(0, 2);

    #[inline(always)]
    unsafe fn load512<T>(p: *const T) -> __m512i {
        // SAFETY: callers pass 64 readable bytes.
        unsafe { _mm512_loadu_si512(p.cast()) }
    }

    /// # Safety
    /// The CPU must have AVX-512 F/BW/VL/DQ and VNNI, AVX2, FMA and F16C; every row of `x` as
    /// long as `w`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
    pub unsafe fn q8_0_rows<const R: usize>(w: &[Q8_0], x: [&[Q8_0]; R]) -> [f32; R] {
        let mut acc = [[_mm256_setzero_ps(); R]; 2];
        for (b, w) in w.iter().enumerate() {
            // SAFETY: each block holds 32 quants.
            let q = unsafe { _mm256_loadu_si256(w.qs.as_ptr().cast()) };
            // |w| against x with w's sign: the unsigned × signed dot product.
            let magnitude = _mm256_sign_epi8(q, q);
            let (dw, _) = f16_pair(w.d, f16::ZERO);
            for (acc, x) in acc[b & 1].iter_mut().zip(&x) {
                // SAFETY: `x` has a block `b` of 32 quants.
                let x = unsafe { x.get_unchecked(b) };
                let y = unsafe { _mm256_loadu_si256(x.qs.as_ptr().cast()) };
                let sums =
                    _mm256_dpbusd_epi32(_mm256_setzero_si256(), magnitude, _mm256_sign_epi8(y, q));
                let (dx, _) = f16_pair(x.d, f16::ZERO);
                *acc = _mm256_fmadd_ps(_mm256_set1_ps(dw * dx), _mm256_cvtepi32_ps(sums), *acc);
            }
        }
        let mut out = [0f32; R];
        for r in 0..R {
            out[r] = hsum_ps(_mm256_add_ps(acc[0][r], acc[1][r]));
        }
        out
    }

    /// Activations in [`pair_sub_blocks`] order.
    ///
    /// # Safety
    /// As [`q8_0_rows`].
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
    pub unsafe fn q4k_rows<const R: usize>(w: &[Q4K], x: [&[Q8K]; R]) -> [f32; R] {
        let nibble = _mm512_set1_epi8(0xF);
        // SAFETY: 32 i16s each.
        let lanes = unsafe {
            [
                load512(Q4K_SCALES[0].as_ptr()),
                load512(Q4K_SCALES[1].as_ptr()),
                load512(Q4K_SCALES[2].as_ptr()),
                load512(Q4K_SCALES[3].as_ptr()),
            ]
        };
        let mut acc = [_mm512_setzero_ps(); R];
        for (b, w) in w.iter().enumerate() {
            let (scales, mins) = w.scales_mins();
            // Each sub-block's min twice, to meet its two 16-value activation sums.
            let mins = _mm_cvtsi64_si128(u64::from_le_bytes(mins) as i64);
            let mins = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(mins, mins));
            let (d, dmin) = f16_pair(w.d, w.dmin);
            let (d, dmin) = (_mm512_set1_ps(d), _mm512_set1_ps(dmin));
            let scales = _mm512_castsi128_si512(_mm_cvtepu8_epi16(_mm_cvtsi64_si128(
                u64::from_le_bytes(scales) as i64,
            )));
            let scales = [
                _mm512_permutexvar_epi16(lanes[0], scales),
                _mm512_permutexvar_epi16(lanes[1], scales),
                _mm512_permutexvar_epi16(lanes[2], scales),
                _mm512_permutexvar_epi16(lanes[3], scales),
            ];
            let mut sumi = [_mm512_setzero_si512(); R];
            for j in 0..2 {
                // SAFETY: 64 of the block's 128 bytes of quants.
                let q = unsafe { load512(w.qs.as_ptr().add(64 * j)) };
                let lo = _mm512_and_si512(q, nibble);
                let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(q), nibble);
                for (sumi, x) in sumi.iter_mut().zip(&x) {
                    // SAFETY: `x` has a block `b` of 256 activations.
                    let (y_lo, y_hi) = unsafe {
                        let y = x.get_unchecked(b).qs.as_ptr().add(128 * j);
                        (load512(y), load512(y.add(64)))
                    };
                    let lo = _mm512_maddubs_epi16(lo, y_lo);
                    *sumi = _mm512_dpwssd_epi32(*sumi, lo, scales[2 * j]);
                    let hi = _mm512_maddubs_epi16(hi, y_hi);
                    *sumi = _mm512_dpwssd_epi32(*sumi, hi, scales[2 * j + 1]);
                }
            }
            for r in 0..R {
                // SAFETY: as above; 16 i16 sums.
                let x = unsafe { x[r].get_unchecked(b) };
                let bsums = unsafe { _mm256_loadu_si256(x.bsums.as_ptr().cast()) };
                // Σ_j m_j · (sub-block j's activation sum), in the low eight lanes.
                let min_sums = _mm512_zextsi256_si512(_mm256_madd_epi16(bsums, mins));
                let min_part = _mm512_mul_ps(dmin, _mm512_cvtepi32_ps(min_sums));
                let block = _mm512_fmsub_ps(d, _mm512_cvtepi32_ps(sumi[r]), min_part);
                acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(x.d), block, acc[r]);
            }
        }
        let mut out = [0f32; R];
        for r in 0..R {
            out[r] = _mm512_reduce_add_ps(acc[r]);
        }
        out
    }

    /// # Safety
    /// As [`q8_0_rows`].
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
    pub unsafe fn q6k_rows<const R: usize>(w: &[Q6K], x: [&[Q8K]; R]) -> [f32; R] {
        let nibble = _mm512_set1_epi8(0xF);
        let top = _mm512_set1_epi8(0x30);
        // SAFETY: 32 i16s each.
        let (lanes, low_shifts, high_shifts) = unsafe {
            (
                [
                    load512(Q6K_SCALES[0].as_ptr()),
                    load512(Q6K_SCALES[1].as_ptr()),
                    load512(Q6K_SCALES[2].as_ptr()),
                    load512(Q6K_SCALES[3].as_ptr()),
                ],
                load512(Q6K_LOW_SHIFTS.as_ptr()),
                load512(Q6K_HIGH_SHIFTS.as_ptr()),
            )
        };
        let mut acc = [_mm512_setzero_ps(); R];
        for (b, w) in w.iter().enumerate() {
            // SAFETY: 16 i8 scales.
            let scales = _mm256_cvtepi8_epi16(unsafe { _mm_loadu_si128(w.scales.as_ptr().cast()) });
            let wide_scales = _mm512_castsi256_si512(scales);
            let mut sumi = [_mm512_setzero_si512(); R];
            for half in 0..2 {
                // SAFETY: each half has 64 bytes of `ql` and 32 of `qh`.
                let (ql, qh) = unsafe {
                    (
                        load512(w.ql.as_ptr().add(64 * half)),
                        _mm512_broadcast_i64x4(_mm256_loadu_si256(
                            w.qh.as_ptr().add(32 * half).cast(),
                        )),
                    )
                };
                // The low nibbles are values 0–63 of the half in order, the high ones 64–127.
                let q_lo = _mm512_or_si512(
                    _mm512_and_si512(ql, nibble),
                    _mm512_and_si512(_mm512_sllv_epi16(qh, low_shifts), top),
                );
                let q_hi = _mm512_or_si512(
                    _mm512_and_si512(_mm512_srli_epi16::<4>(ql), nibble),
                    _mm512_and_si512(_mm512_srlv_epi16(qh, high_shifts), top),
                );
                let s_lo = _mm512_permutexvar_epi16(lanes[2 * half], wide_scales);
                let s_hi = _mm512_permutexvar_epi16(lanes[2 * half + 1], wide_scales);
                for (sumi, x) in sumi.iter_mut().zip(&x) {
                    // SAFETY: `x` has a block `b`, 128 activations per half.
                    let (y_lo, y_hi) = unsafe {
                        let y = x.get_unchecked(b).qs.as_ptr().add(128 * half);
                        (load512(y), load512(y.add(64)))
                    };
                    *sumi = _mm512_dpwssd_epi32(*sumi, _mm512_maddubs_epi16(q_lo, y_lo), s_lo);
                    *sumi = _mm512_dpwssd_epi32(*sumi, _mm512_maddubs_epi16(q_hi, y_hi), s_hi);
                }
            }
            let (d, _) = f16_pair(w.d, f16::ZERO);
            for r in 0..R {
                // SAFETY: as above; 16 i16 sums.
                let x = unsafe { x[r].get_unchecked(b) };
                let bsums = unsafe { _mm256_loadu_si256(x.bsums.as_ptr().cast()) };
                // The quants are stored offset by 32: Σ sc·(q − 32)·y = Σ sc·q·y − 32·Σ sc·bsum.
                let offset = _mm256_slli_epi32::<5>(_mm256_madd_epi16(bsums, scales));
                let sumi = _mm512_sub_epi32(sumi[r], _mm512_zextsi256_si512(offset));
                acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(x.d * d), _mm512_cvtepi32_ps(sumi), acc[r]);
            }
        }
        let mut out = [0f32; R];
        for r in 0..R {
            out[r] = _mm512_reduce_add_ps(acc[r]);
        }
        out
    }

    /// 512-bit registers with fused multiply-adds, four accumulators reduced once.
    ///
    /// # Safety
    /// The CPU must have AVX-512F; `w.len() == x.len()`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn bf16_f32(w: &[bf16], x: &[f32]) -> f32 {
        let n = w.len().min(x.len());
        let whole = n / 64 * 64;
        let mut acc = [_mm512_setzero_ps(); 4];
        for i in (0..whole).step_by(64) {
            for (j, acc) in acc.iter_mut().enumerate() {
                let at = i + 16 * j;
                // SAFETY: `at + 16 ≤ whole ≤ n`, within both slices.
                let (wv, xv) = unsafe {
                    (
                        _mm256_loadu_si256(w.as_ptr().add(at).cast()),
                        _mm512_loadu_ps(x.as_ptr().add(at)),
                    )
                };
                let wf = _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(wv)));
                *acc = _mm512_fmadd_ps(wf, xv, *acc);
            }
        }
        let sum = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
        let tail: f32 = w[whole..n]
            .iter()
            .zip(&x[whole..n])
            .map(|(w, x)| w.to_f32() * x)
            .sum();
        _mm512_reduce_add_ps(sum) + tail
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blocks::view;
    use crate::cpu::at_every_level;
    use candle_core::quantized::k_quants::{
        BlockQ4K, BlockQ4_0, BlockQ6K, BlockQ8K, BlockQ8_0, GgmlType,
    };

    /// xorshift bytes.
    fn bytes(n: usize, seed: u64) -> Vec<u8> {
        let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 32) as u8
            })
            .collect()
    }

    /// `n` blocks of arbitrary bytes (every quant and scale pattern), their f16 scales then set
    /// to finite values by `fix`.
    fn random_blocks<T: Copy>(n: usize, seed: u64, fix: impl Fn(&mut T, usize)) -> Vec<T> {
        let raw = bytes(n * size_of::<T>(), seed);
        let mut out: Vec<T> = (0..n)
            // SAFETY: the block types here are plain integers and f16s, valid for any bytes.
            .map(|i| unsafe { std::ptr::read_unaligned(raw[i * size_of::<T>()..].as_ptr().cast()) })
            .collect();
        for (i, b) in out.iter_mut().enumerate() {
            fix(b, i);
        }
        out
    }

    fn scale_of(i: usize) -> f16 {
        f16::from_f32(0.01 + 0.003 * (i % 7) as f32)
    }

    /// Activations with every byte pattern, −128 included, and consistent sums.
    fn random_q8k(n: usize, seed: u64) -> Vec<Q8K> {
        random_blocks(n, seed, |b: &mut Q8K, i| {
            b.d = 0.02 + 0.001 * i as f32;
            for (s, q) in b.bsums.iter_mut().zip(b.qs.chunks_exact(16)) {
                *s = q.iter().map(|&v| v as i16).sum();
            }
        })
    }

    /// Quants in [−127, 127], as ggml writes them (see [`Q8_0`]).
    fn random_q8_0(n: usize, seed: u64) -> Vec<Q8_0> {
        random_blocks(n, seed, |b: &mut Q8_0, i| {
            b.d = scale_of(i + 3);
            b.qs.iter_mut().for_each(|q| *q = (*q).max(-127));
        })
    }

    /// Ragged block counts: none, one, odd, and longer than any unrolling.
    const COUNTS: [usize; 6] = [0, 1, 3, 8, 13, 34];

    fn close(got: f32, want: f32, scale: f32, what: &str) {
        assert!(
            (got - want).abs() <= 1e-5 * scale.max(1e-3),
            "{what}: {got} vs {want} (scale {scale})"
        );
    }

    /// `x` rearranged for `kernels`.
    fn arranged<W, A: Clone>(kernels: &Kernels<W, A>, x: &[A]) -> Vec<A> {
        let mut x = x.to_vec();
        kernels.arrange(&mut x);
        x
    }

    #[test]
    fn k_quant_dots_match_the_reference_at_every_level_and_match_candle() {
        at_every_level(|level| {
            let (k4, k6) = (q4k_kernels(), q6k_kernels());
            for n in COUNTS {
                let x = random_q8k(n, 11 + n as u64);
                let w4 = random_blocks(n, 5 + n as u64, |b: &mut Q4K, i| {
                    b.d = scale_of(i);
                    b.dmin = scale_of(i + 1);
                });
                let w6 = random_blocks(n, 7 + n as u64, |b: &mut Q6K, i| b.d = scale_of(i));
                for (name, got, want, candle) in [
                    (
                        "q4k",
                        k4.dot(&w4, &arranged(&k4, &x)),
                        scalar::q4k(&w4, &x),
                        BlockQ4K::vec_dot(n * 256, view(&w4), view::<_, BlockQ8K>(&x)),
                    ),
                    (
                        "q6k",
                        k6.dot(&w6, &arranged(&k6, &x)),
                        scalar::q6k(&w6, &x),
                        BlockQ6K::vec_dot(n * 256, view(&w6), view::<_, BlockQ8K>(&x)),
                    ),
                ] {
                    let what = format!("{name} at {level}, {n} blocks");
                    let scale = want.abs().max(candle.abs()).max(1.0);
                    close(got, want, scale, &what);
                    close(want, candle, scale, &what);
                }
            }
        });
    }

    /// A row kernel's results for its group of activation rows (the first of `xs`, ggml layout), each against the
    /// reference dot product, within the lane-sum rounding bound of its block terms.
    fn check_rows<W, A: Clone>(
        kernels: &Kernels<W, A>,
        w: &[W],
        xs: &[Vec<A>],
        reference: fn(&[W], &[A]) -> f32,
        magnitude: impl Fn(&[W], &[A]) -> f32,
        what: &str,
    ) -> bool {
        let Some(group) = kernels.row_group() else {
            return false;
        };
        let ready: Vec<Vec<A>> = xs[..group].iter().map(|x| arranged(kernels, x)).collect();
        let ready: Vec<&[A]> = ready.iter().map(Vec::as_slice).collect();
        let mut got = vec![0f32; group];
        kernels.rows(w, &ready, &mut got);
        for (r, x) in xs[..group].iter().enumerate() {
            let scale: f32 = (0..w.len())
                .map(|b| magnitude(&w[b..b + 1], &x[b..b + 1]))
                .sum();
            close(got[r], reference(w, x), scale, &format!("{what} row {r}"));
        }
        true
    }

    /// A block term's size for rounding bounds: its absolute value.
    fn magnitude<W, A>(reference: fn(&[W], &[A]) -> f32) -> impl Fn(&[W], &[A]) -> f32 {
        move |w, x| reference(w, x).abs()
    }

    /// A Q4_K block term's size: its scaled sum and its min correction apart, which may cancel.
    fn q4k_magnitude(w: &[Q4K], x: &[Q8K]) -> f32 {
        let part = |keep: fn(Q4K) -> Q4K| {
            let w: Vec<Q4K> = w.iter().map(|&b| keep(b)).collect();
            scalar::q4k(&w, x).abs()
        };
        part(|b| Q4K {
            dmin: f16::ZERO,
            ..b
        }) + part(|b| Q4K { d: f16::ZERO, ..b })
    }

    #[test]
    fn row_kernels_match_the_reference_row_by_row() {
        at_every_level(|level| {
            for n in COUNTS {
                let w4 = random_blocks(n, 51 + n as u64, |b: &mut Q4K, i| {
                    b.d = scale_of(i);
                    b.dmin = scale_of(i + 2);
                });
                let w6 = random_blocks(n, 53 + n as u64, |b: &mut Q6K, i| b.d = scale_of(i));
                let xk: Vec<Vec<Q8K>> = (0..MAX_ROWS)
                    .map(|r| random_q8k(n, 60 + r as u64))
                    .collect();
                let what = |name: &str| format!("{name} at {level}, {n} blocks");
                let found = [
                    check_rows(
                        &q4k_kernels(),
                        &w4,
                        &xk,
                        scalar::q4k,
                        q4k_magnitude,
                        &what("q4k"),
                    ),
                    check_rows(
                        &q6k_kernels(),
                        &w6,
                        &xk,
                        scalar::q6k,
                        magnitude(scalar::q6k),
                        &what("q6k"),
                    ),
                ];
                assert!(
                    found.iter().all(|&f| f == (level >= Level::Avx2)),
                    "row kernels at {level}: {found:?}"
                );
            }
        });
    }

    #[test]
    fn kernels_quantise_into_the_layout_they_read() {
        let x = crate::quantise::normal(256 * 3, 12);
        let mut natural = vec![Q8K::ZERO; 3];
        quantise_q8k(&x, &mut natural);
        let w = random_blocks(3, 13, |b: &mut Q4K, i| {
            b.d = scale_of(i);
            b.dmin = scale_of(i + 1);
        });
        let want = scalar::q4k(&w, &natural);
        at_every_level(|level| {
            let kernels = q4k_kernels();
            let mut ready = vec![Q8K::ZERO; 3];
            kernels.quantise(&x, &mut ready);
            let scale = (0..3)
                .map(|b| scalar::q4k(&w[b..b + 1], &natural[b..b + 1]).abs())
                .sum();
            close(
                kernels.dot(&w, &ready),
                want,
                scale,
                &format!("q4k at {level}"),
            );
        });
    }

    #[test]
    fn q4k_scales_unpack_alike_both_ways() {
        for b in random_blocks(200, 41, |_: &mut Q4K, _| {}) {
            let (scales, mins) = b.scales_mins();
            for j in 0..8 {
                assert_eq!(b.scale_min(j), (scales[j], mins[j]), "{:?}", b.scales);
            }
        }
    }

    #[test]
    fn q8_0_and_q4_0_dots_match_the_reference_at_every_level() {
        at_every_level(|level| {
            for n in COUNTS {
                let x = random_q8_0(n, 21 + n as u64);
                let q8 = random_q8_0(n, 23 + n as u64);
                let q4 = random_blocks(n, 29 + n as u64, |b: &mut Q4_0, i| b.d = scale_of(i));
                // The scale of the sum: Σ |block terms|.
                let magnitude =
                    |terms: &dyn Fn(usize) -> f32| (0..n).map(|b| terms(b).abs()).sum::<f32>();
                let s8 = magnitude(&|b| scalar::q8_0(&q8[b..b + 1], &x[b..b + 1]));
                let s4 = magnitude(&|b| scalar::q4_0(&q4[b..b + 1], &x[b..b + 1]));
                let what = |name: &str| format!("{name} at {level}, {n} blocks");
                let want8 = scalar::q8_0(&q8, &x);
                close(q8_0_kernels().dot(&q8, &x), want8, s8, &what("q8_0"));
                let candle8 = BlockQ8_0::vec_dot(n * 32, view(&q8), view::<_, BlockQ8_0>(&x));
                close(candle8, want8, s8, &what("candle q8_0"));
                let want4 = scalar::q4_0(&q4, &x);
                close(q4_0_kernels().dot(&q4, &x), want4, s4, &what("q4_0"));
                let candle4 = BlockQ4_0::vec_dot(n * 32, view(&q4), view::<_, BlockQ8_0>(&x));
                close(candle4, want4, s4, &what("candle q4_0"));
            }
        });
    }

    #[test]
    fn bf16_dots_match_f64_at_every_level() {
        let values = crate::quantise::normal(700, 8);
        let w: Vec<bf16> = values.iter().map(|&v| bf16::from_f32(v)).collect();
        let x = crate::quantise::normal(700, 9);
        at_every_level(|level| {
            for n in [0, 1, 7, 15, 32, 64, 65, 200, 256, 700] {
                let want: f64 = (0..n).map(|i| w[i].to_f64() * x[i] as f64).sum();
                let scale: f64 = (0..n).map(|i| (w[i].to_f64() * x[i] as f64).abs()).sum();
                for got in [
                    bf16_f32(&w[..n], &x[..n]),
                    scalar::bf16_f32(&w[..n], &x[..n]),
                ] {
                    let err = (got as f64 - want).abs();
                    assert!(
                        err <= 1e-6 * scale.max(1.0),
                        "{level} n={n}: {got} vs {want}"
                    );
                }
            }
        });
    }

    #[test]
    fn activations_quantise_alike_at_every_level() {
        let mut x = crate::quantise::normal(256 * 5, 3);
        x[17] = 40.0; // an outlier sets its block's scale
        x[300..556].fill(0.0); // a block of zeros
        let reference = std::sync::Mutex::new((vec![Q8K::ZERO; 5], vec![Q8_0::ZERO; 40]));
        at_every_level(|level| {
            if level == Level::Baseline {
                let (k, q) = &mut *reference.lock().unwrap();
                quantise_q8k(&x, k);
                quantise_q8_0(&x, q);
            }
        });
        let reference = reference.into_inner().unwrap();
        at_every_level(|level| {
            let mut k = vec![Q8K::ZERO; 5];
            let mut q = vec![Q8_0::ZERO; 40];
            quantise_q8k(&x, &mut k);
            quantise_q8_0(&x, &mut q);
            for (a, b) in k.iter().zip(&reference.0) {
                assert!(
                    a.d == b.d && a.qs == b.qs && a.bsums == b.bsums,
                    "Q8_K at {level}"
                );
            }
            for (a, b) in q.iter().zip(&reference.1) {
                assert!(a.d == b.d && a.qs == b.qs, "Q8_0 at {level}");
            }
        });
        let (k, _) = reference;
        assert_eq!(k[0].qs[17], 127);
        assert!(k[1].qs[44..].iter().chain(&k[2].qs[..44]).all(|&q| q == 0));
        for b in &k {
            for (s, q) in b.bsums.iter().zip(b.qs.chunks_exact(16)) {
                assert_eq!(*s, q.iter().map(|&v| v as i16).sum::<i16>());
            }
            let back: Vec<f32> = b.qs.iter().map(|&q| q as f32 * b.d).collect();
            assert!(back.iter().all(|v| v.is_finite()));
        }
    }
}
