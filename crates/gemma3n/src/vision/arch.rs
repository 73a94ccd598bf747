//! The MobileNet-V5 architecture definition: which blocks, in which stages, with which sizes.
//!
//! A checkpoint either carries the block list in `vision_config.model_args.block_args` (timm's
//! `decode_arch_def` output, one dict per block) or relies on timm's built-in
//! `mobilenetv5_300m_enc`, which is restated here in timm's own block-string notation.  Both are
//! resolved into [`Arch`]: every block with its input channels, stride and dilation, as timm's
//! `EfficientNetBuilder` would build it.

use serde::Deserialize;
use serde_json::Value;

use crate::config::VisionConfig;
use crate::{Error, Result};

/// timm's `make_divisible` with its defaults (divisor 8, at most 10% rounding down).
pub fn make_divisible(v: f64) -> usize {
    let divisor: f64 = 8.0;
    let mut new_v = divisor.max(((v + divisor / 2.0) / divisor).floor() * divisor);
    if new_v < 0.9 * v {
        new_v += divisor;
    }
    new_v as usize
}

/// One block as declared, before channel bookkeeping.
#[derive(Debug, Clone, PartialEq)]
pub enum BlockKind {
    /// Fused MBConv: full `exp_kernel` conv to `in·exp_ratio`, then a `pw_kernel` projection.
    EdgeResidual {
        exp_kernel: usize,
        pw_kernel: usize,
        exp_ratio: f64,
        force_in_chs: usize,
        group_size: usize,
    },
    /// Universal inverted residual; a kernel of 0 means the depthwise conv is absent.
    Uir {
        dw_start: usize,
        dw_mid: usize,
        dw_end: usize,
        exp_ratio: f64,
        group_size: usize,
    },
    /// Mobile multi-query attention.
    Mqa {
        num_heads: usize,
        key_dim: usize,
        value_dim: usize,
        kv_stride: usize,
        dw_kernel: usize,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct BlockDef {
    pub kind: BlockKind,
    pub out_chs: usize,
    pub stride: usize,
    pub noskip: bool,
}

/// A block with everything the builder derives: input channels, effective stride and dilation.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockSpec {
    pub def: BlockDef,
    pub in_chs: usize,
    pub stride: usize,
    pub dilation: usize,
}

/// How convolutions pad: TF "SAME" (the Gemma 3n encoder) or PyTorch-style symmetric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PadType {
    Same,
    Symmetric,
}

#[derive(Debug, Clone)]
pub struct Arch {
    pub stem_size: usize,
    pub stem_bias: bool,
    pub pad_type: PadType,
    pub layer_scale: bool,
    pub stages: Vec<Vec<BlockSpec>>,
    /// Feature points fed to the MSFA: 0 is the stem, `i + 1` the end of stage `i`.
    pub msfa_taps: Vec<usize>,
    pub msfa_output_resolution: (usize, usize),
}

/// timm's `mobilenetv5_300m_enc` block list: per stage, runs of block strings repeated `n` times.
const MOBILENETV5_300M: [&[(&[&str], usize)]; 4] = [
    &[(&["er_r1_k3_s2_e4_c128"], 1), (&["er_r1_k3_s1_e4_c128"], 2)],
    &[(
        &[
            "uir_r1_a3_k5_s2_e6_c256",
            "uir_r1_a5_k0_s1_e4_c256",
            "uir_r1_a3_k0_s1_e4_c256",
            "uir_r1_a5_k0_s1_e4_c256",
            "uir_r1_a3_k0_s1_e4_c256",
        ],
        1,
    )],
    &[
        (
            &[
                "uir_r1_a5_k5_s2_e6_c640",
                "uir_r7_a5_k0_s1_e4_c640",
                "uir_r1_a0_k0_s1_e1_c640",
            ],
            1,
        ),
        (
            &["mqa_r1_k3_h12_v2_s1_d64_c640", "uir_r1_a0_k0_s1_e2_c640"],
            14,
        ),
    ],
    &[
        (&["uir_r1_a5_k5_s2_e6_c1280"], 1),
        (
            &["mqa_r1_k3_h16_s1_d96_c1280", "uir_r1_a0_k0_s1_e2_c1280"],
            19,
        ),
    ],
];

