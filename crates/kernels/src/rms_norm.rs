//! Weightless RMSNorm over rows, `y = x · r` with `r = 1/√(mean(x²) + eps)`, and its backward.
//!
//! The statistics and arithmetic are fp32; inputs and outputs are in the activation dtype, and
//! the only thing kept for the backward pass besides the input is `r`, one fp32 per row.

use rayon::prelude::*;

use crate::elem::Float;

/// Elements per parallel task: enough work to outweigh a task's cost.
const ELEMENTS_PER_TASK: usize = 1 << 14;

/// Rows per task for rows of `width`.
fn rows_per_task(width: usize) -> usize {
    (ELEMENTS_PER_TASK / width.max(1)).max(1)
}

/// Panics unless `len` is whole rows of `width`, with one statistic per row and every other
/// slice as long as the input.
fn check_rows(kernel: &str, len: usize, width: usize, stats: usize, others: &[usize]) {
    assert!(
        width > 0 && len.is_multiple_of(width),
        "{kernel}: rows of {width} in {len}"
    );
    assert_eq!(stats, len / width, "{kernel}: one statistic per row");
    assert!(
        others.iter().all(|&other| other == len),
        "{kernel}: slices of {others:?} for an input of {len}"
    );
}

/// `y = x · r` row by row (rows of `width`), and `r` per row in `inv_rms`.
///
/// # Panics
/// When the slices' lengths disagree with `width`.
pub fn rms_norm<T: Float>(x: &[T], width: usize, eps: f32, y: &mut [T], inv_rms: &mut [f32]) {
    check_rows("rms_norm", x.len(), width, inv_rms.len(), &[y.len()]);
    let rows = rows_per_task(width);
    y.par_chunks_mut(rows * width)
        .zip(inv_rms.par_chunks_mut(rows))
        .zip(x.par_chunks(rows * width))
        .for_each(|((y, inv_rms), x)| {
            for ((y, r), x) in y.chunks_mut(width).zip(inv_rms).zip(x.chunks(width)) {
                let square_sum: f32 = x.iter().map(|v| v.to_f32() * v.to_f32()).sum();
                *r = 1.0 / (square_sum / width as f32 + eps).sqrt();
                for (y, x) in y.iter_mut().zip(x) {
                    *y = T::from_f32(x.to_f32() * *r);
                }
            }
        });
}

