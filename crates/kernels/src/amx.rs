//! f32 matrix products on Intel AMX tiles (Xeon Sapphire Rapids and later), at close to f32
//! accuracy.
//!
//! An AMX tile multiply takes bf16 pairs and accumulates in f32, with 16× the multiply-adds per
//! cycle of AVX-512.  Each f32 operand is split into `hi`, its bf16 rounding, and `lo`, the bf16
//! rounding of what is left, and the product is taken as `hi·hi + hi·lo + lo·hi` (oneDNN's
//! "bf16×3" f32 mode): the terms left out are about 2⁻¹⁶ of the product.  Weights that are
//! exact in bf16 (every released checkpoint) have no `lo` and skip that term.  Callers whose
//! weights are quantised may also drop the activations' `lo` (a 2⁻⁹ rounding, far below the
//! weights' own error), which halves the tile work.
//!
//! Only on Linux x86-64, where the process must ask the kernel for the tile state; everything
//! else (and CPUs without AMX) keeps the caller's own path.

use std::ops::Range;

use rayon::prelude::*;

use crate::packed::RowSource;

/// Smallest weight side worth packing.  Below it the f32 path is as quick, and more exact: the
/// bf16×3 error (about 4e-6 relative) matches f32's own rounding only once a dot product sums
/// a few hundred terms.
pub const MIN_DIM: usize = 256;

/// Rows and columns of the output block one kernel call computes: a 2×2 grid of 16×16 tiles.
const BLOCK: usize = 32;
/// Inner dimension per tile step: 16 rows of 64 bytes hold 32 bf16 per row.
const K_STEP: usize = 32;
/// bf16 elements in one tile (16 rows × 32).
const TILE: usize = 512;
/// Inner-dimension slice per pass, so a task's A rows and B strip stay in the 2 MB L2.
const K_CHUNK: usize = 1536;
/// Output rows and columns per parallel task.
const TASK_ROWS: usize = 128;
const TASK_COLS: usize = 512;

/// Whether the kernels run at the AMX level (see [`crate::cpu`]).
pub fn available() -> bool {
    crate::cpu::level() == crate::cpu::Level::Amx
}

/// Whether this CPU has AMX-BF16 and the OS lets this process use its tiles (asked once, when
/// the level is detected).
pub(crate) fn enable_tiles() -> bool {
    platform::enable_tiles()
}

/// `[out, in]` f32 weights laid out as AMX B tiles (bf16 pairs of the inner dimension side by
/// side, as the tile multiply reads them), `hi` and `lo` parts interleaved per step so that a
/// kernel streams through one contiguous strip.
#[derive(Debug, Clone, Default)]
pub struct PackedWeights {
    k: usize,
    n: usize,
    /// `[n / 32][k / 32][part][tile]`, part = hi of columns 0–15, hi of 16–31, then the same
    /// for lo when `has_lo`.
    tiles: Vec<u16>,
    has_lo: bool,
}

/// `v` rounded to the nearest bf16 (ties to even), NaN kept NaN; branch-free so that loops
/// over it vectorise.
fn bf16_bits(v: f32) -> u16 {
    let bits = v.to_bits();
    let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16;
    let nan = (bits >> 16) | 0x40;
    (if v.is_nan() { nan } else { rounded }) as u16
}

/// Up to 16 weight rows of up to 32 inputs each, rounded to bf16, as one B tile: tile row r
/// holds the pairs of inputs (2r, 2r + 1) of the 16 columns side by side.
fn pack_rounded_tile<'a>(rows: impl Iterator<Item = &'a [f32]>, tile: &mut [u16]) {
    // Pairs per column first (contiguous reads, vectorised rounding), then transposed.
    let mut pairs = [[0u32; 16]; 16];
    for (col, row) in pairs.iter_mut().zip(rows) {
        let mut padded = [0f32; K_STEP];
        padded[..row.len()].copy_from_slice(row);
        for (pair, v) in col.iter_mut().zip(padded.chunks_exact(2)) {
            *pair = bf16_bits(v[0]) as u32 | (bf16_bits(v[1]) as u32) << 16;
        }
    }
    for (r, out) in tile.chunks_exact_mut(32).enumerate() {
        for (c, out) in out.chunks_exact_mut(2).enumerate() {
            let pair = pairs[c][r];
            (out[0], out[1]) = (pair as u16, (pair >> 16) as u16);
        }
    }
}

