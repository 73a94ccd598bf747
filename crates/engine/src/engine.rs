//! The engine: one loaded model, its tokenizer, template and media processors, and the KV cache
//! of the conversation it last answered, so that a follow-up turn only prefills what is new.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use candle_core::Tensor;
use gemma3n::{Cache, Gemma3nConfig, Gemma3nModel, LoadOptions, MediaEmbeddings};
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use crate::audio::AudioProcessor;
use crate::chat::{Message, Part};
use crate::image::ImageProcessor;
use crate::prompt::PromptEncoder;
use crate::sampling::{Sampler, SamplingParams};
use crate::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The model emitted a stop token.
    Eos,
    MaxTokens,
    Cancelled,
    /// The context window is full.
    ContextFull,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GenerationReport {
    /// Generated ids, including the stop token when generation ended on one.
    pub token_ids: Vec<u32>,
    pub text: String,
    pub prompt_tokens: usize,
    /// Prompt tokens served from the cache of the previous turn.
    pub reused_tokens: usize,
    pub stop_reason: StopReason,
    pub ttft_ms: f64,
    pub prefill_tok_s: f64,
    pub decode_tok_s: f64,
    /// How long recordings were split into clips (one line per split recording).
    pub audio_splits: Vec<String>,
}

/// The result of running a prompt up to its last position.
#[derive(Debug, Clone)]
pub struct Prefill {
    /// Logits of the last position.
    pub logits: Vec<f32>,
    pub prompt_tokens: usize,
    /// Positions served from the cache of the previous call.
    pub reused_tokens: usize,
    pub audio_splits: Vec<String>,
}

/// A full forward of a prompt, for inspection (`gemma-chat forward`).
#[derive(Debug, Clone)]
pub struct PromptForward {
    pub ids: Vec<u32>,
    /// `[T, V]`, soft-capped, f32.
    pub logits: Tensor,
    /// `[3, H, W]` per image, in prompt order.
    pub pixel_values: Vec<Tensor>,
    /// `[frames, mel]` per audio clip, in prompt order.
    pub audio_features: Vec<Tensor>,
}

/// One media attachment after preprocessing, in prompt order, with a hash of its content.
#[derive(Clone)]
enum Media {
    Image {
        pixels: Tensor,
        hash: u64,
    },
    /// One clip of at most the model's clip length (a long recording yields several).
    AudioClip {
        samples: Vec<f32>,
        hash: u64,
    },
}

/// What one attachment file decodes to.
struct DecodedFile {
    media: Vec<Media>,
    /// How a long recording was split, for the user.
    split: Option<String>,
}

/// A file as it was when decoded: an edited file gets a new size or modification time.
#[derive(Clone, PartialEq, Eq, Hash)]
struct FileStamp {
    path: PathBuf,
    len: u64,
    modified: Option<SystemTime>,
}

impl FileStamp {
    /// `None` when the file cannot be inspected; decoding then reports the problem.
    fn of(path: &Path) -> Option<Self> {
        let meta = std::fs::metadata(path).ok()?;
        Some(Self {
            path: path.to_path_buf(),
            len: meta.len(),
            modified: meta.modified().ok(),
        })
    }
}

/// Attachments decoded by earlier turns, so that each turn of a conversation does not decode
/// (and hash) every image and recording again.  Holds the files of the last prompt only.
#[derive(Default)]
struct MediaCache {
    files: Mutex<HashMap<FileStamp, Arc<DecodedFile>>>,
}

impl MediaCache {
    fn get_or_decode(
        &self,
        path: &Path,
        used: &mut Vec<FileStamp>,
        decode: impl FnOnce() -> Result<DecodedFile>,
    ) -> Result<Arc<DecodedFile>> {
        let Some(stamp) = FileStamp::of(path) else {
            return decode().map(Arc::new);
        };
        used.push(stamp.clone());
        if let Some(hit) = self.lock().get(&stamp) {
            return Ok(hit.clone());
        }
        let decoded = Arc::new(decode()?);
        self.lock().insert(stamp, decoded.clone());
        Ok(decoded)
    }

