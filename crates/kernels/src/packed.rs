//! Matrices stored packed (bf16 or a ggml block quantisation), and their products with f32
//! activations.
//!
//! Decoding (one activation row) runs the dispatched dot products of [`crate::dot`] on the
//! packed rows (candle's for the rarer GGUF block types), split by output rows across the rayon
//! pool and streamed two rows at a time with prefetching ([`streamed`]): it is bound by how fast
//! the weights arrive.  Prefill (many rows) is arithmetic-bound instead.  Q4_K and Q6_K weights
//! run the integer row kernels of [`crate::dot`] on quantised activations, a few activation
//! rows per weight row ([`tiled_groups`]).  The other formats widen a tile of weight rows once,
//! while it is in cache, and multiply the whole activation block with it, on AMX tiles where
//! the CPU has them ([`amx`]), otherwise through the `gemm` crate's register-blocked f32 kernels.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use candle_core::quantized::k_quants::{
    BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1, BlockQ6K,
    BlockQ8K, BlockQ8_0, BlockQ8_1, GgmlType,
};
use candle_core::quantized::GgmlDType;
use candle_core::Result;
use half::bf16;
use half::f16;
use rayon::prelude::*;

use crate::amx;
use crate::blocks::{self, SameLayout};
use crate::dot;
use crate::quantise::Quantise;

/// How the decoder's large matrices are stored after loading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightFormat {
    /// As candle tensors in the activation dtype (the parity path, and the GPU path).
    #[default]
    Dense,
    Bf16,
    Q8_0,
    /// 4-bit k-quants for the layers, 6-bit for the LM head (llama.cpp's Q4_K_M recipe).
    Q4K,
    Q4_0,
}

impl FromStr for WeightFormat {
    type Err = UnknownWeightFormat;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s.to_ascii_lowercase().replace('-', "_").as_str() {
            "f32" | "dense" | "none" => Ok(Self::Dense),
            "bf16" => Ok(Self::Bf16),
            "q8_0" | "q8" => Ok(Self::Q8_0),
            "q4k" | "q4_k" | "q4_k_m" => Ok(Self::Q4K),
            "q4_0" => Ok(Self::Q4_0),
            _ => Err(UnknownWeightFormat(s.to_string())),
        }
    }
}

/// A weight format name that [`WeightFormat`] does not know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownWeightFormat(pub String);

impl fmt::Display for UnknownWeightFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown weight format {:?}; expected one of f32, bf16, q8_0, q4k, q4_0",
            self.0
        )
    }
}

impl std::error::Error for UnknownWeightFormat {}

impl WeightFormat {
    /// Bytes that `elements` weights take in this format, as [`pack`] stores them (`output`:
    /// the LM head's recipe); `Dense` holds f32.
    pub fn bytes(self, elements: u64, output: bool) -> u64 {
        let per_block = |block: u64, size: usize| elements.div_ceil(block) * size as u64;
        match self {
            Self::Dense => elements * 4,
            Self::Bf16 => elements * 2,
            Self::Q8_0 => per_block(32, std::mem::size_of::<BlockQ8_0>()),
            Self::Q4K if output => per_block(256, std::mem::size_of::<BlockQ6K>()),
            Self::Q4K => per_block(256, std::mem::size_of::<BlockQ4K>()),
            Self::Q4_0 => per_block(32, std::mem::size_of::<BlockQ4_0>()),
        }
    }
}

impl fmt::Display for WeightFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Dense => "f32",
            Self::Bf16 => "bf16",
            Self::Q8_0 => "q8_0",
            Self::Q4K => "q4k",
            Self::Q4_0 => "q4_0",
        })
    }
}

/// A matrix `[rows, cols]` (checkpoint layout `[out, in]`) stored row by row in blocks of `T`.
struct Packed<T: GgmlType> {
    blocks: Blocks<T>,
    rows: usize,
    cols: usize,
}

/// Zero-initialised block storage in its own anonymous mapping, which on Linux asks for
/// transparent huge pages: decoding streams every weight once per token, and 2 MiB pages cut the
/// TLB misses of that stream.
struct Blocks<T> {
    map: memmap2::MmapMut,
    len: usize,
    _blocks: std::marker::PhantomData<T>,
}

impl<T: GgmlType> Blocks<T> {
    fn zeroed(len: usize) -> Self {
        let bytes = (len * std::mem::size_of::<T>()).max(1);
        let map = memmap2::MmapMut::map_anon(bytes)
            .unwrap_or_else(|e| panic!("cannot allocate {bytes} bytes for weights: {e}"));
        #[cfg(target_os = "linux")]
        let _ = map.advise(memmap2::Advice::HugePage);
        Self {
            map,
            len,
            _blocks: std::marker::PhantomData,
        }
    }

    fn as_slice(&self) -> &[T] {
        // SAFETY: the mapping is page-aligned, `len` blocks long, and all-zero bytes are a valid
        // block (ggml blocks are plain integers and f16 scales; `GgmlType::zeros` relies on it).
        unsafe { std::slice::from_raw_parts(self.map.as_ptr() as *const T, self.len) }
    }

