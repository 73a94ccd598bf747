//! `Gemma3nForConditionalGeneration`: the decoder, the multimodal embedders and (loaded on first
//! use) the towers, behind one entry point that turns token ids plus media into logits.

use std::fmt;
use std::path::Path;
use std::sync::OnceLock;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use crate::audio::{AudioEncoder, AudioEncoding, AudioTrace};
use crate::config::Gemma3nConfig;
use crate::embedder::MultimodalEmbedder;
use crate::kv_cache::Cache;
use crate::loader::{Checkpoint, ProgressFn};
use crate::matformer::{Slice, SlicePlan};
use crate::quant::WeightFormat;
use crate::text::{Outputs, TextModel, Trace};
use crate::vision::{Arch, VisionTower};
use crate::{Error, Result};
use kernels::pool;

/// How to load a model: weight storage, device, CPU threads, and a progress report.
#[derive(Clone)]
pub struct LoadOptions {
    /// Storage of the decoder's matrices.  `Dense` keeps them as candle tensors in `dtype`; the
    /// packed formats (CPU only) keep f32 activations, norms and softmax.
    pub weights: WeightFormat,
    /// Activation dtype of the dense path (f32 for parity; bf16 is the GPU choice).
    pub dtype: DType,
    pub device: Device,
    /// Size of the rayon pool that candle and the packed kernels use; `None` leaves the pool as
    /// configured (rayon's default, or `RAYON_NUM_THREADS`).
    pub threads: Option<usize>,
    /// Told the fraction of the decoder's weights read so far (towers load later, on first use).
    pub progress: Option<ProgressFn>,
    /// Load only this MatFormer slice of the model (see [`crate::matformer`]).
    pub slice: Option<Slice>,
}

impl fmt::Debug for LoadOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadOptions")
            .field("weights", &self.weights)
            .field("dtype", &self.dtype)
            .field("device", &self.device)
            .field("threads", &self.threads)
            .field("progress", &self.progress.is_some())
            .field("slice", &self.slice)
            .finish()
    }
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            weights: WeightFormat::Dense,
            dtype: DType::F32,
            device: Device::Cpu,
            threads: None,
            progress: None,
            slice: None,
        }
    }
}

/// `cpu`, `cuda`, `cuda:N` or `metal`; a GPU the build lacks is reported, not panicked on.
pub fn parse_device(spec: &str) -> Result<Device> {
    let spec = spec.trim().to_ascii_lowercase();
    let (kind, ordinal) = match spec.split_once(':') {
        Some((k, n)) => {
            let n = n
                .parse::<usize>()
                .map_err(|_| Error::Config(format!("bad device ordinal in {spec:?}")))?;
            (k.to_string(), n)
        }
        None => (spec.clone(), 0),
    };
    let device = match kind.as_str() {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Device::new_cuda(ordinal),
        "metal" => Device::new_metal(ordinal),
        _ => {
            return Err(Error::Config(format!(
                "unknown device {spec:?}; expected cpu, cuda[:N] or metal"
            )))
        }
    };
    device.map_err(|e| Error::Config(format!("device {spec} is not available: {e}")))
}

impl LoadOptions {
    /// Size the global rayon pool.  It can be sized once per process; a later different request
    /// is an error rather than a silent no-op.
    pub fn apply_threads(&self) -> Result<()> {
        let Some(n) = self.threads else { return Ok(()) };
        if n == 0 {
            return Err(Error::Config("threads must be at least 1".into()));
        }
        // candle's own CPU matmul reads the count from this variable.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
        if rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .is_err()
            && rayon::current_num_threads() != n
        {
            return Err(Error::Config(format!(
                "the thread pool already runs {} threads; {n} can only be chosen before the first load",
                rayon::current_num_threads()
            )));
        }
        Ok(())
    }
}

/// Soft embeddings of the media in a prompt, already in the decoder's space and in prompt order:
/// `images` `[n_images, tokens_per_image, D]`, `audio` `[n_clips, tokens_per_clip, D]`.
#[derive(Debug, Clone, Default)]
pub struct MediaEmbeddings {
    pub images: Option<Tensor>,
    pub audio: Option<Tensor>,
}

impl MediaEmbeddings {
    pub fn is_empty(&self) -> bool {
        self.images.is_none() && self.audio.is_none()
    }
}

pub struct Gemma3nModel {
    cfg: Gemma3nConfig,
    text: TextModel,
    /// Absent from text-only checkpoints (GGUF files).
    embed_vision: Option<MultimodalEmbedder>,
    embed_audio: Option<MultimodalEmbedder>,
    /// Kept to build the towers lazily, when the first image or clip arrives.
    vb: VarBuilder<'static>,
    vision_tower: OnceLock<VisionTower>,
    audio_tower: OnceLock<AudioEncoder>,
}

