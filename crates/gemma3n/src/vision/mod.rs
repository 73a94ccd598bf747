//! The MobileNet-V5 vision encoder (`model.vision_tower.timm_model`, timm's `MobileNetV5Encoder`):
//! stem, four stages of edge-residual / universal-inverted-residual / multi-query-attention
//! blocks, and the multi-scale fusion adapter that yields the soft-token grid.
//!
//! The architecture comes from `vision_config.model_args` when the checkpoint carries a block list,
//! otherwise from the built-in `mobilenetv5_300m_enc` table ([`arch`]).  Activations are kept
//! channels-last internally; inputs and reported outputs are NCHW like timm's.

pub mod arch;
mod blocks;
mod conv;
mod kernels;
mod msfa;

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

pub use arch::Arch;
use blocks::Block;
use conv::{ConvNormAct, ConvSpec};
use msfa::MultiScaleFusionAdapter;

/// Intermediate activations of one forward pass (NCHW), for parity tests.
#[derive(Debug, Default)]
pub struct VisionTrace {
    pub stem_output: Option<Tensor>,
    pub stage_outputs: Vec<Tensor>,
}

#[derive(Debug, Clone)]
pub struct VisionTower {
    arch: Arch,
    conv_stem: ConvNormAct,
    stages: Vec<Vec<Block>>,
    msfa: MultiScaleFusionAdapter,
}

impl VisionTower {
    /// `out_chs` is the MSFA width (`vision_config.hidden_size`); `vb` is rooted at `timm_model`.
    pub fn new(arch: Arch, out_chs: usize, vb: VarBuilder) -> Result<Self> {
        let stem = ConvSpec {
            bias: arch.stem_bias,
            ..ConvSpec::new(3, arch.stem_size, 3, arch.pad_type).stride(2, 1)
        };
        let conv_stem = ConvNormAct::new(stem, true, vb.pp("conv_stem"))?;
        let stages = arch
            .stages
            .iter()
            .enumerate()
            .map(|(s, stage)| {
                stage
                    .iter()
                    .enumerate()
                    .map(|(i, spec)| {
                        Block::new(
                            spec,
                            arch.pad_type,
                            arch.layer_scale,
                            vb.pp(format!("blocks.{s}.{i}")),
                        )
                    })
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<Vec<_>>>()?;
        let msfa_in = arch.msfa_taps.iter().map(|&t| arch.tap_channels(t)).sum();
        let msfa = MultiScaleFusionAdapter::new(
            msfa_in,
            out_chs,
            arch.msfa_output_resolution,
            arch.pad_type,
            vb.pp("msfa"),
        )?;
        Ok(Self {
            arch,
            conv_stem,
            stages,
            msfa,
        })
    }

    pub fn arch(&self) -> &Arch {
        &self.arch
    }

    /// Output grid `(rows, cols)`: one soft token per cell.
    pub fn output_grid(&self) -> (usize, usize) {
        self.arch.msfa_output_resolution
    }

    /// Channels-last features `[B, gh, gw, C]` for pixel values `[B, 3, H, W]`.
    pub fn features(
        &self,
        pixel_values: &Tensor,
        mut trace: Option<&mut VisionTrace>,
    ) -> Result<Tensor> {
        let (_, c, h, w) = pixel_values.dims4()?;
        if c != 3 || h == 0 || w == 0 {
            candle_core::bail!(
                "vision tower expects pixel values [n, 3, H, W], got {:?}",
                pixel_values.dims()
            );
        }
        let mut record = |x: &Tensor, stage: Option<usize>| -> Result<()> {
            if let Some(t) = trace.as_deref_mut() {
                let nchw = x.permute((0, 3, 1, 2))?.contiguous()?;
                match stage {
                    None => t.stem_output = Some(nchw),
                    Some(_) => t.stage_outputs.push(nchw),
                }
            }
            Ok(())
        };
        let x = pixel_values.permute((0, 2, 3, 1))?.contiguous()?;
        let mut x = self.conv_stem.forward(&x)?;
        record(&x, None)?;
        let mut taps = Vec::with_capacity(self.arch.msfa_taps.len());
        if self.arch.msfa_taps.contains(&0) {
            taps.push(x.clone());
        }
        for (s, stage) in self.stages.iter().enumerate() {
            for block in stage {
                x = block.forward(&x)?;
            }
            record(&x, Some(s))?;
            if self.arch.msfa_taps.contains(&(s + 1)) {
                taps.push(x.clone());
            }
        }
        self.msfa.forward(&taps)
    }

    /// timm's `forward_features`: `[B, 3, H, W]` → `[B, C, gh, gw]`.
    pub fn forward_traced(
        &self,
        pixel_values: &Tensor,
        trace: Option<&mut VisionTrace>,
    ) -> Result<Tensor> {
        self.features(pixel_values, trace)?
            .permute((0, 3, 1, 2))?
            .contiguous()
    }
}

impl Module for VisionTower {
    fn forward(&self, pixel_values: &Tensor) -> Result<Tensor> {
        self.forward_traced(pixel_values, None)
    }
}
