//! Small building blocks shared by the decoder, the towers and the embedders.

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::VarBuilder;
use rayon::prelude::*;

use kernels::activation;

/// RMSNorm over the last dimension: `x / sqrt(mean(x²) + eps) * w`, with the weight used as
/// stored (Gemma 3n has no `1 + w` offset).  Always computed in f32, result in the input dtype.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor,
    /// The weight as host floats, for the CPU path (read once, not per call).
    host_weight: Option<Vec<f32>>,
    eps: f64,
}

impl RmsNorm {
    pub fn new(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Self::from_weight(vb.get(dim, "weight")?, eps)
    }

    /// The parameter-free variant (`with_scale=False`): a weight of ones.
    pub fn without_weight(dim: usize, eps: f64, device: &candle_core::Device) -> Result<Self> {
        Self::from_weight(Tensor::ones(dim, DType::F32, device)?, eps)
    }

    /// Variant for parameters stored as a bare tensor rather than `<name>.weight`.
    pub fn from_weight(weight: Tensor, eps: f64) -> Result<Self> {
        let weight = weight.to_dtype(DType::F32)?;
        let host_weight = if weight.device().is_cpu() {
            Some(weight.flatten_all()?.to_vec1::<f32>()?)
        } else {
            None
        };
        Ok(Self {
            weight,
            host_weight,
            eps,
        })
    }
}

impl Module for RmsNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let x = x.to_dtype(DType::F32)?.contiguous()?;
        let Some(weight) = self.host_weight.as_deref().filter(|_| x.device().is_cpu()) else {
            return candle_nn::ops::rms_norm(&x, &self.weight, self.eps as f32)?.to_dtype(dtype);
        };
        let dim = weight.len();
        let values = x.flatten_all()?.to_vec1::<f32>()?;
        if dim == 0 || values.len() % dim != 0 {
            candle_core::bail!("rms norm of width {dim} over {:?}", x.shape());
        }
        let mut out = vec![0f32; values.len()];
        let rows = (ELEMENTWISE_CHUNK / dim).max(1) * dim;
        out.par_chunks_mut(rows)
            .zip(values.par_chunks(rows))
            .for_each(|(o, v)| activation::rms_norm(v, weight, self.eps as f32, o));
        Tensor::from_vec(out, x.shape(), x.device())?.to_dtype(dtype)
    }
}

/// Bias-free linear layer with the checkpoint's `[out, in]` weight.
pub fn linear(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<candle_nn::Linear> {
    candle_nn::linear_no_bias(in_dim, out_dim, vb)
}

/// `x * target / sqrt(max(mean(x²), 1e-5))`: rescale `x` to the given RMS magnitude, as AltUp
/// does when it creates and merges its streams.
pub fn match_magnitude(x: &Tensor, target: &Tensor) -> Result<Tensor> {
    let magnitude = x
        .sqr()?
        .mean_keepdim(D::Minus1)?
        .clamp(1e-5, f64::MAX)?
        .sqrt()?;
    x.broadcast_mul(target)?.broadcast_div(&magnitude)
}

/// Root mean square over the last dimension, without epsilon.
pub fn rms(x: &Tensor) -> Result<Tensor> {
    x.sqr()?.mean_keepdim(D::Minus1)?.sqrt()
}

/// `cap * tanh(x / cap)`.  f32 CPU tensors (the LM head's 262k logits per token) take the
/// vectorised tanh.
pub fn softcap(x: &Tensor, cap: f64) -> Result<Tensor> {
    if !f32_on_cpu(x) {
        return (x / cap)?.tanh()? * cap;
    }
    let mut out = x.flatten_all()?.to_vec1::<f32>()?;
    out.par_chunks_mut(ELEMENTWISE_CHUNK)
        .for_each(|o| activation::softcap(o, cap as f32));
    Tensor::from_vec(out, x.shape(), x.device())
}

/// Whether `t` takes the vectorised CPU element-wise paths below.
fn f32_on_cpu(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

/// Elements per parallel task of the element-wise paths: one decoding step's MLP stays on one
/// thread.
const ELEMENTWISE_CHUNK: usize = 1 << 14;

/// `gelu(x) · y` (tanh approximation, as `gelu_pytorch_tanh`).  f32 CPU tensors take one
/// vectorised pass instead of candle's scalar `tanh`; anything else goes through candle.
pub fn gelu_mul(x: &Tensor, y: &Tensor) -> Result<Tensor> {
    if !(f32_on_cpu(x) && f32_on_cpu(y)) || x.shape() != y.shape() {
        return x.gelu()? * y;
    }
    let mut out = x.flatten_all()?.to_vec1::<f32>()?;
    let y = y.flatten_all()?.to_vec1::<f32>()?;
    out.par_chunks_mut(ELEMENTWISE_CHUNK)
        .zip(y.par_chunks(ELEMENTWISE_CHUNK))
        .for_each(|(o, y)| activation::gelu_mul(o, y));
    Tensor::from_vec(out, x.shape(), x.device())
}
