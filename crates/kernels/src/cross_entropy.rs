//! The record's loss over a batch of logits rows, and its gradient, in one pass per row:
//! soft-cap `c = cap·tanh(z/cap)` (rounded to the logits' dtype after each op, as the op-by-op
//! version does), cross-entropy in fp32 shifted by an upper bound of the row, and
//! `d loss / d z = (softmax(c) − onehot) / N · (1 − tanh²)`, taken back through the soft-cap op
//! by op and rounded to the logits' dtype after each, as autograd does.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use crate::elem::Float;
use crate::math::{exp, lane_fold, tanh};
use crate::ordered::ordered_sum;
#[cfg(target_arch = "x86_64")]
use crate::path::avx512;

/// The largest soft-cap that can stand in for the row maximum: `e^(−2·40)` is still a normal
/// fp32 number.
pub const MAX_SHIFT_CAP: f32 = 40.0;

/// Tasks per thread: enough to balance the load, few enough that each task's scratch rows
/// (two of the vocabulary's width) are allocated rarely.
const TASKS_PER_THREAD: usize = 4;

/// `Σ_rows (logsumexp(c) − c[target]) / mean_over` for `logits` `[rows, vocab]` (row-major),
/// `c` the soft-capped logits (`cap = None`: the logits themselves). With `grad`, also writes
/// `d loss / d logits` there, in the logits' dtype: every element is written, so `grad` may be
/// uninitialised memory (a logits-sized buffer need not be cleared first).
///
/// # Panics
/// When the lengths disagree, or a target is not below `vocab`.
pub fn softcapped_cross_entropy<T: Float>(
    logits: &[T],
    vocab: usize,
    targets: &[usize],
    cap: Option<f32>,
    mean_over: usize,
    grad: Option<&mut [MaybeUninit<T>]>,
) -> f64 {
    let row = RowLoss::new(logits.len(), vocab, targets, cap, mean_over);
    let task = row.rows_per_task(targets.len());
    let target_chunks = targets.par_chunks(task);
    match grad {
        Some(grad) => {
            assert_eq!(grad.len(), logits.len(), "cross_entropy: gradient length");
            ordered_sum(
                logits
                    .par_chunks(task * vocab)
                    .zip(grad.par_chunks_mut(task * vocab))
                    .zip(target_chunks)
                    .map(|((logits, grad), targets)| {
                        let rows = logits.chunks(vocab).zip(grad.chunks_mut(vocab));
                        row.rows(
                            rows.map(|(logits, grad)| Apart(logits, Some(grad))),
                            targets,
                        )
                    }),
            )
        }
        None => ordered_sum(logits.par_chunks(task * vocab).zip(target_chunks).map(
            |(logits, targets)| row.rows(logits.chunks(vocab).map(|l| Apart(l, None)), targets),
        )),
    }
}

/// [`softcapped_cross_entropy`] with the gradient written over the logits: each row is read
/// whole before its gradient is written, so a backend that owns the logits' buffer needs no
/// second logits-sized one.
///
/// # Panics
/// As [`softcapped_cross_entropy`].
pub fn softcapped_cross_entropy_in_place<T: Float>(
    logits: &mut [T],
    vocab: usize,
    targets: &[usize],
    cap: Option<f32>,
    mean_over: usize,
) -> f64 {
    let row = RowLoss::new(logits.len(), vocab, targets, cap, mean_over);
    let task = row.rows_per_task(targets.len());
    ordered_sum(
        logits
            .par_chunks_mut(task * vocab)
            .zip(targets.par_chunks(task))
            .map(|(logits, targets)| row.rows(logits.chunks_mut(vocab).map(InPlace), targets)),
    )
}

/// Where one row's logits are read and its gradient written.
trait RowBuffers<T> {
    /// The row's logits.
    fn logits(&self) -> &[T];
    /// Where its gradient goes, if asked for; read [`logits`](Self::logits) first.
    fn grad(&mut self) -> Option<&mut [MaybeUninit<T>]>;
}

/// Logits and gradient in two buffers.
struct Apart<'a, T>(&'a [T], Option<&'a mut [MaybeUninit<T>]>);

impl<T> RowBuffers<T> for Apart<'_, T> {
    fn logits(&self) -> &[T] {
        self.0
    }

    fn grad(&mut self) -> Option<&mut [MaybeUninit<T>]> {
        self.1.as_deref_mut()
    }
}

/// The gradient over the logits.
struct InPlace<'a, T>(&'a mut [T]);

impl<T> RowBuffers<T> for InPlace<'_, T> {
    fn logits(&self) -> &[T] {
        self.0
    }

    fn grad(&mut self) -> Option<&mut [MaybeUninit<T>]> {
        let (ptr, len) = (self.0.as_mut_ptr(), self.0.len());
        // SAFETY: `MaybeUninit<T>` has `T`'s layout; the slice is the row's own exclusive
        // borrow, and the kernel writes only initialised `T`s through it, so the row stays valid.
        Some(unsafe { std::slice::from_raw_parts_mut(ptr.cast::<MaybeUninit<T>>(), len) })
    }
}

