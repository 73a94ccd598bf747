//! Time the MobileNet-V5 tower at the real `mobilenetv5_300m_enc` shape on one 768×768 image.
//!
//! ```sh
//! RAYON_NUM_THREADS=2 cargo run --release -p gemma3n --example vision_bench -- --runs 5
//! # weights + input/output exported by tests/reference/bench_vision_timm.py --export DIR:
//! RAYON_NUM_THREADS=2 cargo run --release -p gemma3n --example vision_bench -- --weights DIR
//! ```
//!
//! Without `--weights` the tower gets random weights built in-process.  With them it also checks
//! the output against timm's.  Compare with `tests/reference/bench_vision_timm.py` at the same
//! thread count.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Module, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};
use gemma3n::vision::{Arch, VisionTower};
use gemma3n::VisionConfig;

/// Random weights: fan-in scaled normals for convolutions, ones for norms and layer scales.
struct RandomWeights;

impl SimpleBackend for RandomWeights {
    fn get(
        &self,
        s: Shape,
        _name: &str,
        _h: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let dims = s.dims();
        if dims.len() == 1 {
            return Tensor::ones(s, dtype, dev);
        }
        let fan_in = s.elem_count() / dims[0];
        Tensor::randn(0f32, 1.0 / (fan_in as f32).sqrt(), s, dev)?.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("random weights have no shape for {name}")
    }

    fn contains_tensor(&self, _name: &str) -> bool {
        true
    }
}

/// User + system CPU time of this process (Linux `/proc/self/stat`, in clock ticks of 10 ms).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

fn main() -> Result<()> {
    let mut runs = 5usize;
    let mut size = 768usize;
    let mut weights: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().context("missing value");
        match arg.as_str() {
            "--runs" => runs = value()?.parse()?,
            "--size" => size = value()?.parse()?,
            "--weights" => weights = Some(value()?.into()),
            other => bail!("unknown argument {other}"),
        }
    }
    let device = Device::Cpu;
    let cfg: VisionConfig = serde_json::from_value(serde_json::json!({
        "architecture": "mobilenetv5_300m_enc",
        "hidden_size": 2048, "vocab_size": 128, "vocab_offset": 262144
    }))?;
    let arch = Arch::from_config(&cfg)?;
    let (vb, io) = match &weights {
        Some(dir) => {
            let file = dir.join("model.safetensors");
            let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[file], DType::F32, &device)? };
            let io = candle_core::safetensors::load(dir.join("io.safetensors"), &device)?;
            (vb, Some(io))
        }
        None => (
            VarBuilder::from_backend(Box::new(RandomWeights), DType::F32, device.clone()),
            None,
        ),
    };
    let tower = VisionTower::new(arch, 2048, vb.pp("model.vision_tower.timm_model"))?;
    let x = match &io {
        Some(io) => io["pixel_values"].clone(),
        None => Tensor::rand(0f32, 1.0, (1, 3, size, size), &device)?,
    };

    let out = tower.forward(&x)?; // warm-up
    let mut times = Vec::with_capacity(runs);
    let mut cpu = Vec::with_capacity(runs);
    for _ in 0..runs {
        let (t, c) = (Instant::now(), cpu_seconds());
        tower.forward(&x)?;
        times.push(t.elapsed().as_secs_f64());
        cpu.push(cpu_seconds() - c);
    }
    times.sort_by(f64::total_cmp);
    cpu.sort_by(f64::total_cmp);
    println!(
        "candle MobileNet-V5 300m on {:?} -> {:?}, {} threads",
        x.dims(),
        out.dims(),
        candle_core::utils::get_num_threads()
    );
    println!(
        "wall: median {:.3} s, min {:.3} s over {runs} runs",
        times[runs / 2],
        times[0]
    );
    // On a shared machine the process's CPU time is the steadier figure.
    println!("cpu:  median {:.3} s, min {:.3} s", cpu[runs / 2], cpu[0]);
    if let Some(io) = io {
        let expected = &io["output"];
        let diff: f32 = (&out - expected)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar()?;
        let scale: f32 = expected.abs()?.flatten_all()?.max(0)?.to_scalar()?;
        println!(
            "vs timm: max abs diff {diff:.3e} (golden max abs {scale:.3e}, relative {:.2e})",
            diff / scale
        );
    }
    Ok(())
}
