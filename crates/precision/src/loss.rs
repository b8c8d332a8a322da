//! The record's loss: soft-capped logits, cross-entropy in fp32.

use burn::tensor::activation::log_softmax;
use burn::tensor::{FloatDType, Int, Tensor};

/// The record's logit soft-cap: `cap · tanh(logits / cap)`, computed in the logits' dtype.
pub fn softcap<const D: usize>(logits: Tensor<D>, cap: f64) -> Tensor<D> {
    logits.div_scalar(cap).tanh().mul_scalar(cap)
}

/// Mean cross-entropy of `logits` `[N, V]` (any float dtype) against `targets` `[N]`, computed in
/// fp32 whatever the logits' dtype: the logits are cast once, then a max-shifted log-softmax
/// keeps it stable for any magnitude. Returns a one-element fp32 tensor.
pub fn cross_entropy_fp32(logits: Tensor<2>, targets: Tensor<1, Int>) -> Tensor<1> {
    let logits = logits.cast(FloatDType::F32);
    let log_probs = log_softmax(logits, 1);
    let picked = log_probs.gather(1, targets.unsqueeze_dim(1));
    picked.mean().neg()
}

/// The record's loss: optional soft-cap in the logits' dtype, then fp32 cross-entropy over all
/// positions. `logits` `[B, T, V]`, `targets` `[B, T]`.
pub fn softcapped_cross_entropy(
    logits: Tensor<3>,
    targets: Tensor<2, Int>,
    cap: Option<f64>,
) -> Tensor<1> {
    let [batch, seq, vocab] = logits.dims();
    let logits = match cap {
        Some(cap) => softcap(logits, cap),
        None => logits,
    };
    cross_entropy_fp32(
        logits.reshape([batch * seq, vocab]),
        targets.reshape([batch * seq]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{DType, Device, TensorData};

    /// Cross-entropy in float64, written out: `logsumexp(z) − z[target]`, max-shifted.
    fn reference(logits: &[f64], vocab: usize, targets: &[usize], cap: Option<f64>) -> f64 {
        let rows = logits.chunks(vocab).zip(targets).map(|(row, &target)| {
            let z: Vec<f64> = row
                .iter()
                .map(|&x| cap.map_or(x, |c| c * (x / c).tanh()))
                .collect();
            let max = z.iter().cloned().fold(f64::MIN, f64::max);
            let lse = max + z.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
            lse - z[target]
        });
        rows.sum::<f64>() / targets.len() as f64
    }

    fn loss(logits: &[f32], dtype: DType, targets: &[i64], cap: Option<f64>) -> (f64, DType) {
        let device = Device::flex();
        let vocab = logits.len() / targets.len();
        let logits = Tensor::<3>::from_data(
            TensorData::new(logits.to_vec(), [1, targets.len(), vocab]),
            (&device, dtype),
        );
        let targets = Tensor::<2, Int>::from_data(
            TensorData::new(targets.to_vec(), [1, targets.len()]),
            &device,
        );
        let loss = softcapped_cross_entropy(logits, targets, cap);
        let dtype = loss.dtype();
        (loss.into_scalar::<f32>() as f64, dtype)
    }

    #[test]
    fn matches_float64_and_is_fp32_for_any_logit_dtype() {
        let logits = [0.5f32, -1.25, 3.0, 0.0, 2.0, 2.0, -4.0, 1.5];
        let targets = [2i64, 0];
        let as_f64: Vec<f64> = logits.iter().map(|&x| x as f64).collect();
        for cap in [None, Some(30.0), Some(2.0)] {
            let want = reference(&as_f64, 4, &[2, 0], cap);
            let (fp32, dtype) = loss(&logits, DType::F32, &targets, cap);
            assert_eq!(dtype, DType::F32);
            assert!(
                (fp32 - want).abs() / want <= 1e-6,
                "{cap:?}: {fp32} vs {want}"
            );
            // These logits are exact in bf16; only the bf16 soft-cap rounds.
            let (bf16, dtype) = loss(&logits, DType::BF16, &targets, cap);
            assert_eq!(dtype, DType::F32);
            assert!(
                (bf16 - want).abs() / want <= 1e-2,
                "{cap:?}: {bf16} vs {want}"
            );
        }
    }

    #[test]
    fn stays_finite_and_exact_for_huge_logits() {
        // exp(1e4) overflows any float; the max shift keeps the loss exact.
        let logits = [1.0e4f32, 0.0, -1.0e4, 1.0e4 - 2.0];
        let (value, _) = loss(&logits, DType::F32, &[3], None);
        let want = reference(&logits.map(|x| x as f64), 4, &[3], None);
        assert!(value.is_finite());
        assert!((value - want).abs() <= 1e-5, "{value} vs {want}");
        assert!((want - (2.0 + (1.0 + (-2.0f64).exp()).ln())).abs() < 1e-12);
    }

    #[test]
    fn softcap_bounds_logits_by_the_cap() {
        let device = Device::flex();
        let x = Tensor::<1>::from_floats([0.0, 30.0, -300.0, 1.0e6], &device);
        let y = softcap(x, 30.0).into_data().try_to_vec::<f32>().unwrap();
        let want = [0.0, 30.0 * 1f64.tanh(), -30.0 * 10f64.tanh(), 30.0];
        for (a, b) in y.iter().zip(want) {
            assert!((*a as f64 - b).abs() <= 1e-5, "{a} vs {b}");
        }
    }
}