    fn as_mut_slice(&mut self) -> &mut [T] {
        // SAFETY: as in `as_slice`, and `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.map.as_mut_ptr() as *mut T, self.len) }
    }
}

pub trait PackedMatmul: Send + Sync {
    /// `x` `[m, cols]` row-major → `[m, rows]` row-major.
    fn matmul(&self, x: &[f32], m: usize) -> Vec<f32>;
    fn rows(&self) -> usize;
    fn cols(&self) -> usize;
}

/// Writes row `r` of a matrix as f32 into the buffer; called from several threads at once.
pub type RowSource<'a> = &'a (dyn Fn(usize, &mut [f32]) + Sync);

impl<T: Quantise + 'static> Packed<T> {
    fn new(rows: usize, cols: usize, row: RowSource) -> Self {
        let per_row = cols / T::BLCK_SIZE;
        let mut blocks = Blocks::<T>::zeroed(rows * per_row);
        blocks
            .as_mut_slice()
            .par_chunks_mut(per_row)
            .with_min_len(16)
            .enumerate()
            .for_each_init(
                || vec![0f32; cols],
                |buf, (r, dst)| {
                    row(r, buf);
                    T::quantise(buf, dst);
                },
            );
        Self { blocks, rows, cols }
    }
}

impl<T: Kernel> Packed<T> {
    /// Take ready-made blocks (`rows` rows of `cols / BLCK_SIZE` blocks each) as they are.
    fn from_bytes(rows: usize, cols: usize, bytes: &[u8]) -> Self {
        let mut blocks = Blocks::<T>::zeroed(rows * (cols / T::BLCK_SIZE));
        blocks.map[..bytes.len()].copy_from_slice(bytes);
        Self { blocks, rows, cols }
    }

    /// The matrix in Q8_0, for a block type whose dot product cannot take its rows (an odd
    /// number of [`Kernel::EVEN_BLOCKS`] blocks): Q8_0 has the same 32-value blocks and its
    /// 8-bit rounding is a small fraction of the 4- and 5-bit formats' own.
    fn requantised_q8_0(&self) -> Packed<BlockQ8_0> {
        debug_assert_eq!(T::BLCK_SIZE, BlockQ8_0::BLCK_SIZE);
        let per_row = self.cols / T::BLCK_SIZE;
        let blocks = self.blocks.as_slice();
        Packed::new(self.rows, self.cols, &|r, out| {
            T::widen(&blocks[r * per_row..][..per_row], out)
        })
    }

    /// Tiles of weight rows widened to f32 and multiplied with all `m` rows by `gemm`: the
    /// prefill path.
    fn matmul_gemm(&self, x: &[f32], m: usize) -> Vec<f32> {
        if self.cols >= amx::MIN_DIM && amx::available() {
            return self.matmul_amx(x, m);
        }
        let k = self.cols;
        let per_row = k / T::BLCK_SIZE;
        // A tile of widened rows fits in L2 beside the kernel's packed panels.
        let tile = (TILE_FLOATS / k).clamp(8, 256);
        let blocks = self.blocks.as_slice();
        // Column-major activations are the kernel's left operand as is: no packing per tile.
        let x_t = transpose(x, m, k);
        let mut out_t = vec![0f32; self.rows * m];
        out_t.par_chunks_mut(tile * m).enumerate().for_each_init(
            Vec::new,
            |w: &mut Vec<f32>, (t, dst)| {
                let n = dst.len() / m;
                w.resize(n * k, 0.0);
                let first = t * tile * per_row;
                widen_prefetched(&blocks[first..first + n * per_row], w);
                // dst[i, j] at i + j·m and x[i, c] at i + c·m (column-major, what the
                // micro-kernel prefers), w[j, c] at j·k + c read as the right operand (c, j).
                // SAFETY: the strides and sizes above describe exactly the three buffers.
                unsafe {
                    gemm::gemm(
                        m,
                        n,
                        k,
                        dst.as_mut_ptr(),
                        m as isize,
                        1,
                        false,
                        x_t.as_ptr(),
                        m as isize,
                        1,
                        w.as_ptr(),
                        k as isize,
                        1,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    )
                }
            },
        );
        transpose(&out_t, self.rows, m)
    }
}

