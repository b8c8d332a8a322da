//! Sums kept in fp32 of parts in any element type: `sum += part`, widened as it is read, in
//! parallel (the partial gradients of a chunked product add up here); and the optimizer's
//! elementwise updates, `a·y + b·x` and `x · factor`, rounded as one tensor op at a time
//! rounds them.

use rayon::prelude::*;

use crate::elem::Float;

/// Elements per parallel task.
const ELEMENTS_PER_TASK: usize = 1 << 15;

/// `sum[i] += part[i]` in fp32.
///
/// # Panics
/// When the lengths differ.
pub fn accumulate<T: Float>(sum: &mut [f32], part: &[T]) {
    assert_eq!(sum.len(), part.len(), "accumulate: lengths differ");
    sum.par_chunks_mut(ELEMENTS_PER_TASK)
        .zip(part.par_chunks(ELEMENTS_PER_TASK))
        .for_each(|(sum, part)| {
            for (s, p) in sum.iter_mut().zip(part) {
                *s += p.to_f32();
            }
        });
}

/// `y[i] ← a·y[i] + b·x[i]` in `y`'s type, in parallel: `x[i]` rounded to `y`'s type, each
/// product rounded to it (a factor of 1 leaves its term as it is), the sum rounded once. These
/// are the roundings of a cast, two scalings and an addition done one tensor op at a time,
/// in one pass over `y` and `x`.
///
/// # Panics
/// When the lengths differ.
pub fn axpby<T: Float, X: Float>(y: &mut [T], x: &[X], a: f32, b: f32) {
    assert_eq!(y.len(), x.len(), "axpby: lengths differ");
    let term = |value: f32, factor: f32| match factor {
        1.0 => value,
        _ => T::round(value * factor),
    };
    y.par_chunks_mut(ELEMENTS_PER_TASK)
        .zip(x.par_chunks(ELEMENTS_PER_TASK))
        .for_each(|(y, x)| {
            for (y, x) in y.iter_mut().zip(x) {
                let x = T::round(x.to_f32());
                *y = T::from_f32(term(y.to_f32(), a) + term(x, b));
            }
        });
}

/// `values[i] ← values[i] · factor`, the product in fp32 rounded once to the values' type, in
/// parallel (PyTorch's product of a tensor and a Python number).
pub fn scale<T: Float>(values: &mut [T], factor: f32) {
    values.par_chunks_mut(ELEMENTS_PER_TASK).for_each(|values| {
        for value in values {
            *value = T::from_f32(value.to_f32() * factor);
        }
    });
}

/// `part` widened to fp32 (exactly), in parallel.
pub fn widen<T: Float>(part: &[T]) -> Vec<f32> {
    let mut out = vec![0.0f32; part.len()];
    accumulate(&mut out, part);
    out
}

/// `Σ v²` in float64, each square as fp32 `v·v` (as Adam's kernel sums a gradient's squares), in
/// parallel: a tensor's squared L2 norm without a widened copy of it.
pub fn square_sum<T: Float>(values: &[T]) -> f64 {
    values
        .par_chunks(ELEMENTS_PER_TASK)
        .map(square_sum_of)
        .collect::<Vec<f64>>()
        .into_iter()
        .sum()
}

/// `Σ g²` in float64 over eight interleaved partial sums (each square as the update's fp32 `g·g`).
#[inline(always)]
pub(crate) fn square_sum_of<G: Float>(grad: &[G]) -> f64 {
    const LANES: usize = 8;
    let square = |g: &G| {
        let g = g.to_f32();
        (g * g) as f64
    };
    let mut lanes = [0.0f64; LANES];
    let chunks = grad.chunks_exact(LANES);
    let tail: f64 = chunks.remainder().iter().map(square).sum();
    for chunk in chunks {
        for (lane, g) in lanes.iter_mut().zip(chunk) {
            *lane += square(g);
        }
    }
    lanes.iter().sum::<f64>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::bf16;

    #[test]
    fn adds_widened_parts_exactly() {
        let part: Vec<bf16> = (0..100_001)
            .map(|i| bf16::from_f32(i as f32 * 0.5))
            .collect();
        let mut sum = widen(&part);
        accumulate(&mut sum, &part);
        for (i, s) in sum.iter().enumerate() {
            assert_eq!(*s, 2.0 * part[i].to_f32(), "{i}");
        }
    }

    /// The parallel sum in order of chunks agrees with float64 summing fp32 squares, for bf16
    /// and fp32 and lengths around the chunk size and the lanes.
    #[test]
    fn square_sum_matches_float64() {
        for n in [
            0,
            7,
            8,
            9,
            ELEMENTS_PER_TASK - 1,
            ELEMENTS_PER_TASK + 13,
            3 * ELEMENTS_PER_TASK,
        ] {
            let values: Vec<f32> = (0..n)
                .map(|i| ((i * 7919 % 1000) as f32 - 500.0) * 1e-3)
                .collect();
            let want: f64 = values.iter().map(|&v| (v * v) as f64).sum();
            let got = square_sum(&values);
            assert!(
                (got - want).abs() <= 1e-12 * want.max(1.0),
                "fp32 {n}: {got} vs {want}"
            );
            let halves: Vec<bf16> = values.iter().map(|&v| bf16::from_f32(v)).collect();
            let want: f64 = halves
                .iter()
                .map(|v| (v.to_f32() * v.to_f32()) as f64)
                .sum();
            let got = square_sum(&halves);
            assert!(
                (got - want).abs() <= 1e-12 * want.max(1.0),
                "bf16 {n}: {got} vs {want}"
            );
        }
    }
}
