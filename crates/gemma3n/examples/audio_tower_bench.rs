//! Time the audio tower on one 30-second clip at the released audio-config shape (width 1536,
//! 12 conformer blocks, 128 mel bins) with random weights.
//!
//! `RAYON_NUM_THREADS=2 cargo run --release -p gemma3n --example audio_tower_bench [runs]
//! [--bf16-weights]`;
//! compare with `tests/reference/bench_audio_tower.py` on the same machine and thread count.
//! Besides wall time it reports the process CPU time per run (Linux), which other jobs on a
//! shared machine disturb far less.  `--bf16-weights` rounds the random weights to bf16 values,
//! as in the released checkpoints (the tower still computes in f32): on CPUs with AMX the
//! matrix multiplies then skip one of their three bf16 terms.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use gemma3n::{AudioConfig, AudioEncoder};

const REAL_AUDIO_CONFIG: &str = r#"{
    "vocab_size": 128, "vocab_offset": 262272, "input_feat_size": 128, "hidden_size": 1536,
    "rms_norm_eps": 1e-6, "gradient_clipping": 1e10,
    "conf_attention_chunk_size": 12, "conf_attention_context_left": 13,
    "conf_attention_context_right": 0, "conf_attention_logit_cap": 50.0,
    "conf_num_attention_heads": 8, "conf_num_hidden_layers": 12, "conf_conv_kernel_size": 5,
    "conf_reduction_factor": 4, "conf_residual_weight": 0.5,
    "sscp_conv_channel_size": [128, 32], "sscp_conv_group_norm_eps": 1e-3,
    "sscp_conv_kernel_size": [[3, 3], [3, 3]], "sscp_conv_stride_size": [[2, 2], [2, 2]]
}"#;

/// User + system CPU time of this process in seconds, from `/proc/self/stat` (Linux only).
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    let ticks: f64 = fields.next()?.parse::<f64>().ok()? + fields.next()?.parse::<f64>().ok()?;
    // Clock ticks are 1/100 s on every Linux configuration in use.
    Some(ticks / 100.0)
}

/// Frames of a 30 s clip: 480 000 samples, 513-sample windows every 160 samples.
const FRAMES: usize = 2997;

fn main() -> anyhow::Result<()> {
    let runs: usize = std::env::args().nth(1).map_or(Ok(3), |s| s.parse())?;
    let bf16_weights = std::env::args().any(|a| a == "--bf16-weights");
    let cfg: AudioConfig = serde_json::from_str(REAL_AUDIO_CONFIG)?;
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    // A first build creates every weight in the var map; they get random values, then the tower
    // is built again so that weights it derives at load time see them too.
    AudioEncoder::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &dev))?;
    for var in varmap.all_vars() {
        let values = Tensor::randn(0f32, 0.05, var.shape(), &dev)?;
        var.set(&if bf16_weights {
            values.to_dtype(DType::BF16)?.to_dtype(DType::F32)?
        } else {
            values
        })?;
    }
    let tower = AudioEncoder::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &dev))?;
    let mel = Tensor::randn(0f32, 1.0, (1, FRAMES, cfg.input_feat_size), &dev)?;
    let valid = Tensor::ones((1, FRAMES), DType::U8, &dev)?;

    let start = Instant::now();
    let out = tower.forward(&mel, &valid, None)?;
    println!(
        "warm-up: {:.3} s, output {:?}",
        start.elapsed().as_secs_f64(),
        out.features.dims()
    );
    let (mut times, mut cpu) = (Vec::with_capacity(runs), Vec::with_capacity(runs));
    for _ in 0..runs {
        let (start, cpu_start) = (Instant::now(), cpu_seconds());
        tower.forward(&mel, &valid, None)?;
        times.push(start.elapsed().as_secs_f64());
        if let (Some(a), Some(b)) = (cpu_start, cpu_seconds()) {
            cpu.push(b - a);
        }
    }
    times.sort_by(f64::total_cmp);
    cpu.sort_by(f64::total_cmp);
    let cpu = cpu
        .get(cpu.len() / 2)
        .map_or(String::new(), |c| format!(", median CPU time {c:.2} s"));
    println!(
        "audio tower{}, 30 s clip ({FRAMES} frames): median {:.3} s, min {:.3} s over {runs} runs{cpu}",
        if bf16_weights { " (bf16 weights)" } else { "" },
        times[runs / 2],
        times[0]
    );
    Ok(())
}
