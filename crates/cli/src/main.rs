//! `gemma-chat`: talk to Gemma 3n from the terminal.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use clap::{Args, Parser, Subcommand, ValueEnum};
use engine::{
    Engine, GenerationReport, LoadOptions, Message, Part, Role, SamplingParams, WeightFormat,
};

#[derive(Parser)]
#[command(
    name = "gemma-chat",
    version,
    about = "Chat privately and offline with Gemma 3n"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Answer one prompt (or a conversation from a messages file), streaming the reply.
    Generate(GenerateArgs),
    /// Write the prompt's token ids and full logits (and media inputs) to a safetensors file.
    Forward(ForwardArgs),
    /// Interactive multi-turn chat; the KV cache is reused between turns.
    Chat(ChatArgs),
    /// Time loading, prefill, decoding and (optionally) the image and audio towers.
    Bench(BenchArgs),
    /// Serve the OpenAI-compatible API (chat completions with images and audio, transcriptions).
    Serve(ServeArgs),
    /// Write a MatFormer slice of an E4B checkpoint as a new checkpoint folder (Hugging Face layout).
    Slice(SliceArgs),
    /// List the published MatFormer slices of E4B.
    Slices,
}

#[derive(Args)]
struct SliceArgs {
    /// The full model: a Hugging Face checkpoint folder or repo id (E4B).
    #[arg(long)]
    model: String,
    #[command(flatten)]
    slice: SliceSpec,
    /// New folder for the sliced checkpoint.
    #[arg(long)]
    out: PathBuf,
}

/// Which MatFormer slice of the model to use.
#[derive(Args)]
struct SliceSpec {
    /// A published slice of E4B by name, e.g. E2B or E2.98B-layer (`gemma-chat slices` lists them).
    #[arg(long, conflicts_with = "ffn_dims")]
    slice: Option<String>,
    /// A slice of your own: the feed-forward width of each kept layer, comma-separated (one
    /// value applies to every kept layer).
    #[arg(long)]
    ffn_dims: Option<String>,
    /// Layers to leave out, with --ffn-dims: e.g. 20-24 or 3,7.
    #[arg(long, requires = "ffn_dims")]
    skip_layers: Option<String>,
}

impl SliceSpec {
    fn resolve(&self) -> Result<Option<gemma3n::Slice>> {
        if let Some(name) = &self.slice {
            return Ok(Some(gemma3n::matformer::find(name)?));
        }
        let Some(widths) = &self.ffn_dims else {
            return Ok(None);
        };
        Ok(Some(gemma3n::Slice {
            ffn_dims: gemma3n::matformer::parse_widths(widths)?,
            skip_layers: gemma3n::matformer::parse_layers(
                self.skip_layers.as_deref().unwrap_or(""),
            )?,
        }))
    }
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Address to listen on; anything but loopback exposes the model to the network.
    #[arg(long, default_value = "127.0.0.1")]
    host: std::net::IpAddr,
    /// Port to listen on (0 picks a free one).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Require `Authorization: Bearer KEY` on every request.
    #[arg(long)]
    api_key: Option<String>,
    /// Requests that may wait behind the running one; more get 429.
    #[arg(long, default_value_t = 32)]
    queue: usize,
    /// Largest request body in MiB (base64 media included); larger ones get 413.
    #[arg(long, default_value_t = 64)]
    max_body_mib: usize,
    /// Name clients use in `model` (default: the --model argument).
    #[arg(long)]
    served_model_name: Option<String>,
}

#[derive(Args)]
struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Length of the synthetic prompt.
    #[arg(long, default_value_t = 128)]
    prompt_tokens: usize,
    /// Number of tokens to decode.
    #[arg(long, default_value_t = 64)]
    gen_tokens: usize,
    /// Also time the vision tower on one image at the model's input size.
    #[arg(long)]
    image: bool,
    /// Also time the audio tower on one clip of the model's maximum length (30 s on real models).
    #[arg(long)]
    audio: bool,
    /// Print one JSON line instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ModelArgs {
    /// Model folder, a Hugging Face repo id such as google/gemma-3n-E2B-it, or a llama.cpp GGUF
    /// file (text only; tokenizer.json and the chat template of the same model beside it).
    #[arg(long)]
    model: String,
    /// How the decoder's weights are held: dense (f32, exact), bf16, q8_0, q4k (also q4_k_m)
    /// or q4_0; the packed formats are CPU-only and keep norms and softmax in f32.  A GGUF's
    /// quantized matrices stay as they are; this applies to its float ones.
    #[arg(long, default_value = "dense")]
    quant: WeightFormat,
    /// Activation precision on the dense path (bf16 is for GPUs).
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    dtype: Precision,
    /// cpu, cuda[:N] or metal (GPUs need a build with the cuda / metal feature).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    #[command(flatten)]
    slice: SliceSpec,
}