    /// Forget files the latest prompt no longer refers to.
    fn retain(&self, used: &[FileStamp]) {
        self.lock().retain(|stamp, _| used.contains(stamp));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<FileStamp, Arc<DecodedFile>>> {
        self.files.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A conversation turned into ids plus the media that fill its soft-token runs.
struct PreparedPrompt {
    ids: Vec<u32>,
    /// A key per position: the id, or for soft tokens a hash of the media content and offset,
    /// so that two prompts share a cached prefix only where their media are identical too.
    keys: Vec<u64>,
    media: Vec<(Media, std::ops::Range<usize>)>,
    audio_splits: Vec<String>,
}

/// The KV cache and the keys of the positions it holds.
struct CachedConversation {
    cache: Cache,
    keys: Vec<u64>,
}

impl CachedConversation {
    fn clear(&mut self) {
        self.cache.clear();
        self.keys.clear();
    }

    /// Keep the first `len` positions if the cache still can; returns how many were kept.
    fn truncate(&mut self, len: usize) -> usize {
        let kept = self.cache.truncate(len);
        self.keys.truncate(kept);
        kept
    }

    /// Feed one generated token; returns the next logits.  A failure leaves the cache empty
    /// rather than inconsistent.
    fn step(&mut self, model: &Gemma3nModel, id: u32) -> Result<Vec<f32>> {
        let input = Tensor::from_vec(vec![id], (1, 1), model.device())?;
        match model.forward_last(&input, &MediaEmbeddings::default(), &mut self.cache) {
            Ok(logits) => {
                self.keys.push(u64::from(id));
                Ok(logits.squeeze(0)?.to_vec1()?)
            }
            Err(e) => {
                self.clear();
                Err(e.into())
            }
        }
    }
}

pub struct Engine {
    dir: PathBuf,
    model: Gemma3nModel,
    prompt: PromptEncoder,
    /// `None` for a text-only model (GGUF), whose folder need not configure them.
    images: Option<ImageProcessor>,
    audio: Option<AudioProcessor>,
    defaults: SamplingParams,
    stop_ids: Vec<u32>,
    state: CachedConversation,
    decoded: MediaCache,
}

impl Engine {
    /// `path` is a model folder, or a GGUF file (with its own tokenizer and template, or the
    /// Hugging Face ones beside it).
    pub fn load(path: &Path, opts: &LoadOptions) -> Result<Self> {
        let model = Gemma3nModel::load_with(path, opts)?;
        let dir = if gemma3n::gguf::is_gguf(path) {
            path.parent().unwrap_or(Path::new("."))
        } else {
            path
        };
        let cfg = model.config().clone();
        let prompt = if gemma3n::gguf::is_gguf(path) {
            PromptEncoder::from_gguf(path, &cfg)?
        } else {
            PromptEncoder::from_model_dir(dir, &cfg)?
        };
        let (defaults, generation_eos) = generation_defaults(dir)?;
        let stop_ids = stop_ids(&generation_eos, &cfg, prompt.tokenizer());
        Ok(Self {
            dir: path.to_path_buf(),
            images: match model.embed_vision() {
                Ok(_) => Some(ImageProcessor::from_model_dir(dir)?),
                Err(_) => None,
            },
            audio: match model.embed_audio() {
                Ok(_) => Some(AudioProcessor::from_model_dir(dir)?),
                Err(_) => None,
            },
            state: CachedConversation {
                cache: model.new_cache(),
                keys: Vec::new(),
            },
            model,
            prompt,
            defaults,
            stop_ids,
            decoded: MediaCache::default(),
        })
    }

    /// The model's image processor; a text-only model reports that it cannot take images.
    fn images(&self) -> Result<&ImageProcessor> {
        self.model.embed_vision()?;
        self.images
            .as_ref()
            .ok_or_else(|| Error::ModelFiles("no image processor configuration".into()))
    }

    fn audio(&self) -> Result<&AudioProcessor> {
        self.model.embed_audio()?;
        self.audio
            .as_ref()
            .ok_or_else(|| Error::ModelFiles("no audio feature extractor configuration".into()))
    }

    /// The model folder, or the GGUF file, it was loaded from.
    pub fn model_dir(&self) -> &Path {
        &self.dir
    }

    pub fn model(&self) -> &Gemma3nModel {
        &self.model
    }

    pub fn prompt_encoder(&self) -> &PromptEncoder {
        &self.prompt
    }

    /// Sampling settings from the checkpoint's `generation_config.json`.
    pub fn default_sampling(&self) -> SamplingParams {
        self.defaults.clone()
    }

    pub fn stop_ids(&self) -> &[u32] {
        &self.stop_ids
    }

    pub fn context_length(&self) -> usize {
        self.model.max_context()
    }

    /// Where the model computes, for people to read (e.g. "CPU, avx2 kernels").
    pub fn compute_description(&self) -> String {
        self.model.compute_description()
    }

    /// Forget the cached conversation.
    pub fn reset(&mut self) {
        self.state.clear();
    }

    /// Token ids of the prompt for `messages` (media expanded), without running the model.
    pub fn encode(&self, messages: &[Message]) -> Result<Vec<u32>> {
        Ok(self.prepare(messages)?.ids)
    }

    /// Full logits `[T, V]` of the prompt (generation prompt included), from a fresh cache,
    /// with the model inputs of every image and audio clip (media are decoded once).
    pub fn prompt_forward(&mut self, messages: &[Message]) -> Result<PromptForward> {
        let prepared = self.prepare(messages)?;
        self.check_length(prepared.ids.len())?;
        self.reset();
        let media = self.embed_media(&prepared, 0)?;
        let ids = Tensor::from_vec(
            prepared.ids.clone(),
            (1, prepared.ids.len()),
            self.model.device(),
        )?;
        let result = self.model.forward(&ids, &media, &mut self.state.cache);
        self.reset();
        let logits = result?.squeeze(0)?;
        let mut pixel_values = Vec::new();
        let mut audio_features = Vec::new();
        for (item, _) in prepared.media {
            match item {
                Media::Image { pixels, .. } => pixel_values.push(pixels),
                Media::AudioClip { samples, .. } => {
                    audio_features.push(self.audio()?.features(&[samples])?.features.squeeze(0)?)
                }
            }
        }
        Ok(PromptForward {
            ids: prepared.ids,
            logits,
            pixel_values,
            audio_features,
        })
    }

    /// Last-position logits for `messages`, reusing the cached prefix of the previous call.
    pub fn prefill(&mut self, messages: &[Message]) -> Result<Prefill> {
        let prepared = self.prepare(messages)?;
        self.check_length(prepared.ids.len())?;
        // A sliding layer may have rolled past the shared prefix: then everything is re-run.
        let reused = self.state.truncate(self.reusable_prefix(&prepared));
        let media = self.embed_media(&prepared, reused)?;
        let ids = &prepared.ids[reused..];
        let input = Tensor::from_vec(ids.to_vec(), (1, ids.len()), self.model.device())?;
        match self
            .model
            .forward_last(&input, &media, &mut self.state.cache)
        {
            Ok(logits) => {
                self.state.keys = prepared.keys;
                Ok(Prefill {
                    logits: logits.squeeze(0)?.to_vec1()?,
                    prompt_tokens: prepared.ids.len(),
                    reused_tokens: reused,
                    audio_splits: prepared.audio_splits,
                })
            }
            Err(e) => {
                self.reset();
                Err(e.into())
            }
        }
    }

    /// Generate the model's reply to `messages`, streaming text through `on_text`.
    pub fn generate(
        &mut self,
        messages: &[Message],
        params: &SamplingParams,
        cancel: &AtomicBool,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<GenerationReport> {
        let start = Instant::now();
        let Prefill {
            mut logits,
            prompt_tokens,
            reused_tokens: reused,
            audio_splits,
        } = self.prefill(messages)?;
        let prefill_s = start.elapsed().as_secs_f64();
        let mut sampler = Sampler::new(params);
        let mut stream = self.prompt.text_stream();
        let mut token_ids = Vec::new();
        let mut text = String::new();
        let mut ttft_ms = 0.0;
        let decode_start = Instant::now();
        let stop_reason = loop {
            if cancel.load(Ordering::Relaxed) {
                break StopReason::Cancelled;
            }
            let id = sampler.sample(&logits);
            token_ids.push(id);
            if token_ids.len() == 1 {
                ttft_ms = start.elapsed().as_secs_f64() * 1e3;
            }
            if self.stop_ids.contains(&id) {
                break StopReason::Eos;
            }
            if let Some(delta) = stream.push(id) {
                on_text(&delta);
                text.push_str(&delta);
            }
            if token_ids.len() >= params.max_new_tokens {
                break StopReason::MaxTokens;
            }
            if self.state.cache.seq_len() + 1 > self.context_length() {
                break StopReason::ContextFull;
            }
            if cancel.load(Ordering::Relaxed) {
                break StopReason::Cancelled;
            }
            logits = self.state.step(&self.model, id)?;
        };
        if let Some(rest) = stream.finish() {
            on_text(&rest);
            text.push_str(&rest);
        }
        let decoded = token_ids.len().saturating_sub(1);
        let decode_s = decode_start.elapsed().as_secs_f64();
        Ok(GenerationReport {
            token_ids,
            text,
            prompt_tokens,
            reused_tokens: reused,
            stop_reason,
            ttft_ms,
            prefill_tok_s: (prompt_tokens - reused) as f64 / prefill_s.max(1e-9),
            decode_tok_s: if decoded > 0 {
                decoded as f64 / decode_s.max(1e-9)
            } else {
                0.0
            },
            audio_splits,
        })
    }

    fn check_length(&self, tokens: usize) -> Result<()> {
        // Room for at least one generated token.
        if tokens >= self.context_length() {
            return Err(Error::PromptTooLong {
                tokens,
                context: self.context_length(),
            });
        }
        Ok(())
    }

    /// Longest cached prefix usable for `prepared`: never all of it (the last position must be
    /// run to get logits) and never part of a media run.
    fn reusable_prefix(&self, prepared: &PreparedPrompt) -> usize {
        let mut n = self
            .state
            .keys
            .iter()
            .zip(&prepared.keys)
            .take_while(|(a, b)| a == b)
            .count()
            .min(prepared.keys.len() - 1)
            .min(self.state.cache.seq_len());
        for (_, span) in &prepared.media {
            if span.start < n && n < span.end {
                n = span.start;
            }
        }
        n
    }

    /// Soft embeddings of the media whose runs start at or after `from`.
    fn embed_media(&self, prepared: &PreparedPrompt, from: usize) -> Result<MediaEmbeddings> {
        let mut pixels = Vec::new();
        let mut clips = Vec::new();
        for (media, span) in &prepared.media {
            if span.start < from {
                continue;
            }
            match media {
                Media::Image { pixels: p, .. } => pixels.push(p.clone()),
                Media::AudioClip { samples, .. } => clips.push(samples.clone()),
            }
        }
        let images = if pixels.is_empty() {
            None
        } else {
            Some(self.model.encode_images(&Tensor::stack(&pixels, 0)?)?)
        };
        let audio = if clips.is_empty() {
            None
        } else {
            let features = self.audio()?.features(&clips)?;
            Some(
                self.model
                    .encode_audio(&features.features, &features.mask)?,
            )
        };
        Ok(MediaEmbeddings { images, audio })
    }

    /// Load the media, give each audio clip its own audio part, encode, and locate the runs.
    fn prepare(&self, messages: &[Message]) -> Result<PreparedPrompt> {
        let mut media = Vec::new();
        let mut audio_splits = Vec::new();
        let mut expanded = Vec::with_capacity(messages.len());
        let mut used = Vec::new();
        for message in messages {
            let mut content = Vec::with_capacity(message.content.len());
            for part in &message.content {
                let decoded = match part {
                    Part::Image { path } => self.decoded.get_or_decode(path, &mut used, || {
                        let pixels = self.images()?.load_file(path)?;
                        let hash = hash_floats(&pixels.flatten_all()?.to_vec1()?);
                        let pixels = pixels.to_device(self.model.device())?;
                        Ok(DecodedFile {
                            media: vec![Media::Image { pixels, hash }],
                            split: None,
                        })
                    })?,
                    Part::Audio { path } => self.decoded.get_or_decode(path, &mut used, || {
                        let split = self.audio()?.load(path)?;
                        let description = split.was_split().then(|| split.describe());
                        let media = split
                            .into_samples()
                            .into_iter()
                            .map(|samples| Media::AudioClip {
                                hash: hash_floats(&samples),
                                samples,
                            })
                            .collect();
                        Ok(DecodedFile {
                            media,
                            split: description,
                        })
                    })?,
                    Part::Text { .. } => {
                        content.push(part.clone());
                        continue;
                    }
                };
                if let (Part::Audio { path }, Some(split)) = (part, &decoded.split) {
                    audio_splits.push(format!("{}: {split}", path.display()));
                }
                // A long recording fills one audio slot per clip.
                for item in &decoded.media {
                    media.push(item.clone());
                    content.push(part.clone());
                }
            }
            expanded.push(Message {
                role: message.role,
                content,
            });
        }
        self.decoded.retain(&used);
        let ids = self.prompt.encode(&expanded)?.ids;
        let cfg = self.model.config();
        let mut keys: Vec<u64> = ids.iter().map(|&id| u64::from(id)).collect();
        let mut spans = Vec::with_capacity(media.len());
        let mut pos = 0;
        for item in &media {
            let (token, hash) = match item {
                Media::Image { hash, .. } => (cfg.image_token_id, *hash),
                Media::AudioClip { hash, .. } => (cfg.audio_token_id, *hash),
            };
            let start = ids[pos..]
                .iter()
                .position(|&id| id == token)
                .map(|i| pos + i)
                .ok_or_else(|| {
                    Error::Conversation("a media item has no slot in the prompt".into())
                })?;
            let end = start + ids[start..].iter().take_while(|&&id| id == token).count();
            for (k, key) in keys[start..end].iter_mut().enumerate() {
                *key = media_key(hash, k);
            }
            spans.push(start..end);
            pos = end;
        }
        Ok(PreparedPrompt {
            ids,
            keys,
            media: media.into_iter().zip(spans).collect(),
            audio_splits,
        })
    }
}

/// Every id that ends a reply: the union of `eos_token_id` in `generation_config.json` and in
/// `config.json` (top level and `text_config`), plus `<end_of_turn>`, which ends every model
/// turn of the chat template even where a file lists only `<eos>`.  `<eos>` when nothing lists any.
pub fn stop_ids(generation_eos: &[u32], cfg: &Gemma3nConfig, tokenizer: &Tokenizer) -> Vec<u32> {
    let listed = [&cfg.eos_token_id, &cfg.text_config.eos_token_id]
        .into_iter()
        .flatten()
        .flat_map(|ids| ids.to_vec());
    let mut ids: Vec<u32> = Vec::new();
    for id in generation_eos.iter().copied().chain(listed) {
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    if ids.is_empty() {
        ids.extend(tokenizer.token_to_id("<eos>"));
    }
    if let Some(end_of_turn) = tokenizer.token_to_id("<end_of_turn>") {
        if !ids.contains(&end_of_turn) {
            ids.push(end_of_turn);
        }
    }
    ids
}

fn hash_floats(values: &[f32]) -> u64 {
    let mut h = DefaultHasher::new();
    for v in values {
        v.to_bits().hash(&mut h);
    }
    h.finish()
}

/// Keys of soft-token positions live above every token id.
fn media_key(hash: u64, offset: usize) -> u64 {
    let mut h = DefaultHasher::new();
    (hash, offset).hash(&mut h);
    h.finish() | (1 << 63)
}

/// Sampling defaults and stop ids from `generation_config.json` (absent file: library defaults).
fn generation_defaults(dir: &Path) -> Result<(SamplingParams, Vec<u32>)> {
    let path = dir.join("generation_config.json");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok((SamplingParams::default(), Vec::new()));
    };
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::ModelFiles(format!("{} is not valid JSON: {e}", path.display())))?;
    let mut params = SamplingParams::default();
    if let Some(t) = json.get("temperature").and_then(|v| v.as_f64()) {
        params.temperature = t;
    }
    params.top_k = json
        .get("top_k")
        .and_then(|v| v.as_u64())
        .map(|k| k as usize);
    params.top_p = json.get("top_p").and_then(|v| v.as_f64());
    if json.get("do_sample").and_then(|v| v.as_bool()) == Some(false) {
        params.temperature = 0.0;
    }
    let stop_ids = match json.get("eos_token_id") {
        Some(serde_json::Value::Array(ids)) => ids
            .iter()
            .filter_map(|v| v.as_u64().map(|id| id as u32))
            .collect(),
        Some(v) => v.as_u64().map(|id| vec![id as u32]).unwrap_or_default(),
        None => Vec::new(),
    };
    Ok((params, stop_ids))
}
