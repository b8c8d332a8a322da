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

/// Whether `device` keeps tensors in CPU memory that brainfloat's kernels read and update in
/// place — stochastic rounding, Kahan, the fused Adam step, the fused loss, fp32 accumulation:
/// flex, and libtorch on the CPU (whose other ops stay libtorch's).
pub fn host_kernels(device: &Device) -> bool {
    match device.as_dispatch().clone().inner() {
        DispatchDevice::Flex(_) => true,
        #[cfg(feature = "tch")]
        #[allow(deprecated)] // burn-tch's device: its CPU is the one these kernels serve
        DispatchDevice::LibTorch(burn::backend::libtorch::LibTorchDevice::Cpu) => true,
        _ => false,
    }
}

/// `softmax(q·kᵀ/√d + causal mask)·v` over `[B, H, Tq, d]` queries and `[B, H, Tk, d]` keys
/// and values, the queries aligned with the last keys (query `i` sees keys up to
/// `i + Tk − Tq`: a generation step's new positions after the cached ones).
///
/// On flex with bf16 operands it is written out so that both products run as native bf16
/// GEMMs ([`matmul`]) around a fused causal softmax (fp32 inside, one pass per row each way);
/// Burn's `attention` would widen the products to fp32, and under autodiff falls back to
/// unfused ops anyway. Elsewhere, when `Tq = Tk`, it is one fused kernel where the backend
/// has one with its own backward ([`KernelBackend::causal_attention`]: libtorch's SDPA, flash
/// attention on a GPU, where Burn's autodiff would keep the `T × T` scores of a dozen unfused
/// ops), else Burn's `attention`; with fewer queries than keys the mask is explicit, because
/// backends align `is_causal` differently (libtorch from the top-left, flex from the
/// bottom-right).
pub fn causal_attention(query: Tensor<4>, key: Tensor<4>, value: Tensor<4>) -> Tensor<4> {
    let fused = query.dtype() == DType::BF16 && runs_kernels(&query.device());
    let (queries, keys) = (query.dims()[2], key.dims()[2]);
    if !fused && queries == keys {
        // One kernel with its own backward where the backend has it (libtorch: no T × T
        // scores kept for the backward); Burn's attention otherwise.
        let attended = <Dispatch as KernelBackend>::causal_attention(
            query.clone().into_dispatch(),
            key.clone().into_dispatch(),
            value.clone().into_dispatch(),
            false,
        );
        if let Some((output, _)) = attended {
            return Tensor::from_dispatch(output);
        }
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
    let probabilities = if fused {
        Tensor::from_dispatch(
            <Dispatch as KernelBackend>::causal_softmax(scores.clone().into_dispatch(), scale)
                .unwrap_or_else(|| masked_softmax(scores, scale).into_dispatch()),
        )
    } else {
        masked_softmax(scores, scale)
    };
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
