//! Causal softmax over attention scores: `P = softmax(scale · S + causal mask)` row by row, in
//! fp32, and its backward `dS = scale · P ⊙ (dP − Σ_j dP_j · P_j)`.
//!
//! Scores come as `[matrices, queries, keys]` row-major; query `i` sees keys `0..=i + keys −
//! queries` (the last queries aligned with the last keys); masked entries are exactly zero.

use rayon::prelude::*;

use crate::elem::Float;
use crate::math::{exp, lane_fold};

/// Rows per parallel task.
const ROWS_PER_TASK: usize = 64;

/// Keys query `row` sees in a `queries × keys` score matrix.
#[inline(always)]
fn visible(row: usize, queries: usize, keys: usize) -> usize {
    (row + 1 + keys).saturating_sub(queries).min(keys)
}

/// `probs = softmax(scale · scores)` over each row's visible keys, zero elsewhere; `probs_f32`,
/// when given, receives the same probabilities before rounding (for the backward pass).
///
/// # Panics
/// When the lengths are not a whole number of `queries × keys` matrices.
pub fn causal_softmax<T: Float>(
    scores: &[T],
    queries: usize,
    keys: usize,
    scale: f32,
    probs: &mut [T],
    probs_f32: Option<&mut [f32]>,
) {
    check(scores.len(), probs.len(), queries, keys);
    if let Some(p) = &probs_f32 {
        assert_eq!(p.len(), scores.len(), "causal_softmax: fp32 output length");
    }
    let task = ROWS_PER_TASK * keys;
    let exact = probs_f32.map(|p| p.par_chunks_mut(task));
    let work = scores
        .par_chunks(task)
        .zip(probs.par_chunks_mut(task))
        .enumerate();
    let run = |(t, (scores, probs)): (usize, (&[T], &mut [T])), mut exact: Option<&mut [f32]>| {
        let mut row_values = vec![0.0f32; keys];
        for (r, (scores, probs)) in scores.chunks(keys).zip(probs.chunks_mut(keys)).enumerate() {
            let row = (t * ROWS_PER_TASK + r) % queries;
            let seen = visible(row, queries, keys);
            let values = &mut row_values[..seen];
            for (v, s) in values.iter_mut().zip(scores) {
                *v = s.to_f32() * scale;
            }
            let max = lane_fold(values, f32::NEG_INFINITY, f32::max);
            for v in values.iter_mut() {
                *v = exp(*v - max);
            }
            let sum = lane_fold(values, 0.0, |a, b| a + b);
            let inverse = 1.0 / sum;
            for v in values.iter_mut() {
                *v *= inverse;
            }
            for (p, v) in probs.iter_mut().zip(values.iter()) {
                *p = T::from_f32(*v);
            }
            probs[seen..].fill(T::from_f32(0.0));
            if let Some(exact) = exact.as_deref_mut() {
                let exact = &mut exact[r * keys..(r + 1) * keys];
                exact[..seen].copy_from_slice(values);
                exact[seen..].fill(0.0);
            }
        }
    };
    match exact {
        Some(exact) => work.zip(exact).for_each(|(w, e)| run(w, Some(e))),
        None => work.for_each(|w| run(w, None)),
    }
}

/// The gradient of [`causal_softmax`]'s input from its probabilities (fp32, as saved) and the
/// gradient of its output: `dS = scale · P ⊙ (dP − Σ_j dP_j · P_j)`, zero where masked.
///
/// # Panics
/// When the lengths are not a whole number of `queries × keys` matrices.
pub fn causal_softmax_backward<T: Float>(
    probs: &[f32],
    grad: &[T],
    queries: usize,
    keys: usize,
    scale: f32,
    grad_scores: &mut [T],
) {
    check(probs.len(), grad_scores.len(), queries, keys);
    assert_eq!(
        grad.len(),
        probs.len(),
        "causal_softmax_backward: gradient length"
    );
    let task = ROWS_PER_TASK * keys;
    grad_scores
        .par_chunks_mut(task)
        .zip(probs.par_chunks(task).zip(grad.par_chunks(task)))
        .enumerate()
        .for_each(|(t, (out, (probs, grad)))| {
            let rows = out
                .chunks_mut(keys)
                .zip(probs.chunks(keys).zip(grad.chunks(keys)));
            for (r, (out, (probs, grad))) in rows.enumerate() {
                let seen = visible((t * ROWS_PER_TASK + r) % queries, queries, keys);
                let dot: f32 = probs[..seen]
                    .iter()
                    .zip(&grad[..seen])
                    .map(|(p, g)| p * g.to_f32())
                    .sum();
                for ((o, p), g) in out.iter_mut().zip(&probs[..seen]).zip(grad) {
                    *o = T::from_f32(scale * p * (g.to_f32() - dot));
                }
                out[seen..].fill(T::from_f32(0.0));
            }
        });
}