/// The per-row computation and its constants.
#[derive(Clone, Copy)]
struct RowLoss {
    vocab: usize,
    cap: Option<f32>,
    mean_over: f32,
}

impl RowLoss {
    /// The constants, after checking the shapes and targets.
    fn new(
        len: usize,
        vocab: usize,
        targets: &[usize],
        cap: Option<f32>,
        mean_over: usize,
    ) -> Self {
        assert!(vocab > 0, "cross_entropy: an empty vocabulary");
        assert_eq!(len, targets.len() * vocab, "cross_entropy: rows × vocab");
        assert!(
            targets.iter().all(|t| *t < vocab),
            "cross_entropy: a target outside the vocabulary of {vocab}"
        );
        Self {
            vocab,
            cap,
            mean_over: mean_over as f32,
        }
    }

    /// Rows per parallel task.
    fn rows_per_task(&self, rows: usize) -> usize {
        rows.div_ceil(rayon::current_num_threads() * TASKS_PER_THREAD)
            .max(1)
    }

    /// Rows of one task: the loss summed over them (each divided by `mean_over`).
    fn rows<T: Float, B: RowBuffers<T>>(
        &self,
        rows: impl Iterator<Item = B>,
        targets: &[usize],
    ) -> f64 {
        // Per row: the capped logits (then their exponentials) and the tanh values.
        let mut capped = vec![0.0f32; self.vocab];
        let mut tanh_values = vec![0.0f32; if self.cap.is_some() { self.vocab } else { 0 }];
        let mut total = 0.0f64;
        for (buffers, &target) in rows.zip(targets) {
            let scratch = (&mut capped[..], &mut tanh_values[..]);
            #[cfg(target_arch = "x86_64")]
            if avx512() {
                // SAFETY: the CPU reports every feature `row_avx512` is compiled for.
                total += unsafe { self.row_avx512(buffers, target, scratch) };
                continue;
            }
            total += self.row(buffers, target, scratch);
        }
        total
    }

    /// [`row`](Self::row) compiled for AVX-512 (16 lanes instead of the baseline's 4).
    ///
    /// # Safety
    /// The CPU must support AVX-512 F, BW, DQ and VL.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
    unsafe fn row_avx512<T: Float, B: RowBuffers<T>>(
        &self,
        buffers: B,
        target: usize,
        scratch: (&mut [f32], &mut [f32]),
    ) -> f64 {
        self.row(buffers, target, scratch)
    }

