//! Fused, multi-threaded CPU kernels for the conformer's element-wise work.
//!
//! candle runs each element-wise op as its own single-threaded pass over memory, and a conformer
//! block has dozens of them (clamps, norms, scaled residuals, gates, the depthwise convolution):
//! on CPU they left one core idle for a large part of the run.  Each kernel here is one pass,
//! split over frames with rayon.  Other devices and dtypes run the same maths as candle ops.

use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor};
use candle_nn::VarBuilder;
use rayon::prelude::*;
use std::sync::Arc;

use ::kernels::amx;

/// Frames per rayon task: enough work per task to amortise the scheduling.
const ROWS_PER_TASK: usize = 4;

fn fusable(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32
}

fn f32_data<'a>(storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((start, end))) => Ok(&v[start..end]),
        _ => bail!("fused audio kernels take contiguous f32 input"),
    }
}

/// A new buffer of `rows` rows of `width`, row `i` written by `f(i, row)`, rows in parallel.
fn map_rows(rows: usize, width: usize, f: impl Fn(usize, &mut [f32]) + Sync) -> Vec<f32> {
    let mut out = vec![0f32; rows * width];
    out.par_chunks_mut(width)
        .with_min_len(ROWS_PER_TASK)
        .enumerate()
        .for_each(|(i, row)| f(i, row));
    out
}

/// Sum of squares with independent partial sums, so that it vectorises.
fn sum_sq(x: &[f32], clip: f32) -> f32 {
    let mut acc = [0f32; 16];
    let chunks = x.chunks_exact(16);
    let tail: f32 = chunks
        .remainder()
        .iter()
        .map(|&v| v.clamp(-clip, clip).powi(2))
        .sum();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            let v = v.clamp(-clip, clip);
            *a += v * v;
        }
    }
    acc.iter().sum::<f32>() + tail
}

fn silu_scalar(v: f32) -> f32 {
    v / (1.0 + (-v).exp())
}

/// RMS norm with a learned scale, of the input clamped to `±clip` (the reference clips before
/// most norms; a no-op for the released 1e10), in f32.
#[derive(Debug, Clone)]
pub struct ClippedRmsNorm {
    weight: Tensor,
    eps: f64,
    clip: f64,
}

impl ClippedRmsNorm {
    pub fn new(dim: usize, eps: f64, clip: f64, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get(dim, "weight")?.to_dtype(DType::F32)?;
        Ok(Self { weight, eps, clip })
    }

    /// `norm(clamp(x))` over the last dimension.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if fusable(x) {
            return x.contiguous()?.apply_op1_no_bwd(&NormOp {
                norm: self,
                scale: 1.0,
            });
        }
        self.composed(x)
    }

    /// `residual + scale * norm(clamp(x))`.
    pub fn forward_residual(&self, x: &Tensor, residual: &Tensor, scale: f64) -> Result<Tensor> {
        if fusable(x) && fusable(residual) {
            let op = NormOp {
                norm: self,
                scale: scale as f32,
            };
            return x
                .contiguous()?
                .apply_op2_no_bwd(&residual.contiguous()?, &op);
        }
        residual + (self.composed(x)? * scale)?
    }

    fn composed(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let x = x
            .clamp(-self.clip, self.clip)?
            .to_dtype(DType::F32)?
            .contiguous()?;
        candle_nn::ops::rms_norm(&x, &self.weight, self.eps as f32)?.to_dtype(dtype)
    }

    /// `out = scale * norm(clamp(x))`, one frame.
    fn row(&self, weight: &[f32], x: &[f32], scale: f32, out: &mut [f32]) {
        let clip = self.clip as f32;
        let inv = (sum_sq(x, clip) / x.len() as f32 + self.eps as f32)
            .sqrt()
            .recip();
        for ((o, &v), &w) in out.iter_mut().zip(x).zip(weight) {
            *o = v.clamp(-clip, clip) * inv * w * scale;
        }
    }
}

struct NormOp<'a> {
    norm: &'a ClippedRmsNorm,
    scale: f32,
}