/// Decode one timm block string (`uir_r1_a3_k5_s2_e6_c256`) into `repeat` block definitions.
/// Only the option letters the MobileNet-V5 definitions use are understood.
fn decode_block_str(s: &str) -> Result<Vec<BlockDef>> {
    let bad = |why: &str| Error::Config(format!("vision block string {s:?}: {why}"));
    let mut parts = s.split('_');
    let kind = parts.next().unwrap_or_default();
    let mut opts = std::collections::HashMap::new();
    let mut noskip = false;
    for op in parts {
        if op == "noskip" {
            noskip = true;
            continue;
        }
        let split = op
            .find(|c: char| c.is_ascii_digit())
            .ok_or_else(|| bad("option without a value"))?;
        let value: usize = op[split..]
            .parse()
            .map_err(|_| bad(&format!("option {op:?} is not a number")))?;
        opts.insert(&op[..split], value);
    }
    let get = |k: &str| {
        opts.get(k)
            .copied()
            .ok_or_else(|| bad(&format!("missing {k}")))
    };
    let opt = |k: &str| opts.get(k).copied().unwrap_or(0);
    let kind = match kind {
        "er" => BlockKind::EdgeResidual {
            exp_kernel: get("k")?,
            pw_kernel: opts.get("p").copied().unwrap_or(1),
            exp_ratio: get("e")? as f64,
            force_in_chs: opt("fc"),
            group_size: opt("gs"),
        },
        "uir" => BlockKind::Uir {
            dw_start: opt("a"),
            dw_mid: get("k")?,
            dw_end: opt("p"),
            exp_ratio: get("e")? as f64,
            group_size: opts.get("gs").copied().unwrap_or(1),
        },
        "mqa" => BlockKind::Mqa {
            num_heads: get("h")?,
            key_dim: get("d")?,
            value_dim: get("d")?,
            kv_stride: opts.get("v").copied().unwrap_or(1),
            dw_kernel: get("k")?,
        },
        other => return Err(bad(&format!("unsupported block type {other:?}"))),
    };
    let def = BlockDef {
        kind,
        out_chs: get("c")?,
        stride: get("s")?,
        noskip,
    };
    Ok(vec![def; get("r")?])
}

/// One `block_args` dict as written by timm's `decode_arch_def`.
#[derive(Debug, Deserialize)]
struct BlockArgs {
    block_type: String,
    out_chs: usize,
    stride: usize,
    #[serde(default)]
    noskip: bool,
    #[serde(default)]
    act_layer: Option<Value>,
    #[serde(default)]
    se_ratio: Option<f64>,
    #[serde(default)]
    group_size: Option<usize>,
    #[serde(default)]
    exp_ratio: Option<f64>,
    // er
    #[serde(default)]
    exp_kernel_size: Option<usize>,
    #[serde(default)]
    pw_kernel_size: Option<usize>,
    #[serde(default)]
    force_in_chs: Option<usize>,
    // uir
    #[serde(default)]
    dw_kernel_size_start: Option<usize>,
    #[serde(default)]
    dw_kernel_size_mid: Option<usize>,
    #[serde(default)]
    dw_kernel_size_end: Option<usize>,
    // mqa
    #[serde(default)]
    num_heads: Option<usize>,
    #[serde(default)]
    key_dim: Option<usize>,
    #[serde(default)]
    value_dim: Option<usize>,
    #[serde(default)]
    kv_stride: Option<usize>,
    #[serde(default)]
    dw_kernel_size: Option<usize>,
}

