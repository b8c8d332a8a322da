//! Weightless RMSNorm.

use burn::tensor::Tensor;

/// PyTorch's `F.rms_norm` default eps for fp32 (machine epsilon), used for every input dtype.
pub const RMS_NORM_EPS: f64 = f32::EPSILON as f64;

/// `x / sqrt(mean(x²) + eps)` over the last axis, without a weight. Computed in fp32 and rounded
/// to the input's dtype once, as PyTorch does for bf16; fused on flex, where the backward keeps
/// the input and one fp32 statistic per row ([`brainfloat_ops::rms_norm`]).
pub fn rms_norm<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    brainfloat_ops::rms_norm(x, RMS_NORM_EPS)
}