/// The gradient of [`rms_norm`]: `dx = r · (dy − x · r² · mean(x · dy))` per row, from the input
/// `x`, the saved `inv_rms` and the output's gradient `dy`.
///
/// # Panics
/// When the slices' lengths disagree with `width`.
pub fn rms_norm_backward<T: Float>(x: &[T], inv_rms: &[f32], dy: &[T], width: usize, dx: &mut [T]) {
    check_rows(
        "rms_norm_backward",
        x.len(),
        width,
        inv_rms.len(),
        &[dy.len(), dx.len()],
    );
    let rows = rows_per_task(width);
    dx.par_chunks_mut(rows * width)
        .zip(inv_rms.par_chunks(rows))
        .zip(x.par_chunks(rows * width).zip(dy.par_chunks(rows * width)))
        .for_each(|((dx, inv_rms), (x, dy))| {
            let rows = dx.chunks_mut(width).zip(inv_rms);
            for ((dx, &r), (x, dy)) in rows.zip(x.chunks(width).zip(dy.chunks(width))) {
                let dot: f32 = x.iter().zip(dy).map(|(x, g)| x.to_f32() * g.to_f32()).sum();
                let coefficient = r * r * dot / width as f32;
                for ((dx, x), dy) in dx.iter_mut().zip(x).zip(dy) {
                    *dx = T::from_f32(r * (dy.to_f32() - x.to_f32() * coefficient));
                }
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::bf16;

    const EPS: f64 = f32::EPSILON as f64;

    fn values(len: usize, seed: u32) -> Vec<f32> {
        (0..len)
            .map(|i| (((i as u32).wrapping_mul(2_654_435_761) ^ seed) % 2001) as f32 / 400.0 - 2.5)
            .collect()
    }

    /// Forward and backward in float64: `y = x·r`, and `dx` by differentiating `Σ y·dy`; with
    /// the size of the terms `dx` is the difference of, per row (what its rounding scales with).
    fn reference(x: &[f64], dy: &[f64], width: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let mut y = Vec::with_capacity(x.len());
        let mut dx = Vec::with_capacity(x.len());
        let mut terms = Vec::with_capacity(x.len() / width);
        for (x, dy) in x.chunks(width).zip(dy.chunks(width)) {
            let r = 1.0 / (x.iter().map(|v| v * v).sum::<f64>() / width as f64 + EPS).sqrt();
            let dot: f64 = x.iter().zip(dy).map(|(a, b)| a * b).sum();
            y.extend(x.iter().map(|v| v * r));
            let (direct, projected): (Vec<f64>, Vec<f64>) = x
                .iter()
                .zip(dy)
                .map(|(x, g)| (r * g, x * r.powi(3) * dot / width as f64))
                .unzip();
            dx.extend(direct.iter().zip(&projected).map(|(a, b)| a - b));
            terms.push(
                direct
                    .iter()
                    .chain(&projected)
                    .fold(0.0f64, |m, v| m.max(v.abs())),
            );
        }
        (y, dx, terms)
    }

    /// Each output within `rounding·|want| + 1e-5·scale`: one rounding to `T` of a value that
    /// fp32 arithmetic got right to a few ulp of the row's largest term.
    fn check<T: Float + std::fmt::Debug>(rounding: f64) {
        for width in [1, 3, 17, 64, 255, 1000] {
            for rows in [1, 5, 300] {
                let x: Vec<T> = values(rows * width, 1)
                    .into_iter()
                    .map(T::from_f32)
                    .collect();
                let dy: Vec<T> = values(rows * width, 7)
                    .into_iter()
                    .map(T::from_f32)
                    .collect();
                let widen = |v: &[T]| v.iter().map(|v| v.to_f32() as f64).collect::<Vec<_>>();
                let (want_y, want_dx, dx_terms) = reference(&widen(&x), &widen(&dy), width);
                let mut y = vec![T::from_f32(f32::NAN); x.len()];
                let mut r = vec![f32::NAN; rows];
                rms_norm(&x, width, EPS as f32, &mut y, &mut r);
                let mut dx = vec![T::from_f32(f32::NAN); x.len()];
                rms_norm_backward(&x, &r, &dy, width, &mut dx);
                let y_scales: Vec<f64> = want_y
                    .chunks(width)
                    .map(|row| row.iter().fold(0.0f64, |m, v| m.max(v.abs())))
                    .collect();
                let checks = [
                    ("y", &y, &want_y, &y_scales),
                    ("dx", &dx, &want_dx, &dx_terms),
                ];
                for (name, got, want, scales) in checks {
                    let by_row = got.chunks(width).zip(want.chunks(width)).zip(scales);
                    for (row, ((got, want), &scale)) in by_row.enumerate() {
                        for (g, w) in got.iter().zip(want) {
                            assert!(
                                (g.to_f32() as f64 - w).abs() <= rounding * w.abs() + 1e-5 * scale,
                                "{name} {rows}×{width} row {row}: {g:?} vs {w}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn fp32_matches_float64() {
        check::<f32>(0.0);
    }

    #[test]
    fn bf16_matches_float64_to_one_rounding() {
        // Inputs are exact bf16 values; the output rounds once: at most 2⁻⁸ relative.
        check::<bf16>(2f64.powi(-8));
    }

    #[test]
    fn a_zero_row_stays_finite() {
        let x = [0.0f32; 4];
        let (mut y, mut r) = ([f32::NAN; 4], [0.0]);
        rms_norm(&x, 4, EPS as f32, &mut y, &mut r);
        assert_eq!(y, [0.0; 4]);
        assert!(r[0].is_finite());
    }
}
