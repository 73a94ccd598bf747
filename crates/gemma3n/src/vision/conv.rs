//! Convolutions over channels-last (NHWC) activations, with timm's padding rules, and timm's
//! `ConvNormAct` (conv → RmsNorm2d → optional GELU).
//!
//! The tower keeps activations as `[B, H, W, C]` so that RmsNorm2d is a norm over the last axis and
//! a 1×1 convolution is one matmul.  On CPU with f32, depthwise and full convolutions run the
//! kernels in [`super::kernels`]; elsewhere they fall back to candle's NCHW `conv2d`.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::arch::PadType;
use super::kernels::{DepthwiseConv, Im2Col, RmsNormAct, Window};

/// timm's RmsNorm2d eps.
const NORM_EPS: f32 = 1e-6;

/// Padding `(before, after)` along one axis of size `n`.  TF "SAME" pads so that the output is
/// `ceil(n / stride)` and puts the odd pixel after; the symmetric form is PyTorch's `k // 2` style.
pub fn padding(
    pad_type: PadType,
    n: usize,
    k: usize,
    stride: usize,
    dilation: usize,
) -> (usize, usize) {
    let span = (k - 1) * dilation + 1;
    match pad_type {
        PadType::Same => {
            let pad = ((n.div_ceil(stride) - 1) * stride + span).saturating_sub(n);
            (pad / 2, pad - pad / 2)
        }
        PadType::Symmetric => {
            let pad = ((stride - 1) + dilation * (k - 1)) / 2;
            (pad, pad)
        }
    }
}

#[derive(Debug, Clone)]
enum Kernel {
    /// 1×1, stride 1, dense: weight `[in, out]`.
    Pointwise(Tensor),
    /// groups = channels: weight `[kh, kw, C]`.
    Depthwise(Tensor),
    /// Dense k×k: weight `[kh·kw·in, out]` for the im2col product.
    Dense(Tensor),
    /// Anything else (grouped convs, or any conv off the CPU): candle's conv2d, weight as stored.
    Generic(Tensor),
}

/// A bias-free (except where stated) 2-D convolution with the checkpoint's `[out, in/g, kh, kw]`
/// weight.
#[derive(Debug, Clone)]
pub struct Conv2d {
    kernel: Kernel,
    bias: Option<Tensor>,
    ksize: usize,
    stride: usize,
    dilation: usize,
    groups: usize,
    pad_type: PadType,
}

/// Convolution hyper-parameters as timm's `create_conv2d` takes them.
#[derive(Debug, Clone, Copy)]
pub struct ConvSpec {
    pub in_chs: usize,
    pub out_chs: usize,
    pub kernel: usize,
    pub stride: usize,
    pub dilation: usize,
    pub groups: usize,
    pub bias: bool,
    pub pad_type: PadType,
}

impl ConvSpec {
    pub fn new(in_chs: usize, out_chs: usize, kernel: usize, pad_type: PadType) -> Self {
        Self {
            in_chs,
            out_chs,
            kernel,
            stride: 1,
            dilation: 1,
            groups: 1,
            bias: false,
            pad_type,
        }
    }

    pub fn stride(self, stride: usize, dilation: usize) -> Self {
        Self {
            stride,
            dilation,
            ..self
        }
    }

    /// A depthwise conv (`groups = channels`).
    pub fn depthwise(chs: usize, kernel: usize, pad_type: PadType) -> Self {
        Self {
            groups: chs,
            ..Self::new(chs, chs, kernel, pad_type)
        }
    }

    /// timm's `group_size` convention: 0 = dense, otherwise channels per group.
    pub fn group_size(self, group_size: usize, chs: usize) -> Self {
        let groups = chs.checked_div(group_size).unwrap_or(1);
        Self { groups, ..self }
    }
}

impl Conv2d {
    pub fn new(spec: ConvSpec, vb: VarBuilder) -> Result<Self> {
        let ConvSpec {
            in_chs,
            out_chs,
            kernel: k,
            groups,
            ..
        } = spec;
        if groups == 0 || in_chs % groups != 0 || out_chs % groups != 0 {
            candle_core::bail!(
                "conv {}: {in_chs}→{out_chs} channels cannot form {groups} groups",
                vb.prefix()
            );
        }
        let weight = vb.get((out_chs, in_chs / groups, k, k), "weight")?;
        let bias = if spec.bias {
            Some(vb.get(out_chs, "bias")?)
        } else {
            None
        };
        let fast = vb.device().is_cpu() && weight.dtype() == DType::F32;
        let kernel = if groups == 1 && k == 1 && spec.stride == 1 {
            Kernel::Pointwise(weight.reshape((out_chs, in_chs))?.t()?.contiguous()?)
        } else if fast && groups == in_chs && in_chs == out_chs {
            Kernel::Depthwise(
                weight
                    .reshape((out_chs, k * k))?
                    .t()?
                    .reshape((k, k, out_chs))?
                    .contiguous()?,
            )
        } else if fast && groups == 1 {
            Kernel::Dense(
                weight
                    .permute((2, 3, 1, 0))?
                    .reshape((k * k * in_chs, out_chs))?
                    .contiguous()?,
            )
        } else {
            Kernel::Generic(weight)
        };
        Ok(Self {
            kernel,
            bias,
            ksize: k,
            stride: spec.stride,
            dilation: spec.dilation,
            groups,
            pad_type: spec.pad_type,
        })
    }