impl<T: Kernel> Packed<T> {
    /// The prefill path on AMX tiles ([`amx`]): each task widens a tile of weight rows, packs
    /// it as bf16 tiles and multiplies every activation row with it.  Quantised and bf16
    /// weights are exact or nearly so in bf16 (the rounding is far below the quantisation
    /// error), and their activations are taken in bf16 too, as llama.cpp does for bf16 weights
    /// (its q8 activations are coarser still); f32 and f16 weights keep both low parts.
    fn matmul_amx(&self, x: &[f32], m: usize) -> Vec<f32> {
        let (k, n) = (self.cols, self.rows);
        let per_row = k / T::BLCK_SIZE;
        // Whole AMX blocks of rows, as many as fit the widening budget.
        let tile = (TILE_FLOATS / k).clamp(32, 256) / 32 * 32;
        let keep_low = matches!(T::DTYPE, GgmlDType::F32 | GgmlDType::F16);
        // The weight tile is the tiles' row operand, which takes rows as they are; the
        // activations take the pair-interleaved column layout, packed once per call.
        let acts = amx::PackedWeights::pack_with(x, m, k, keep_low);
        let blocks = self.blocks.as_slice();
        let parts: Vec<Vec<f32>> = (0..n.div_ceil(tile))
            .into_par_iter()
            .map_init(amx::PackedRows::default, |packed, t| {
                let (first, rows) = (t * tile, tile.min(n - t * tile));
                // Each row is widened into L1 and packed from there.
                let row = |r: usize, out: &mut [f32]| {
                    widen_prefetched(&blocks[(first + r) * per_row..][..per_row], out)
                };
                packed.repack_rows(rows, k, keep_low, &row);
                acts.matmul_packed(packed) // [rows, m]
            })
            .collect();
        let mut out = vec![0f32; m * n];
        out.par_chunks_mut(n).enumerate().for_each(|(i, row)| {
            for (t, part) in parts.iter().enumerate() {
                let width = part.len() / m;
                for (o, p) in row[t * tile..][..width]
                    .iter_mut()
                    .zip(part[i..].iter().step_by(m))
                {
                    *o = *p;
                }
            }
        });
        out
    }
}

/// Evaluates `$body` with `$t` standing for the block type of ggml dtype `$dtype`.
macro_rules! with_block_type {
    ($dtype:expr, $t:ident => $body:expr) => {
        match $dtype {
            GgmlDType::F32 => {
                type $t = f32;
                $body
            }
            GgmlDType::F16 => {
                type $t = f16;
                $body
            }
            GgmlDType::BF16 => {
                type $t = bf16;
                $body
            }
            GgmlDType::Q4_0 => {
                type $t = BlockQ4_0;
                $body
            }
            GgmlDType::Q4_1 => {
                type $t = BlockQ4_1;
                $body
            }
            GgmlDType::Q5_0 => {
                type $t = BlockQ5_0;
                $body
            }
            GgmlDType::Q5_1 => {
                type $t = BlockQ5_1;
                $body
            }
            GgmlDType::Q8_0 => {
                type $t = BlockQ8_0;
                $body
            }
            GgmlDType::Q8_1 => {
                type $t = BlockQ8_1;
                $body
            }
            GgmlDType::Q2K => {
                type $t = BlockQ2K;
                $body
            }
            GgmlDType::Q3K => {
                type $t = BlockQ3K;
                $body
            }
            GgmlDType::Q4K => {
                type $t = BlockQ4K;
                $body
            }
            GgmlDType::Q5K => {
                type $t = BlockQ5K;
                $body
            }
            GgmlDType::Q6K => {
                type $t = BlockQ6K;
                $body
            }
            GgmlDType::Q8K => {
                type $t = BlockQ8K;
                $body
            }
        }
    };
}

/// Bytes of `elements` values stored as `dtype`; `None` when its blocks do not divide them.
pub fn ggml_bytes(dtype: GgmlDType, elements: usize) -> Option<usize> {
    if !elements.is_multiple_of(dtype.block_size()) {
        return None;
    }
    (elements / dtype.block_size()).checked_mul(dtype.type_size())
}

/// Decode `out.len()` values stored as `dtype` in `bytes` (exactly `ggml_bytes` long, aligned
/// to the block type, as GGUF tensor data is).
pub fn dequantize_into(dtype: GgmlDType, bytes: &[u8], out: &mut [f32]) {
    with_block_type!(dtype, T => {
        assert_eq!(Some(bytes.len()), ggml_bytes(dtype, out.len()), "dequantising {dtype:?}");
        assert!(bytes.as_ptr().cast::<T>().is_aligned(), "misaligned {dtype:?} data");
        // SAFETY: length and alignment checked above; ggml blocks are plain integers and
        // half floats, valid for any bit pattern.
        let blocks = unsafe {
            std::slice::from_raw_parts(bytes.as_ptr().cast::<T>(), bytes.len() / size_of::<T>())
        };
        T::to_float(blocks, out)
    })
}

/// The few-rows (decode) product of a block type, and its widening for the prefill path.
trait Kernel: GgmlType + 'static {
    /// Whether candle's dot product must be given an even number of blocks: its Q4_1, Q5_0 and
    /// Q5_1 kernels assert so (in debug builds; their arithmetic is block by block), after
    /// ggml's, which processes these blocks in pairs.
    const EVEN_BLOCKS: bool = false;

    fn widen(blocks: &[Self], out: &mut [f32]) {
        Self::to_float(blocks, out)
    }

    /// The many-rows (prefill) product on an integer micro-kernel, where this block type and
    /// level have one; `None` sends it to the widened f32 product.
    fn matmul_rows(_: &Packed<Self>, _: &[f32], _: usize) -> Option<Vec<f32>> {
        None
    }

    /// Row-by-row dot products with the activations in the kernel's companion format (q8 blocks
    /// for quantised weights).
    fn matmul_dot(p: &Packed<Self>, x: &[f32], m: usize) -> Vec<f32> {
        let k = p.cols;
        let per_row = k / Self::BLCK_SIZE;
        // Every companion format has the weight format's block length, so weight block `b`
        // meets activation block `b`.
        debug_assert_eq!(Self::VecDotType::BLCK_SIZE, Self::BLCK_SIZE);
        let mut xq = vec![Self::VecDotType::zeros(); m * per_row];
        xq.par_chunks_mut(per_row)
            .zip(x.par_chunks(k))
            .for_each(|(dst, src)| Self::VecDotType::from_float(src, dst));
        dot_rows(p, m, |w, first, i| {
            let a = &xq[i * per_row + first..][..w.len()];
            Self::vec_dot(w.len() * Self::BLCK_SIZE, w, a)
        })
    }
}