impl Gemma3nModel {
    /// Load `config.json` and the weights from a model folder, dense in `dtype`.
    pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        Self::load_with(
            dir,
            &LoadOptions {
                dtype,
                device: device.clone(),
                ..LoadOptions::default()
            },
        )
    }

    /// Load with explicit weight storage, device and threads.  `path` is a model folder, or a
    /// llama.cpp GGUF file (text decoder only; its ggml blocks are kept as they are).
    pub fn load_with(path: &Path, opts: &LoadOptions) -> Result<Self> {
        opts.apply_threads()?;
        let gguf = crate::gguf::is_gguf(path);
        let (json, checkpoint) = if gguf {
            let (checkpoint, json) = crate::gguf::open(path)?;
            (json, checkpoint)
        } else {
            let json = Gemma3nConfig::read_json(&path.join("config.json"))?;
            (json, Checkpoint::open(path)?)
        };
        let full = Gemma3nConfig::from_value(json.clone())?;
        if !gguf {
            // Before any weight is read: the towers are otherwise only read on first use.
            crate::expected::check_towers(&full, &checkpoint)?;
        }
        let (cfg, mut checkpoint) = match &opts.slice {
            None => (full, checkpoint),
            Some(slice) => {
                let plan = SlicePlan::new(&full.text_config, slice)?;
                let sliced = plan.sliced_config(&full.text_config, json)?;
                (
                    Gemma3nConfig::from_value(sliced)?,
                    checkpoint.sliced(&plan)?,
                )
            }
        };
        if let Some(report) = &opts.progress {
            // Everything the decoder and embedders read whole; the per-layer table is gathered.
            let counted = |name: &str| {
                !name.starts_with("model.vision_tower.")
                    && !name.starts_with("model.audio_tower.")
                    && !name.ends_with("embed_tokens_per_layer.weight")
            };
            checkpoint = checkpoint.with_progress(counted, report.clone());
        }
        let packed = opts.weights != WeightFormat::Dense && opts.device.is_cpu();
        // Packed weights run with f32 activations; the dense path uses the requested dtype.
        let dtype = if packed { DType::F32 } else { opts.dtype };
        let vb = checkpoint.var_builder(dtype, &opts.device)?;
        let model = Self::new(&cfg, vb, &checkpoint, opts.weights)?;
        checkpoint.finish_progress();
        Ok(model)
    }

    pub fn new(
        cfg: &Gemma3nConfig,
        vb: VarBuilder<'static>,
        checkpoint: &Checkpoint,
        weights: WeightFormat,
    ) -> Result<Self> {
        let t = &cfg.text_config;
        let model = vb.pp("model");
        let text = TextModel::new(t, model.pp("language_model"), checkpoint, weights)?;
        let v = &cfg.vision_config;
        let a = &cfg.audio_config;
        let embedder = |width, offset, size, eps, name: &str| -> Result<_> {
            let vb = model.pp(name);
            if !vb.contains_tensor("embedding.weight") {
                return Ok(None);
            }
            Ok(Some(MultimodalEmbedder::new(
                width,
                t.hidden_size,
                offset,
                size,
                eps,
                vb,
            )?))
        };
        let embed_vision = embedder(
            v.hidden_size,
            v.vocab_offset,
            v.vocab_size,
            v.rms_norm_eps,
            "embed_vision",
        )?;
        let embed_audio = embedder(
            a.hidden_size,
            a.vocab_offset,
            a.vocab_size,
            a.rms_norm_eps,
            "embed_audio",
        )?;
        Ok(Self {
            cfg: cfg.clone(),
            text,
            embed_vision,
            embed_audio,
            vb,
            vision_tower: OnceLock::new(),
            audio_tower: OnceLock::new(),
        })
    }

    pub fn config(&self) -> &Gemma3nConfig {
        &self.cfg
    }

    pub fn text(&self) -> &TextModel {
        &self.text
    }

    /// Where the model computes, for people to read: the device, and on the CPU the level of
    /// its kernels.
    pub fn compute_description(&self) -> String {
        match self.device() {
            Device::Cpu => format!("CPU, {} kernels", kernels::level()),
            Device::Cuda(_) => "CUDA GPU".to_string(),
            Device::Metal(_) => "Metal GPU".to_string(),
        }
    }

    pub fn device(&self) -> &Device {
        self.text.device()
    }

    pub fn dtype(&self) -> DType {
        self.text.dtype()
    }

    pub fn embed_vision(&self) -> Result<&MultimodalEmbedder> {
        self.embed_vision
            .as_ref()
            .ok_or_else(|| text_only("images"))
    }

    pub fn embed_audio(&self) -> Result<&MultimodalEmbedder> {
        self.embed_audio.as_ref().ok_or_else(|| text_only("audio"))
    }

    /// The checkpoint's var builder, rooted at the top (`model.` prefix not applied).
    pub fn var_builder(&self) -> &VarBuilder<'static> {
        &self.vb
    }

    pub fn new_cache(&self) -> Cache {
        self.text.new_cache()
    }

    /// Number of positions the decoder accepts.
    pub fn max_context(&self) -> usize {
        self.cfg.text_config.max_position_embeddings
    }

    /// Input embeddings `[B, T, D]` and per-layer-embedding ids `[B, T]` for `ids` `[B, T]`.
    ///
    /// Text ids are embedded and scaled; ids in the vision/audio ranges take the embedders'
    /// hard path; the image/audio soft-token positions are then overwritten, in order, by the
    /// rows of `media`.
    pub fn embed_inputs(&self, ids: &Tensor, media: &MediaEmbeddings) -> Result<(Tensor, Tensor)> {
        let (b, t) = ids.dims2()?;
        let d = self.cfg.text_config.hidden_size;
        let v_off = self.cfg.vision_config.vocab_offset as u32;
        let a_off = self.cfg.audio_config.vocab_offset as u32;
        let host_ids: Vec<u32> = ids.flatten_all()?.to_vec1()?;
        let vocab = self.cfg.text_config.vocab_size as u32;
        if let Some(bad) = host_ids.iter().find(|&&id| id >= vocab) {
            return Err(Error::Input(format!(
                "token id {bad} is outside the vocabulary of {vocab}"
            )));
        }

        let mut embeds = self.text.embed_tokens(ids)?;
        let in_range = |lo: u32, hi: u32| -> Result<Tensor> {
            let m: Vec<u8> = host_ids
                .iter()
                .map(|&id| u8::from(id >= lo && id < hi))
                .collect();
            Ok(Tensor::from_vec(m, (b, t), ids.device())?)
        };
        for (embedder, lo, hi) in [
            (&self.embed_vision, v_off, a_off),
            (&self.embed_audio, a_off, u32::MAX),
        ] {
            // Without an embedder (text-only checkpoint) these ids keep their token-table rows.
            let Some(embedder) = embedder else { continue };
            if !host_ids.iter().any(|&id| id >= lo && id < hi) {
                continue;
            }
            let mask = in_range(lo, hi)?;
            let filler = Tensor::full(lo + embedder.vocab_size() - 1, (b, t), ids.device())?;
            let hard = embedder
                .embed_ids(&mask.where_cond(ids, &filler)?)?
                .to_dtype(embeds.dtype())?;
            let mask = mask.unsqueeze(2)?.broadcast_as((b, t, d))?;
            embeds = mask.where_cond(&hard, &embeds)?;
        }

        if !media.is_empty() {
            embeds = self.scatter_media(&embeds, &host_ids, media)?;
        }

        let ple_vocab = self.cfg.text_config.vocab_size_per_layer_input as u32;
        let ple_ids: Vec<u32> = host_ids
            .iter()
            .map(|&id| if id < ple_vocab { id } else { 0 })
            .collect();
        let ple_ids = Tensor::from_vec(ple_ids, (b, t), ids.device())?;
        Ok((embeds, ple_ids))
    }

    /// Replace the soft-token positions by the media rows, in row-major order of the ids.
    fn scatter_media(
        &self,
        embeds: &Tensor,
        host_ids: &[u32],
        media: &MediaEmbeddings,
    ) -> Result<Tensor> {
        let (b, t, d) = embeds.dims3()?;
        let mut rows = vec![embeds.reshape((b * t, d))?];
        let mut index: Vec<u32> = (0..(b * t) as u32).collect();
        for (features, token, what) in [
            (&media.images, self.cfg.image_token_id, "image"),
            (&media.audio, self.cfg.audio_token_id, "audio"),
        ] {
            let Some(features) = features else { continue };
            let features = features.flatten_to(1)?.to_dtype(embeds.dtype())?;
            let available = features.dim(0)?;
            let slots: Vec<usize> = host_ids
                .iter()
                .enumerate()
                .filter(|(_, &id)| id == token)
                .map(|(i, _)| i)
                .collect();
            if slots.len() != available {
                return Err(Error::Input(format!(
                    "the prompt has {} {what} soft-token slots but {available} {what} embeddings were given",
                    slots.len()
                )));
            }
            let base: usize = rows
                .iter()
                .map(|r| r.dim(0))
                .sum::<candle_core::Result<_>>()?;
            for (k, slot) in slots.into_iter().enumerate() {
                index[slot] = (base + k) as u32;
            }
            rows.push(features);
        }
        let table = Tensor::cat(&rows, 0)?;
        let index = Tensor::from_vec(index, b * t, embeds.device())?;
        Ok(table.index_select(&index, 0)?.reshape((b, t, d))?)
    }

    /// Final-normed hidden states `[B, T, D]` for `ids` following what `cache` already holds.
    pub fn forward_hidden(
        &self,
        ids: &Tensor,
        media: &MediaEmbeddings,
        cache: &mut Cache,
        trace: Option<&mut Trace>,
    ) -> Result<Tensor> {
        pool::busy(|| self.hidden(ids, media, cache, Outputs::Every, trace))
    }

    /// [`Self::forward_hidden`] in the calling thread (callers run it inside [`pool::busy`]).
    fn hidden(
        &self,
        ids: &Tensor,
        media: &MediaEmbeddings,
        cache: &mut Cache,
        outputs: Outputs,
        trace: Option<&mut Trace>,
    ) -> Result<Tensor> {
        let t = ids.dim(1)?;
        if t == 0 {
            return Err(Error::Input("no tokens to run".into()));
        }
        if cache.seq_len() + t > self.max_context() {
            return Err(Error::Input(format!(
                "{} tokens exceed the model's context of {} tokens",
                cache.seq_len() + t,
                self.max_context()
            )));
        }
        let (embeds, ple_ids) = self.embed_inputs(ids, media)?;
        Ok(self
            .text
            .forward_hidden(&embeds, &ple_ids, cache, outputs, trace)?)
    }

    /// Soft-capped logits `[B, T, V]` (f32) for every position.
    pub fn forward(
        &self,
        ids: &Tensor,
        media: &MediaEmbeddings,
        cache: &mut Cache,
    ) -> Result<Tensor> {
        pool::busy(|| {
            let hidden = self.hidden(ids, media, cache, Outputs::Every, None)?;
            Ok(self.text.logits(&hidden)?)
        })
    }

    /// Soft-capped logits `[B, V]` of the last position only (what generation needs).
    pub fn forward_last(
        &self,
        ids: &Tensor,
        media: &MediaEmbeddings,
        cache: &mut Cache,
    ) -> Result<Tensor> {
        pool::busy(|| {
            let hidden = self.hidden(ids, media, cache, Outputs::Last, None)?;
            Ok(self.text.logits(&hidden)?.squeeze(1)?)
        })
    }
}

