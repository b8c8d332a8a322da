//! Causal scaled dot-product attention whose two products run on the kernels.

use burn::backend::DispatchDevice;
use burn::tensor::activation::softmax;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, DType, Device, FloatDType, Tensor};

use crate::{KernelBackend, matmul};
use burn::backend::Dispatch;

/// Whether `device` runs brainfloat's kernels (flex, with or without autodiff).
pub fn runs_kernels(device: &Device) -> bool {
    matches!(
        device.as_dispatch().clone().inner(),
        DispatchDevice::Flex(_)
    )
}

/// `softmax(q·kᵀ/√d + causal mask)·v` over `[B, H, T, d]` (queries aligned with the last keys).
///
/// On flex with bf16 operands it is written out so that both products run as native bf16
/// GEMMs ([`matmul`]) around a fused causal softmax (fp32 inside, one pass per row each way);
/// Burn's `attention` would widen the products to fp32, and under autodiff falls back to
/// unfused ops anyway. Elsewhere (libtorch's SDPA, fp32) it is Burn's `attention`.
pub fn causal_attention(query: Tensor<4>, key: Tensor<4>, value: Tensor<4>) -> Tensor<4> {
    if query.dtype() != DType::BF16 || !runs_kernels(&query.device()) {
        let options = AttentionModuleOptions {
            scale: None,
            softcap: None,
            is_causal: true,
        };
        return attention(query, key, value, None, None, options);
    }
    let head_dim = query.dims()[3];
    let scale = 1.0 / (head_dim as f64).sqrt();
    let scores = matmul(query, key.swap_dims(2, 3));
    let probabilities = Tensor::from_dispatch(
        <Dispatch as KernelBackend>::causal_softmax(scores.clone().into_dispatch(), scale)
            .unwrap_or_else(|| masked_softmax(scores, scale).into_dispatch()),
    );
    matmul(probabilities, value)
}

/// [`KernelBackend::causal_softmax`] from Burn's ops: fp32 inside, the scores' dtype out.
fn masked_softmax(scores: Tensor<4>, scale: f64) -> Tensor<4> {
    let dtype = FloatDType::from(scores.dtype());
    let [batch, heads, queries, keys] = scores.dims();
    let future = Tensor::<2, Bool>::tril_mask(
        [queries, keys],
        keys as i64 - queries as i64,
        &scores.device(),
    )
    .unsqueeze::<4>()
    .expand([batch, heads, queries, keys]);
    let scores = scores.cast(FloatDType::F32).mul_scalar(scale);
    softmax(scores.mask_fill(future, f32::NEG_INFINITY), 3).cast(dtype)
}