impl Kernel for BlockQ8_0 {
    fn matmul_dot(p: &Packed<Self>, x: &[f32], m: usize) -> Vec<f32> {
        matmul_quantised(p, x, m, blocks::Q8_0::ZERO, dot::q8_0_kernels())
    }
}
impl Kernel for BlockQ4_0 {
    fn matmul_dot(p: &Packed<Self>, x: &[f32], m: usize) -> Vec<f32> {
        matmul_quantised(p, x, m, blocks::Q8_0::ZERO, dot::q4_0_kernels())
    }
}
impl Kernel for BlockQ4K {
    fn widen(blocks: &[Self], out: &mut [f32]) {
        crate::quantise::widen_q4k(blocks, out)
    }

    fn matmul_dot(p: &Packed<Self>, x: &[f32], m: usize) -> Vec<f32> {
        matmul_quantised(p, x, m, blocks::Q8K::ZERO, dot::q4k_kernels())
    }

    fn matmul_rows(p: &Packed<Self>, x: &[f32], m: usize) -> Option<Vec<f32>> {
        matmul_row_kernel(p, x, m, blocks::Q8K::ZERO, dot::q4k_kernels())
    }
}
impl Kernel for BlockQ6K {
    fn matmul_dot(p: &Packed<Self>, x: &[f32], m: usize) -> Vec<f32> {
        matmul_quantised(p, x, m, blocks::Q8K::ZERO, dot::q6k_kernels())
    }

    fn matmul_rows(p: &Packed<Self>, x: &[f32], m: usize) -> Option<Vec<f32>> {
        matmul_row_kernel(p, x, m, blocks::Q8K::ZERO, dot::q6k_kernels())
    }
}

/// The many-rows product on the format's row kernel (a group of activation rows at a time, the
/// one-row dot product for the rest); `None` where the level has no row kernel.
fn matmul_row_kernel<T, W, A>(
    p: &Packed<T>,
    x: &[f32],
    m: usize,
    zero: A,
    kernels: dot::Kernels<W, A>,
) -> Option<Vec<f32>>
where
    T: Kernel + SameLayout<W>,
    A: Copy + Send + Sync,
{
    let group = kernels.row_group()?;
    let per_row = p.cols / T::BLCK_SIZE;
    let xq = quantised(x, p.cols, per_row, zero, &kernels);
    let blocks = p.blocks.as_slice();
    let act = |i: usize| &xq[i * per_row..][..per_row];
    let kernels = &kernels;
    Some(tiled_groups(m, p.rows, group, group, |i0, live| {
        let rows: [&[A]; dot::MAX_ROWS] = std::array::from_fn(|g| act(i0 + g.min(live - 1)));
        move |r: usize, out: &mut [f32]| {
            let w = blocks::view(&blocks[r * per_row..][..per_row]);
            if live == group {
                kernels.rows(w, &rows[..group], out);
            } else {
                for (o, x) in out.iter_mut().zip(&rows) {
                    *o = kernels.dot(w, x);
                }
            }
        }
    }))
}
// Further block types a GGUF file may store, on candle's dot products.
impl Kernel for BlockQ4_1 {
    const EVEN_BLOCKS: bool = true;
}
impl Kernel for BlockQ5_0 {
    const EVEN_BLOCKS: bool = true;
}
impl Kernel for BlockQ5_1 {
    const EVEN_BLOCKS: bool = true;
}
impl Kernel for BlockQ2K {}
impl Kernel for BlockQ3K {}
impl Kernel for BlockQ5K {}
impl Kernel for BlockQ8K {}
impl Kernel for f32 {}

impl Kernel for f16 {
    /// Activations stay f32 (the model never runs in f16), weights widened exactly.
    fn matmul_dot(p: &Packed<Self>, x: &[f32], m: usize) -> Vec<f32> {
        let k = p.cols;
        dot_rows(p, m, |w, first, i| {
            w.iter()
                .zip(&x[i * k + first..])
                .map(|(w, x)| w.to_f32() * x)
                .sum()
        })
    }
}

/// Q8_1 is an activation format: candle has no weight dot product for it.
impl Kernel for BlockQ8_1 {
    fn matmul_dot(_: &Packed<Self>, _: &[f32], _: usize) -> Vec<f32> {
        unreachable!("from_blocks refuses Q8_1 weights")
    }
}

impl Kernel for bf16 {
    /// Activations stay f32.
    fn matmul_dot(p: &Packed<Self>, x: &[f32], m: usize) -> Vec<f32> {
        let k = p.cols;
        dot_rows(p, m, |w, first, i| {
            dot::bf16_f32(w, &x[i * k + first..][..w.len()])
        })
    }
}