#[derive(Clone, Copy, ValueEnum)]
enum Precision {
    F32,
    Bf16,
}

impl ModelArgs {
    fn load_options(&self) -> Result<LoadOptions> {
        if self.threads == Some(0) {
            bail!("--threads must be at least 1");
        }
        Ok(LoadOptions {
            weights: self.quant,
            dtype: match self.dtype {
                Precision::F32 => DType::F32,
                Precision::Bf16 => DType::BF16,
            },
            device: gemma3n::parse_device(&self.device)?,
            threads: self.threads,
            progress: None,
            slice: self.slice.resolve()?,
        })
    }
}

#[derive(Args)]
struct SamplingArgs {
    /// Maximum number of tokens to generate.
    #[arg(long, default_value_t = 512)]
    max_new_tokens: usize,
    /// Sampling temperature; 0 is greedy (default: the checkpoint's).
    #[arg(long)]
    temperature: Option<f64>,
    /// Keep only the k most likely tokens (default: the checkpoint's; 0 disables).
    #[arg(long)]
    top_k: Option<usize>,
    /// Keep the smallest set of tokens whose probability reaches p (default: the checkpoint's).
    #[arg(long)]
    top_p: Option<f64>,
    /// Random seed for sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Args)]
struct PromptArgs {
    /// The user's message (with --image/--audio: one user turn of images, then audio, then text).
    #[arg(
        long,
        conflicts_with = "messages",
        required_unless_present = "messages"
    )]
    prompt: Option<String>,
    /// System prompt for --prompt.
    #[arg(long, requires = "prompt")]
    system: Option<String>,
    /// Image file to attach (repeatable).
    #[arg(long, requires = "prompt")]
    image: Vec<PathBuf>,
    /// Audio file to attach (repeatable).
    #[arg(long, requires = "prompt")]
    audio: Vec<PathBuf>,
    /// JSON list of {"role", "content"} messages; media paths resolve against its folder.
    #[arg(long)]
    messages: Option<PathBuf>,
}

#[derive(Args)]
struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    prompt: PromptArgs,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// After the reply, print one JSON line with token ids, text and timings.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ForwardArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// JSON list of {"role", "content"} messages.
    #[arg(long)]
    messages: PathBuf,
    /// Output safetensors file.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
struct ChatArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// System prompt for the conversation.
    #[arg(long)]
    system: Option<String>,
    /// Speak each turn: an empty line starts recording from the microphone, Enter stops it.
    #[arg(long)]
    mic: bool,
    /// Input device for --mic and /mic (default: the system's default input).
    #[arg(long)]
    mic_device: Option<String>,
    /// Longest recording, in seconds (longer speech is cut there and said so).
    #[arg(long, default_value_t = 120.0)]
    mic_max_seconds: f64,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Generate(args) => generate(args),
        Command::Forward(args) => forward(args),
        Command::Chat(args) => chat(args),
        Command::Bench(args) => bench(args),
        Command::Serve(args) => serve(args),
        Command::Slice(args) => slice(args),
        Command::Slices => {
            list_slices();
            Ok(())
        }
    }
}

fn slice(args: SliceArgs) -> Result<()> {
    let Some(slice) = args.slice.resolve()? else {
        bail!("choose a slice with --slice NAME or --ffn-dims (see `gemma-chat slices`)");
    };
    let dir = engine::resolve_model(&args.model, true)?;
    let exported = gemma3n::matformer::export(&dir, &slice, &args.out)?;
    println!(
        "wrote {} ({} layers, {} tensors, {:.1} MiB in {} file{})",
        args.out.display(),
        exported.layers,
        exported.tensors,
        exported.bytes as f64 / (1 << 20) as f64,
        exported.files.len(),
        if exported.files.len() == 1 { "" } else { "s" }
    );
    Ok(())
}

fn list_slices() {
    println!(
        "{:<14} {:>7} {:>11} {:>6}  name",
        "slice", "layers", "effective", "MMLU"
    );
    for p in gemma3n::matformer::published() {
        println!(
            "{:<14} {:>7} {:>9.2} B {:>6}  {}",
            p.id,
            p.slice.ffn_dims.len(),
            p.effective_params_b,
            p.mmlu,
            p.name
        );
    }
    println!("(Google's gemma3n-slicing-configs table; MMLU of the pre-trained model)");
}