/// `v` as bf16 `hi` and `lo` with `hi + lo ≈ v` to about 2⁻¹⁷ relative.
fn split(v: f32) -> (u16, u16) {
    let hi = bf16_bits(v);
    (hi, bf16_bits(v - f32::from_bits((hi as u32) << 16)))
}

impl PackedWeights {
    /// From a row-major `[n, k]` weight (`n` outputs of `k` inputs, the checkpoint layout).
    pub fn pack(weight: &[f32], n: usize, k: usize) -> Self {
        Self::pack_with(weight, n, k, true)
    }

    /// [`Self::pack`], without a low part unless `keep_low` (the values then count as their
    /// bf16 rounding).
    pub fn pack_with(weight: &[f32], n: usize, k: usize, keep_low: bool) -> Self {
        let has_lo = keep_low && weight.iter().any(|&v| split(v).1 != 0);
        let mut packed = Self {
            k,
            n,
            tiles: Vec::new(),
            has_lo,
        };
        packed.fill(weight, n, k);
        packed
    }

    fn parts(&self) -> usize {
        if self.has_lo {
            4
        } else {
            2
        }
    }

    fn fill(&mut self, weight: &[f32], n: usize, k: usize) {
        assert_eq!(weight.len(), n * k, "weight is not [n, k]");
        let (parts, has_lo) = (self.parts(), self.has_lo);
        let strip = k.div_ceil(K_STEP) * parts * TILE;
        // Zeros first: the split packer skips padded columns.
        self.tiles = vec![0; n.div_ceil(BLOCK) * strip];
        let pack_strip = |(nb, strip): (usize, &mut [u16])| {
            for (step, tiles) in strip.chunks_mut(parts * TILE).enumerate() {
                let (k0, width) = (step * K_STEP, (k - step * K_STEP).min(K_STEP));
                if has_lo {
                    for col in 0..BLOCK.min(n - nb * BLOCK) {
                        let row = &weight[(nb * BLOCK + col) * k + k0..][..width];
                        // Row i/2 of a tile holds the pair (i even, i odd) of column `col`.
                        let at = (col / 16) * TILE + (col % 16) * 2;
                        for (i, &v) in row.iter().enumerate() {
                            let (hi, lo) = split(v);
                            tiles[at + (i / 2) * 32 + i % 2] = hi;
                            tiles[2 * TILE + at + (i / 2) * 32 + i % 2] = lo;
                        }
                    }
                } else {
                    for half in 0..2 {
                        let col0 = nb * BLOCK + half * 16;
                        let cols = 16.min(n.saturating_sub(col0));
                        let rows = (0..cols).map(|c| &weight[(col0 + c) * k + k0..][..width]);
                        pack_rounded_tile(rows, &mut tiles[half * TILE..][..TILE]);
                    }
                }
            }
        };
        self.tiles
            .par_chunks_mut(strip)
            .enumerate()
            .for_each(pack_strip);
    }

    pub fn in_dim(&self) -> usize {
        self.k
    }

    pub fn out_dim(&self) -> usize {
        self.n
    }

    /// `x · Wᵀ` for a row-major `[m, k]` input: a row-major `[m, n]` output, on all threads.
    /// Call only when [`available`] said yes.
    pub fn matmul(&self, x: &[f32], m: usize) -> Vec<f32> {
        let a = PackedRows::pack(x, m, self.k, true);
        let (m_pad, n_pad) = (a.m_pad(), self.n.div_ceil(BLOCK) * BLOCK);
        let mut out = vec![0f32; m_pad * n_pad];
        let out_ptr = SendPtr(out.as_mut_ptr());
        let (tasks_m, tasks_n) = (m_pad.div_ceil(TASK_ROWS), n_pad.div_ceil(TASK_COLS));
        let steps = a.k_pad / K_STEP;
        for step0 in (0..steps).step_by(K_CHUNK / K_STEP) {
            let steps = step0..steps.min(step0 + K_CHUNK / K_STEP);
            (0..tasks_m * tasks_n).into_par_iter().for_each(|task| {
                let (rows, cols) = (task / tasks_n * TASK_ROWS, task % tasks_n * TASK_COLS);
                // SAFETY: tasks own disjoint row × column ranges of `out`, which is
                // `m_pad × n_pad`.
                unsafe {
                    self.accumulate(
                        &a,
                        rows..(rows + TASK_ROWS).min(m_pad),
                        cols..(cols + TASK_COLS).min(n_pad),
                        steps.clone(),
                        out_ptr,
                        n_pad,
                    )
                }
            });
        }
        trim(out, m, n_pad, self.n)
    }