impl Gemma3nModel {
    /// The MobileNet-V5 tower, built from the checkpoint on first use.  It runs in f32 unless the
    /// model is on an accelerator in bf16 (f16 overflows in its convolutions).
    pub fn vision_tower(&self) -> Result<&VisionTower> {
        if let Some(tower) = self.vision_tower.get() {
            return Ok(tower);
        }
        self.embed_vision()?;
        let v = &self.cfg.vision_config;
        let arch = Arch::from_config(v)?;
        let vb = self
            .vb
            .clone()
            .set_dtype(self.vision_dtype())
            .pp("model.vision_tower.timm_model");
        let tower = VisionTower::new(arch, v.hidden_size, vb)
            .map_err(|e| Error::Checkpoint(format!("vision tower: {e}")))?;
        Ok(self.vision_tower.get_or_init(|| tower))
    }

    fn vision_dtype(&self) -> DType {
        match self.vb.dtype() {
            DType::BF16 if !self.vb.device().is_cpu() => DType::BF16,
            _ => DType::F32,
        }
    }

    /// Soft embeddings `[n, vision_soft_tokens_per_image, D]` for pixel values `[n, 3, H, W]`.
    pub fn encode_images(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let tower = self.vision_tower()?;
        let (gh, gw) = tower.output_grid();
        let expected = self.cfg.vision_soft_tokens_per_image;
        if gh * gw != expected {
            return Err(Error::Config(format!(
                "the vision tower yields a {gh}x{gw} grid but vision_soft_tokens_per_image is {expected}"
            )));
        }
        match pixel_values.dims() {
            [_, 3, h, w] if *h > 0 && *w > 0 => {}
            dims => {
                return Err(Error::Input(format!(
                    "pixel values must be [n, 3, H, W], got {dims:?}"
                )))
            }
        }
        let x = pixel_values
            .to_device(self.device())?
            .to_dtype(self.vision_dtype())?;
        // Channels-last features are already [n, row, col, C]: row-major tokens.
        let features = tower.features(&x, None)?;
        let (n, _, _, c) = features.dims4()?;
        let scale = (self.cfg.vision_config.hidden_size as f64).sqrt();
        let scaled = (features.reshape((n, gh * gw, c))? * scale)?;
        Ok(self
            .embed_vision()?
            .embed_features(&scaled.to_dtype(self.dtype())?)?)
    }