/// The few-rows product on one of [`dot`]'s kernels: the activations quantised to its
/// companion blocks `A`, then its dot product of the weight blocks, read as `W`, with them.
fn matmul_quantised<T, W, A>(
    p: &Packed<T>,
    x: &[f32],
    m: usize,
    zero: A,
    kernels: dot::Kernels<W, A>,
) -> Vec<f32>
where
    T: Kernel + SameLayout<W>,
    A: Copy + Send + Sync,
{
    let per_row = p.cols / T::BLCK_SIZE;
    let xq = quantised(x, p.cols, per_row, zero, &kernels);
    dot_rows(p, m, |w, first, i| {
        kernels.dot(blocks::view(w), &xq[i * per_row + first..][..w.len()])
    })
}

/// Rows of `k` activations, each quantised to `per_row` blocks `A` for `kernels`, in parallel.
fn quantised<W, A: Copy + Send + Sync>(
    x: &[f32],
    k: usize,
    per_row: usize,
    zero: A,
    kernels: &dot::Kernels<W, A>,
) -> Vec<A> {
    let mut xq = vec![zero; x.len() / k * per_row];
    xq.par_chunks_mut(per_row)
        .zip(x.par_chunks(k))
        .for_each(|(dst, src)| kernels.quantise(src, dst));
    xq
}

/// `out[i, r]` for `m` activation rows, from `dot(w, first, i)`: the dot product of the weight
/// blocks `w` (a run of row `r` starting at block `first`) with activation row `i`'s matching
/// part.
fn dot_rows<T: Kernel, F>(p: &Packed<T>, m: usize, dot: F) -> Vec<f32>
where
    F: Fn(&[T], usize, usize) -> f32 + Sync,
{
    let per_row = p.cols / T::BLCK_SIZE;
    let blocks = p.blocks.as_slice();
    if m == 1 {
        let pairs = if T::EVEN_BLOCKS { 2 } else { 1 };
        return streamed(blocks, per_row, pairs, |w, first| dot(w, first, 0));
    }
    tiled(m, p.rows, |i, r| {
        dot(&blocks[r * per_row..][..per_row], 0, i)
    })
}

/// From this many activation rows on, the widened-tile GEMM beats row-by-row dot products.
const GEMM_MIN_ROWS: usize = 8;

/// f32 elements of weight widened per GEMM task (1 MiB).
const TILE_FLOATS: usize = 1 << 18;

impl<T: Kernel> PackedMatmul for Packed<T> {
    fn matmul(&self, x: &[f32], m: usize) -> Vec<f32> {
        if m >= GEMM_MIN_ROWS {
            let on_tiles = self.cols >= amx::MIN_DIM && amx::available();
            match (!on_tiles).then(|| T::matmul_rows(self, x, m)).flatten() {
                Some(out) => out,
                None => self.matmul_gemm(x, m),
            }
        } else {
            T::matmul_dot(self, x, m)
        }
    }

    fn rows(&self) -> usize {
        self.rows
    }

    fn cols(&self) -> usize {
        self.cols
    }
}

/// `[n, m]` row-major → `[m, n]` row-major.
fn transpose(src: &[f32], n: usize, m: usize) -> Vec<f32> {
    let mut out = vec![0f32; m * n];
    out.par_chunks_mut(n).enumerate().for_each(|(i, row)| {
        for (r, v) in row.iter_mut().enumerate() {
            *v = src[r * m + i];
        }
    });
    out
}

/// Weight rows read side by side in one decoding task, from far-apart stripes of its chunk.
const STREAMS: usize = 2;
/// Bytes of one row consumed before moving to the next stream.
const SEGMENT_BYTES: usize = 1024;
/// How far ahead of each stream's position its cache lines are requested.
const PREFETCH_BYTES: usize = 1536;

/// One activation row against every weight row (`blocks`, `per_row` blocks each): `dot(w,
/// first)` gives a run of a row's blocks starting at block `first` times the matching
/// activations.  Decoding is bound by how fast the weights stream in.  One sequential stream
/// per core left much of the bandwidth unused on the 2-core Xeon: each task reads far-apart
/// rows in turns of about 1 KiB and prefetches ahead in each.  Four such streams took candle's
/// q8_0 kernel there from 16 to 26 GB/s and its Q4_K kernel from 8.5 to 25 GB/s; on Zen 5,
/// whose prefetchers follow one stream well, four cost 5-25 % of decode against one or two, and
/// two were within noise of the best at every format.  Runs are whole multiples of `granule`
/// blocks where the row allows (see [`Kernel::EVEN_BLOCKS`]).
fn streamed<T: Sync, F>(blocks: &[T], per_row: usize, granule: usize, dot: F) -> Vec<f32>
where
    F: Fn(&[T], usize) -> f32 + Sync,
{
    let n = blocks.len() / per_row;
    let block_bytes = size_of::<T>();
    let segment = (SEGMENT_BYTES / block_bytes / granule * granule).clamp(granule, per_row);
    let chunk = chunk_rows(n);
    let mut out = vec![0f32; n];
    out.par_chunks_mut(chunk).enumerate().for_each(|(c, o)| {
        let stripe = o.len().div_ceil(STREAMS);
        let base = &blocks[c * chunk * per_row..][..o.len() * per_row];
        for j in 0..stripe {
            // Stream `s` reads local row `s · stripe + j`; the last stripe may be short.
            let live = (o.len() - j).div_ceil(stripe).min(STREAMS);
            let rows: [&[T]; STREAMS] = std::array::from_fn(|s| {
                let r = (s * stripe + j).min(o.len() - 1);
                &base[r * per_row..][..per_row]
            });
            let mut acc = [0f32; STREAMS];
            let mut first = 0;
            while first < per_row {
                let end = (first + segment).min(per_row);
                for (a, row) in acc[..live].iter_mut().zip(&rows) {
                    let w = &row[first..end];
                    prefetch(w.as_ptr().cast(), PREFETCH_BYTES, size_of_val(w));
                    *a += dot(w, first);
                }
                first = end;
            }
            for (s, a) in acc[..live].iter().enumerate() {
                o[s * stripe + j] = *a;
            }
        }
    });
    out
}

