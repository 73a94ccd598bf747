//! Linear layers whose weights are stored packed (bf16 or a ggml block quantisation) on the CPU.
//!
//! Candle's `QMatMul` walks the weight once per activation row, which is right for decoding one
//! token but streams the whole matrix from memory again for every prompt token.  Here the output
//! columns are split across the rayon pool and every weight row, once in cache, is applied to a
//! block of activation rows, so prefill is bounded by arithmetic instead of memory bandwidth.  The
//! block formats and their dot-product kernels are candle's (`candle_core::quantized::k_quants`).

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use candle_core::quantized::k_quants::{
    BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1, BlockQ6K,
    BlockQ8K, BlockQ8_0, BlockQ8_1, GgmlType,
};
use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{Init, Linear, VarBuilder};
use half::bf16;
use half::f16;
use rayon::prelude::*;

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
    type Err = crate::Error;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s.to_ascii_lowercase().replace('-', "_").as_str() {
            "f32" | "dense" | "none" => Ok(Self::Dense),
            "bf16" => Ok(Self::Bf16),
            "q8_0" | "q8" => Ok(Self::Q8_0),
            "q4k" | "q4_k" | "q4_k_m" => Ok(Self::Q4K),
            "q4_0" => Ok(Self::Q4_0),
            other => Err(crate::Error::Config(format!(
                "unknown weight format {other:?}; expected one of f32, bf16, q8_0, q4k, q4_0"
            ))),
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

/// Matrices smaller than this stay dense: packing them saves nothing and costs precision.
const MIN_PACKED_ELEMENTS: usize = 1 << 16;

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

/// Rows converted per step when packing from a row source.
const PACK_ROWS: usize = 4096;

impl<T: GgmlType + 'static> Packed<T> {
    /// `fill(first_row, buf)` writes the next `buf.len() / cols` rows as f32.
    fn new(rows: usize, cols: usize, fill: &dyn Fn(usize, &mut [f32])) -> Self {
        let per_row = cols / T::BLCK_SIZE;
        let mut blocks = Blocks::<T>::zeroed(rows * per_row);
        let mut buf = vec![0f32; PACK_ROWS.min(rows) * cols];
        for (step, dst) in blocks
            .as_mut_slice()
            .chunks_mut(PACK_ROWS * per_row)
            .enumerate()
        {
            let n = dst.len() / per_row;
            let src = &mut buf[..n * cols];
            fill(step * PACK_ROWS, src);
            dst.par_chunks_mut(per_row)
                .zip(src.par_chunks(cols))
                .for_each(|(d, s)| T::from_float(s, d));
        }
        Self { blocks, rows, cols }
    }
}

impl<T: GgmlType + 'static> Packed<T> {
    /// Take ready-made blocks (`rows` rows of `cols / BLCK_SIZE` blocks each) as they are.
    fn from_bytes(rows: usize, cols: usize, bytes: &[u8]) -> Self {
        let mut blocks = Blocks::<T>::zeroed(rows * (cols / T::BLCK_SIZE));
        blocks.map[..bytes.len()].copy_from_slice(bytes);
        Self { blocks, rows, cols }
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
    elements
        .is_multiple_of(dtype.block_size())
        .then(|| elements / dtype.block_size() * dtype.type_size())
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

impl<T: GgmlType + 'static> PackedMatmul for Packed<T> {
    fn matmul(&self, x: &[f32], m: usize) -> Vec<f32> {
        let k = self.cols;
        let per_row = k / T::BLCK_SIZE;
        // Activations in the kernel's companion format (q8 blocks for quantised weights).
        let mut xq = vec![T::VecDotType::zeros(); m * per_row];
        xq.par_chunks_mut(per_row)
            .zip(x.par_chunks(k))
            .for_each(|(dst, src)| T::VecDotType::from_float(src, dst));
        let blocks = self.blocks.as_slice();
        let w = |r: usize| &blocks[r * per_row..(r + 1) * per_row];
        let a = |i: usize| &xq[i * per_row..(i + 1) * per_row];
        tiled(m, self.rows, |i, r| T::vec_dot(k, w(r), a(i)))
    }

    fn rows(&self) -> usize {
        self.rows
    }

    fn cols(&self) -> usize {
        self.cols
    }
}

/// Activation rows handled per pass over a column chunk: keeps both operands in L2.
const ROW_BLOCK: usize = 32;

