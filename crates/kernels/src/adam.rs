//! One Adam update of a parameter, its two moments and the gradient's squared norm in a single
//! pass, instead of a dozen elementwise tensor ops (each a full pass over memory, one core each
//! on flex).

use rayon::prelude::*;

use crate::elem::Float;

/// The hyper-parameters of one Adam step (PyTorch's `Adam`, no weight decay).
#[derive(Debug, Clone, Copy)]
pub struct AdamStep {
    /// Learning rate.
    pub lr: f64,
    /// `(β1, β2)`.
    pub betas: (f64, f64),
    /// Added to the denominator.
    pub eps: f64,
    /// The step number, from 1: bias corrections `1 − βᵗ`.
    pub step: i32,
}

/// Elements per parallel task.
const ELEMENTS_PER_TASK: usize = 1 << 15;

/// `m1 = β1·m1 + (1−β1)·g`, `m2 = β2·m2 + (1−β2)·g²`,
/// `param −= lr/(1−β1ᵗ) · m1 / (√m2/√(1−β2ᵗ) + eps)`, in place, in fp32 with each stored value
/// rounded once to its slice's dtype (the updated moments are used as stored, as the
/// op-by-op update does). Returns `Σ g²` (accumulated in float64) for the gradient norm.
///
/// # Panics
/// When the slices' lengths differ.
pub fn adam_update<P: Float, G: Float, S: Float>(
    param: &mut [P],
    grad: &[G],
    moment_1: &mut [S],
    moment_2: &mut [S],
    step: &AdamStep,
) -> f64 {
    let n = param.len();
    assert!(
        grad.len() == n && moment_1.len() == n && moment_2.len() == n,
        "adam_update: parameter, gradient and moments must have the same length"
    );
    let (beta_1, beta_2) = (step.betas.0 as f32, step.betas.1 as f32);
    let step_size = (step.lr / (1.0 - step.betas.0.powi(step.step))) as f32;
    let correction_2_sqrt = (1.0 - step.betas.1.powi(step.step)).sqrt() as f32;
    let eps = step.eps as f32;
    param
        .par_chunks_mut(ELEMENTS_PER_TASK)
        .zip(grad.par_chunks(ELEMENTS_PER_TASK))
        .zip(
            moment_1
                .par_chunks_mut(ELEMENTS_PER_TASK)
                .zip(moment_2.par_chunks_mut(ELEMENTS_PER_TASK)),
        )
        .map(|((param, grad), (moment_1, moment_2))| {
            let mut square_sum = 0.0f64;
            for (((p, g), m1), m2) in param.iter_mut().zip(grad).zip(moment_1).zip(moment_2) {
                let g = g.to_f32();
                square_sum += (g * g) as f64;
                let new_m1 = S::round(m1.to_f32() * beta_1 + g * (1.0 - beta_1));
                let new_m2 = S::round(m2.to_f32() * beta_2 + g * g * (1.0 - beta_2));
                let denom = new_m2.sqrt() / correction_2_sqrt + eps;
                *p = P::from_f32(p.to_f32() - new_m1 / denom * step_size);
                *m1 = S::from_f32(new_m1);
                *m2 = S::from_f32(new_m2);
            }
            square_sum
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::bf16;

    #[test]
    fn matches_the_update_written_out_in_float64() {
        let n = 100_003;
        let grad: Vec<f32> = (0..n)
            .map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0)
            .collect();
        let param0: Vec<f32> = (0..n).map(|i| ((i * 11) % 97) as f32 / 97.0).collect();
        let step = AdamStep {
            lr: 0.01,
            betas: (0.9, 0.95),
            eps: 1e-8,
            step: 3,
        };
        let (mut param, mut m1, mut m2) = (param0.clone(), vec![0.1f32; n], vec![0.2f32; n]);
        let squares = adam_update(&mut param, &grad, &mut m1, &mut m2, &step);
        let want_squares: f64 = grad.iter().map(|g| (*g as f64).powi(2)).sum();
        assert!((squares - want_squares).abs() <= 1e-6 * want_squares);
        for i in 0..n {
            let g = grad[i] as f64;
            let w1 = 0.9 * 0.1f32 as f64 + 0.1 * g;
            let w2 = 0.95 * 0.2f32 as f64 + 0.05 * g * g;
            let delta = 0.01 / (1.0 - 0.9f64.powi(3)) * w1
                / (w2.sqrt() / (1.0 - 0.95f64.powi(3)).sqrt() + 1e-8);
            let want = param0[i] as f64 - delta;
            assert!((m1[i] as f64 - w1).abs() <= 1e-6, "{i}");
            assert!((m2[i] as f64 - w2).abs() <= 1e-6, "{i}");
            assert!(
                (param[i] as f64 - want).abs() <= 1e-6,
                "{i}: {} vs {want}",
                param[i]
            );
        }
    }

    #[test]
    fn bf16_state_rounds_each_stored_value_once() {
        let grad = [bf16::from_f32(0.5); 3];
        let mut param = [bf16::from_f32(1.0); 3];
        let (mut m1, mut m2) = ([bf16::ZERO; 3], [bf16::ZERO; 3]);
        let step = AdamStep {
            lr: 0.1,
            betas: (0.9, 0.95),
            eps: 1e-8,
            step: 1,
        };
        adam_update(&mut param, &grad, &mut m1, &mut m2, &step);
        // Step 1: m̂1 = g, m̂2 = g², so the update is lr·sign(g): 1 − 0.1 = 0.9 in bf16.
        assert_eq!(m1[0], bf16::from_f32(0.05));
        assert_eq!(m2[0], bf16::from_f32(0.05 * 0.25));
        assert_eq!(param[0], bf16::from_f32(0.9));
    }
}
