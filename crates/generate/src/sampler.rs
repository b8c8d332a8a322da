//! Picking the next token from logits: greedy, or sampled with temperature, top-k and top-p,
//! from a seeded generator so that a seed always gives the same text.

use crate::error::GenerateError;

/// How the next token is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// Logits are divided by it; 0 picks the most likely token (greedy).
    pub temperature: f32,
    /// Only the `k` most likely tokens are drawn from.
    pub top_k: Option<usize>,
    /// Only the most likely tokens whose probabilities add up to `p` are drawn from (nucleus).
    pub top_p: Option<f32>,
    /// Seed of the draws.
    pub seed: u64,
}

impl Sampling {
    /// The most likely token every time.
    pub const GREEDY: Self = Self {
        temperature: 0.0,
        top_k: None,
        top_p: None,
        seed: 0,
    };

    /// Checks the ranges: temperature finite and ≥ 0, `top_k` ≥ 1, `top_p` in (0, 1].
    pub fn validate(&self) -> Result<(), GenerateError> {
        let problem = |setting, problem: String| Err(GenerateError::Sampling { setting, problem });
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return problem(
                "--temperature",
                format!("must be 0 (greedy) or positive, got {}", self.temperature),
            );
        }
        if self.top_k == Some(0) {
            return problem("--top-k", "must be at least 1".into());
        }
        if let Some(p) = self.top_p
            && !(p > 0.0 && p <= 1.0)
        {
            return problem("--top-p", format!("must be in (0, 1], got {p}"));
        }
        Ok(())
    }
}

/// Picks tokens by a [`Sampling`], among the ids `0..sampleable` only: a model's vocabulary
/// padded past its tokenizer's (the record's ids 50257–50303) never yields a padding id.
#[derive(Debug, Clone)]
pub struct Sampler {
    sampling: Sampling,
    sampleable: usize,
    state: u64,
}

impl Sampler {
    /// A sampler of the ids `0..sampleable`.
    pub fn new(sampling: Sampling, sampleable: usize) -> Result<Self, GenerateError> {
        sampling.validate()?;
        Ok(Self {
            sampling,
            sampleable,
            state: sampling.seed,
        })
    }

    /// The next token from the logits of every id (fp32, `[vocab]`).
    ///
    /// # Panics
    /// When no id is sampleable (`logits` empty or `sampleable` 0).
    pub fn pick(&mut self, logits: &[f32]) -> u32 {
        let logits = &logits[..self.sampleable.min(logits.len())];
        assert!(!logits.is_empty(), "no token id to sample from");
        let Sampling {
            temperature,
            top_k,
            top_p,
            ..
        } = self.sampling;
        if temperature == 0.0 || top_k == Some(1) {
            return greedy(logits);
        }
        // Candidates by falling logit, ties by rising id (so top-k 1 is greedy).
        let mut candidates: Vec<u32> = (0..logits.len() as u32).collect();
        let by_logit = |a: &u32, b: &u32| {
            let (x, y) = (logits[*a as usize], logits[*b as usize]);
            y.total_cmp(&x).then(a.cmp(b))
        };
        if let Some(k) = top_k.filter(|k| *k < candidates.len()) {
            candidates.select_nth_unstable_by(k - 1, by_logit);
            candidates.truncate(k);
        }
        if top_k.is_some() || top_p.is_some() {
            candidates.sort_unstable_by(by_logit);
        }
        // Softmax of logit / temperature over the candidates, in f64, shifted by the largest.
        let top = candidates
            .iter()
            .map(|&id| logits[id as usize])
            .fold(f32::NEG_INFINITY, f32::max);
        let mut weights: Vec<f64> = candidates
            .iter()
            .map(|&id| (((logits[id as usize] - top) / temperature) as f64).exp())
            .collect();
        if let Some(p) = top_p {
            let total: f64 = weights.iter().sum();
            let mut kept = 0.0;
            let keep = weights
                .iter()
                .position(|w| {
                    kept += w / total;
                    kept >= p as f64
                })
                .map_or(weights.len(), |last| last + 1);
            weights.truncate(keep);
            candidates.truncate(keep);
        }
        let total: f64 = weights.iter().sum();
        let mut target = self.uniform() * total;
        for (id, weight) in candidates.iter().zip(&weights) {
            if target < *weight {
                return *id;
            }
            target -= weight;
        }
        *candidates.last().expect("at least one candidate")
    }