fn serve(args: ServeArgs) -> Result<()> {
    if args.max_body_mib == 0 {
        bail!("--max-body-mib must be at least 1");
    }
    let id = args
        .served_model_name
        .clone()
        .unwrap_or_else(|| args.model.model.clone());
    let backend = Arc::new(server::EngineBackend::loading(id));
    let cfg = server::ServerConfig {
        host: args.host,
        port: args.port,
        api_key: args.api_key.clone(),
        queue: args.queue,
        max_body_bytes: args.max_body_mib << 20,
        media_dir: None,
    };
    // The port opens first (answering 503 while the model loads), so a taken port fails fast.
    let running = server::Server::start(cfg, backend.clone())?;
    eprintln!("listening on {} (loading the model)", running.url());
    match load_engine(&args.model) {
        Ok(engine) => backend.set_engine(engine),
        Err(e) => {
            running.stop();
            return Err(e);
        }
    }
    eprintln!("serving on {}; Ctrl-C stops", running.url());
    let (stop_tx, stop_rx) = std::sync::mpsc::channel();
    ctrlc::set_handler(move || {
        let _ = stop_tx.send(());
    })
    .context("installing the Ctrl-C handler")?;
    let _ = stop_rx.recv();
    eprintln!("stopping");
    running.stop();
    Ok(())
}

fn bench(args: BenchArgs) -> Result<()> {
    let load = args.model.load_options()?;
    let dir = engine::resolve_model(&args.model.model, true)?;
    let image = if args.image {
        // Without a configured size (resize off) the real tower's 768×768 input is used.
        let (h, w) = engine::image::ImageProcessor::from_model_dir(&dir)?
            .output_size()
            .unwrap_or((768, 768));
        Some(Tensor::full(
            0.5f32,
            (1, 3, h as usize, w as usize),
            &Device::Cpu,
        )?)
    } else {
        None
    };
    let audio = if args.audio {
        let processor = engine::audio::AudioProcessor::from_model_dir(&dir)?;
        let rate = processor.sampling_rate() as f32;
        let clip: Vec<f32> = (0..processor.max_clip_samples())
            .map(|i| 0.3 * (i as f32 * 440.0 * std::f32::consts::TAU / rate).sin())
            .collect();
        let f = processor.features(&[clip])?;
        Some((f.features, f.mask))
    } else {
        None
    };
    let opts = gemma3n::bench::BenchOptions {
        load,
        prompt_tokens: args.prompt_tokens,
        gen_tokens: args.gen_tokens,
        image,
        audio,
    };
    let report = gemma3n::bench::run(&dir, &opts)?;
    if args.json {
        println!("{}", report.to_json());
        return Ok(());
    }
    let mb = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.0} MiB"));
    println!("model          {}", dir.display());
    println!(
        "weights        {} ({} threads, {} CPU kernels)",
        report.weights, report.threads, report.cpu_level
    );
    println!(
        "load           {:.2} s (RSS {})",
        report.load_s,
        mb(report.load_rss_mb)
    );
    println!(
        "TTFT           {:.1} ms ({} prompt tokens)",
        report.ttft_ms, report.prompt_tokens
    );
    println!("prefill        {:.1} tok/s", report.prefill_tok_s);
    println!(
        "decode         {:.2} tok/s ({} tokens)",
        report.decode_tok_s, report.gen_tokens
    );
    println!("peak RSS       {}", mb(report.peak_rss_mb));
    println!("KV cache       {:.1} MiB", report.kv_cache_mb);
    println!(
        "size           {} layers, {:.2} B effective parameters, {:.0} MiB of weights per token",
        report.layers,
        report.effective_params as f64 / 1e9,
        report.weight_bytes_per_token as f64 / (1 << 20) as f64
    );
    if let Some(ms) = report.image_encode_ms {
        println!("image tower    {ms:.1} ms per image");
    }
    if let Some(ms) = report.audio_encode_ms {
        println!("audio tower    {ms:.1} ms per clip");
    }
    Ok(())
}

fn load_engine(args: &ModelArgs) -> Result<Engine> {
    let mut opts = args.load_options()?;
    if std::io::stderr().is_terminal() {
        // Whole percents only, so a large model does not flood the terminal.
        let shown = Arc::new(std::sync::atomic::AtomicU32::new(u32::MAX));
        opts.progress = Some(Arc::new(move |fraction| {
            let percent = (fraction * 100.0) as u32;
            if shown.swap(percent, Ordering::Relaxed) != percent {
                eprint!("\rloading the model: {percent:3}%");
                if percent == 100 {
                    eprintln!();
                }
            }
        }));
    }
    let dir = engine::resolve_model(&args.model, true)?;
    Engine::load(&dir, &opts).with_context(|| format!("loading the model from {}", dir.display()))
}