    /// The audio tower, built from the checkpoint on first use.
    pub fn audio_tower(&self) -> Result<&AudioEncoder> {
        if let Some(tower) = self.audio_tower.get() {
            return Ok(tower);
        }
        self.embed_audio()?;
        let tower = AudioEncoder::new(
            &self.cfg.audio_config,
            self.vb.pp("model").pp("audio_tower"),
        )?;
        // Two threads may race to build it; both towers are identical, either one wins.
        Ok(self.audio_tower.get_or_init(|| tower))
    }

    /// Run the audio tower on log-mel `features` `[n, frames, mel]` with `valid` `[n, frames]`
    /// (u8, 1 = real frame), checking the shapes first.
    pub fn audio_encoding(
        &self,
        features: &Tensor,
        valid: &Tensor,
        trace: Option<&mut AudioTrace>,
    ) -> Result<AudioEncoding> {
        let mel_bins = self.cfg.audio_config.input_feat_size;
        let (n, frames, mel) = features.dims3().map_err(|_| {
            Error::Input(format!(
                "audio features must be [clips, frames, {mel_bins}], got {:?}",
                features.dims()
            ))
        })?;
        if mel != mel_bins {
            return Err(Error::Input(format!(
                "audio features have {mel} mel bins but the audio tower expects {mel_bins}"
            )));
        }
        if n == 0 || frames == 0 {
            return Err(Error::Input(format!(
                "audio features {:?} hold no frames",
                features.dims()
            )));
        }
        if valid.dims() != [n, frames] {
            return Err(Error::Input(format!(
                "audio frame mask is {:?} but the features are {:?}",
                valid.dims(),
                features.dims()
            )));
        }
        let features = features.to_dtype(self.dtype())?;
        let valid = valid.to_dtype(DType::U8)?;
        Ok(self.audio_tower()?.forward(&features, &valid, trace)?)
    }