    /// `a · Wᵀ` in this thread: a row-major `[a.m, n]` output.  Call only when [`available`]
    /// said yes.
    pub fn matmul_packed(&self, a: &PackedRows) -> Vec<f32> {
        assert_eq!(a.k, self.k, "inputs and weights differ in width");
        let (m_pad, n_pad) = (a.m_pad(), self.n.div_ceil(BLOCK) * BLOCK);
        let mut out = vec![0f32; m_pad * n_pad];
        let steps = a.k_pad / K_STEP;
        // A slice of rows and inner dimension stays in L2 while every weight column passes it:
        // a long prompt's whole A would be fetched again for each column block.
        for step0 in (0..steps).step_by(K_CHUNK / K_STEP) {
            for rows in (0..m_pad).step_by(TASK_ROWS) {
                // SAFETY: one task at a time over the whole `m_pad × n_pad` buffer.
                unsafe {
                    self.accumulate(
                        a,
                        rows..(rows + TASK_ROWS).min(m_pad),
                        0..n_pad,
                        step0..steps.min(step0 + K_CHUNK / K_STEP),
                        SendPtr(out.as_mut_ptr()),
                        n_pad,
                    )
                };
            }
        }
        trim(out, a.m, n_pad, self.n)
    }

    /// `out[rows, cols] += a[rows, steps] · W[cols, steps]ᵀ`, block by block.
    ///
    /// # Safety
    /// `out` is a row-major buffer of `stride` columns holding every row and column asked for,
    /// which no other thread touches meanwhile; ranges are whole blocks and tile steps.
    unsafe fn accumulate(
        &self,
        a: &PackedRows,
        rows: Range<usize>,
        cols: Range<usize>,
        steps: Range<usize>,
        out: SendPtr,
        stride: usize,
    ) {
        assert!(steps.end * K_STEP <= a.k_pad && rows.end <= a.m_pad());
        let (parts, a_parts, has_a_lo) = (self.parts(), a.parts(), a.has_lo);
        let strip = (a.k_pad / K_STEP) * parts * TILE;
        platform::with_tiles(|| {
            for col0 in cols.step_by(BLOCK) {
                let b = &self.tiles[col0 / BLOCK * strip + steps.start * parts * TILE..];
                for row0 in rows.clone().step_by(BLOCK) {
                    let a = &a.tiles[row0 / BLOCK * a.block_len() + steps.start * a_parts * TILE..];
                    platform::block(Block {
                        a: a.as_ptr(),
                        b: b.as_ptr(),
                        has_a_lo,
                        has_b_lo: self.has_lo,
                        c: out.at(row0 * stride + col0),
                        c_stride: stride * 4,
                        steps: steps.len(),
                    });
                }
            }
        })
    }
}

/// The first `m` rows and `n` columns of a row-major buffer of `stride` columns.
fn trim(mut out: Vec<f32>, m: usize, stride: usize, n: usize) -> Vec<f32> {
    if stride == n {
        out.truncate(m * n);
        out
    } else {
        out.chunks(stride)
            .take(m)
            .flat_map(|r| &r[..n])
            .copied()
            .collect()
    }
}

/// `[m, k]` f32 rows as A tiles, zero-padded: `[m_pad / 32][k_pad / 32][part][tile]`, part =
/// hi of rows 0–15, hi of rows 16–31, then (when kept) lo of rows 0–15, lo of rows 16–31.
/// Contiguous per step, so the kernel reads one sequential stream instead of 64 strided rows.
#[derive(Debug, Default)]
pub struct PackedRows {
    tiles: Vec<u16>,
    has_lo: bool,
    m: usize,
    k: usize,
    k_pad: usize,
}

impl PackedRows {
    /// On all threads.  Without `keep_low` the rows are taken as their bf16 rounding.
    pub fn pack(x: &[f32], m: usize, k: usize, keep_low: bool) -> Self {
        assert_eq!(x.len(), m * k, "input is not [m, k]");
        let mut packed = Self::default();
        let row = |i: usize, row: &mut [f32]| row.copy_from_slice(&x[i * k..][..k]);
        packed.fill(m, k, keep_low, true, &row);
        packed
    }

    /// Like [`Self::pack`], in this thread, reusing this buffer, with row `i` written by
    /// `row(i, buf)`: a caller that produces its rows (widening stored weights) then needs no
    /// `[m, k]` buffer of its own, and each row is packed while it is still in L1.
    pub fn repack_rows(&mut self, m: usize, k: usize, keep_low: bool, row: RowSource) {
        self.fill(m, k, keep_low, false, row);
    }