fn sampling(engine: &Engine, args: &SamplingArgs) -> Result<SamplingParams> {
    let defaults = engine.default_sampling();
    let params = SamplingParams {
        temperature: args.temperature.unwrap_or(defaults.temperature),
        top_k: match args.top_k {
            Some(0) => None,
            Some(k) => Some(k),
            None => defaults.top_k,
        },
        top_p: args.top_p.or(defaults.top_p),
        max_new_tokens: args.max_new_tokens,
        seed: args.seed,
    };
    if !params.temperature.is_finite() || params.temperature < 0.0 {
        bail!("--temperature must be a finite number ≥ 0");
    }
    if let Some(p) = params.top_p {
        if !(0.0..=1.0).contains(&p) || p == 0.0 {
            bail!("--top-p must be in (0, 1]");
        }
    }
    if params.max_new_tokens == 0 {
        bail!("--max-new-tokens must be at least 1");
    }
    Ok(params)
}

fn conversation(args: &PromptArgs) -> Result<Vec<Message>> {
    if let Some(path) = &args.messages {
        return Ok(engine::load_messages(path)?);
    }
    let text = args.prompt.clone().unwrap_or_default();
    let mut messages = Vec::new();
    if let Some(system) = &args.system {
        messages.push(Message::text(Role::System, system.clone()));
    }
    let mut content: Vec<Part> = args
        .image
        .iter()
        .map(|p| Part::Image { path: p.clone() })
        .collect();
    content.extend(args.audio.iter().map(|p| Part::Audio { path: p.clone() }));
    content.push(Part::Text { text });
    messages.push(Message {
        role: Role::User,
        content,
    });
    Ok(messages)
}

fn generate(args: GenerateArgs) -> Result<()> {
    let messages = conversation(&args.prompt)?;
    let mut engine = load_engine(&args.model)?;
    let params = sampling(&engine, &args.sampling)?;
    let cancel = interrupt_flag()?;
    let mut stdout = std::io::stdout().lock();
    let report = engine.generate(&messages, &params, &cancel, &mut |text| {
        // A closed pipe must not abort generation mid-way with a panic.
        let _ = stdout.write_all(text.as_bytes());
        let _ = stdout.flush();
    })?;
    writeln!(stdout)?;
    if args.json {
        for split in &report.audio_splits {
            eprintln!("[audio {split}]");
        }
        writeln!(stdout, "{}", serde_json::to_string(&report)?)?;
    } else {
        eprintln!("{}", summary(&report));
    }
    Ok(())
}

fn summary(report: &GenerationReport) -> String {
    let mut lines: Vec<String> = report
        .audio_splits
        .iter()
        .map(|s| format!("[audio {s}]"))
        .collect();
    lines.push(format!(
        "[{} prompt tokens ({} reused), {} generated, stop: {:?}, TTFT {:.0} ms, prefill {:.1} tok/s, decode {:.1} tok/s]",
        report.prompt_tokens,
        report.reused_tokens,
        report.token_ids.len(),
        report.stop_reason,
        report.ttft_ms,
        report.prefill_tok_s,
        report.decode_tok_s
    ));
    lines.join("\n")
}

fn forward(args: ForwardArgs) -> Result<()> {
    let messages = engine::load_messages(&args.messages)?;
    let mut engine = load_engine(&args.model)?;
    let out = engine.prompt_forward(&messages)?;
    let ids = out.ids;
    let mut tensors = vec![
        (
            "input_ids".to_string(),
            Tensor::new(
                ids.iter().map(|&i| i64::from(i)).collect::<Vec<_>>(),
                &Device::Cpu,
            )?,
        ),
        ("logits".to_string(), out.logits.to_dtype(DType::F32)?),
    ];
    for (i, p) in out.pixel_values.into_iter().enumerate() {
        tensors.push((format!("pixel_values.{i}"), p));
    }
    for (i, f) in out.audio_features.into_iter().enumerate() {
        tensors.push((format!("audio_features.{i}"), f));
    }
    candle_core::safetensors::save(
        &tensors
            .into_iter()
            .collect::<std::collections::HashMap<_, _>>(),
        &args.out,
    )
    .with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!("wrote {} ({} tokens)", args.out.display(), ids.len());
    Ok(())
}

