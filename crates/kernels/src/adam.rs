//! One Adam update of a parameter, its two moments and the gradient's squared norm in a single
//! pass, instead of a dozen elementwise tensor ops (each a full pass over memory, one core each
//! on flex).

use rayon::prelude::*;

use crate::elem::Float;
use crate::ordered::ordered_sum;
use crate::rounding::{BITS_PER_BLOCK, fill_random_bits};

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
    /// Stochastic rounding of the stored values: the keys of the parameter's, the first and the
    /// second moment's streams ([`random_bits`](crate::random_bits)`(key, element)`); `None`
    /// rounds to nearest.
    pub stochastic: Option<[u64; 3]>,
}

/// Elements per parallel task.
const ELEMENTS_PER_TASK: usize = 1 << 15;

/// `m1 = β1·m1 + (1−β1)·g`, `m2 = β2·m2 + (1−β2)·g²`,
/// `param −= lr/(1−β1ᵗ) · m1 / (√m2/√(1−β2ᵗ) + eps)`, in place, in fp32 with each stored value
/// rounded once to its slice's dtype — to nearest, or stochastically with
/// [`AdamStep::stochastic`] (the updated moments are used as stored, as the op-by-op update
/// does). Returns `Σ g²` (accumulated in float64) for the gradient norm.
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
    let coefficients = Coefficients::of(step);
    let partials = param
        .par_chunks_mut(ELEMENTS_PER_TASK)
        .zip(grad.par_chunks(ELEMENTS_PER_TASK))
        .zip(
            moment_1
                .par_chunks_mut(ELEMENTS_PER_TASK)
                .zip(moment_2.par_chunks_mut(ELEMENTS_PER_TASK)),
        )
        .enumerate()
        .map(|(task, ((param, grad), (moment_1, moment_2)))| {
            let mut square_sum = 0.0f64;
            // The random bits of the parameter's and the moments' streams, a block at a time.
            let mut bits = [[0u16; BITS_PER_BLOCK]; 3];
            let blocks = param
                .chunks_mut(BITS_PER_BLOCK)
                .zip(grad.chunks(BITS_PER_BLOCK))
                .zip(moment_1.chunks_mut(BITS_PER_BLOCK))
                .zip(moment_2.chunks_mut(BITS_PER_BLOCK));
            for (block, (((param, grad), moment_1), moment_2)) in blocks.enumerate() {
                let first = (task * ELEMENTS_PER_TASK + block * BITS_PER_BLOCK) as u64;
                let drawn = step.stochastic.map(|keys| {
                    for (key, bits) in keys.into_iter().zip(&mut bits) {
                        fill_random_bits(key, first, &mut bits[..param.len()]);
                    }
                    &bits
                });
                let block = Block {
                    param,
                    grad,
                    moment_1,
                    moment_2,
                };
                square_sum += update_block(block, &coefficients, drawn);
            }
            square_sum
        });
    ordered_sum(partials)
}

/// The fp32 constants of one step's update.
struct Coefficients {
    beta_1: f32,
    beta_2: f32,
    /// `lr / (1 − β1ᵗ)`.
    step_size: f32,
    /// `√(1 − β2ᵗ)`.
    correction_2_sqrt: f32,
    eps: f32,
}

impl Coefficients {
    fn of(step: &AdamStep) -> Self {
        Self {
            beta_1: step.betas.0 as f32,
            beta_2: step.betas.1 as f32,
            step_size: (step.lr / (1.0 - step.betas.0.powi(step.step))) as f32,
            correction_2_sqrt: (1.0 - step.betas.1.powi(step.step)).sqrt() as f32,
            eps: step.eps as f32,
        }
    }
}

/// Up to [`BITS_PER_BLOCK`] elements of each tensor, the same ones of each.
struct Block<'a, P, G, S> {
    param: &'a mut [P],
    grad: &'a [G],
    moment_1: &'a mut [S],
    moment_2: &'a mut [S],
}

