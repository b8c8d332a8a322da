//! The backend extension: what each backend runs for brainfloat's ops.

// burn-tch is deprecated upstream; naming its backend here (the extension must route it) is
// the only use outside `brainfloat-backend`.
#![cfg_attr(feature = "tch", allow(deprecated))]

use brainfloat_kernels::AdamStep;
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Backend, FloatDType, Scalar, TensorMetadata, backend_extension};

/// What [`KernelBackend::causal_attention`] keeps for its backward: query, key, value and
/// output as the backend's own handles. (The trait spells the tuple out: the extension macro
/// reads its signatures as written.)
pub(crate) type SavedAttention<B> = (
    FloatTensor<B>,
    FloatTensor<B>,
    FloatTensor<B>,
    FloatTensor<B>,
);

/// brainfloat's ops as a Burn backend extension. Flex runs the kernels (`crate::flex`);
/// libtorch on the CPU runs the optimizer's kernels and the fused loss on its own buffers
/// (`crate::libtorch`) and keeps its ops for the rest; every other backend uses the default
/// bodies, written with Burn's own ops; `Autodiff` adds the hand-written backward passes
/// ([`crate::autodiff`]).
#[backend_extension(
    Flex,
    Autodiff,
    LibTorch: cfg(feature = "tch"),
    Cube: cfg(feature = "cuda")
)]
pub trait KernelBackend: Backend {
    /// `lhs [.., m, k] · rhs [.., k, n]`.
    fn matmul(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::float_matmul(lhs, rhs)
    }

    /// Weightless RMSNorm over the last dimension, in `x`'s dtype.
    fn rms_norm(x: FloatTensor<Self>, eps: f64) -> FloatTensor<Self> {
        Self::rms_norm_with_stats(x, eps).0
    }

    /// [`rms_norm`](Self::rms_norm) and the fp32 statistic `r = 1/√(mean(x²) + eps)` per row
    /// (shape `[.., 1]`), which its backward needs.
    fn rms_norm_with_stats(
        x: FloatTensor<Self>,
        eps: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (dtype, last) = (FloatDType::from(x.dtype()), x.rank() - 1);
        let x = Self::float_cast(x, FloatDType::F32);
        let mean_square = Self::float_mean_dim(Self::float_mul(x.clone(), x.clone()), last);
        let inv_rms = Self::float_recip(Self::float_sqrt(Self::float_add_scalar(
            mean_square,
            Scalar::from(eps),
        )));
        let y = Self::float_cast(Self::float_mul(x, inv_rms.clone()), dtype);
        (y, inv_rms)
    }

    /// The gradient of [`rms_norm`](Self::rms_norm) with respect to `x`, from `x`, its saved
    /// statistic and the output's gradient: `r · (dy − x · r² · mean(x · dy))`, in `x`'s dtype.
    fn rms_norm_backward(
        x: FloatTensor<Self>,
        inv_rms: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let (dtype, last) = (FloatDType::from(x.dtype()), x.rank() - 1);
        let x = Self::float_cast(x, FloatDType::F32);
        let grad = Self::float_cast(grad, FloatDType::F32);
        let mean_dot = Self::float_mean_dim(Self::float_mul(x.clone(), grad.clone()), last);
        let coefficient =
            Self::float_mul(Self::float_mul(inv_rms.clone(), inv_rms.clone()), mean_dot);
        let dx = Self::float_sub(grad, Self::float_mul(x, coefficient));
        Self::float_cast(Self::float_mul(dx, inv_rms), dtype)
    }

    /// `loss` with `grad` attached as the gradient of `tracked`: the value of `loss`, whose
    /// backward hands `grad × (the gradient reaching the result)` to `tracked` and passes that
    /// gradient on to `loss`. Without autodiff there is nothing to attach: `loss` itself.
    fn attach_gradient(
        loss: FloatTensor<Self>,
        _tracked: FloatTensor<Self>,
        _grad: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        loss
    }

    /// `sum + part` in fp32: partial results of any float dtype added up without rounding
    /// (`sum` is fp32). `None` where the backend has no fused kernel (the caller casts and adds
    /// with Burn's ops).
    fn accumulate_f32(
        _sum: FloatTensor<Self>,
        _part: FloatTensor<Self>,
    ) -> Option<FloatTensor<Self>> {
        None
    }

    /// `part` widened to fp32, the first term of [`accumulate_f32`](Self::accumulate_f32).
    fn widen_f32(_part: FloatTensor<Self>) -> Option<FloatTensor<Self>> {
        None
    }

    /// `softmax(scale · scores)` over the last dimension of `scores` `[.., queries, keys]` with
    /// the causal mask (query `i` sees keys up to `i + keys − queries`), fp32 inside, in the
    /// scores' dtype. `None` where the backend has no fused kernel (the caller composes it from
    /// Burn's ops).
    fn causal_softmax(_scores: FloatTensor<Self>, _scale: f64) -> Option<FloatTensor<Self>> {
        None
    }

    /// [`causal_softmax`](Self::causal_softmax) and the same probabilities in fp32, which its
    /// backward needs.
    fn causal_softmax_with_probs(
        _scores: FloatTensor<Self>,
        _scale: f64,
    ) -> Option<(FloatTensor<Self>, FloatTensor<Self>)> {
        None
    }

    /// The gradient of [`causal_softmax`](Self::causal_softmax)'s input from its fp32
    /// probabilities and its output's gradient: `scale · P ⊙ (dP − Σ_j dP_j·P_j)`.
    fn causal_softmax_backward(
        _probs: FloatTensor<Self>,
        _grad: FloatTensor<Self>,
        _scale: f64,
    ) -> Option<FloatTensor<Self>> {
        None
    }

