//! The three MobileNet-V5 block kinds (timm `EdgeResidual`, `UniversalInvertedResidual`,
//! `MobileAttention` with multi-query attention), over NHWC activations.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::arch::{make_divisible, BlockKind, BlockSpec, PadType};
use super::conv::{Conv2d, ConvNormAct, ConvSpec, LayerScale, RmsNorm2d};

#[derive(Debug, Clone)]
pub enum Block {
    EdgeResidual(EdgeResidual),
    Uir(UniversalInvertedResidual),
    Attention(MobileAttention),
}

impl Block {
    pub fn new(spec: &BlockSpec, pad: PadType, layer_scale: bool, vb: VarBuilder) -> Result<Self> {
        Ok(match spec.def.kind {
            BlockKind::EdgeResidual { .. } => Self::EdgeResidual(EdgeResidual::new(spec, pad, vb)?),
            BlockKind::Uir { .. } => {
                Self::Uir(UniversalInvertedResidual::new(spec, pad, layer_scale, vb)?)
            }
            BlockKind::Mqa { .. } => {
                Self::Attention(MobileAttention::new(spec, pad, layer_scale, vb)?)
            }
        })
    }
}

impl Module for Block {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::EdgeResidual(b) => b.forward(x),
            Self::Uir(b) => b.forward(x),
            Self::Attention(b) => b.forward(x),
        }
    }
}

/// Residual connection of every block kind: only when the shape is kept and not disabled.
fn has_skip(spec: &BlockSpec) -> bool {
    spec.stride == 1 && spec.in_chs == spec.def.out_chs && !spec.def.noskip
}

/// Fused MBConv: `bn2(conv_pwl(gelu(bn1(conv_exp(x))))) (+ x)`.  No layer scale.
#[derive(Debug, Clone)]
pub struct EdgeResidual {
    conv_exp: Conv2d,
    bn1: RmsNorm2d,
    conv_pwl: Conv2d,
    bn2: RmsNorm2d,
    has_skip: bool,
}

impl EdgeResidual {
    fn new(spec: &BlockSpec, pad: PadType, vb: VarBuilder) -> Result<Self> {
        let BlockKind::EdgeResidual {
            exp_kernel,
            pw_kernel,
            exp_ratio,
            force_in_chs,
            group_size,
        } = spec.def.kind
        else {
            unreachable!("EdgeResidual::new called for {:?}", spec.def.kind)
        };
        let base = if force_in_chs > 0 {
            make_divisible(force_in_chs as f64)
        } else {
            spec.in_chs
        };
        let mid = make_divisible(base as f64 * exp_ratio);
        let out = spec.def.out_chs;
        // timm derives the groups of conv_exp from its output channels.
        let exp = ConvSpec::new(spec.in_chs, mid, exp_kernel, pad)
            .stride(spec.stride, spec.dilation)
            .group_size(group_size, mid);
        Ok(Self {
            conv_exp: Conv2d::new(exp, vb.pp("conv_exp"))?,
            bn1: RmsNorm2d::new(mid, true, vb.pp("bn1"))?,
            conv_pwl: Conv2d::new(ConvSpec::new(mid, out, pw_kernel, pad), vb.pp("conv_pwl"))?,
            bn2: RmsNorm2d::new(out, false, vb.pp("bn2"))?,
            has_skip: has_skip(spec),
        })
    }
}

impl Module for EdgeResidual {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.bn1.forward(&self.conv_exp.forward(x)?)?;
        let y = self.bn2.forward(&self.conv_pwl.forward(&y)?)?;
        if self.has_skip {
            y + x
        } else {
            Ok(y)
        }
    }
}

/// Universal inverted residual: optional depthwise convs around a pointwise expansion.
#[derive(Debug, Clone)]
pub struct UniversalInvertedResidual {
    dw_start: Option<ConvNormAct>,
    pw_exp: ConvNormAct,
    dw_mid: Option<ConvNormAct>,
    pw_proj: ConvNormAct,
    dw_end: Option<ConvNormAct>,
    layer_scale: Option<LayerScale>,
    has_skip: bool,
}