fn chat(args: ChatArgs) -> Result<()> {
    let mut engine = load_engine(&args.model)?;
    let params = sampling(&engine, &args.sampling)?;
    let cancel = interrupt_flag()?;
    let mut messages = Vec::new();
    if let Some(system) = &args.system {
        messages.push(Message::text(Role::System, system.clone()));
    }
    let mut pending: Vec<Part> = Vec::new();
    eprintln!(
        "Chatting with {}. Commands: /image PATH, /audio PATH, /mic, /reset, /quit (or Ctrl-D). Ctrl-C stops a reply.{}",
        engine.model_dir().display(),
        if args.mic { " Press Enter on an empty line to speak." } else { "" }
    );
    let mut recordings = 0;
    let stdin = std::io::stdin();
    let mut line = String::new();
    loop {
        eprint!("> ");
        line.clear();
        if stdin.lock().read_line(&mut line)? == 0 {
            break;
        }
        let input = line.trim();
        if input.is_empty() && !args.mic {
            continue;
        }
        if input.is_empty() || input == "/mic" {
            recordings += 1;
            match record_from_mic(&args, recordings) {
                Ok(path) => pending.push(Part::Audio { path }),
                Err(e) => {
                    eprintln!("error: {e:#}");
                    continue;
                }
            }
            // A spoken turn is sent at once; after /mic the user may still type text.
            if input == "/mic" {
                continue;
            }
        }
        match input.split_once(' ').unwrap_or((input, "")) {
            ("/quit" | "/exit", _) => break,
            ("/reset", _) => {
                messages.retain(|m: &Message| m.role == Role::System);
                pending.clear();
                engine.reset();
                eprintln!("(conversation cleared)");
                continue;
            }
            ("/image", path) => {
                match existing(path) {
                    Ok(path) => pending.push(Part::Image { path }),
                    Err(e) => eprintln!("error: {e}"),
                }
                continue;
            }
            ("/audio", path) => {
                match existing(path) {
                    Ok(path) => pending.push(Part::Audio { path }),
                    Err(e) => eprintln!("error: {e}"),
                }
                continue;
            }
            _ => {}
        }
        let mut content = std::mem::take(&mut pending);
        if !input.is_empty() {
            content.push(Part::Text {
                text: input.to_string(),
            });
        }
        messages.push(Message {
            role: Role::User,
            content,
        });
        cancel.store(false, Ordering::Relaxed);
        let mut stdout = std::io::stdout().lock();
        match engine.generate(&messages, &params, &cancel, &mut |text| {
            let _ = stdout.write_all(text.as_bytes());
            let _ = stdout.flush();
        }) {
            Ok(report) => {
                writeln!(stdout)?;
                eprintln!("{}", summary(&report));
                messages.push(Message::text(Role::Assistant, report.text));
            }
            Err(e) => {
                // Keep the conversation usable: drop the turn that failed.
                messages.pop();
                eprintln!("error: {e}");
            }
        }
    }
    Ok(())
}

/// Record until Enter (or the maximum length), showing a level meter; returns the saved WAV.
fn record_from_mic(args: &ChatArgs, n: usize) -> Result<PathBuf> {
    let options = mic::MicOptions {
        device: args.mic_device.clone(),
        max_seconds: args.mic_max_seconds,
    };
    let recorder = mic::record(&options, |level: mic::Level| {
        let bars = ((level.rms.max(1e-6).log10() + 3.0) / 3.0 * 30.0).clamp(0.0, 30.0) as usize;
        eprint!("\r● {:5.1} s {:<30}", level.seconds, "█".repeat(bars));
    })?;
    eprintln!(
        "Recording from {} — press Enter to stop.",
        recorder.device_name()
    );
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    let recording = recorder.stop()?;
    eprintln!();
    if recording.reached_max {
        eprintln!(
            "(the recording reached the {} s maximum and was cut there)",
            args.mic_max_seconds
        );
    }
    let path = std::env::temp_dir().join(format!("gemma-chat-mic-{}-{n}.wav", std::process::id()));
    recording.save_wav(&path)?;
    Ok(path)
}

fn existing(path: &str) -> Result<PathBuf> {
    let p = Path::new(path.trim());
    if !p.is_file() {
        bail!("{} is not a file", p.display());
    }
    Ok(p.to_path_buf())
}

/// Ctrl-C stops the current reply instead of killing the process.
fn interrupt_flag() -> Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    let handler_flag = flag.clone();
    ctrlc::set_handler(move || {
        handler_flag.store(true, Ordering::Relaxed);
    })
    .context("installing the Ctrl-C handler")?;
    Ok(flag)
}