    /// A uniform draw in [0, 1) (SplitMix64, Steele, Lea & Flood 2014: a fixed algorithm, so a
    /// seed gives the same text in every version).
    fn uniform(&mut self) -> f64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The id of the largest logit (the lowest id among equals; NaN never wins).
fn greedy(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (id, logit) in logits.iter().enumerate() {
        if *logit > logits[best] || logits[best].is_nan() {
            best = id;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampling(temperature: f32, top_k: Option<usize>, top_p: Option<f32>) -> Sampling {
        Sampling {
            temperature,
            top_k,
            top_p,
            seed: 7,
        }
    }

    /// How often each id is drawn in `draws` picks.
    fn histogram(sampler: &mut Sampler, logits: &[f32], draws: usize) -> Vec<usize> {
        let mut counts = vec![0; logits.len()];
        for _ in 0..draws {
            counts[sampler.pick(logits) as usize] += 1;
        }
        counts
    }

    #[test]
    fn draws_follow_the_softmax_of_logits_over_temperature() {
        let logits = [1.0f32, 2.0, 0.0, 2.0_f32.ln() + 1.0];
        for temperature in [1.0f32, 0.5] {
            let mut sampler = Sampler::new(sampling(temperature, None, None), 4).unwrap();
            let draws = 200_000;
            let counts = histogram(&mut sampler, &logits, draws);
            let weights: Vec<f64> = logits
                .iter()
                .map(|l| ((*l / temperature) as f64).exp())
                .collect();
            let total: f64 = weights.iter().sum();
            for (id, count) in counts.iter().enumerate() {
                let p = weights[id] / total;
                let sigma = (p * (1.0 - p) / draws as f64).sqrt();
                let measured = *count as f64 / draws as f64;
                assert!(
                    (measured - p).abs() < 5.0 * sigma + 1e-9,
                    "T {temperature}, id {id}: {measured} vs {p}"
                );
            }
        }
    }

    #[test]
    fn top_k_and_top_p_keep_only_the_likeliest() {
        // Probabilities ∝ 8, 4, 2, 1, 1 (sum 16).
        let logits = [8.0f32, 4.0, 2.0, 1.0, 1.0].map(f32::ln);
        let mut top_2 = Sampler::new(sampling(1.0, Some(2), None), 5).unwrap();
        let counts = histogram(&mut top_2, &logits, 30_000);
        assert_eq!(&counts[2..], &[0, 0, 0], "{counts:?}");
        assert!(counts[0] > counts[1] && counts[1] > 0, "{counts:?}");
        // 8/16 = 0.5 < 0.7 ≤ 12/16: the nucleus is ids 0 and 1.
        let mut nucleus = Sampler::new(sampling(1.0, None, Some(0.7)), 5).unwrap();
        let counts = histogram(&mut nucleus, &logits, 30_000);
        assert_eq!(&counts[2..], &[0, 0, 0], "{counts:?}");
        assert!(counts[1] > 0, "{counts:?}");
    }

    #[test]
    fn top_k_one_and_temperature_zero_are_greedy() {
        let logits = [0.5f32, 3.0, -1.0, 3.0, 2.9];
        for setting in [sampling(1.0, Some(1), None), sampling(0.0, None, None)] {
            let mut sampler = Sampler::new(setting, 5).unwrap();
            for _ in 0..100 {
                assert_eq!(sampler.pick(&logits), 1, "ties go to the lower id");
            }
        }
    }

    #[test]
    fn padding_ids_are_never_drawn() {
        // The last two ids are padding and by far the likeliest.
        let logits = [0.0f32, 0.0, 0.0, 50.0, 50.0];
        let mut sampler = Sampler::new(sampling(1.0, None, None), 3).unwrap();
        assert!(
            histogram(&mut sampler, &logits, 1000)[3..]
                .iter()
                .all(|c| *c == 0)
        );
        assert!(Sampler::new(Sampling::GREEDY, 3).unwrap().pick(&logits) < 3);
    }

    #[test]
    fn a_seed_gives_the_same_draws() {
        let logits: Vec<f32> = (0..100).map(|i| (i as f32 * 0.37).sin()).collect();
        let draw = |seed| {
            let mut sampler = Sampler::new(
                Sampling {
                    seed,
                    ..sampling(1.0, Some(50), Some(0.9))
                },
                100,
            )
            .unwrap();
            (0..50).map(|_| sampler.pick(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(draw(3), draw(3));
        assert_ne!(draw(3), draw(4));
    }

    #[test]
    fn out_of_range_settings_are_refused() {
        for (setting, message) in [
            (sampling(-1.0, None, None), "--temperature"),
            (sampling(f32::NAN, None, None), "--temperature"),
            (sampling(1.0, Some(0), None), "--top-k: must be at least 1"),
            (sampling(1.0, None, Some(0.0)), "--top-p: must be in (0, 1]"),
            (sampling(1.0, None, Some(1.5)), "--top-p"),
        ] {
            let err = Sampler::new(setting, 10).unwrap_err().to_string();
            assert!(err.contains(message), "{err}");
        }
    }
}