    /// One row: fills the first scratch row with `e^(c − shift)` and the second with the tanh
    /// values, then writes the gradient if asked, returns the row's loss over `mean_over`.
    #[inline(always)]
    fn row<T: Float, B: RowBuffers<T>>(
        &self,
        mut buffers: B,
        target: usize,
        (capped, tanh_values): (&mut [f32], &mut [f32]),
    ) -> f64 {
        let logits = buffers.logits();
        match self.cap {
            Some(cap) => {
                for ((c, t), z) in capped.iter_mut().zip(tanh_values.iter_mut()).zip(logits) {
                    *t = T::round(tanh(T::round(z.to_f32() / cap)));
                    *c = T::round(*t * cap);
                }
            }
            None => {
                for (c, z) in capped.iter_mut().zip(logits) {
                    *c = z.to_f32();
                }
            }
        }
        let shift = match self.cap {
            Some(cap) if cap <= MAX_SHIFT_CAP => cap,
            _ => lane_fold(capped, f32::NEG_INFINITY, f32::max),
        };
        let picked = capped[target] - shift;
        // Separate simple loops: each vectorises (a loop that both exponentiates and sums in
        // lanes does not).
        for c in capped.iter_mut() {
            *c = exp(*c - shift);
        }
        let sum = lane_fold(capped, 0.0, |a, b| a + b);
        let loss = (sum.ln() - picked) / self.mean_over;
        // The logits are not read past this point: the gradient may overwrite them.
        if let Some(grad) = buffers.grad() {
            // (e/sum − onehot)/N · slope with both divisions as multiplications by reciprocals.
            // They stay separate: 1/N is exact for a power-of-two N, so that N rows on one rank
            // and N/2 on each of two ranks (then averaged) give the same bits.
            let (inverse_sum, inverse_n) = (1.0 / sum, 1.0 / self.mean_over);
            match self.cap {
                Some(cap) => {
                    // Through the soft-cap as autograd goes: the loss's gradient rounded to the
                    // logits' dtype, then ·cap, `g·(1 − t²)` and ÷cap, each rounded to it.
                    let through_cap = |g: f32, t: f32| {
                        T::from_f32(T::round(T::round(T::round(g) * cap) * (1.0 - t * t)) / cap)
                    };
                    for ((g, e), t) in grad.iter_mut().zip(capped.iter()).zip(tanh_values.iter()) {
                        g.write(through_cap(*e * inverse_sum * inverse_n, *t));
                    }
                    // The target's entry divides exactly, so that a certain prediction gives 0.
                    let t = tanh_values[target];
                    let n = self.mean_over;
                    grad[target].write(through_cap((capped[target] / sum - 1.0) / n, t));
                }
                None => {
                    for (g, e) in grad.iter_mut().zip(capped.iter()) {
                        g.write(T::from_f32(*e * inverse_sum * inverse_n));
                    }
                    grad[target].write(T::from_f32((capped[target] / sum - 1.0) / self.mean_over));
                }
            }
        }
        loss as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::bf16;

    /// Loss and gradient in float64, the cap applied without rounding.
    fn reference(
        logits: &[f64],
        vocab: usize,
        targets: &[usize],
        cap: Option<f64>,
    ) -> (f64, Vec<f64>) {
        let n = targets.len() as f64;
        let mut loss = 0.0;
        let mut grad = Vec::with_capacity(logits.len());
        for (row, &target) in logits.chunks(vocab).zip(targets) {
            let c: Vec<f64> = row
                .iter()
                .map(|&z| cap.map_or(z, |k| k * (z / k).tanh()))
                .collect();
            let max = c.iter().cloned().fold(f64::MIN, f64::max);
            let sum: f64 = c.iter().map(|v| (v - max).exp()).sum();
            loss += (max + sum.ln() - c[target]) / n;
            for (j, &z) in row.iter().enumerate() {
                let p = (c[j] - max).exp() / sum - if j == target { 1.0 } else { 0.0 };
                grad.push(p / n * cap.map_or(1.0, |k| 1.0 - (z / k).tanh().powi(2)));
            }
        }
        (loss, grad)
    }

    fn check<T: Float>(tolerance: f64) {
        for vocab in [1, 7, 16, 33, 1000] {
            let rows = 9;
            let logits: Vec<T> = (0..rows * vocab)
                .map(|i| T::from_f32(((i * 7919) % 997) as f32 / 997.0 * 24.0 - 12.0))
                .collect();
            let targets: Vec<usize> = (0..rows).map(|r| (r * 31) % vocab).collect();
            let wide: Vec<f64> = logits.iter().map(|v| v.to_f32() as f64).collect();
            for cap in [None, Some(2.0f32), Some(30.0), Some(50.0)] {
                let (want, want_grad) = reference(&wide, vocab, &targets, cap.map(f64::from));
                let mut grad = Vec::with_capacity(logits.len());
                let loss = softcapped_cross_entropy(
                    &logits,
                    vocab,
                    &targets,
                    cap,
                    rows,
                    Some(&mut grad.spare_capacity_mut()[..logits.len()]),
                );
                // SAFETY: the kernel writes every element of the gradient.
                unsafe { grad.set_len(logits.len()) };
                let without = softcapped_cross_entropy(&logits, vocab, &targets, cap, rows, None);
                assert_eq!(loss, without, "the gradient does not change the loss");
                let mut in_place = logits.clone();
                let loss_in_place =
                    softcapped_cross_entropy_in_place(&mut in_place, vocab, &targets, cap, rows);
                assert_eq!(loss, loss_in_place, "in place: the same loss");
                assert!(
                    in_place
                        .iter()
                        .zip(&grad)
                        .all(|(a, b)| a.to_f32().to_bits() == b.to_f32().to_bits()),
                    "in place: the same gradient, bit for bit"
                );
                assert!(
                    (loss - want).abs() <= tolerance * want.abs().max(1.0),
                    "{vocab} {cap:?}: {loss} vs {want}"
                );
                let scale = want_grad.iter().fold(0.0f64, |m, g| m.max(g.abs()));
                for (i, (g, w)) in grad.iter().zip(&want_grad).enumerate() {
                    assert!(
                        (g.to_f32() as f64 - w).abs() <= tolerance * scale,
                        "{vocab} {cap:?} [{i}]: {} vs {w}",
                        g.to_f32()
                    );
                }
            }
        }
    }

    #[test]
    fn fp32_matches_float64() {
        check::<f32>(2e-6);
    }

    #[test]
    fn bf16_matches_float64_to_its_rounding() {
        // The soft-cap rounds three times to 8 bits, as the op-by-op bf16 version does.
        check::<bf16>(2e-2);
    }

    #[test]
    #[should_panic(expected = "a target outside the vocabulary")]
    fn a_target_outside_the_vocabulary_is_refused() {
        softcapped_cross_entropy(&[0.0f32; 4], 4, &[4], None, 1, None);
    }
}
