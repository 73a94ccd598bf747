//! Load / prefill / decode timing of the text decoder, for `gemma-chat bench` and the benchmark
//! notes.  The prompt is synthetic (fixed pseudo-random text ids), so any checkpoint works, tiny
//! ones included, and no tokenizer is needed; speed does not depend on the values.

use std::path::Path;
use std::time::Instant;

use candle_core::{Device, Tensor, D};
use serde::Serialize;

use crate::model::{Gemma3nModel, LoadOptions, MediaEmbeddings};
use crate::{Error, Result};

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub load: LoadOptions,
    pub prompt_tokens: usize,
    pub gen_tokens: usize,
    /// Pixel values `[1, 3, H, W]` to time the vision tower on (first call includes loading it).
    pub image: Option<Tensor>,
    /// Log-mel features `[1, frames, mel]` and their mask `[1, frames]` for the audio tower.
    pub audio: Option<(Tensor, Tensor)>,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            load: LoadOptions::default(),
            prompt_tokens: 128,
            gen_tokens: 64,
            image: None,
            audio: None,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub weights: String,
    /// The instruction-set level the CPU kernels ran at (`kernels::cpu`).
    pub cpu_level: String,
    pub threads: usize,
    pub prompt_tokens: usize,
    pub gen_tokens: usize,
    pub load_s: f64,
    /// Prefill of the whole prompt plus picking the first token.
    pub ttft_ms: f64,
    pub prefill_tok_s: f64,
    /// Single-token steps after the first token.
    pub decode_tok_s: f64,
    /// Peak resident set of the process (`VmHWM`), MiB; `None` where the OS does not report it.
    pub peak_rss_mb: Option<f64>,
    /// Resident set right after loading, MiB.
    pub load_rss_mb: Option<f64>,
    /// Key/value cache held at the end of the run.
    pub kv_cache_mb: f64,
    /// Decoder layers loaded (fewer than the checkpoint's in a MatFormer slice).
    pub layers: usize,
    /// Parameters without the embedding tables, as the published MatFormer table counts them.
    pub effective_params: u64,
    /// Weight bytes each decoded token reads, with the matrices packed as loaded (`weights`).
    pub weight_bytes_per_token: u64,
    /// One image through the vision tower and embedder (tower already loaded), ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_encode_ms: Option<f64>,
    /// One clip through the audio tower and embedder (tower already loaded), ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audio_encode_ms: Option<f64>,
}

impl BenchReport {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Load the model in `dir` and time one prefill of `prompt_tokens` and `gen_tokens` greedy steps.
pub fn run(dir: &Path, opts: &BenchOptions) -> Result<BenchReport> {
    if opts.prompt_tokens == 0 || opts.gen_tokens == 0 {
        return Err(Error::Input(
            "the benchmark needs at least one prompt token and one generated token".into(),
        ));
    }
    let t0 = Instant::now();
    let model = Gemma3nModel::load_with(dir, &opts.load)?;
    let load_s = t0.elapsed().as_secs_f64();
    let load_rss_mb = rss_mb("VmRSS");
    let needed = opts.prompt_tokens + opts.gen_tokens;
    if needed > model.max_context() {
        return Err(Error::Input(format!(
            "{needed} tokens exceed the model's context of {}",
            model.max_context()
        )));
    }

    let ids = synthetic_prompt(
        opts.prompt_tokens,
        model.config().text_config.vocab_size_per_layer_input,
    );
    let device = model.device().clone();
    let media = MediaEmbeddings::default();
    let mut cache = model.new_cache();

    let t1 = Instant::now();
    let input = Tensor::from_vec(ids, (1, opts.prompt_tokens), &device)?;
    let logits = model.forward_last(&input, &media, &mut cache)?;
    let mut next = argmax(&logits)?;
    let prefill_s = t1.elapsed().as_secs_f64();

    let t2 = Instant::now();
    for _ in 0..opts.gen_tokens {
        let input = Tensor::from_vec(vec![next], (1, 1), &device)?;
        let logits = model.forward_last(&input, &media, &mut cache)?;
        next = argmax(&logits)?;
    }
    let decode_s = t2.elapsed().as_secs_f64();

    // Towers are loaded on first use; time a second, warm call.
    let image_encode_ms = match &opts.image {
        Some(pixels) => {
            model.vision_tower()?;
            Some(time_ms(|| model.encode_images(pixels))?)
        }
        None => None,
    };
    let audio_encode_ms = match &opts.audio {
        Some((features, mask)) => {
            model.audio_tower()?;
            Some(time_ms(|| model.encode_audio(features, mask))?)
        }
        None => None,
    };

    let size = crate::matformer::Size::of(&model.config().text_config, None);
    Ok(BenchReport {
        // A GGUF file's quantized matrices stay as stored; `weights` covers its f32 ones.
        weights: if crate::gguf::is_gguf(dir) {
            format!("gguf ({})", opts.load.weights)
        } else {
            opts.load.weights.to_string()
        },
        cpu_level: kernels::level().to_string(),
        threads: rayon::current_num_threads(),
        prompt_tokens: opts.prompt_tokens,
        gen_tokens: opts.gen_tokens,
        load_s,
        ttft_ms: prefill_s * 1e3,
        prefill_tok_s: opts.prompt_tokens as f64 / prefill_s,
        decode_tok_s: opts.gen_tokens as f64 / decode_s,
        peak_rss_mb: rss_mb("VmHWM"),
        load_rss_mb,
        kv_cache_mb: cache.bytes() as f64 / (1 << 20) as f64,
        layers: size.layers,
        effective_params: size.effective_params,
        weight_bytes_per_token: size.bytes_per_token(opts.load.weights),
        image_encode_ms,
        audio_encode_ms,
    })
}

fn time_ms(f: impl FnOnce() -> Result<Tensor>) -> Result<f64> {
    let t = Instant::now();
    f()?;
    Ok(t.elapsed().as_secs_f64() * 1e3)
}

fn argmax(logits: &Tensor) -> Result<u32> {
    Ok(logits
        .argmax(D::Minus1)?
        .flatten_all()?
        .to_device(&Device::Cpu)?
        .to_vec1::<u32>()?[0])
}

/// Deterministic ids spread over the text vocabulary (past the special ids).
fn synthetic_prompt(n: usize, vocab: usize) -> Vec<u32> {
    let first = 10.min(vocab.saturating_sub(1)) as u64;
    let span = (vocab as u64).saturating_sub(first).max(1);
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (first + state % span) as u32
        })
        .collect()
}

/// A memory figure from `/proc/self/status`, in MiB.
fn rss_mb(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}