    fn fill(&mut self, m: usize, k: usize, keep_low: bool, parallel: bool, row: RowSource) {
        (self.m, self.k, self.has_lo) = (m, k, keep_low);
        self.k_pad = k.div_ceil(K_STEP) * K_STEP;
        let (block, parts, k_pad) = (self.block_len(), self.parts(), self.k_pad);
        // Every element is written below, padding included: a reused buffer needs no zeroing.
        self.tiles.resize(m.div_ceil(BLOCK) * block, 0);
        let pack_block = |values: &mut Vec<f32>, (rb, tiles): (usize, &mut [u16])| {
            values.resize(k_pad, 0.0);
            for r in 0..BLOCK {
                match rb * BLOCK + r {
                    i if i < m => {
                        row(i, &mut values[..k]);
                        values[k..].fill(0.0);
                    }
                    _ => values.fill(0.0),
                }
                let at = (r / 16) * TILE + (r % 16) * K_STEP;
                for (tiles, values) in tiles.chunks_mut(parts * TILE).zip(values.chunks(K_STEP)) {
                    let (hi, lo) = tiles.split_at_mut(2 * TILE);
                    let hi = &mut hi[at..at + K_STEP];
                    if keep_low {
                        let lo = &mut lo[at..at + K_STEP];
                        for ((h, l), &v) in hi.iter_mut().zip(lo).zip(values) {
                            (*h, *l) = split(v);
                        }
                    } else {
                        for (h, &v) in hi.iter_mut().zip(values) {
                            *h = bf16_bits(v);
                        }
                    }
                }
            }
        };
        if parallel {
            self.tiles
                .par_chunks_mut(block)
                .enumerate()
                .for_each_init(Vec::new, pack_block);
        } else {
            let mut values = Vec::new();
            for rows in self.tiles.chunks_mut(block).enumerate() {
                pack_block(&mut values, rows);
            }
        }
    }

    fn parts(&self) -> usize {
        if self.has_lo {
            4
        } else {
            2
        }
    }

    fn m_pad(&self) -> usize {
        self.m.div_ceil(BLOCK) * BLOCK
    }

    fn block_len(&self) -> usize {
        (self.k_pad / K_STEP) * self.parts() * TILE
    }
}

/// The output buffer, shared by tasks that each write their own blocks of it.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: tasks write disjoint blocks, and the buffer outlives them.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    fn at(self, offset: usize) -> *mut f32 {
        // SAFETY: callers pass offsets inside the buffer.
        unsafe { self.0.add(offset) }
    }
}

/// One 32×32 output block for the kernel: `c += a · b` over `steps` tile steps of the inner
/// dimension.
// Elsewhere the stub kernel never reads it.
#[cfg_attr(
    not(all(target_os = "linux", target_arch = "x86_64")),
    allow(dead_code)
)]
struct Block {
    /// The A block at the first step: per step hi of the top and bottom rows, then lo if present.
    a: *const u16,
    has_a_lo: bool,
    /// The B strip at the first step: per step two hi tiles, then two lo tiles if present.
    b: *const u16,
    has_b_lo: bool,
    c: *mut f32,
    /// Bytes between C rows.
    c_stride: usize,
    steps: usize,
}

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
mod platform {
    use std::arch::asm;
    use std::arch::x86_64::__cpuid_count;

    use super::Block;

    /// cpuid 7.0 EDX: AMX-BF16 (bit 22) and AMX-TILE (bit 24); then the kernel's permission
    /// for the tile data state (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`).
    pub fn enable_tiles() -> bool {
        let edx = __cpuid_count(7, 0).edx;
        if edx & (1 << 22) == 0 || edx & (1 << 24) == 0 {
            return false;
        }
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        // SAFETY: a plain system call with integer arguments.
        unsafe {
            libc::syscall(
                libc::SYS_arch_prctl,
                ARCH_REQ_XCOMP_PERM,
                XFEATURE_XTILEDATA,
            ) == 0
        }
    }

    const TILE_BYTES: usize = 1024;

    /// The 2×2 block of tile products: C tiles tmm0..3 += A tiles tmm4/5 × B tiles tmm6/7.
    macro_rules! products {
        () => {
            "tdpbf16ps tmm0, tmm4, tmm6\n\
             tdpbf16ps tmm1, tmm4, tmm7\n\
             tdpbf16ps tmm2, tmm5, tmm6\n\
             tdpbf16ps tmm3, tmm5, tmm7"
        };
    }