impl UniversalInvertedResidual {
    fn new(spec: &BlockSpec, pad: PadType, layer_scale: bool, vb: VarBuilder) -> Result<Self> {
        let BlockKind::Uir {
            dw_start,
            dw_mid,
            dw_end,
            exp_ratio,
            group_size,
        } = spec.def.kind
        else {
            unreachable!(
                "UniversalInvertedResidual::new called for {:?}",
                spec.def.kind
            )
        };
        let (inp, out) = (spec.in_chs, spec.def.out_chs);
        let mid = make_divisible(inp as f64 * exp_ratio);
        // The stride goes to the first depthwise conv that exists among mid, start, end.
        let dw = |chs: usize,
                  k: usize,
                  stride: usize,
                  act: bool,
                  name: &str|
         -> Result<Option<ConvNormAct>> {
            if k == 0 {
                return Ok(None);
            }
            let conv = ConvSpec::new(chs, chs, k, pad)
                .stride(stride, spec.dilation)
                .group_size(group_size, chs);
            ConvNormAct::new(conv, act, vb.pp(name)).map(Some)
        };
        let start_stride = if dw_mid == 0 { spec.stride } else { 1 };
        let end_stride = if dw_start == 0 && dw_mid == 0 {
            spec.stride
        } else {
            1
        };
        if spec.stride > 1 && dw_start == 0 && dw_mid == 0 && dw_end == 0 {
            candle_core::bail!(
                "{}: a strided UIR block needs a depthwise conv",
                vb.prefix()
            );
        }
        Ok(Self {
            dw_start: dw(inp, dw_start, start_stride, false, "dw_start")?,
            pw_exp: ConvNormAct::new(ConvSpec::new(inp, mid, 1, pad), true, vb.pp("pw_exp"))?,
            dw_mid: dw(mid, dw_mid, spec.stride, true, "dw_mid")?,
            pw_proj: ConvNormAct::new(ConvSpec::new(mid, out, 1, pad), false, vb.pp("pw_proj"))?,
            dw_end: dw(out, dw_end, end_stride, false, "dw_end")?,
            layer_scale: if layer_scale {
                Some(LayerScale::new(out, vb.pp("layer_scale"))?)
            } else {
                None
            },
            has_skip: has_skip(spec),
        })
    }

    /// The MSFA's FFN: a UIR with no depthwise convs, no layer scale and no residual.
    pub fn ffn(
        inp: usize,
        out: usize,
        exp_ratio: f64,
        pad: PadType,
        vb: VarBuilder,
    ) -> Result<Self> {
        let mid = make_divisible(inp as f64 * exp_ratio);
        Ok(Self {
            dw_start: None,
            pw_exp: ConvNormAct::new(ConvSpec::new(inp, mid, 1, pad), true, vb.pp("pw_exp"))?,
            dw_mid: None,
            pw_proj: ConvNormAct::new(ConvSpec::new(mid, out, 1, pad), false, vb.pp("pw_proj"))?,
            dw_end: None,
            layer_scale: None,
            has_skip: false,
        })
    }
}

impl Module for UniversalInvertedResidual {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut y = x.apply_op(&self.dw_start)?;
        y = self.pw_exp.forward(&y)?;
        y = y.apply_op(&self.dw_mid)?;
        y = self.pw_proj.forward(&y)?;
        y = y.apply_op(&self.dw_end)?;
        y = y.apply_op(&self.layer_scale)?;
        if self.has_skip {
            y + x
        } else {
            Ok(y)
        }
    }
}

/// Apply an optional layer (an `nn.Identity` in timm when absent).
trait ApplyOptional {
    fn apply_op<M: Module>(&self, m: &Option<M>) -> Result<Tensor>;
}

impl ApplyOptional for Tensor {
    fn apply_op<M: Module>(&self, m: &Option<M>) -> Result<Tensor> {
        match m {
            Some(m) => m.forward(self),
            None => Ok(self.clone()),
        }
    }
}

/// Keys or values of the multi-query attention: optional strided depthwise downsampling + norm,
/// then a 1×1 projection to the single shared head.
#[derive(Debug, Clone)]
struct KvBranch {
    down: Option<(Conv2d, RmsNorm2d)>,
    proj: Conv2d,
}

