//! Weightless RMSNorm.

use brainfloat_precision::ACCUMULATION_DTYPE;
use burn::tensor::{FloatDType, Tensor};

/// PyTorch's `F.rms_norm` default eps for fp32 (machine epsilon), used for every input dtype.
pub const RMS_NORM_EPS: f64 = f32::EPSILON as f64;

/// `x / sqrt(mean(x²) + eps)` over the last axis, without a weight. Computed in fp32 and rounded
/// to the input's dtype once, as PyTorch does for bf16.
pub fn rms_norm<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let dtype = FloatDType::from(x.dtype());
    let x = x.cast(ACCUMULATION_DTYPE);
    let inv_rms = x
        .clone()
        .square()
        .mean_dim(D - 1)
        .add_scalar(RMS_NORM_EPS)
        .sqrt()
        .recip();
    (x * inv_rms).cast(dtype)
}