fn check(len: usize, out: usize, queries: usize, keys: usize) {
    assert!(
        queries > 0 && keys > 0 && len.is_multiple_of(queries * keys),
        "causal_softmax: {len} scores are not whole {queries}×{keys} matrices"
    );
    assert_eq!(out, len, "causal_softmax: output length");
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::bf16;

    /// Forward and backward in float64 for one row.
    fn reference(scores: &[f64], grad: &[f64], seen: usize, scale: f64) -> (Vec<f64>, Vec<f64>) {
        let max = scores[..seen]
            .iter()
            .fold(f64::MIN, |m, s| m.max(s * scale));
        let e: Vec<f64> = scores[..seen]
            .iter()
            .map(|s| (s * scale - max).exp())
            .collect();
        let sum: f64 = e.iter().sum();
        let mut p: Vec<f64> = e.iter().map(|v| v / sum).collect();
        let dot: f64 = p.iter().zip(grad).map(|(p, g)| p * g).sum();
        let mut ds: Vec<f64> = p
            .iter()
            .zip(grad)
            .map(|(p, g)| scale * p * (g - dot))
            .collect();
        p.resize(scores.len(), 0.0);
        ds.resize(scores.len(), 0.0);
        (p, ds)
    }

    fn check_dtype<T: Float + std::fmt::Debug>(tolerance: f64) {
        for (matrices, queries, keys) in [(1, 1, 1), (3, 5, 5), (2, 7, 19), (4, 65, 65)] {
            let n = matrices * queries * keys;
            let scores: Vec<T> = (0..n)
                .map(|i| T::from_f32(((i * 7919) % 211) as f32 / 20.0 - 5.0))
                .collect();
            let grad: Vec<T> = (0..n)
                .map(|i| T::from_f32(((i * 104_729) % 97) as f32 / 40.0 - 1.2))
                .collect();
            let scale = 0.125;
            let mut probs = vec![T::from_f32(f32::NAN); n];
            let mut exact = vec![f32::NAN; n];
            causal_softmax(&scores, queries, keys, scale, &mut probs, Some(&mut exact));
            let mut grad_scores = vec![T::from_f32(f32::NAN); n];
            causal_softmax_backward(&exact, &grad, queries, keys, scale, &mut grad_scores);
            let wide = |v: &[T]| v.iter().map(|x| x.to_f32() as f64).collect::<Vec<_>>();
            let (scores, grad) = (wide(&scores), wide(&grad));
            for r in 0..matrices * queries {
                let range = r * keys..(r + 1) * keys;
                let seen = visible(r % queries, queries, keys);
                let (p, ds) = reference(&scores[range.clone()], &grad[range.clone()], seen, 0.125);
                for (j, (want_p, want_ds)) in p.iter().zip(&ds).enumerate() {
                    let i = r * keys + j;
                    assert!((exact[i] as f64 - want_p).abs() <= 1e-6, "{r} {j}");
                    let got = probs[i].to_f32() as f64;
                    assert!(
                        (got - want_p).abs() <= tolerance,
                        "{r} {j}: {got} vs {want_p}"
                    );
                    let got = grad_scores[i].to_f32() as f64;
                    assert!(
                        (got - want_ds).abs() <= tolerance,
                        "{r} {j}: {got} vs {want_ds}"
                    );
                    if j >= seen {
                        assert_eq!((exact[i], got), (0.0, 0.0), "masked entries are zero");
                    }
                }
            }
        }
    }

    #[test]
    fn fp32_matches_float64() {
        check_dtype::<f32>(1e-6);
    }

    #[test]
    fn bf16_matches_float64_to_one_rounding() {
        // Probabilities ≤ 1 and gradients ≤ 1 here: one bf16 rounding is ≤ 2⁻⁹.
        check_dtype::<bf16>(2f64.powi(-8));
    }
}