    /// Soft embeddings `[n, audio_soft_tokens_per_image, D]` (padded with the audio padding
    /// embedding) for log-mel `features` `[n, frames, mel]` and `valid` `[n, frames]` (u8).
    pub fn encode_audio(&self, features: &Tensor, valid: &Tensor) -> Result<Tensor> {
        let enc = self.audio_encoding(features, valid, None)?;
        self.embed_audio_encoding(&enc)
    }

    /// `embed_audio` of the tower output, padded positions and the remaining slots up to
    /// `audio_soft_tokens_per_image` filled with the embedding of the last audio-vocabulary id.
    pub fn embed_audio_encoding(&self, enc: &AudioEncoding) -> Result<Tensor> {
        let (n, tokens, _) = enc.features.dims3()?;
        let slots = self.cfg.audio_soft_tokens_per_image;
        if tokens > slots {
            return Err(Error::Input(format!(
                "an audio clip gave {tokens} tokens but the prompt holds {slots} per clip; \
                 split the recording into shorter clips"
            )));
        }
        let embed_audio = self.embed_audio()?;
        let soft = embed_audio.embed_features(&enc.features)?;
        let d = soft.dim(2)?;
        let pad_id = embed_audio.vocab_offset() + embed_audio.vocab_size() - 1;
        let pad = embed_audio
            .embed_ids(&Tensor::new(&[pad_id], soft.device())?)?
            .to_dtype(soft.dtype())?
            .reshape((1, 1, d))?;
        let valid = enc.valid.unsqueeze(2)?.broadcast_as((n, tokens, d))?;
        let soft = valid.where_cond(&soft, &pad.broadcast_as((n, tokens, d))?)?;
        if tokens == slots {
            return Ok(soft);
        }
        let fill = pad.broadcast_as((n, slots - tokens, d))?;
        Ok(Tensor::cat(&[&soft, &fill], 1)?)
    }
}

fn text_only(what: &str) -> Error {
    Error::Input(format!(
        "this model holds only the text decoder (a GGUF file has no vision or audio tower), \
         so it cannot take {what}"
    ))
}