impl KvBranch {
    fn new(dim: usize, head_dim: usize, down: Option<ConvSpec>, vb: VarBuilder) -> Result<Self> {
        let down = match down {
            Some(conv) => Some((
                Conv2d::new(conv, vb.pp("down_conv"))?,
                RmsNorm2d::new(dim, false, vb.pp("norm"))?,
            )),
            None => None,
        };
        let proj = Conv2d::new(
            ConvSpec::new(dim, head_dim, 1, PadType::Same),
            vb.pp("proj"),
        )?;
        Ok(Self { down, proj })
    }

    /// `[B, H, W, C]` → `[B, M, head_dim]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = match &self.down {
            Some((conv, norm)) => self.proj.forward(&norm.forward(&conv.forward(x)?)?)?,
            None => self.proj.forward(x)?,
        };
        let (b, h, w, d) = y.dims4()?;
        y.reshape((b, h * w, d))
    }
}

/// `norm` → multi-query attention → layer scale → residual.
#[derive(Debug, Clone)]
pub struct MobileAttention {
    norm: RmsNorm2d,
    query: Conv2d,
    key: KvBranch,
    value: KvBranch,
    output: Conv2d,
    layer_scale: Option<LayerScale>,
    num_heads: usize,
    key_dim: usize,
    has_skip: bool,
}

impl MobileAttention {
    fn new(spec: &BlockSpec, pad: PadType, layer_scale: bool, vb: VarBuilder) -> Result<Self> {
        let BlockKind::Mqa {
            num_heads,
            key_dim,
            value_dim,
            kv_stride,
            dw_kernel,
        } = spec.def.kind
        else {
            unreachable!("MobileAttention::new called for {:?}", spec.def.kind)
        };
        let (dim, out) = (spec.in_chs, spec.def.out_chs);
        let attn = vb.pp("attn");
        let down = (kv_stride > 1)
            .then(|| ConvSpec::depthwise(dim, dw_kernel, pad).stride(kv_stride, spec.dilation));
        Ok(Self {
            norm: RmsNorm2d::new(dim, false, vb.pp("norm"))?,
            query: Conv2d::new(
                ConvSpec::new(dim, num_heads * key_dim, 1, pad),
                attn.pp("query.proj"),
            )?,
            key: KvBranch::new(dim, key_dim, down, attn.pp("key"))?,
            value: KvBranch::new(dim, value_dim, down, attn.pp("value"))?,
            output: Conv2d::new(
                ConvSpec::new(num_heads * value_dim, out, 1, pad),
                attn.pp("output.proj"),
            )?,
            layer_scale: if layer_scale {
                Some(LayerScale::new(out, vb.pp("layer_scale"))?)
            } else {
                None
            },
            num_heads,
            key_dim,
            has_skip: has_skip(spec),
        })
    }
}

impl Module for MobileAttention {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, h, w, _) = x.dims4()?;
        let (heads, n) = (self.num_heads, h * w);
        let xn = self.norm.forward(x)?;
        // Query channel index = head·key_dim + j; fold the heads into rows so that the single
        // key/value head is one matmul per image: [B, heads·N, key_dim].
        let q = self
            .query
            .forward(&xn)?
            .reshape((b, n, heads, self.key_dim))?
            .transpose(1, 2)?
            .reshape((b, heads * n, self.key_dim))?;
        let q = (q * (self.key_dim as f64).powf(-0.5))?;
        let k = self.key.forward(&xn)?;
        let v = self.value.forward(&xn)?;
        let scores = q.matmul(&k.t()?)?;
        let probs =
            candle_nn::ops::softmax_last_dim(&scores.to_dtype(DType::F32)?)?.to_dtype(v.dtype())?;
        let value_dim = v.dim(2)?;
        // [B, heads·N, value_dim] → [B, N, heads, value_dim] → NHWC with channels head·value_dim + j.
        let o = probs
            .matmul(&v)?
            .reshape((b, heads, n, value_dim))?
            .transpose(1, 2)?
            .reshape((b, h, w, heads * value_dim))?;
        let y = self.output.forward(&o)?.apply_op(&self.layer_scale)?;
        if self.has_skip {
            y + x
        } else {
            Ok(y)
        }
    }
}
