//! The ggml block layouts the hot kernels read, with their fields in the open.
//!
//! Candle defines the same `repr(C)` structs (and its GGUF reader, dequantisers and reference
//! quantisers use them), but keeps their fields private; these mirror them byte for byte, and
//! [`view`] reads a slice of one as the other.

use candle_core::quantized::k_quants::{BlockQ4K, BlockQ4_0, BlockQ6K, BlockQ8K, BlockQ8_0};
use half::f16;

/// 32 values `d·q`, `q` in [−127, 127] (ggml's quantiser writes no −128, and the AVX2 kernel
/// relies on it: it moves signs between operands).
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct Q8_0 {
    pub d: f16,
    pub qs: [i8; 32],
}

/// 32 values `d·(q − 8)`, value `i` in the low nibble of byte `i` and value `16 + i` in its high
/// nibble.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct Q4_0 {
    pub d: f16,
    pub qs: [u8; 16],
}

/// 256 activations `d·q` and the sums of each 16 `q`, the companion of the k-quants.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct Q8K {
    pub d: f32,
    pub qs: [i8; 256],
    pub bsums: [i16; 16],
}

/// 256 values in 8 sub-blocks of 32, `d·sc·q − dmin·m` with 6-bit `sc`, `m` packed in `scales`
/// (see [`Q4K::scale_min`]); sub-blocks `2p` and `2p + 1` are the low and high nibbles of
/// `qs[32p..32p + 32]`.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct Q4K {
    pub d: f16,
    pub dmin: f16,
    pub scales: [u8; 12],
    pub qs: [u8; 128],
}

/// 256 values in 16 sub-blocks of 16, `d·sc·(q − 32)` with 6-bit `q`: per half of 128 values,
/// the low nibbles in `ql` (values `l`, `l + 32` in bytes `l`, `l + 32`, and `l + 64`, `l + 96`
/// in their high nibbles) and the top two bits of all four in `qh[l]`.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct Q6K {
    pub ql: [u8; 128],
    pub qh: [u8; 64],
    pub scales: [i8; 16],
    pub d: f16,
}

impl Q4K {
    /// Sub-block `j`'s 6-bit scale and min: the low 6 bits of bytes `j` and `j + 4` for the
    /// first four, nibbles of bytes 8–11 and the top bits of bytes 0–7 for the rest.
    #[inline(always)]
    pub fn scale_min(&self, j: usize) -> (u8, u8) {
        let s = &self.scales;
        if j < 4 {
            (s[j] & 63, s[j + 4] & 63)
        } else {
            (
                (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4),
                (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
            )
        }
    }
}

impl Q4K {
    /// All eight scales and mins at once, with word-wide masks and shifts: the same values as
    /// [`Q4K::scale_min`].
    #[inline(always)]
    pub fn scales_mins(&self) -> ([u8; 8], [u8; 8]) {
        const LOW6: u32 = 0x3f3f_3f3f;
        const LOW4: u32 = 0x0f0f_0f0f;
        const TOP2: u32 = 0x0303_0303;
        let word = |i: usize| u32::from_le_bytes(self.scales[4 * i..4 * i + 4].try_into().unwrap());
        let (w0, w1, w2) = (word(0), word(1), word(2));
        // Sub-blocks 4–7 take their low four bits from bytes 8–11 and their top two from the
        // top bits of bytes 0–3 (scales) or 4–7 (mins).
        let scales_hi = (w2 & LOW4) | (((w0 >> 6) & TOP2) << 4);
        let mins_hi = ((w2 >> 4) & LOW4) | (((w1 >> 6) & TOP2) << 4);
        let join = |lo: u32, hi: u32| (lo as u64 | (hi as u64) << 32).to_le_bytes();
        (join(w0 & LOW6, scales_hi), join(w1 & LOW6, mins_hi))
    }
}

/// A block type read through another of identical layout.
///
/// # Safety
/// `Self` and `Other` must have the same size, alignment and meaning of every byte.
pub unsafe trait SameLayout<Other> {}

macro_rules! same_layout {
    ($($ours:ty = $candle:ty),* $(,)?) => {$(
        const _: () = assert!(size_of::<$ours>() == size_of::<$candle>());
        const _: () = assert!(align_of::<$ours>() == align_of::<$candle>());
        // SAFETY: both are `repr(C)` with the same fields in the same order (sizes and
        // alignments asserted above).
        unsafe impl SameLayout<$ours> for $candle {}
        // SAFETY: as above.
        unsafe impl SameLayout<$candle> for $ours {}
    )*};
}
same_layout!(
    Q8_0 = BlockQ8_0,
    Q4_0 = BlockQ4_0,
    Q8K = BlockQ8K,
    Q4K = BlockQ4K,
    Q6K = BlockQ6K
);

/// `blocks` read as `U`s.
pub fn view<T: SameLayout<U>, U>(blocks: &[T]) -> &[U] {
    // SAFETY: `SameLayout` guarantees identical size, alignment and byte meaning.
    unsafe { std::slice::from_raw_parts(blocks.as_ptr().cast(), blocks.len()) }
}

/// `blocks` written as `U`s.
pub fn view_mut<T: SameLayout<U>, U>(blocks: &mut [T]) -> &mut [U] {
    // SAFETY: as in `view`; the borrow is exclusive.
    unsafe { std::slice::from_raw_parts_mut(blocks.as_mut_ptr().cast(), blocks.len()) }
}
