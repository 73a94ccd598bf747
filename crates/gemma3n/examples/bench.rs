//! `cargo run --release -p gemma3n --example bench -- MODEL_DIR [--quant Q] [--threads N]
//! [--prompt-tokens N] [--gen-tokens N]`: one JSON line of load / prefill / decode figures.

use std::path::PathBuf;

use gemma3n::bench::{run, BenchOptions};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut dir = None;
    let mut opts = BenchOptions::default();
    while let Some(a) = args.next() {
        let mut value = || {
            args.next()
                .ok_or_else(|| anyhow::anyhow!("{a} needs a value"))
        };
        match a.as_str() {
            "--quant" => opts.load.weights = value()?.parse()?,
            "--threads" => opts.load.threads = Some(value()?.parse()?),
            "--prompt-tokens" => opts.prompt_tokens = value()?.parse()?,
            "--gen-tokens" => opts.gen_tokens = value()?.parse()?,
            _ if dir.is_none() => dir = Some(PathBuf::from(&a)),
            _ => anyhow::bail!("unexpected argument {a}"),
        }
    }
    let dir = dir.ok_or_else(|| anyhow::anyhow!("usage: bench MODEL_DIR [options]"))?;
    println!("{}", run(&dir, &opts)?.to_json());
    Ok(())
}