/// Bytes of weight blocks widened at a time by [`widen_prefetched`], and how far ahead of them
/// it asks for the next.
const WIDEN_STEP_BYTES: usize = 1024;
const WIDEN_AHEAD_BYTES: usize = 4096;

/// `T::widen`, requesting the cache lines a few kilobytes ahead as it goes: the prefill path
/// widens weights straight from memory, and without this its loads were its hot spot.
fn widen_prefetched<T: Kernel>(blocks: &[T], out: &mut [f32]) {
    let step = (WIDEN_STEP_BYTES / size_of::<T>()).max(1);
    for (b, o) in blocks.chunks(step).zip(out.chunks_mut(step * T::BLCK_SIZE)) {
        prefetch(b.as_ptr().cast(), WIDEN_AHEAD_BYTES, size_of_val(b));
        T::widen(b, o);
    }
}

/// Ask for the cache lines of `len` bytes starting `ahead` bytes past `at`.  A hint only:
/// addresses past the matrix are harmless (prefetches never fault).
#[inline(always)]
fn prefetch(at: *const u8, ahead: usize, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        let mut line = 0;
        while line < len {
            let p = at.wrapping_add(ahead + line).cast::<i8>();
            // SAFETY: a prefetch reads nothing architecturally and cannot fault, whatever `p` is.
            unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p) };
            line += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (at, ahead, len);
}

/// Weight rows per parallel task out of `n`: enough chunks to balance the pool, few enough that
/// each amortises its scheduling.
fn chunk_rows(n: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    (n / (threads * 8)).clamp(16, 512)
}

/// Activation rows the few-rows product handles per pass over a column chunk: keeps both
/// operands in L2.
const ROW_BLOCK: usize = 32;

/// `out[i, r] = dot(i, r)` for `i < m`, `r < n`, parallel over chunks of output columns.
fn tiled<F: Fn(usize, usize) -> f32 + Sync>(m: usize, n: usize, dot: F) -> Vec<f32> {
    tiled_groups(m, n, 1, ROW_BLOCK, |i, _| {
        let dot = &dot;
        move |r: usize, out: &mut [f32]| out[0] = dot(i, r)
    })
}

/// `out[i, r]` for `i < m`, `r < n`, where `group(i0, rows)` makes the function that, given
/// `r`, fills `out[g]` with the value for activation row `i0 + g`, for `g < rows ≤ size`
/// (micro-kernels take several activation rows per weight row; what a group needs is looked up
/// once per pass, not per weight row), parallel over chunks of output columns.  Each pass takes
/// `pass` activation rows through the chunk's weight rows.  The micro-kernels pass one group
/// at a time, which stays in L1 while the weights stream from L2: on Zen 5 that was 18–40 %
/// faster than passes of 32 rows, which spill L1 on every weight row.
fn tiled_groups<F, G>(m: usize, n: usize, size: usize, pass: usize, group: F) -> Vec<f32>
where
    F: Fn(usize, usize) -> G + Sync,
    G: Fn(usize, &mut [f32]),
{
    assert!(size <= dot::MAX_ROWS);
    let chunk = chunk_rows(n);
    let mut out = vec![0f32; m * n];
    column_blocks(&mut out, m, n, chunk).for_each(|mut block| {
        let mut values = [0f32; dot::MAX_ROWS];
        for i0 in (0..m).step_by(pass) {
            let i1 = (i0 + pass).min(m);
            let groups: Vec<(usize, usize, G)> = (i0..i1)
                .step_by(size)
                .map(|g| {
                    let rows = size.min(i1 - g);
                    (g, rows, group(g, rows))
                })
                .collect();
            for j in 0..block.width() {
                for (g, rows, fill) in &groups {
                    let values = &mut values[..*rows];
                    fill(block.first() + j, values);
                    for (i, &v) in (*g..).zip(values.iter()) {
                        block.set(i, j, v);
                    }
                }
            }
        }
    });
    out
}

/// One task's share of a row-major `[m, n]` output that tasks fill in parallel, each its own
/// run of columns: the products write their results in place, with no column-major copy to
/// transpose afterwards (that transpose and its buffer took about 5 % of a q4k prefill).
struct ColumnBlock<'a> {
    out: *mut f32,
    m: usize,
    n: usize,
    first: usize,
    width: usize,
    _out: std::marker::PhantomData<&'a mut [f32]>,
}

