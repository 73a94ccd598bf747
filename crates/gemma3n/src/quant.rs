//! Linear layers whose weights are dense candle tensors or packed CPU matrices
//! ([`kernels::packed`]).

use std::fmt;
use std::sync::Arc;

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Module, Result, Storage, Tensor};
use candle_nn::{Init, Linear, VarBuilder};
use half::bf16;
use kernels::{PackedMatmul, RowSource};

pub use kernels::WeightFormat;

/// Matrices smaller than this stay dense: packing them saves nothing and costs precision.
const MIN_PACKED_ELEMENTS: usize = 1 << 16;

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
        // Fetched as bf16 (what the checkpoints hold) and widened a row at a time while packing:
        // no other copy of the matrix is made.
        let w =
            vb.get_with_hints_dtype((out_dim, in_dim), "weight", Init::Const(0.), DType::BF16)?;
        let (storage, layout) = w.storage_and_layout();
        let (Storage::Cpu(cpu), Some((start, _))) = (&*storage, layout.contiguous_offsets()) else {
            candle_core::bail!("packed weights must be contiguous CPU tensors");
        };
        let data = &cpu.as_slice::<bf16>()?[start..];
        let row = |r: usize, buf: &mut [f32]| {
            for (d, s) in buf.iter_mut().zip(&data[r * in_dim..(r + 1) * in_dim]) {
                *d = s.to_f32();
            }
        };
        Ok(Self::Packed(kernels::pack(
            out_dim, in_dim, format, false, &row,
        )))
    }

    /// Pack a `[rows, cols]` matrix whose rows `row` produces (in parallel); `head` selects the
    /// LM-head recipe (6-bit where the layers get 4-bit).
    pub fn pack(
        rows: usize,
        cols: usize,
        format: WeightFormat,
        head: bool,
        row: RowSource,
    ) -> Self {
        Self::Packed(kernels::pack(rows, cols, format, head, row))
    }

    /// A `[rows, cols]` matrix already stored as `dtype` (a GGUF tensor's bytes), kept in its
    /// blocks (see [`kernels::from_blocks`]).
    pub fn from_blocks(dtype: GgmlDType, rows: usize, cols: usize, bytes: &[u8]) -> Result<Self> {
        Ok(Self::Packed(kernels::from_blocks(
            dtype, rows, cols, bytes,
        )?))
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