    /// Causal self-attention `softmax(q·kᵀ/√d + mask)·v` over `[B, H, T, d]` queries, keys
    /// and values of one length `T`, as one kernel with a backward of its own (libtorch's
    /// `scaled_dot_product_attention`: flash attention on a GPU, which keeps no `T × T` scores
    /// for the backward). With `with_backward`, also what [`causal_attention_backward`]
    /// needs, opaque to the caller: `(q, k, v, output)` as that backward's own handles (under
    /// `Autodiff` the flag is ignored: whether the inputs are tracked decides). `None` where
    /// the backend has no such kernel (the caller composes attention from Burn's ops).
    ///
    /// [`causal_attention_backward`]: Self::causal_attention_backward
    #[allow(clippy::type_complexity)]
    fn causal_attention(
        _query: FloatTensor<Self>,
        _key: FloatTensor<Self>,
        _value: FloatTensor<Self>,
        _with_backward: bool,
    ) -> Option<(
        FloatTensor<Self>,
        Option<(
            FloatTensor<Self>,
            FloatTensor<Self>,
            FloatTensor<Self>,
            FloatTensor<Self>,
        )>,
    )> {
        None
    }

    /// The gradients of [`causal_attention`](Self::causal_attention)'s query, key and value
    /// from what its forward saved and the output's gradient.
    fn causal_attention_backward(
        _query: FloatTensor<Self>,
        _key: FloatTensor<Self>,
        _value: FloatTensor<Self>,
        _output: FloatTensor<Self>,
        _grad: FloatTensor<Self>,
    ) -> Option<(FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>)> {
        None
    }

    /// Rotary embeddings of `x` `[batch, positions, heads, head_dim]` (half-split) with the
    /// tables `cos` and `sin` `[1, positions, 1, head_dim / 2]`, all one dtype; `inverse`
    /// rotates back (the gradient). `None` where the backend has no fused kernel (the caller
    /// composes it from Burn's ops).
    fn rotary(
        _x: FloatTensor<Self>,
        _cos: FloatTensor<Self>,
        _sin: FloatTensor<Self>,
        _inverse: bool,
    ) -> Option<FloatTensor<Self>> {
        None
    }

    /// The MLP activation `relu(x)²`. `None` where the backend has no fused kernel (the caller
    /// composes it from Burn's ops).
    fn relu_square(_x: FloatTensor<Self>) -> Option<FloatTensor<Self>> {
        None
    }

    /// The gradient of [`relu_square`](Self::relu_square): `grad · 2·relu(x)`.
    fn relu_square_backward(
        _x: FloatTensor<Self>,
        _grad: FloatTensor<Self>,
    ) -> Option<FloatTensor<Self>> {
        None
    }

    /// The record's loss over logits rows `[N, V]` against `targets` `[N]`, outside autodiff:
    /// `Σ_rows (logsumexp(c) − c[target]) / mean_over` with `c = cap·tanh(z/cap)` (fp32 `[1]`),
    /// and with `with_grad` its gradient with respect to the logits, in their dtype (written
    /// over the logits' buffer where the backend can).
    ///
    /// `None` where the backend has no fused kernel for it: the caller composes it from Burn's
    /// ops (`brainfloat_precision::softcapped_cross_entropy`).
    fn softcapped_cross_entropy(
        _logits: FloatTensor<Self>,
        _targets: IntTensor<Self>,
        _cap: Option<f64>,
        _mean_over: usize,
        _with_grad: bool,
    ) -> Option<(FloatTensor<Self>, Option<FloatTensor<Self>>)> {
        None
    }

    /// One Adam step of `param` with its gradient and moments (all the same shape and, for the
    /// fused kernel, the same dtype): the updated parameter, moments, and `Σ grad²` as an fp32
    /// `[1]`. `None` where the backend has no fused kernel (the caller composes it from Burn's
    /// ops).
    #[allow(clippy::type_complexity)]
    fn adam_step(
        _param: FloatTensor<Self>,
        _grad: FloatTensor<Self>,
        _moment_1: FloatTensor<Self>,
        _moment_2: FloatTensor<Self>,
        _step: AdamStep,
    ) -> Option<(
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
    )> {
        None
    }

    /// `values` (fp32) rounded to bf16 stochastically, element `i` with the random bits
    /// `brainfloat_kernels::random_bits(key, i)`. `None` on backends without the kernel: the
    /// caller rounds on the host with the same kernel, so every backend rounds alike.
    fn round_stochastic(_values: FloatTensor<Self>, _key: u64) -> Option<FloatTensor<Self>> {
        None
    }

    /// `SR(a·y + b·x)` for a bf16 `y` and a float `x` of the same shape, in fp32, rounded
    /// stochastically with the stream `key` (`brainfloat_kernels::stochastic_axpby`). `None` on
    /// backends without the kernel (the caller composes it, rounding on the host).
    fn stochastic_axpby(
        _y: FloatTensor<Self>,
        _x: FloatTensor<Self>,
        _a: f32,
        _b: f32,
        _key: u64,
    ) -> Option<FloatTensor<Self>> {
        None
    }

    /// Kahan-compensated `weight + delta` for a bf16 `weight` and `compensation` and an fp32
    /// `delta`: the new weight and compensation (`brainfloat_kernels::kahan_add`). `None` on
    /// backends without the kernel (compose it from Burn's ops there).
    fn kahan_add(
        _weight: FloatTensor<Self>,
        _compensation: FloatTensor<Self>,
        _delta: FloatTensor<Self>,
    ) -> Option<(FloatTensor<Self>, FloatTensor<Self>)> {
        None
    }
}

#[cfg(feature = "cuda")]
impl KernelBackend for burn::backend::Cube {}
