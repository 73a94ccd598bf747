//! Packed (bf16 / q8_0 / q4k) weights against the f32 parity path: teacher-forced top-1
//! agreement.  C and D are too narrow to pack (their matrices load dense in every format, so
//! they check the packed formats' loading only); Q has the widths the packed formats take.

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

/// Logits `[T, V]` of the whole prompt in one pass (the prefill path).
fn prefill_logits(model: &Gemma3nModel, prompt: &[u32]) -> Tensor {
    let input = Tensor::from_vec(prompt.to_vec(), (1, prompt.len()), &Device::Cpu).unwrap();
    let logits = model.forward(&input, &MediaEmbeddings::default(), &mut model.new_cache());
    logits.unwrap().squeeze(0).unwrap()
}

fn top1(logits: &Tensor) -> Vec<u32> {
    logits.argmax(D::Minus1).unwrap().to_vec1::<u32>().unwrap()
}

fn fraction_equal(a: &[u32], b: &[u32]) -> f64 {
    a.iter().zip(b).filter(|(x, y)| x == y).count() as f64 / a.len() as f64
}

/// On Q every format really packs (the logits move away from f32's), and the token predicted at
/// each prompt position stays f32's, through the prefill path (the whole prompt at once, on the
/// AMX tiles where the CPU has them) and the decode path (one token at a time).
#[test]
fn packed_weights_pick_the_f32_tokens_where_they_pack() {
    let prompt = Golden::open("Q").ids("text.input_ids");
    let dense = prefill_logits(&load("Q", WeightFormat::Dense), &prompt);
    let reference = top1(&dense);
    let distinct: std::collections::HashSet<_> = reference.iter().collect();
    assert!(
        distinct.len() >= 20,
        "the f32 predictions vary too little: {}",
        distinct.len()
    );
    let scale = dense
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    for (weights, min) in [
        (WeightFormat::Bf16, 0.97),
        (WeightFormat::Q8_0, 0.95),
        (WeightFormat::Q4K, 0.85),
    ] {
        let model = load("Q", weights);
        let logits = prefill_logits(&model, &prompt);
        let moved = (&logits - &dense)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        let moved = moved.to_scalar::<f32>().unwrap() / scale;
        let prefill = fraction_equal(&top1(&logits), &reference);
        let mut cache = model.new_cache();
        let decode: Vec<u32> = prompt
            .iter()
            .map(|&id| next_token(&model, &[id], &mut cache))
            .collect();
        let decode = fraction_equal(&decode, &reference);
        eprintln!(
            "Q {weights}: top-1 agreement {prefill:.3} (prefill), {decode:.3} (decode) over {} \
             positions; logits moved {moved:.4} of their range",
            prompt.len()
        );
        assert!(
            moved > 1e-4,
            "{weights}: the logits did not move: not packed?"
        );
        assert!(
            prefill >= min && decode >= min,
            "{weights}: {prefill}, {decode} < {min}"
        );
    }
}