// SAFETY: the blocks of one output cover disjoint columns, and a block writes only its own.
unsafe impl Send for ColumnBlock<'_> {}

impl ColumnBlock<'_> {
    fn first(&self) -> usize {
        self.first
    }

    fn width(&self) -> usize {
        self.width
    }

    /// `out[i, first + j] = v`.
    #[inline(always)]
    fn set(&mut self, i: usize, j: usize, v: f32) {
        assert!(i < self.m && j < self.width);
        // SAFETY: in bounds (above) and in this block's columns, which no other block writes.
        unsafe { *self.out.add(i * self.n + self.first + j) = v }
    }
}

/// The `[m, n]` output `out` as blocks of `width` columns, in parallel.
fn column_blocks(
    out: &mut [f32],
    m: usize,
    n: usize,
    width: usize,
) -> impl ParallelIterator<Item = ColumnBlock<'_>> {
    assert_eq!(out.len(), m * n);
    let base = out.as_mut_ptr() as usize;
    (0..n.div_ceil(width)).into_par_iter().map(move |c| {
        let first = c * width;
        ColumnBlock {
            out: base as *mut f32,
            m,
            n,
            first,
            width: width.min(n - first),
            _out: std::marker::PhantomData,
        }
    })
}

/// Pack a `[rows, cols]` matrix whose rows `row` produces (in parallel) in `format`; `output`
/// selects the output-projection recipe (6-bit where the other matrices get 4-bit, as llama.cpp's
/// Q4_K_M does).  Rows that the format's blocks do not divide fall back to q8_0, then bf16.
pub fn pack(
    rows: usize,
    cols: usize,
    format: WeightFormat,
    output: bool,
    row: RowSource,
) -> Arc<dyn PackedMatmul> {
    let fits = |block: usize| cols.is_multiple_of(block);
    match format {
        WeightFormat::Q4K if output && fits(256) => {
            Arc::new(Packed::<BlockQ6K>::new(rows, cols, row))
        }
        WeightFormat::Q4K if fits(256) => Arc::new(Packed::<BlockQ4K>::new(rows, cols, row)),
        WeightFormat::Q4_0 if fits(32) => Arc::new(Packed::<BlockQ4_0>::new(rows, cols, row)),
        // q8_0, and the 4-bit formats on rows their blocks do not divide.
        WeightFormat::Q8_0 | WeightFormat::Q4K | WeightFormat::Q4_0 if fits(32) => {
            Arc::new(Packed::<BlockQ8_0>::new(rows, cols, row))
        }
        _ => Arc::new(Packed::<bf16>::new(rows, cols, row)),
    }
}