impl BlockArgs {
    fn into_def(self, where_: &str) -> Result<BlockDef> {
        let bad = |why: String| Error::Config(format!("vision_config.model_args.{where_}: {why}"));
        if self.act_layer.as_ref().is_some_and(|a| !a.is_null()) {
            return Err(bad("per-block act_layer overrides are not supported".into()));
        }
        if self.se_ratio.unwrap_or(0.0) > 0.0 {
            return Err(bad("squeeze-excite (se_ratio > 0) is not supported".into()));
        }
        let need = |v: Option<usize>, name: &str| v.ok_or_else(|| bad(format!("missing {name}")));
        let exp_ratio = || {
            self.exp_ratio
                .ok_or_else(|| bad("missing exp_ratio".into()))
        };
        let kind = match self.block_type.as_str() {
            "er" => BlockKind::EdgeResidual {
                exp_kernel: need(self.exp_kernel_size, "exp_kernel_size")?,
                pw_kernel: self.pw_kernel_size.unwrap_or(1),
                exp_ratio: exp_ratio()?,
                force_in_chs: self.force_in_chs.unwrap_or(0),
                group_size: self.group_size.unwrap_or(0),
            },
            "uir" => BlockKind::Uir {
                dw_start: self.dw_kernel_size_start.unwrap_or(0),
                dw_mid: self.dw_kernel_size_mid.unwrap_or(0),
                dw_end: self.dw_kernel_size_end.unwrap_or(0),
                exp_ratio: exp_ratio()?,
                group_size: self.group_size.unwrap_or(1),
            },
            "mqa" => {
                let key_dim = need(self.key_dim, "key_dim")?;
                BlockKind::Mqa {
                    num_heads: need(self.num_heads, "num_heads")?,
                    key_dim,
                    value_dim: self.value_dim.unwrap_or(key_dim),
                    kv_stride: self.kv_stride.unwrap_or(1),
                    dw_kernel: self.dw_kernel_size.unwrap_or(3),
                }
            }
            other => {
                return Err(bad(format!(
                    "block type {other:?} is not used by MobileNet-V5 and not supported"
                )))
            }
        };
        Ok(BlockDef {
            kind,
            out_chs: self.out_chs,
            stride: self.stride,
            noskip: self.noskip,
        })
    }
}

/// The model_args keys this port understands; anything else would silently change the network.
const KNOWN_ARGS: [&str; 7] = [
    "block_args",
    "stem_size",
    "stem_bias",
    "pad_type",
    "msfa_indices",
    "msfa_output_resolution",
    "layer_scale_init_value",
];

