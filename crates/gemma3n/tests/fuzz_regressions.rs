//! Inputs the fuzzer (fuzz/, scripts/fuzz.sh) found crashing or exhausting memory, kept so that
//! the fixes stay in place: each must now be refused with an error.

use std::path::Path;

use gemma3n::Checkpoint;

#[test]
fn damaged_gguf_headers_are_refused_without_huge_allocations_or_panics() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_inputs/gguf");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let err = Checkpoint::open(&path).expect_err("a damaged GGUF must not open");
        let text = err.to_string();
        assert!(text.contains(&*path.to_string_lossy()), "{text}");
        seen += 1;
    }
    assert_eq!(seen, 10);
}

/// A Q4_1 matrix with one block per row (the fuzzer's `token_embd`, 4 x 32) tripped candle's
/// dot product, which takes Q4_1, Q5_0 and Q5_1 blocks in pairs; it is now converted at load
/// and multiplies as the values it stores.
#[test]
fn q4_1_matrix_with_an_odd_number_of_blocks_per_row_runs() {
    use candle_core::{DType, Device, Module, Tensor};
    use candle_nn::var_builder::SimpleBackend;

    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_inputs/q4_1-odd-blocks.gguf");
    let checkpoint = Checkpoint::open(&path).unwrap();
    let name = "model.language_model.embed_tokens";
    let device = Device::Cpu;
    let weight = checkpoint
        .get_unchecked(&format!("{name}.weight"), DType::F32, &device)
        .unwrap();
    assert_eq!(weight.dims(), [4, 32]);
    let vb = checkpoint.var_builder(DType::F32, &device).unwrap();
    let linear = checkpoint
        .linear(32, 4, Default::default(), vb.pp(name))
        .unwrap();
    let x = Tensor::arange(0f32, 32.0, &device)
        .unwrap()
        .affine(1.0 / 16.0, -1.0)
        .unwrap();
    let want: Vec<f32> = weight
        .matmul(&x.unsqueeze(1).unwrap())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let scale = want.iter().fold(1e-6f32, |a, v| a.max(v.abs()));
    for m in [1, 3] {
        let xs = x.unsqueeze(0).unwrap().repeat((m, 1)).unwrap();
        let got: Vec<f32> = linear
            .forward(&xs)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        for (i, g) in got.iter().enumerate() {
            let w = want[i % 4];
            // Only the conversion's and the activations' 8-bit rounding separate them.
            assert!(
                (g - w).abs() <= 2e-2 * scale,
                "m={m} output {i}: {g} vs {w}"
            );
        }
    }
}