/// A `[rows, cols]` matrix already stored as `dtype` (a GGUF tensor's bytes), kept in its
/// blocks: no re-quantisation, except for rows whose paired-block dot product cannot take them
/// (Q4_1, Q5_0 and Q5_1 with an odd number of blocks per row), which are converted to Q8_0.
pub fn from_blocks(
    dtype: GgmlDType,
    rows: usize,
    cols: usize,
    bytes: &[u8],
) -> Result<Arc<dyn PackedMatmul>> {
    if ggml_bytes(dtype, cols).map(|b| b * rows) != Some(bytes.len()) {
        candle_core::bail!(
            "{} bytes do not hold a {rows}x{cols} matrix of {dtype:?} blocks",
            bytes.len()
        );
    }
    if dtype == GgmlDType::Q8_1 {
        candle_core::bail!("Q8_1 is an activation format; a weight matrix in it is not supported");
    }
    Ok(with_block_type!(dtype, T => {
        let stored = Packed::<T>::from_bytes(rows, cols, bytes);
        if T::EVEN_BLOCKS && !(cols / T::BLCK_SIZE).is_multiple_of(2) {
            Arc::new(stored.requantised_q8_0()) as Arc<dyn PackedMatmul>
        } else {
            Arc::new(stored)
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    /// A deterministic, roughly normal matrix.
    fn matrix(rows: usize, cols: usize, seed: u64) -> Vec<f32> {
        crate::quantise::normal(rows * cols, seed)
    }

    /// The largest absolute difference of `got` from `want`, and `want`'s largest magnitude.
    fn max_error(got: &[f32], want: &[f32]) -> (f32, f32) {
        let scale = want.iter().fold(0f32, |a, v| a.max(v.abs()));
        let err = got
            .iter()
            .zip(want)
            .fold(0f32, |a, (g, w)| a.max((g - w).abs()));
        (err, scale)
    }

    fn reference(w: &[f32], x: &[f32], rows: usize, cols: usize, m: usize) -> Vec<f32> {
        let mut out = vec![0f32; m * rows];
        for i in 0..m {
            for r in 0..rows {
                out[i * rows + r] = (0..cols).map(|c| x[i * cols + c] * w[r * cols + c]).sum();
            }
        }
        out
    }

    /// Relative error of the packed product against f32, for row counts on both sides of the
    /// dot-product / GEMM switch and a row count that leaves a partial GEMM tile.
    fn check(format: WeightFormat, head: bool, max_rel: f32) {
        let (rows, cols) = (600, 512);
        let w = matrix(rows, cols, 1);
        let row = |r: usize, buf: &mut [f32]| buf.copy_from_slice(&w[r * cols..(r + 1) * cols]);
        let p = pack(rows, cols, format, head, &row);
        crate::cpu::at_every_level(|level| {
            for m in [1, 3, GEMM_MIN_ROWS, 37] {
                let x = matrix(m, cols, 2);
                let (err, scale) = max_error(&p.matmul(&x, m), &reference(&w, &x, rows, cols, m));
                assert!(
                    err <= max_rel * scale,
                    "{format} at {level}, m={m}: max error {err} vs scale {scale}"
                );
            }
        });
    }

    #[test]
    fn bf16_matmul_is_close_to_f32() {
        check(WeightFormat::Bf16, false, 1e-2);
    }

    #[test]
    fn q8_0_matmul_is_close_to_f32() {
        check(WeightFormat::Q8_0, false, 2e-2);
    }

    #[test]
    fn q4k_matmul_is_close_to_f32() {
        check(WeightFormat::Q4K, false, 1.5e-1);
        check(WeightFormat::Q4K, true, 4e-2);
    }

    /// GGUF tensors arrive as block bytes (here: candle's own quantiser): kept as they are, they
    /// multiply as the values they decode to, on both the dot-product and the GEMM path.
    #[test]
    fn ready_made_blocks_multiply_as_their_values() {
        let (rows, cols) = (40, 512);
        let w = matrix(rows, cols, 5);
        let weights = Tensor::from_vec(w.clone(), (rows, cols), &Device::Cpu).unwrap();
        for (dtype, max_err) in [
            (GgmlDType::Q8_0, 2e-2),
            (GgmlDType::Q4K, 1.5e-1),
            (GgmlDType::Q6K, 4e-2),
            (GgmlDType::BF16, 1e-2),
        ] {
            let q = candle_core::quantized::QTensor::quantize(&weights, dtype).unwrap();
            let bytes = q.data().unwrap();
            let mut values = vec![0f32; rows * cols];
            dequantize_into(dtype, &bytes, &mut values);
            let err = values
                .iter()
                .zip(&w)
                .fold(0f32, |a, (b, v)| a.max((b - v).abs()));
            assert!(err <= max_err * 2.0, "{dtype:?} decodes with error {err}");
            let p = from_blocks(dtype, rows, cols, &bytes).unwrap();
            for m in [3, GEMM_MIN_ROWS + 5] {
                let x = matrix(m, cols, 6);
                let (err, scale) =
                    max_error(&p.matmul(&x, m), &reference(&values, &x, rows, cols, m));
                // Only the activations' own 8-bit rounding (dot-product path) separates them.
                assert!(err <= 2e-2 * scale, "{dtype:?} m={m}: {err} vs {scale}");
            }
        }
        let short = from_blocks(GgmlDType::Q8_0, rows, cols, &[0u8; 10]);
        assert!(short.is_err());
        let q8_1 = vec![0u8; ggml_bytes(GgmlDType::Q8_1, cols).unwrap() * rows];
        assert!(from_blocks(GgmlDType::Q8_1, rows, cols, &q8_1).is_err());
    }

    /// Q4_1, Q5_0 and Q5_1, whose dot products take blocks in pairs, multiply correctly at any
    /// row width: an odd block count (converted to Q8_0 at load) and rows longer than one
    /// decoding segment, on the decode, dot-product and GEMM paths.
    #[test]
    fn paired_block_types_run_at_any_row_width() {
        let rows = 24;
        for dtype in [GgmlDType::Q4_1, GgmlDType::Q5_0, GgmlDType::Q5_1] {
            for blocks_per_row in [1, 3, 52, 53] {
                let cols = blocks_per_row * 32;
                let w = matrix(rows, cols, 7);
                let weights = Tensor::from_vec(w, (rows, cols), &Device::Cpu).unwrap();
                let q = candle_core::quantized::QTensor::quantize(&weights, dtype).unwrap();
                let bytes = q.data().unwrap();
                let mut values = vec![0f32; rows * cols];
                dequantize_into(dtype, &bytes, &mut values);
                let p = from_blocks(dtype, rows, cols, &bytes).unwrap();
                for m in [1, 3, GEMM_MIN_ROWS + 5] {
                    let x = matrix(m, cols, 8);
                    let (err, scale) =
                        max_error(&p.matmul(&x, m), &reference(&values, &x, rows, cols, m));
                    assert!(
                        err <= 3e-2 * scale,
                        "{dtype:?} {blocks_per_row} blocks m={m}: {err} vs {scale}"
                    );
                }
            }
        }
    }

    #[test]
    fn weight_format_parses_and_rejects() {
        assert_eq!("Q4_K_M".parse::<WeightFormat>().unwrap(), WeightFormat::Q4K);
        assert_eq!("q8_0".parse::<WeightFormat>().unwrap(), WeightFormat::Q8_0);
        let err = "q3".parse::<WeightFormat>().unwrap_err().to_string();
        assert!(err.contains("q3") && err.contains("q8_0"), "{err}");
    }
}
