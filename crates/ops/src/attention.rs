//! Causal scaled dot-product attention: one op ([`KernelBackend::causal_attention`]) with a
//! backward of its own on every backend.

use burn::backend::Dispatch;
use burn::tensor::Tensor;

use crate::KernelBackend;

/// `softmax(q·kᵀ/√d + causal mask)·v` over `[B, H, Tq, d]` queries and `[B, H, Tk, d]` keys
/// and values, the queries aligned with the last keys (query `i` sees keys up to
/// `i + Tk − Tq`: a generation step's new positions after the cached ones). Differentiable.
///
/// In bf16 it rounds where PyTorch's `scaled_dot_product_attention` rounds: on flex by
/// `brainfloat_kernels::causal_attention` (PyTorch's CPU flash kernel's scheme: fp32 scores,
/// bf16 unnormalised exponentials for the product with the values, fp32 row sums; its backward
/// likewise), keeping nothing for the backward but the output; on libtorch by PyTorch's own
/// fused kernel with its own backward (flash attention on a GPU). Elsewhere, and in fp32, the
/// products run in the inputs' dtype around a causal softmax computed in fp32, which keeps its
/// fp32 probabilities for the backward. No backend keeps Burn's graph of a dozen unfused ops
/// and their `T × T` temporaries.
pub fn causal_attention(query: Tensor<4>, key: Tensor<4>, value: Tensor<4>) -> Tensor<4> {
    let (output, _) = <Dispatch as KernelBackend>::causal_attention(
        query.into_dispatch(),
        key.into_dispatch(),
        value.into_dispatch(),
        false,
    );
    Tensor::from_dispatch(output)
}
