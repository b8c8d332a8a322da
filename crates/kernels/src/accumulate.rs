//! Sums kept in fp32 of parts in any element type: `sum += part`, widened as it is read, in
//! parallel (the partial gradients of a chunked product add up here).

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

/// `part` widened to fp32 (exactly), in parallel.
pub fn widen<T: Float>(part: &[T]) -> Vec<f32> {
    let mut out = vec![0.0f32; part.len()];
    accumulate(&mut out, part);
    out
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
}