    /// Palette 1, all eight tiles 16 rows of 64 bytes.
    #[repr(C, align(64))]
    struct TileConfig([u8; 64]);

    const CONFIG: TileConfig = {
        let mut c = [0u8; 64];
        c[0] = 1;
        let mut t = 0;
        while t < 8 {
            c[16 + 2 * t] = 64; // bytes per row, little-endian u16
            c[48 + t] = 16; // rows
            t += 1;
        }
        TileConfig(c)
    };

    /// Runs `f` with the tiles configured on this thread, and releases them after.
    pub fn with_tiles(f: impl FnOnce()) {
        // SAFETY: only called once `enable_tiles` succeeded; the config is valid for palette 1.
        unsafe { asm!("ldtilecfg [{}]", in(reg) &CONFIG, options(nostack, readonly)) };
        f();
        // SAFETY: returns the tiles to their initial state.
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    }

    /// # Safety
    /// Tiles configured by [`with_tiles`]; every pointer valid for the rows and steps it covers.
    pub unsafe fn block(p: Block) {
        let c2 = p.c.byte_add(16 * p.c_stride);
        // tmm0..3: C (top-left, top-right, bottom-left, bottom-right); tmm4/5: A top/bottom;
        // tmm6/7: B left/right.  Every A and B tile is 16 rows of 64 contiguous bytes.
        asm!(
            "tileloadd tmm0, [{c} + {cs}*1]",
            "tileloadd tmm1, [{c} + {cs}*1 + 64]",
            "tileloadd tmm2, [{c2} + {cs}*1]",
            "tileloadd tmm3, [{c2} + {cs}*1 + 64]",
            c = in(reg) p.c, c2 = in(reg) c2, cs = in(reg) p.c_stride,
            options(nostack, readonly),
        );
        let (mut a, mut b) = (p.a, p.b);
        let b_step = if p.has_b_lo {
            4 * TILE_BYTES
        } else {
            2 * TILE_BYTES
        };
        for _ in 0..p.steps {
            // hi·hi, then lo·hi (B's tiles stay loaded between the blocks).
            asm!(
                "tileloadd tmm4, [{a} + {s}*1]",
                "tileloadd tmm5, [{a} + {s}*1 + 1024]",
                "tileloadd tmm6, [{b} + {s}*1]",
                "tileloadd tmm7, [{b} + {s}*1 + 1024]",
                products!(),
                a = in(reg) a, b = in(reg) b, s = in(reg) 64usize,
                options(nostack, readonly),
            );
            if p.has_a_lo {
                asm!(
                    "tileloadd tmm4, [{a} + {s}*1 + 2048]",
                    "tileloadd tmm5, [{a} + {s}*1 + 3072]",
                    products!(),
                    a = in(reg) a, s = in(reg) 64usize,
                    options(nostack, readonly),
                );
            }
            if p.has_b_lo {
                // hi·lo.
                asm!(
                    "tileloadd tmm4, [{a} + {s}*1]",
                    "tileloadd tmm5, [{a} + {s}*1 + 1024]",
                    "tileloadd tmm6, [{b} + {s}*1 + 2048]",
                    "tileloadd tmm7, [{b} + {s}*1 + 3072]",
                    products!(),
                    a = in(reg) a, b = in(reg) b, s = in(reg) 64usize,
                    options(nostack, readonly),
                );
            }
            a = a.byte_add(if p.has_a_lo { 4 } else { 2 } * TILE_BYTES);
            b = b.byte_add(b_step);
        }
        asm!(
            "tilestored [{c} + {cs}*1], tmm0",
            "tilestored [{c} + {cs}*1 + 64], tmm1",
            "tilestored [{c2} + {cs}*1], tmm2",
            "tilestored [{c2} + {cs}*1 + 64], tmm3",
            c = in(reg) p.c, c2 = in(reg) c2, cs = in(reg) p.c_stride,
            options(nostack),
        );
    }
}

#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
mod platform {
    use super::Block;

    pub fn enable_tiles() -> bool {
        false
    }

    pub fn with_tiles(f: impl FnOnce()) {
        f()
    }