    fn window(&self, h: usize, w: usize) -> Window {
        let pad_h = padding(self.pad_type, h, self.ksize, self.stride, self.dilation);
        let pad_w = padding(self.pad_type, w, self.ksize, self.stride, self.dilation);
        let span = (self.ksize - 1) * self.dilation + 1;
        let out = |n: usize, (a, b): (usize, usize)| (n + a + b - span) / self.stride + 1;
        Window {
            kernel: (self.ksize, self.ksize),
            stride: self.stride,
            dilation: self.dilation,
            pad_before: (pad_h.0, pad_w.0),
            out: (out(h, pad_h), out(w, pad_w)),
        }
    }

    fn generic(&self, x: &Tensor, weight: &Tensor) -> Result<Tensor> {
        let (_, h, w, _) = x.dims4()?;
        let (pt, pb) = padding(self.pad_type, h, self.ksize, self.stride, self.dilation);
        let (pl, pr) = padding(self.pad_type, w, self.ksize, self.stride, self.dilation);
        let x = x
            .permute((0, 3, 1, 2))?
            .pad_with_zeros(2, pt, pb)?
            .pad_with_zeros(3, pl, pr)?;
        x.conv2d(weight, 0, self.stride, self.dilation, self.groups)?
            .permute((0, 2, 3, 1))?
            .contiguous()
    }
}

impl Module for Conv2d {
    /// `[B, H, W, in]` → `[B, Ho, Wo, out]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, h, w, c) = x.dims4()?;
        let y = match &self.kernel {
            Kernel::Pointwise(wt) => {
                let out = wt.dim(1)?;
                x.reshape((b * h * w, c))?
                    .matmul(wt)?
                    .reshape((b, h, w, out))?
            }
            Kernel::Depthwise(wt) => {
                let win = self.window(h, w);
                x.contiguous()?.apply_op2_no_bwd(wt, &DepthwiseConv(win))?
            }
            Kernel::Dense(wt) => {
                let win = self.window(h, w);
                let (ho, wo) = win.out;
                let cols = x.contiguous()?.apply_op1_no_bwd(&Im2Col(win))?;
                cols.matmul(wt)?.reshape((b, ho, wo, wt.dim(1)?))?
            }
            Kernel::Generic(wt) => self.generic(x, wt)?,
        };
        match &self.bias {
            Some(bias) => y.broadcast_add(bias),
            None => Ok(y),
        }
    }
}

/// timm `RmsNorm2d` over the channel (last) axis, in f32, followed by GELU (tanh form) when it
/// stands for a `RmsNormAct2d`.  timm calls these `bn` or `norm` in the checkpoint.
#[derive(Debug, Clone)]
pub struct RmsNorm2d {
    weight: Tensor,
    act: bool,
}

impl RmsNorm2d {
    pub fn new(chs: usize, act: bool, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get(chs, "weight")?.to_dtype(DType::F32)?,
            act,
        })
    }
}

impl Module for RmsNorm2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let op = RmsNormAct {
            eps: NORM_EPS,
            act: self.act,
        };
        if x.device().is_cpu() && x.dtype() == DType::F32 {
            return x.contiguous()?.apply_op2_no_bwd(&self.weight, &op);
        }
        let xf = x.to_dtype(DType::F32)?.contiguous()?;
        let y = candle_nn::ops::rms_norm(&xf, &self.weight, NORM_EPS)?;
        let y = if self.act { y.gelu()? } else { y };
        y.to_dtype(x.dtype())
    }
}

/// timm `ConvNormAct`: `conv` → `bn` → GELU if `act`.
#[derive(Debug, Clone)]
pub struct ConvNormAct {
    conv: Conv2d,
    bn: RmsNorm2d,
}

impl ConvNormAct {
    pub fn new(spec: ConvSpec, act: bool, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            conv: Conv2d::new(spec, vb.pp("conv"))?,
            bn: RmsNorm2d::new(spec.out_chs, act, vb.pp("bn"))?,
        })
    }
}

impl Module for ConvNormAct {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.bn.forward(&self.conv.forward(x)?)
    }
}

/// timm `LayerScale2d`: per-channel `gamma`.
#[derive(Debug, Clone)]
pub struct LayerScale {
    gamma: Tensor,
}

impl LayerScale {
    pub fn new(chs: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            gamma: vb.get(chs, "gamma")?,
        })
    }
}

impl Module for LayerScale {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.broadcast_mul(&self.gamma)
    }
}