impl Arch {
    pub fn from_config(cfg: &VisionConfig) -> Result<Self> {
        let empty = serde_json::Map::new();
        let args = match &cfg.model_args {
            None | Some(Value::Null) => &empty,
            Some(Value::Object(m)) => m,
            Some(_) => {
                return Err(Error::Config(
                    "vision_config.model_args must be an object".into(),
                ))
            }
        };
        if let Some(k) = args.keys().find(|k| !KNOWN_ARGS.contains(&k.as_str())) {
            return Err(Error::Config(format!(
                "vision_config.model_args.{k} is not supported by this MobileNet-V5 port"
            )));
        }
        let arch_name = cfg
            .architecture
            .as_deref()
            .unwrap_or("mobilenetv5_300m_enc");
        if arch_name != "mobilenetv5_300m_enc" {
            return Err(Error::Config(format!(
                "vision architecture {arch_name:?} is not supported (expected mobilenetv5_300m_enc)"
            )));
        }
        let defs: Vec<Vec<BlockDef>> = match args.get("block_args") {
            Some(v) => parse_block_args(v)?,
            None => MOBILENETV5_300M
                .iter()
                .map(|runs| {
                    let mut blocks = Vec::new();
                    for &(pattern, times) in runs.iter() {
                        for _ in 0..times {
                            for s in pattern {
                                blocks.extend(decode_block_str(s)?);
                            }
                        }
                    }
                    Ok(blocks)
                })
                .collect::<Result<_>>()?,
        };
        let uint = |key: &str, default: usize| -> Result<usize> {
            match args.get(key) {
                None => Ok(default),
                Some(v) => v.as_u64().map(|v| v as usize).ok_or_else(|| {
                    Error::Config(format!(
                        "vision_config.model_args.{key} must be a positive integer"
                    ))
                }),
            }
        };
        let stem_size = make_divisible(uint("stem_size", 64)? as f64);
        let stem_bias = args
            .get("stem_bias")
            .map(|v| v.as_bool() == Some(true))
            .unwrap_or(true);
        let pad_type = match args
            .get("pad_type")
            .and_then(Value::as_str)
            .unwrap_or("same")
        {
            "same" => PadType::Same,
            "" => PadType::Symmetric,
            other => {
                return Err(Error::Config(format!(
                    "vision_config.model_args.pad_type {other:?} is not supported"
                )))
            }
        };
        let layer_scale = args
            .get("layer_scale_init_value")
            .is_none_or(|v| !v.is_null());
        let res = match args.get("msfa_output_resolution") {
            Some(Value::Array(a)) if a.len() == 2 => {
                let dim = |v: &Value| v.as_u64().map(|v| v as usize);
                dim(&a[0]).zip(dim(&a[1]))
            }
            Some(v) => v.as_u64().map(|v| (v as usize, v as usize)),
            None => Some((16, 16)),
        };
        let msfa_output_resolution = res.filter(|&(h, w)| h > 0 && w > 0).ok_or_else(|| {
            Error::Config("vision_config.model_args.msfa_output_resolution is invalid".into())
        })?;
        let msfa_indices: Vec<i64> = match args.get("msfa_indices") {
            None => vec![-2, -1],
            Some(v) => serde_json::from_value(v.clone()).map_err(|e| {
                Error::Config(format!("vision_config.model_args.msfa_indices: {e}"))
            })?,
        };
        build(
            stem_size,
            stem_bias,
            pad_type,
            layer_scale,
            defs,
            &msfa_indices,
            msfa_output_resolution,
        )
    }

    /// Channels at feature point `tap` (0 = stem).
    pub fn tap_channels(&self, tap: usize) -> usize {
        if tap == 0 {
            self.stem_size
        } else {
            self.stages[tap - 1].last().map_or(0, |b| b.def.out_chs)
        }
    }
}

fn parse_block_args(v: &Value) -> Result<Vec<Vec<BlockDef>>> {
    let stages: Vec<Vec<BlockArgs>> = serde_json::from_value(v.clone())
        .map_err(|e| Error::Config(format!("vision_config.model_args.block_args: {e}")))?;
    stages
        .into_iter()
        .enumerate()
        .map(|(s, blocks)| {
            blocks
                .into_iter()
                .enumerate()
                .map(|(i, b)| b.into_def(&format!("block_args[{s}][{i}]")))
                .collect()
        })
        .collect()
}

