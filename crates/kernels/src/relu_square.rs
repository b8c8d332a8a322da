//! The record's MLP activation `relu(x)²` and its backward `dy · 2·relu(x)`, one pass each; the
//! same single rounding per output as the two tensor ops (relu is exact, doubling is exact).

use rayon::prelude::*;

use crate::elem::Float;

/// Elements per parallel task.
const ELEMENTS_PER_TASK: usize = 1 << 15;

/// `y = relu(x)²`.
///
/// # Panics
/// When the lengths differ.
pub fn relu_square<T: Float>(x: &[T], y: &mut [T]) {
    assert_eq!(x.len(), y.len(), "relu_square: lengths differ");
    y.par_chunks_mut(ELEMENTS_PER_TASK)
        .zip(x.par_chunks(ELEMENTS_PER_TASK))
        .for_each(|(y, x)| {
            for (y, x) in y.iter_mut().zip(x) {
                let r = x.to_f32().max(0.0);
                *y = T::from_f32(r * r);
            }
        });
}

/// `dx = dy · 2·relu(x)`, the gradient of [`relu_square`].
///
/// # Panics
/// When the lengths differ.
pub fn relu_square_backward<T: Float>(x: &[T], dy: &[T], dx: &mut [T]) {
    assert!(
        x.len() == dy.len() && x.len() == dx.len(),
        "relu_square_backward: lengths differ"
    );
    dx.par_chunks_mut(ELEMENTS_PER_TASK)
        .zip(
            x.par_chunks(ELEMENTS_PER_TASK)
                .zip(dy.par_chunks(ELEMENTS_PER_TASK)),
        )
        .for_each(|(dx, (x, dy))| {
            for ((dx, x), dy) in dx.iter_mut().zip(x).zip(dy) {
                *dx = T::from_f32(dy.to_f32() * (2.0 * x.to_f32().max(0.0)));
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::bf16;

    #[test]
    fn matches_float64_and_rounds_once() {
        let x: Vec<f32> = (0..1001).map(|i| (i as f32 - 500.0) / 37.0).collect();
        let dy: Vec<f32> = (0..1001)
            .map(|i| ((i * 7) % 13) as f32 / 5.0 - 1.0)
            .collect();
        let (mut y, mut dx) = (vec![0.0f32; 1001], vec![0.0f32; 1001]);
        relu_square(&x, &mut y);
        relu_square_backward(&x, &dy, &mut dx);
        for i in 0..x.len() {
            let r = (x[i] as f64).max(0.0);
            assert!(
                (y[i] as f64 - r * r).abs() <= 1e-6 * (r * r).max(1.0),
                "{i}"
            );
            assert!((dx[i] as f64 - dy[i] as f64 * 2.0 * r).abs() <= 1e-6 * (2.0 * r).max(1.0));
        }
        let xb: Vec<bf16> = x.iter().map(|v| bf16::from_f32(*v)).collect();
        let mut yb = vec![bf16::ZERO; xb.len()];
        relu_square(&xb, &mut yb);
        for (x, y) in xb.iter().zip(&yb) {
            let r = x.to_f32().max(0.0);
            assert_eq!(*y, bf16::from_f32(r * r), "one rounding of an exact square");
        }
    }
}
