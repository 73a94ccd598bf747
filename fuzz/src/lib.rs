//! Helpers shared by the fuzz targets.
//!
//! The parsers under test open files by path, as the application does, so each input is written
//! to a scratch folder first (in RAM where the system has `/dev/shm`).  One libFuzzer process runs
//! one input at a time, so a folder per process is enough.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// This process's scratch folder, created on first use.
pub fn scratch_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        let base = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("gemma-chat-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("cannot create the scratch folder");
        dir
    })
}

/// Write `data` to `name` in the scratch folder and return its path.
pub fn scratch_file(name: &str, data: &[u8]) -> PathBuf {
    let dir = scratch_dir();
    // Made again if something removed it while the run goes on.
    std::fs::create_dir_all(dir).expect("cannot create the scratch folder");
    let path = dir.join(name);
    std::fs::write(&path, data).expect("cannot write to the scratch folder");
    path
}

/// The repository's test fixtures (`tests/fixtures`).
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

/// Tensors the seeds name, under the names the model loads them by.
const TENSORS: [&str; 5] = [
    "model.language_model.embed_tokens.weight",
    "model.language_model.norm.weight",
    "model.language_model.layers.0.self_attn.q_proj.weight",
    "model.language_model.altup_projections.0.weight",
    "model.language_model.embed_tokens_per_layer.weight",
];

/// Read the seeds' tensors every way the model does: whole (converted to f32), as a linear
/// layer applied to a vector, and as an embedding table gathered a row at a time.  Errors are
/// fine; panics, hangs and huge allocations are what the fuzzer looks for.
pub fn read_tensors(checkpoint: &gemma3n::Checkpoint) {
    use candle_core::{DType, Device, Module, Tensor};
    use candle_nn::var_builder::SimpleBackend;

    let device = Device::Cpu;
    let Ok(vb) = checkpoint.var_builder(DType::F32, &device) else {
        return;
    };
    for name in TENSORS {
        let Ok(tensor) = checkpoint.get_unchecked(name, DType::F32, &device) else {
            continue;
        };
        // The model applies layers to inputs of the config's width; an empty matrix (which
        // may claim any width) has no such input here.
        let dims = tensor.dims();
        if let (Some(prefix), &[rows, cols], false) =
            (name.strip_suffix(".weight"), dims, tensor.elem_count() == 0)
        {
            if let Ok(linear) = checkpoint.linear(cols, rows, Default::default(), vb.pp(prefix)) {
                if let Ok(x) = Tensor::ones((1, cols), DType::F32, &device) {
                    let _ = linear.forward(&x);
                }
            }
        }
        if let Some(table) = checkpoint.table(name).ok().filter(|t| t.rows() > 0) {
            let mut row = vec![0f32; table.cols()];
            for id in [0, table.rows().saturating_sub(1)] {
                if id < table.rows() {
                    table.row_into(id, &mut row);
                }
            }
        }
    }
}