    /// Never called: [`super::available`] is false here.
    pub unsafe fn block(_: Block) {
        unreachable!("AMX is only used on Linux x86-64")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// True, with a note, where this machine cannot run the tile tests.
    fn skipped_without_amx() -> bool {
        if !available() {
            eprintln!("no AMX on this machine: skipped");
        }
        !available()
    }

    fn values(len: usize, seed: u32) -> Vec<f32> {
        // A cheap deterministic spread of values, exponents varied so bf16 rounding matters.
        (0..len as u32)
            .map(|i| {
                let h = (i.wrapping_mul(2654435761) ^ seed.wrapping_mul(40503)).rotate_left(7);
                (h % 20001) as f32 / 10000.0 - 1.0
            })
            .collect()
    }

    fn reference(x: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> Vec<f64> {
        let mut out = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k)
                    .map(|p| x[i * k + p] as f64 * w[j * k + p] as f64)
                    .sum();
            }
        }
        out
    }

    /// The rows of a row-major `[_, k]` matrix, as a row source.
    fn rows_of(x: &[f32], k: usize) -> impl Fn(usize, &mut [f32]) + Sync + '_ {
        move |i, row| row.copy_from_slice(&x[i * k..][..k])
    }

    fn bf16_rounded(x: &[f32]) -> Vec<f32> {
        x.iter()
            .map(|&v| half::bf16::from_f32(v).to_f32())
            .collect()
    }

    /// Largest error relative to the largest reference value.
    fn max_rel_err(got: &[f32], want: &[f64]) -> f64 {
        let scale = want.iter().fold(0f64, |s, v| s.max(v.abs()));
        got.iter()
            .zip(want)
            .fold(0f64, |e, (&g, &w)| e.max((g as f64 - w).abs()))
            / scale
    }

    #[test]
    fn products_match_f32_at_ragged_shapes() {
        if skipped_without_amx() {
            return;
        }
        // Shapes off every block size, and an inner dimension past one K chunk.
        for &(m, n, k) in &[(1, 1, 1), (37, 45, 70), (130, 600, 1600), (64, 96, 3100)] {
            let x = values(m * k, 1);
            let w = values(n * k, 2);
            let got = PackedWeights::pack(&w, n, k).matmul(&x, m);
            assert_eq!(got.len(), m * n);
            let err = max_rel_err(&got, &reference(&x, &w, m, n, k));
            assert!(err < 2e-5, "{m}×{n}×{k}: relative error {err}");
        }
    }

    #[test]
    fn bf16_exact_weights_skip_the_low_part_and_stay_exact() {
        if skipped_without_amx() {
            return;
        }
        let (m, n, k) = (40, 70, 200);
        let x = values(m * k, 3);
        let w = bf16_rounded(&values(n * k, 4));
        let packed = PackedWeights::pack(&w, n, k);
        assert!(!packed.has_lo);
        let err = max_rel_err(&packed.matmul(&x, m), &reference(&x, &w, m, n, k));
        assert!(err < 2e-5, "relative error {err}");
    }

    /// A reused row buffer holds nothing of its previous, larger contents: padding rows and
    /// the ragged end of the inner dimension are rewritten.
    #[test]
    fn repacked_rows_leave_nothing_of_the_previous_pack() {
        if skipped_without_amx() {
            return;
        }
        let mut rows = PackedRows::default();
        let big: Vec<f32> = values(64 * 96, 7).iter().map(|v| v * 1e30).collect();
        rows.repack_rows(64, 96, false, &rows_of(&big, 96));
        for keep_low in [false, true] {
            let (m, n, k) = (37, 40, 70);
            let (x, w) = (values(m * k, 8), values(n * k, 9));
            rows.repack_rows(m, k, keep_low, &rows_of(&x, k));
            let got = PackedWeights::pack(&w, n, k).matmul_packed(&rows);
            let x_used = if keep_low {
                x.clone()
            } else {
                bf16_rounded(&x)
            };
            let err = max_rel_err(&got, &reference(&x_used, &w, m, n, k));
            assert!(err < 2e-5, "keep_low={keep_low}: relative error {err}");
        }
    }

    /// Activations packed without their low part multiply as their bf16 rounding, exactly.
    #[test]
    fn activations_without_low_part_are_their_bf16_rounding() {
        if skipped_without_amx() {
            return;
        }
        let (m, n, k) = (45, 70, 300);
        let x = values(m * k, 5);
        let w = values(n * k, 6);
        let packed = PackedWeights::pack(&w, n, k);
        let got = packed.matmul_packed(&PackedRows::pack(&x, m, k, false));
        let err = max_rel_err(&got, &reference(&bf16_rounded(&x), &w, m, n, k));
        assert!(err < 2e-5, "against the rounded inputs: {err}");
        let err = max_rel_err(&got, &reference(&x, &w, m, n, k));
        assert!(err > 1e-4, "the inputs were not rounded: {err}");
    }
}