/// `out[i, r] = dot(i, r)` for `i < m`, `r < n`, parallel over chunks of output columns.
fn tiled<F: Fn(usize, usize) -> f32 + Sync>(m: usize, n: usize, dot: F) -> Vec<f32> {
    let threads = rayon::current_num_threads().max(1);
    // Enough chunks to balance the pool, few enough that each amortises its scheduling.
    let chunk = (n / (threads * 8)).clamp(16, 512);
    if m == 1 {
        let mut out = vec![0f32; n];
        out.par_chunks_mut(chunk).enumerate().for_each(|(c, o)| {
            for (j, v) in o.iter_mut().enumerate() {
                *v = dot(0, c * chunk + j);
            }
        });
        return out;
    }
    // Column-major per chunk ([cols, m]), transposed at the end.
    let mut out_t = vec![0f32; n * m];
    out_t
        .par_chunks_mut(chunk * m)
        .enumerate()
        .for_each(|(c, o)| {
            let cols = o.len() / m;
            for i0 in (0..m).step_by(ROW_BLOCK) {
                let i1 = (i0 + ROW_BLOCK).min(m);
                for j in 0..cols {
                    let r = c * chunk + j;
                    for i in i0..i1 {
                        o[j * m + i] = dot(i, r);
                    }
                }
            }
        });
    let mut out = vec![0f32; m * n];
    out.par_chunks_mut(n).enumerate().for_each(|(i, row)| {
        for (r, v) in row.iter_mut().enumerate() {
            *v = out_t[r * m + i];
        }
    });
    out
}

/// A bias-free linear layer, dense (candle) or packed (CPU only).
#[derive(Clone)]
pub enum QLinear {
    Dense(Linear),
    Packed(Arc<dyn PackedMatmul>),
}

impl fmt::Debug for QLinear {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Dense(l) => write!(f, "Dense({:?})", l.weight().shape()),
            Self::Packed(p) => write!(f, "Packed({}x{})", p.rows(), p.cols()),
        }
    }
}

impl QLinear {
    /// Load `<vb>.weight` `[out, in]` in `format`; small or oddly shaped matrices stay dense.
    pub fn load(
        in_dim: usize,
        out_dim: usize,
        format: WeightFormat,
        vb: VarBuilder,
    ) -> Result<Self> {
        if format == WeightFormat::Dense
            || !vb.device().is_cpu()
            || in_dim * out_dim < MIN_PACKED_ELEMENTS
        {
            return Ok(Self::Dense(crate::nn::linear(in_dim, out_dim, vb)?));
        }
        // Fetched as bf16 (what the checkpoints hold) and widened a slice at a time: no f32 copy
        // of the whole matrix.
        let w =
            vb.get_with_hints_dtype((out_dim, in_dim), "weight", Init::Const(0.), DType::BF16)?;
        let w = w.flatten_all()?.to_vec1::<bf16>()?;
        let fill = |first: usize, buf: &mut [f32]| {
            let src = &w[first * in_dim..first * in_dim + buf.len()];
            for (d, s) in buf.iter_mut().zip(src) {
                *d = s.to_f32();
            }
        };
        Ok(Self::pack(out_dim, in_dim, format, false, &fill))
    }

    /// Pack a `[rows, cols]` matrix produced by `fill(first_row, buf)` a slice of rows at a time;
    /// `head` selects the LM-head recipe (6-bit where the layers get 4-bit).
    pub fn pack(
        rows: usize,
        cols: usize,
        format: WeightFormat,
        head: bool,
        fill: &dyn Fn(usize, &mut [f32]),
    ) -> Self {
        let fits = |block: usize| cols.is_multiple_of(block);
        let packed: Arc<dyn PackedMatmul> = match format {
            WeightFormat::Q4K if head && fits(256) => {
                Arc::new(Packed::<BlockQ6K>::new(rows, cols, fill))
            }
            WeightFormat::Q4K if fits(256) => Arc::new(Packed::<BlockQ4K>::new(rows, cols, fill)),
            WeightFormat::Q4_0 if fits(32) => Arc::new(Packed::<BlockQ4_0>::new(rows, cols, fill)),
            // q8_0, and the 4-bit formats on rows their blocks do not divide.
            WeightFormat::Q8_0 | WeightFormat::Q4K | WeightFormat::Q4_0 if fits(32) => {
                Arc::new(Packed::<BlockQ8_0>::new(rows, cols, fill))
            }
            _ => Arc::new(Packed::<bf16>::new(rows, cols, fill)),
        };
        Self::Packed(packed)
    }
}

impl QLinear {
    /// A `[rows, cols]` matrix already stored as `dtype` (a GGUF tensor's bytes), kept in its
    /// blocks: no re-quantisation.
    pub fn from_blocks(dtype: GgmlDType, rows: usize, cols: usize, bytes: &[u8]) -> Result<Self> {
        if ggml_bytes(dtype, cols).map(|b| b * rows) != Some(bytes.len()) {
            candle_core::bail!(
                "{} bytes do not hold a {rows}x{cols} matrix of {dtype:?} blocks",
                bytes.len()
            );
        }
        let packed: Arc<dyn PackedMatmul> = with_block_type!(dtype, T => {
            Arc::new(Packed::<T>::from_bytes(rows, cols, bytes))
        });
        Ok(Self::Packed(packed))
    }
}