/// The update of one block, with `bits` (parameter's, first and second moment's streams)
/// stochastically, and the block's `Σ g²`: compiled for AVX-512 where the CPU has it (the loop
/// vectorises: it has no branch, and `Σ g²` is kept in lanes), portable elsewhere.
fn update_block<P: Float, G: Float, S: Float>(
    block: Block<'_, P, G, S>,
    coefficients: &Coefficients,
    bits: Option<&[[u16; BITS_PER_BLOCK]; 3]>,
) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if crate::path::avx512() {
        // SAFETY: the CPU reports every feature `update_block_avx512` is compiled for.
        return unsafe { update_block_avx512(block, coefficients, bits) };
    }
    update_block_portable(block, coefficients, bits)
}

/// [`update_block`] compiled for AVX-512.
///
/// # Safety
/// The CPU must support AVX-512 F, BW, DQ and VL.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
unsafe fn update_block_avx512<P: Float, G: Float, S: Float>(
    block: Block<'_, P, G, S>,
    coefficients: &Coefficients,
    bits: Option<&[[u16; BITS_PER_BLOCK]; 3]>,
) -> f64 {
    update_block_portable(block, coefficients, bits)
}

#[inline(always)]
fn update_block_portable<P: Float, G: Float, S: Float>(
    block: Block<'_, P, G, S>,
    coefficients: &Coefficients,
    bits: Option<&[[u16; BITS_PER_BLOCK]; 3]>,
) -> f64 {
    let square_sum = crate::accumulate::square_sum_of(block.grad);
    match bits {
        None => update_elements::<false, P, G, S>(block, coefficients, &[[0; BITS_PER_BLOCK]; 3]),
        Some(bits) => update_elements::<true, P, G, S>(block, coefficients, bits),
    }
    square_sum
}

