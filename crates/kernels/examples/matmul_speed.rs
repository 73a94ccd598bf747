//! Times the packed matrix products at every CPU level this machine has: one decoder-sized
//! matrix (`--rows` × `--cols`, default 8192 × 2048) in each weight format, against 1 activation
//! row (decode) and `--m` rows (prefill, default 128), on the rayon pool (`RAYON_NUM_THREADS`).
//!
//!     cargo run --release -p kernels --example matmul_speed -- [--rows N] [--cols K] [--m M]
//!         [--only q4k|q6k|q8_0|bf16] [--level LEVEL]

use std::time::Instant;

use kernels::{cpu, pack, Level, WeightFormat};

fn text_arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    let at = args.iter().position(|a| a == name)?;
    args.get(at + 1).cloned()
}

fn arg(name: &str, default: usize) -> usize {
    text_arg(name).map_or(default, |v| v.parse().expect("a number"))
}

/// Median seconds of `runs` calls of `f`.
fn median_seconds(runs: usize, mut f: impl FnMut()) -> f64 {
    let mut times: Vec<f64> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[runs / 2]
}

fn main() {
    let (rows, cols, m) = (arg("--rows", 8192), arg("--cols", 2048), arg("--m", 128));
    let value = |i: usize| ((i.wrapping_mul(2_654_435_761) >> 7) % 2001) as f32 / 1000.0 - 1.0;
    let x: Vec<f32> = (0..m * cols).map(|i| value(i + 17) * 0.5).collect();
    println!(
        "{rows} x {cols} matrix, {m} prefill rows, {} threads",
        rayon::current_num_threads()
    );
    let only = text_arg("--only");
    let levels: Vec<Level> = match text_arg("--level") {
        Some(level) => vec![level.parse().expect("a CPU level")],
        None => Level::supported().collect(),
    };
    for (name, format, output) in [
        ("q4k", WeightFormat::Q4K, false),
        ("q6k", WeightFormat::Q4K, true),
        ("q8_0", WeightFormat::Q8_0, false),
        ("bf16", WeightFormat::Bf16, false),
    ] {
        if only.as_ref().is_some_and(|o| o != name) {
            continue;
        }
        let w = pack(rows, cols, format, output, &|r, out: &mut [f32]| {
            for (c, v) in out.iter_mut().enumerate() {
                *v = value(r * cols + c);
            }
        });
        for &level in &levels {
            cpu::set_level(level).expect("a supported level");
            let decode = median_seconds(21, || drop(w.matmul(&x[..cols], 1)));
            let prefill = median_seconds(5, || drop(w.matmul(&x, m)));
            let flops = 2.0 * (rows * cols * m) as f64;
            println!(
                "{name:>5} {level:>8}: decode {:7.1} us, prefill {:7.2} ms ({:6.1} GFLOP/s)",
                decode * 1e6,
                prefill * 1e3,
                flops / prefill / 1e9
            );
        }
    }
}