impl Module for QLinear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Dense(l) => l.forward(x),
            Self::Packed(p) => {
                let dims = x.dims();
                let k = *dims.last().unwrap_or(&0);
                if k != p.cols() {
                    candle_core::bail!("packed linear expects {} inputs, got {:?}", p.cols(), dims);
                }
                let m = x.elem_count() / k.max(1);
                let host = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                let out = p.matmul(&host, m);
                let mut shape = dims.to_vec();
                *shape.last_mut().unwrap() = p.rows();
                Tensor::from_vec(out, shape, &Device::Cpu)?.to_dtype(x.dtype())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic, roughly normal matrix.
    fn matrix(rows: usize, cols: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..rows * cols)
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

    fn reference(w: &[f32], x: &[f32], rows: usize, cols: usize, m: usize) -> Vec<f32> {
        let mut out = vec![0f32; m * rows];
        for i in 0..m {
            for r in 0..rows {
                out[i * rows + r] = (0..cols).map(|c| x[i * cols + c] * w[r * cols + c]).sum();
            }
        }
        out
    }

    /// Relative error of the packed product against f32, for a prefill-sized and a decode-sized m.
    fn check(format: WeightFormat, head: bool, max_rel: f32) {
        let (rows, cols) = (96, 512);
        let w = matrix(rows, cols, 1);
        let fill = |first: usize, buf: &mut [f32]| {
            buf.copy_from_slice(&w[first * cols..first * cols + buf.len()])
        };
        let QLinear::Packed(p) = QLinear::pack(rows, cols, format, head, &fill) else {
            panic!("{format} was not packed");
        };
        for m in [1, 37] {
            let x = matrix(m, cols, 2);
            let got = p.matmul(&x, m);
            let want = reference(&w, &x, rows, cols, m);
            let scale = want.iter().fold(0f32, |a, v| a.max(v.abs()));
            let err = got
                .iter()
                .zip(&want)
                .fold(0f32, |a, (g, w)| a.max((g - w).abs()));
            assert!(
                err <= max_rel * scale,
                "{format} m={m}: max error {err} vs scale {scale}"
            );
        }
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

    #[test]
    fn batched_rows_equal_single_rows() {
        let (rows, cols, m) = (70, 256, 45);
        let w = matrix(rows, cols, 3);
        let x = matrix(m, cols, 4);
        let fill = |first: usize, buf: &mut [f32]| {
            buf.copy_from_slice(&w[first * cols..first * cols + buf.len()])
        };
        let QLinear::Packed(p) = QLinear::pack(rows, cols, WeightFormat::Q8_0, false, &fill) else {
            panic!("not packed");
        };
        let batched = p.matmul(&x, m);
        for i in 0..m {
            let single = p.matmul(&x[i * cols..(i + 1) * cols], 1);
            assert_eq!(&batched[i * rows..(i + 1) * rows], &single[..], "row {i}");
        }
    }

    /// GGUF tensors arrive as block bytes: kept as they are, they give the product of packing the
    /// same values here, and decode back to them.
    #[test]
    fn ready_made_blocks_equal_packed_values() {
        let (rows, cols) = (8, 512);
        let w = matrix(rows, cols, 5);
        let x = matrix(3, cols, 6);
        let fill = |first: usize, buf: &mut [f32]| {
            buf.copy_from_slice(&w[first * cols..first * cols + buf.len()])
        };
        let weights = Tensor::from_vec(w.clone(), (rows, cols), &Device::Cpu).unwrap();
        for (dtype, format, head, max_err) in [
            (GgmlDType::Q8_0, WeightFormat::Q8_0, false, 2e-2),
            (GgmlDType::Q4K, WeightFormat::Q4K, false, 1.5e-1),
            (GgmlDType::Q6K, WeightFormat::Q4K, true, 4e-2),
        ] {
            let q = candle_core::quantized::QTensor::quantize(&weights, dtype).unwrap();
            let bytes = q.data().unwrap();
            let QLinear::Packed(ours) = QLinear::pack(rows, cols, format, head, &fill) else {
                panic!("not packed");
            };
            let QLinear::Packed(theirs) = QLinear::from_blocks(dtype, rows, cols, &bytes).unwrap()
            else {
                panic!("not packed");
            };
            assert_eq!(theirs.matmul(&x, 3), ours.matmul(&x, 3), "{dtype:?}");
            let mut back = vec![0f32; cols];
            dequantize_into(dtype, &bytes[..bytes.len() / rows], &mut back);
            let err = back
                .iter()
                .zip(&w)
                .fold(0f32, |a, (b, v)| a.max((b - v).abs()));
            assert!(
                err <= max_err * 2.0,
                "{dtype:?} row decodes with error {err}"
            );
        }
        let short = QLinear::from_blocks(GgmlDType::Q8_0, rows, cols, &[0u8; 10]);
        assert!(short.is_err());
    }

    #[test]
    fn weight_format_parses_and_rejects() {
        assert_eq!("Q4_K_M".parse::<WeightFormat>().unwrap(), WeightFormat::Q4K);
        assert_eq!("q8_0".parse::<WeightFormat>().unwrap(), WeightFormat::Q8_0);
        let err = "q3".parse::<WeightFormat>().unwrap_err().to_string();
        assert!(err.contains("q3") && err.contains("q8_0"), "{err}");
    }
}
