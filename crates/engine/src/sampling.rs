//! Next-token choice: greedy at temperature 0, otherwise temperature, top-k, top-p, seeded.

use rand::distr::{weighted::WeightedIndex, Distribution};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

/// camelCase in JSON, as the desktop app stores it and its UI sends it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f64,
    pub top_k: Option<usize>,
    pub top_p: Option<f64>,
    pub max_new_tokens: usize,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_k: Some(64),
            top_p: Some(0.95),
            max_new_tokens: 1024,
            seed: 0,
        }
    }
}

pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
}

impl Sampler {
    pub fn new(params: &SamplingParams) -> Self {
        Self {
            params: params.clone(),
            rng: StdRng::seed_from_u64(params.seed),
        }
    }

    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.params.temperature <= 0.0 {
            return argmax(logits);
        }
        let t = self.params.temperature as f32;
        let mut candidates: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, l / t))
            .collect();
        candidates.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
        if let Some(k) = self.params.top_k.filter(|&k| k > 0) {
            candidates.truncate(k);
        }
        let max = candidates[0].1;
        let mut probs: Vec<f32> = candidates.iter().map(|&(_, l)| (l - max).exp()).collect();
        let total: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
        if let Some(p) = self.params.top_p.filter(|&p| p < 1.0) {
            // Keep the smallest prefix whose mass reaches p (always at least one token).
            let mut mass = 0.0;
            let keep = probs
                .iter()
                .position(|&q| {
                    mass += q;
                    mass as f64 >= p
                })
                .map_or(probs.len(), |i| i + 1);
            probs.truncate(keep);
            candidates.truncate(keep);
        }
        match WeightedIndex::new(&probs) {
            Ok(dist) => candidates[dist.sample(&mut self.rng)].0,
            Err(_) => candidates[0].0,
        }
    }
}

pub fn argmax(logits: &[f32]) -> u32 {
    logits
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(
        temperature: f64,
        top_k: Option<usize>,
        top_p: Option<f64>,
        seed: u64,
    ) -> SamplingParams {
        SamplingParams {
            temperature,
            top_k,
            top_p,
            max_new_tokens: 1,
            seed,
        }
    }

    #[test]
    fn temperature_zero_is_argmax() {
        let mut s = Sampler::new(&params(0.0, None, None, 1));
        assert_eq!(s.sample(&[0.1, 3.0, -2.0, 2.9]), 1);
    }

    #[test]
    fn top_k_one_is_argmax() {
        let mut s = Sampler::new(&params(5.0, Some(1), None, 7));
        for _ in 0..50 {
            assert_eq!(s.sample(&[0.1, 3.0, -2.0, 2.9]), 1);
        }
    }

    #[test]
    fn top_p_excludes_the_tail() {
        // Token 0 holds ~88% of the mass; with top_p 0.5 only it survives.
        let mut s = Sampler::new(&params(1.0, None, Some(0.5), 3));
        for _ in 0..100 {
            assert_eq!(s.sample(&[4.0, 2.0, 0.0, -1.0]), 0);
        }
    }

    #[test]
    fn same_seed_same_tokens_and_sampling_varies() {
        let logits = [1.0, 1.1, 0.9, 1.05, 0.95];
        let run = |seed| {
            let mut s = Sampler::new(&params(1.0, None, None, seed));
            (0..40).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(run(42), run(42));
        let draws = run(42);
        assert!(
            draws.iter().any(|&t| t != draws[0]),
            "sampling never varied"
        );
    }
}