/// Follow timm's `EfficientNetBuilder`: chain channels, keep strides only on the first block of a
/// stage, turn strides beyond an output stride of 32 into dilation, and record feature points.
fn build(
    stem_size: usize,
    stem_bias: bool,
    pad_type: PadType,
    layer_scale: bool,
    defs: Vec<Vec<BlockDef>>,
    msfa_indices: &[i64],
    msfa_output_resolution: (usize, usize),
) -> Result<Arch> {
    const OUTPUT_STRIDE: usize = 32;
    if defs.is_empty() || defs.iter().any(Vec::is_empty) {
        return Err(Error::Config("vision block_args has an empty stage".into()));
    }
    let mut in_chs = stem_size;
    let mut current_stride = 2;
    let mut dilation = 1;
    // Feature points as timm lists them (the stem only if the first block downsamples).
    let mut feature_points = Vec::new();
    if defs[0][0].stride > 1 {
        feature_points.push(0);
    }
    let mut stages = Vec::with_capacity(defs.len());
    for (s, stage_defs) in defs.iter().enumerate() {
        let mut stage = Vec::with_capacity(stage_defs.len());
        for (i, def) in stage_defs.iter().enumerate() {
            let mut def = def.clone();
            if !matches!(def.stride, 1 | 2) {
                return Err(Error::Config(format!(
                    "vision block {s}.{i}: stride {} (only 1 and 2 exist)",
                    def.stride
                )));
            }
            if i >= 1 {
                def.stride = 1;
            }
            def.out_chs = make_divisible(def.out_chs as f64);
            let mut stride = def.stride;
            let block_dilation = dilation;
            if stride > 1 {
                if current_stride * stride > OUTPUT_STRIDE {
                    dilation *= stride;
                    stride = 1;
                } else {
                    current_stride *= stride;
                }
            }
            let spec = BlockSpec {
                in_chs,
                stride,
                dilation: block_dilation,
                def,
            };
            in_chs = spec.def.out_chs;
            stage.push(spec);
        }
        let last_stage = s + 1 == defs.len();
        if last_stage || defs[s + 1][0].stride > 1 {
            feature_points.push(s + 1);
        }
        stages.push(stage);
    }
    // timm resolves the MSFA indices against the feature-point count but then taps the forward
    // pass by position (stem = 0, stage i = i + 1); mirror that exactly.
    let n = feature_points.len() as i64;
    let mut msfa_taps = Vec::with_capacity(msfa_indices.len());
    for &idx in msfa_indices {
        let tap = if idx < 0 { n + idx } else { idx };
        if tap < 0 || tap >= n || tap as usize > stages.len() {
            return Err(Error::Config(format!(
                "vision msfa index {idx} is outside the {n} feature points"
            )));
        }
        msfa_taps.push(tap as usize);
    }
    if msfa_taps.is_empty() {
        return Err(Error::Config("vision msfa_indices is empty".into()));
    }
    Ok(Arch {
        stem_size,
        stem_bias,
        pad_type,
        layer_scale,
        stages,
        msfa_taps,
        msfa_output_resolution,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_300m_matches_timm_table() {
        let cfg: VisionConfig = serde_json::from_value(serde_json::json!({
            "architecture": "mobilenetv5_300m_enc",
            "hidden_size": 2048, "vocab_size": 128, "vocab_offset": 262144
        }))
        .unwrap();
        let arch = Arch::from_config(&cfg).unwrap();
        let counts: Vec<usize> = arch.stages.iter().map(Vec::len).collect();
        assert_eq!(counts, [3, 5, 37, 39]);
        assert_eq!(arch.stem_size, 64);
        assert_eq!(arch.msfa_taps, [3, 4]);
        assert_eq!(arch.msfa_output_resolution, (16, 16));
        let b = &arch.stages[2][9];
        assert_eq!(b.in_chs, 640);
        assert_eq!(
            b.def.kind,
            BlockKind::Mqa {
                num_heads: 12,
                key_dim: 64,
                value_dim: 64,
                kv_stride: 2,
                dw_kernel: 3
            }
        );
        assert_eq!(arch.stages[3][0].in_chs, 640);
        assert_eq!(arch.stages[3][0].stride, 2);
        assert!(arch.stages.iter().flatten().all(|b| b.dilation == 1));
    }

    #[test]
    fn make_divisible_matches_timm() {
        assert_eq!(make_divisible(20.0), 24);
        assert_eq!(make_divisible(64.0), 64);
        assert_eq!(make_divisible(13.0), 16);
        assert_eq!(make_divisible(3.0), 8);
    }

    #[test]
    fn unsupported_block_is_reported() {
        let cfg: VisionConfig = serde_json::from_value(serde_json::json!({
            "hidden_size": 2048, "vocab_size": 128, "vocab_offset": 262144,
            "model_args": {"block_args": [[{"block_type": "ds", "out_chs": 8, "stride": 2}]]}
        }))
        .unwrap();
        let err = Arch::from_config(&cfg).unwrap_err().to_string();
        assert!(err.contains("\"ds\""), "{err}");
    }
}