impl CustomOp1 for NormOp<'_> {
    fn name(&self) -> &'static str {
        "audio-clipped-rms-norm"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_data(storage, layout)?;
        let weight: Vec<f32> = self.norm.weight.to_vec1()?;
        let d = weight.len();
        let out = map_rows(x.len() / d, d, |i, row| {
            self.norm
                .row(&weight, &x[i * d..(i + 1) * d], self.scale, row)
        });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

impl CustomOp2 for NormOp<'_> {
    fn name(&self) -> &'static str {
        "audio-clipped-rms-norm-residual"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, residual) = (f32_data(s1, l1)?, f32_data(s2, l2)?);
        if l1.shape() != l2.shape() {
            bail!("residual {:?} does not match {:?}", l2.shape(), l1.shape())
        }
        let weight: Vec<f32> = self.norm.weight.to_vec1()?;
        let d = weight.len();
        let out = map_rows(x.len() / d, d, |i, row| {
            let frame = i * d..(i + 1) * d;
            self.norm.row(&weight, &x[frame.clone()], self.scale, row);
            for (o, &r) in row.iter_mut().zip(&residual[frame]) {
                *o += r;
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// `x * sigmoid(x)`.
pub fn silu(x: &Tensor) -> Result<Tensor> {
    if !fusable(x) {
        return x.silu();
    }
    x.contiguous()?.apply_op1_no_bwd(&Silu)
}

struct Silu;

impl CustomOp1 for Silu {
    fn name(&self) -> &'static str {
        "audio-silu"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_data(storage, layout)?;
        let width = *layout.dims().last().unwrap_or(&1);
        let out = map_rows(x.len() / width.max(1), width.max(1), |i, row| {
            for (o, &v) in row.iter_mut().zip(&x[i * width..]) {
                *o = silu_scalar(v);
            }
        });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

/// Gated linear unit over the last dimension: first half times the sigmoid of the second.
pub fn glu(x: &Tensor) -> Result<Tensor> {
    let d = x.dim(candle_core::D::Minus1)? / 2;
    if !fusable(x) {
        let gate = candle_nn::ops::sigmoid(&x.narrow(candle_core::D::Minus1, d, d)?)?;
        return x.narrow(candle_core::D::Minus1, 0, d)? * gate;
    }
    x.contiguous()?.apply_op1_no_bwd(&Glu)
}

struct Glu;

impl CustomOp1 for Glu {
    fn name(&self) -> &'static str {
        "audio-glu"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_data(storage, layout)?;
        let mut dims = layout.dims().to_vec();
        let Some(last) = dims.last_mut() else {
            bail!("glu of a scalar")
        };
        let d = *last / 2;
        *last = d;
        let out = map_rows(x.len() / (2 * d).max(1), d, |i, row| {
            let (a, b) = x[2 * d * i..2 * d * (i + 1)].split_at(d);
            for ((o, &a), &b) in row.iter_mut().zip(a).zip(b) {
                *o = a / (1.0 + (-b).exp());
            }
        });
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }
}

/// Causal depthwise convolution over time, then `silu(norm(clamp(·)))`: `x` `[B, T, D]`, `taps`
/// `[K, D]` where tap k multiplies the frame `K - 1 - k` steps back (zeros before the start).
pub fn causal_conv_norm_silu(x: &Tensor, taps: &Tensor, norm: &ClippedRmsNorm) -> Result<Tensor> {
    if !fusable(x) {
        let (_, t, _) = x.dims3()?;
        let k = taps.dim(0)?;
        let padded = x.pad_with_zeros(1, k - 1, 0)?;
        let mut acc = padded.narrow(1, 0, t)?.broadcast_mul(&taps.get(0)?)?;
        for j in 1..k {
            acc = (acc + padded.narrow(1, j, t)?.broadcast_mul(&taps.get(j)?)?)?;
        }
        return norm.forward(&acc)?.silu();
    }
    x.contiguous()?
        .apply_op1_no_bwd(&CausalConvNormSilu { taps, norm })
}

struct CausalConvNormSilu<'a> {
    taps: &'a Tensor,
    norm: &'a ClippedRmsNorm,
}

impl CustomOp1 for CausalConvNormSilu<'_> {
    fn name(&self) -> &'static str {
        "audio-causal-conv-norm-silu"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_data(storage, layout)?;
        let (_, t, d) = layout.shape().dims3()?;
        let taps: Vec<f32> = self.taps.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let k = taps.len() / d;
        let weight: Vec<f32> = self.norm.weight.to_vec1()?;
        let out = map_rows(x.len() / d, d, |i, row| {
            // Row i is frame i % t of its clip; taps never reach into the previous clip.
            let frame = i % t;
            for (j, tap) in taps.chunks_exact(d).enumerate() {
                let Some(back) = (frame + j + 1).checked_sub(k) else {
                    continue;
                };
                let src = &x[(i - frame + back) * d..][..d];
                for ((o, &v), &w) in row.iter_mut().zip(src).zip(tap) {
                    *o += v * w;
                }
            }
            let conv = row.to_vec();
            self.norm.row(&weight, &conv, 1.0, row);
            for o in row.iter_mut() {
                *o = silu_scalar(*o);
            }
        });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

/// Bias-free linear layer.  On CPUs with AMX its f32 weight is packed once into AMX tiles
/// ([`::kernels::amx`]); elsewhere it is held transposed (`[in, out]`, contiguous), so that the
/// matrix multiply reads it in place instead of repacking the `[out, in]` checkpoint layout on
/// every call, which took a fifth of the tower's matmul time.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: LinearWeight,
}

#[derive(Debug, Clone)]
enum LinearWeight {
    Transposed(Tensor),
    Amx(Arc<amx::PackedWeights>),
}

impl Linear {
    pub fn new(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Self> {
        Self::from_weight(&vb.get((out_dim, in_dim), "weight")?)
    }

    /// From a checkpoint-layout `[out, in]` weight.
    pub fn from_weight(weight: &Tensor) -> Result<Self> {
        let (n, k) = weight.dims2()?;
        let weight = if fusable(weight) && n.min(k) >= amx::MIN_DIM && amx::available() {
            let values: Vec<f32> = weight.flatten_all()?.to_vec1()?;
            LinearWeight::Amx(Arc::new(amx::PackedWeights::pack(&values, n, k)))
        } else {
            LinearWeight::Transposed(transpose(weight)?)
        };
        Ok(Self { weight })
    }
}

/// `[rows, cols]` to a contiguous `[cols, rows]`.  On CPU in f32 this goes tile by tile on all
/// cores: candle's strided copy, one element at a time, made the tower's first use seconds slower.
fn transpose(w: &Tensor) -> Result<Tensor> {
    if !fusable(w) {
        return w.t()?.contiguous();
    }
    const TILE: usize = 64;
    let (rows, cols) = w.dims2()?;
    let src: Vec<f32> = w.flatten_all()?.to_vec1()?;
    let mut dst = vec![0f32; rows * cols];
    // Each task writes TILE output rows (= TILE source columns), walking the source in TILE-row
    // bands so that reads and writes both stay within a few cache lines per row.
    dst.par_chunks_mut(TILE * rows)
        .enumerate()
        .for_each(|(tile, out)| {
            let (c0, n) = (tile * TILE, out.len() / rows);
            for band in (0..rows).step_by(TILE) {
                for r in band..(band + TILE).min(rows) {
                    for (j, &v) in src[r * cols + c0..][..n].iter().enumerate() {
                        out[j * rows + r] = v;
                    }
                }
            }
        });
    Tensor::from_vec(dst, (cols, rows), w.device())
}

impl candle_core::Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match &self.weight {
            LinearWeight::Transposed(w) => x.broadcast_matmul(w),
            LinearWeight::Amx(w) => x.contiguous()?.apply_op1_no_bwd(&AmxMatmul(w)),
        }
    }
}

/// `x · Wᵀ` over the last dimension of a CPU f32 `x`, on AMX tiles.
struct AmxMatmul<'a>(&'a amx::PackedWeights);

impl CustomOp1 for AmxMatmul<'_> {
    fn name(&self) -> &'static str {
        "audio-amx-matmul"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_data(storage, layout)?;
        let mut dims = layout.dims().to_vec();
        let k = dims.pop().unwrap_or(1);
        if k != self.0.in_dim() {
            bail!("linear layer takes {} inputs, got {k}", self.0.in_dim());
        }
        let out = self.0.matmul(x, x.len() / k.max(1));
        dims.push(self.0.out_dim());
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }
}