/// The elementwise update: each stored value rounded once to its slice's dtype (to nearest, or
/// with `STOCHASTIC` by its stream's bits); the step uses the moments as stored.
#[inline(always)]
fn update_elements<const STOCHASTIC: bool, P: Float, G: Float, S: Float>(
    block: Block<'_, P, G, S>,
    c: &Coefficients,
    bits: &[[u16; BITS_PER_BLOCK]; 3],
) {
    let n = block.param.len();
    // One length for every slice, so that the loop indexes without bounds checks.
    let (param, grad) = (block.param, &block.grad[..n]);
    let (moment_1, moment_2) = (&mut block.moment_1[..n], &mut block.moment_2[..n]);
    let [param_bits, moment_1_bits, moment_2_bits] = bits.each_ref().map(|b| &b[..n]);
    fn store<T: Float, const STOCHASTIC: bool>(value: f32, bits: u16) -> T {
        if STOCHASTIC {
            T::from_f32_stochastic(value, bits)
        } else {
            T::from_f32(value)
        }
    }
    for i in 0..n {
        let g = grad[i].to_f32();
        let new_m1 = moment_1[i].to_f32() * c.beta_1 + g * (1.0 - c.beta_1);
        let new_m2 = moment_2[i].to_f32() * c.beta_2 + g * g * (1.0 - c.beta_2);
        let stored_m1: S = store::<S, STOCHASTIC>(new_m1, moment_1_bits[i]);
        let stored_m2: S = store::<S, STOCHASTIC>(new_m2, moment_2_bits[i]);
        let denom = stored_m2.to_f32().sqrt() / c.correction_2_sqrt + c.eps;
        let new_p = param[i].to_f32() - stored_m1.to_f32() / denom * c.step_size;
        param[i] = store::<P, STOCHASTIC>(new_p, param_bits[i]);
        moment_1[i] = stored_m1;
        moment_2[i] = stored_m2;
    }
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
            stochastic: None,
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
            stochastic: None,
        };
        adam_update(&mut param, &grad, &mut m1, &mut m2, &step);
        // Step 1: m̂1 = g, m̂2 = g², so the update is lr·sign(g): 1 − 0.1 = 0.9 in bf16.
        assert_eq!(m1[0], bf16::from_f32(0.05));
        assert_eq!(m2[0], bf16::from_f32(0.05 * 0.25));
        assert_eq!(param[0], bf16::from_f32(0.9));
    }

    #[test]
    fn stochastic_rounding_keeps_updates_below_half_an_ulp_on_average() {
        // Step 1 moves every weight by lr·sign(g) = 1e-4, a 39th of half an ulp of 1.0: round to
        // nearest keeps every weight; stochastic rounding moves about 1 in 39 of them down by
        // the gap below 1.0 (2⁻⁸), so that the mean moves by the update.
        let n = 200_003;
        let grad = vec![bf16::from_f32(0.5); n];
        let step = |stochastic| AdamStep {
            lr: 1e-4,
            betas: (0.9, 0.95),
            eps: 1e-8,
            step: 1,
            stochastic,
        };
        let run = |stochastic| {
            let mut param = vec![bf16::ONE; n];
            let (mut m1, mut m2) = (vec![bf16::ZERO; n], vec![bf16::ZERO; n]);
            adam_update(&mut param, &grad, &mut m1, &mut m2, &step(stochastic));
            param
        };
        assert!(
            run(None).iter().all(|p| *p == bf16::ONE),
            "nearest loses it"
        );
        let keys = Some([11, 12, 13]);
        let param = run(keys);
        assert_eq!(param, run(keys), "the same keys round the same way");
        let mean_move = param.iter().map(|p| 1.0 - p.to_f32() as f64).sum::<f64>() / n as f64;
        // Each weight moves by 0 or 2⁻⁸ (p = 1e-4 / 2⁻⁸): the mean's standard deviation is
        // 2⁻⁸ · √(p(1−p)/n); 5σ.
        let gap = 2f64.powi(-8);
        let p = 1e-4 / gap;
        let bound = 5.0 * gap * (p * (1.0 - p) / n as f64).sqrt();
        assert!(
            (mean_move - 1e-4).abs() <= bound,
            "{mean_move} vs 1e-4 ± {bound}"
        );
    }

    /// Element `i` of each stored tensor draws `random_bits(key, i)` of its stream, wherever the
    /// element falls among the kernel's parallel tasks and blocks of drawn bits (a ragged
    /// length over several of each), as written out one element at a time.
    #[test]
    fn stochastic_rounding_draws_each_element_s_own_bits() {
        use crate::random_bits;
        let n = 70_001;
        let grad: Vec<bf16> = (0..n)
            .map(|i| bf16::from_f32(((i * 37) % 101) as f32 / 50.0 - 1.0))
            .collect();
        let param0: Vec<bf16> = (0..n)
            .map(|i| bf16::from_f32(((i * 11) % 97) as f32 / 97.0))
            .collect();
        let keys = [5, 6, 7];
        let step = AdamStep {
            lr: 1e-3,
            betas: (0.9, 0.95),
            eps: 1e-8,
            step: 3,
            stochastic: Some(keys),
        };
        let (mut param, mut m1, mut m2) = (param0.clone(), param0.clone(), param0.clone());
        adam_update(&mut param, &grad, &mut m1, &mut m2, &step);
        let step_size = (1e-3 / (1.0 - 0.9f64.powi(3))) as f32;
        let correction_2_sqrt = (1.0 - 0.95f64.powi(3)).sqrt() as f32;
        for i in 0..n {
            let (g, old) = (grad[i].to_f32(), param0[i].to_f32());
            let bits = |stream: usize| random_bits(keys[stream], i as u64);
            let want_m1 = bf16::from_f32_stochastic(old * 0.9 + g * (1.0 - 0.9), bits(1));
            let want_m2 = bf16::from_f32_stochastic(old * 0.95 + g * g * (1.0 - 0.95), bits(2));
            let denom = want_m2.to_f32().sqrt() / correction_2_sqrt + 1e-8;
            let want_p = old - want_m1.to_f32() / denom * step_size;
            let want_p = bf16::from_f32_stochastic(want_p, bits(0));
            assert_eq!(
                [m1[i], m2[i], param[i]],
                [want_m1, want_m2, want_p],
                "element {i}"
            );
        }
    }
}
