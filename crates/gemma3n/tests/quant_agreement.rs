//! Packed (bf16 / q8_0 / q4k) weights against the f32 parity path on the tiny checkpoints:
//! teacher-forced top-1 agreement over 100 positions, f32 greedy continuation as the reference.

mod common;

use candle_core::{DType, Device, Tensor, D};
use common::{model_dir, Golden};
use gemma3n::{Gemma3nModel, LoadOptions, MediaEmbeddings, WeightFormat};

const STEPS: usize = 100;

fn load(variant: &str, weights: WeightFormat) -> Gemma3nModel {
    let opts = LoadOptions {
        weights,
        ..LoadOptions::default()
    };
    Gemma3nModel::load_with(&model_dir(variant), &opts).expect("load model")
}

fn next_token(model: &Gemma3nModel, ids: &[u32], cache: &mut gemma3n::Cache) -> u32 {
    let input = Tensor::from_vec(ids.to_vec(), (1, ids.len()), &Device::Cpu).unwrap();
    let logits = model
        .forward_last(&input, &MediaEmbeddings::default(), cache)
        .unwrap();
    logits.argmax(D::Minus1).unwrap().to_vec1::<u32>().unwrap()[0]
}

/// f32 greedy continuation of the golden prompt.
fn reference_continuation(variant: &str) -> (Vec<u32>, Vec<u32>) {
    let model = load(variant, WeightFormat::Dense);
    let prompt = Golden::open(variant).ids("text.input_ids");
    let mut cache = model.new_cache();
    let mut out = vec![next_token(&model, &prompt, &mut cache)];
    while out.len() < STEPS {
        let last = *out.last().unwrap();
        out.push(next_token(&model, &[last], &mut cache));
    }
    (prompt, out)
}

/// Fraction of positions where `weights` picks the f32 model's token, fed the f32 sequence.
fn agreement(variant: &str, weights: WeightFormat, prompt: &[u32], reference: &[u32]) -> f64 {
    let model = load(variant, weights);
    assert_eq!(
        model.dtype(),
        DType::F32,
        "packed weights keep f32 activations"
    );
    let mut cache = model.new_cache();
    let mut same = usize::from(next_token(&model, prompt, &mut cache) == reference[0]);
    for w in reference.windows(2) {
        same += usize::from(next_token(&model, &[w[0]], &mut cache) == w[1]);
    }
    same as f64 / reference.len() as f64
}

#[test]
fn packed_weights_agree_with_f32_greedy() {
    for variant in ["C", "D"] {
        let (prompt, reference) = reference_continuation(variant);
        for (weights, min) in [
            (WeightFormat::Bf16, 0.9),
            (WeightFormat::Q8_0, 0.9),
            (WeightFormat::Q4K, 0.7),
        ] {
            let a = agreement(variant, weights, &prompt, &reference);
            eprintln!("{variant} {weights}: top-1 agreement {a:.2} over {STEPS}");
            assert!(a >= min, "{variant} {weights}: agreement {a} < {min}");
        }
    }
}
