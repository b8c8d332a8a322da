//! Rotary position embeddings over `[batch, positions, heads, head_dim]` rows, half-split
//! layout: with `x = [x1, x2]`, `y = [x1·cos + x2·sin, −x1·sin + x2·cos]`, and the backward
//! (the transposed rotation). Each product and sum rounds to the element type, as the same
//! computation written with one tensor op per step does.

use rayon::prelude::*;

use crate::elem::Float;

/// Rows (of `head_dim`) per parallel task.
const ROWS_PER_TASK: usize = 256;

/// Rotates (`inverse = false`) or rotates back (`inverse = true`, the gradient) every row of
/// `x`: row `r` is position `(r / heads) % positions`; `cos` and `sin` are `[positions,
/// head_dim / 2]` in `T`.
///
/// # Panics
/// When the lengths disagree with the dimensions or `head_dim` is odd.
pub fn rotary<T: Float>(
    x: &[T],
    cos: &[T],
    sin: &[T],
    (positions, heads, head_dim): (usize, usize, usize),
    inverse: bool,
    y: &mut [T],
) {
    let half = head_dim / 2;
    assert!(
        head_dim.is_multiple_of(2) && head_dim > 0,
        "rotary: odd head width {head_dim}"
    );
    assert!(
        x.len().is_multiple_of(positions * heads * head_dim) && y.len() == x.len(),
        "rotary: lengths"
    );
    assert!(
        cos.len() == positions * half && sin.len() == cos.len(),
        "rotary: table size"
    );
    let task = ROWS_PER_TASK * head_dim;
    y.par_chunks_mut(task)
        .zip(x.par_chunks(task))
        .enumerate()
        .for_each(|(t, (y, x))| {
            for (r, (y, x)) in y.chunks_mut(head_dim).zip(x.chunks(head_dim)).enumerate() {
                let position = ((t * ROWS_PER_TASK + r) / heads) % positions;
                let (cos, sin) = (
                    &cos[position * half..][..half],
                    &sin[position * half..][..half],
                );
                let (x1, x2) = x.split_at(half);
                let (y1, y2) = y.split_at_mut(half);
                let inputs = x1.iter().zip(x2).zip(cos.iter().zip(sin));
                for ((y1, y2), ((a, b), (c, s))) in y1.iter_mut().zip(y2).zip(inputs) {
                    let (a, b, c) = (a.to_f32(), b.to_f32(), c.to_f32());
                    let s = if inverse { -s.to_f32() } else { s.to_f32() };
                    *y1 = T::from_f32(T::round(a * c) + T::round(b * s));
                    *y2 = T::from_f32(T::round(a * -s) + T::round(b * c));
                }
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::bf16;

    #[test]
    fn rotates_and_rotates_back_like_float64() {
        let (batch, positions, heads, head_dim) = (2, 5, 3, 8);
        let half = head_dim / 2;
        let n = batch * positions * heads * head_dim;
        let x: Vec<f32> = (0..n).map(|i| ((i * 37) % 19) as f32 / 7.0 - 1.3).collect();
        let angle = |p: usize, i: usize| p as f64 / 10f64.powf(2.0 * i as f64 / head_dim as f64);
        let table = |f: fn(f64) -> f64| -> Vec<f32> {
            (0..positions * half)
                .map(|j| f(angle(j / half, j % half)) as f32)
                .collect()
        };
        let (cos, sin) = (table(f64::cos), table(f64::sin));
        let mut y = vec![0.0f32; n];
        rotary(&x, &cos, &sin, (positions, heads, head_dim), false, &mut y);
        let mut back = vec![0.0f32; n];
        rotary(
            &y,
            &cos,
            &sin,
            (positions, heads, head_dim),
            true,
            &mut back,
        );
        for r in 0..n / head_dim {
            let p = (r / heads) % positions;
            for i in 0..half {
                let (a, b) = (
                    x[r * head_dim + i] as f64,
                    x[r * head_dim + half + i] as f64,
                );
                let (c, s) = (angle(p, i).cos(), angle(p, i).sin());
                assert!((y[r * head_dim + i] as f64 - (a * c + b * s)).abs() < 1e-6);
                assert!((y[r * head_dim + half + i] as f64 - (-a * s + b * c)).abs() < 1e-6);
                // The rotation is orthogonal: rotating back restores x.
                assert!((back[r * head_dim + i] as f64 - a).abs() < 1e-5);
                assert!((back[r * head_dim + half + i] as f64 - b).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn bf16_rounds_each_product_and_sum() {
        let x = [bf16::from_f32(1.0 + 2f32.powi(-7)), bf16::from_f32(3.0)];
        let (cos, sin) = ([bf16::from_f32(0.75)], [bf16::from_f32(1.0 / 3.0)]);
        let mut y = [bf16::ZERO; 2];
        rotary(&x, &cos, &sin, (1, 1, 2), false, &mut y);
        let r = |v: f32| bf16::from_f32(v).to_f32();
        let (a, b, c, s) = (
            x[0].to_f32(),
            x[1].to_f32(),
            cos[0].to_f32(),
            sin[0].to_f32(),
        );
        assert_eq!(y[0].to_f32(), r(r(a * c) + r(b * s)));
        assert_eq!(y[1].to_f32(), r(r(a * -s) + r(b * c)));
    }
}
