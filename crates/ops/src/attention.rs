//! Causal scaled dot-product attention: one op ([`KernelBackend::causal_attention`]) with a
//! backward of its own on every backend.

use burn::backend::Dispatch;
use burn::tensor::Tensor;

use crate::KernelBackend;

/// `softmax(q·kᵀ/√d + causal mask)·v` over `[B, H, Tq, d]` queries and `[B, H, Tk, d]` keys
/// and values, the queries aligned with the last keys (query `i` sees keys up to
/// `i + Tk − Tq`: a generation step's new positions after the cached ones). Differentiable.
///
/// The scores are the products' fp32 accumulators and the softmax runs on them, as in
/// PyTorch's SDPA: on flex both products run as native bf16 GEMMs (the first one writing
/// fp32) around a fused causal softmax, one pass per row each way; on libtorch it is its fused
/// `scaled_dot_product_attention` with its own backward (flash attention on a GPU); elsewhere
/// the same composition from Burn's ops. No backend keeps Burn's graph of a dozen unfused ops
/// and their `T × T` temporaries for the backward.
pub fn causal_attention(query: Tensor<4>, key: Tensor<4>, value: Tensor<4>) -> Tensor<4> {
    let (output, _) = <Dispatch as KernelBackend>::causal_attention(
        query.into_dispatch(),
        key.into_dispatch(),
        value.into_dispatch(),
        false,
    );
    Tensor::from_dispatch(output)
}
