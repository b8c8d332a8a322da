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
