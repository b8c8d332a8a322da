//! The backend extension: what each backend runs for brainfloat's ops.

// burn-tch is deprecated upstream; naming its backend here (the extension must route it) is
// the only use outside `brainfloat-backend`.
#![cfg_attr(feature = "tch", allow(deprecated))]

use brainfloat_kernels::AdamStep;
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Backend, backend_extension};

use crate::composed;

/// What [`KernelBackend::causal_attention`] keeps for its backward: query, key and value, and
/// one tensor of the backend's choosing (libtorch: its attached output; flex in bf16: its
/// output; the composed op: the fp32 probabilities). (The trait spells the tuple out: the extension macro reads its
/// signatures as written.)
pub(crate) type SavedAttention<B> = (
    FloatTensor<B>,
    FloatTensor<B>,
    FloatTensor<B>,
    FloatTensor<B>,
);

/// brainfloat's ops as a Burn backend extension: one method per op, each returning its result
/// on every backend. The default bodies are the ops written with Burn's own ops
/// ([`crate::composed`]); a backend overrides an op where it has a kernel for it and falls back
/// to the composed op for what its kernel does not cover (a dtype, a device). Flex runs
/// brainfloat's kernels (`crate::flex`); libtorch runs its fused attention everywhere and, on
/// the CPU, the optimizer's kernels and the fused loss on its own buffers (`crate::libtorch`);
/// `Autodiff` adds the hand-written backward passes and hands value-only ops to the inner
/// backend ([`crate::autodiff`]).
///
/// One convention for what a backward pass needs: an op whose backward needs more than its
/// inputs returns it beside its output when asked (`with_backward`), as an `Option` whose
/// contents are the backend's business (`rms_norm`, `causal_softmax`, `causal_attention`); the
/// backward of an op is the method of its name with `_backward`, taking what was saved and the
/// output's gradient. Under `Autodiff` the flag is ignored: whether an input is tracked decides.
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

    /// Weightless RMSNorm over the last dimension, in `x`'s dtype; with `with_backward`, also
    /// the fp32 statistic `r = 1/√(mean(x²) + eps)` per row (shape `[.., 1]`) its backward
    /// needs.
    fn rms_norm(
        x: FloatTensor<Self>,
        eps: f64,
        with_backward: bool,
    ) -> (FloatTensor<Self>, Option<FloatTensor<Self>>) {
        composed::rms_norm::<Self>(x, eps, with_backward)
    }

    /// The gradient of [`rms_norm`](Self::rms_norm) with respect to `x`, from `x`, its saved
    /// statistic and the output's gradient: `r · (dy − x · r² · mean(x · dy))`, in `x`'s dtype.
    fn rms_norm_backward(
        x: FloatTensor<Self>,
        inv_rms: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        composed::rms_norm_backward::<Self>(x, inv_rms, grad)
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
    /// (`sum` is fp32), in place where the backend can. Outside autodiff (values).
    fn accumulate_f32(sum: FloatTensor<Self>, part: FloatTensor<Self>) -> FloatTensor<Self> {
        composed::accumulate_f32::<Self>(sum, part)
    }

    /// `part` widened to fp32, the first term of [`accumulate_f32`](Self::accumulate_f32).
    fn widen_f32(part: FloatTensor<Self>) -> FloatTensor<Self> {
        composed::to_f32::<Self>(part)
    }

    /// `softmax(scale · scores)` over the last dimension of `scores` `[.., queries, keys]` with
    /// the causal mask (query `i` sees keys up to `i + keys − queries`), fp32 inside, in the
    /// scores' dtype; with `with_backward`, also the same probabilities in fp32, which its
    /// backward needs.
    fn causal_softmax(
        scores: FloatTensor<Self>,
        scale: f64,
        with_backward: bool,
    ) -> (FloatTensor<Self>, Option<FloatTensor<Self>>) {
        composed::causal_softmax::<Self>(scores, scale, with_backward)
    }

    /// The gradient of [`causal_softmax`](Self::causal_softmax)'s input from its fp32
    /// probabilities and its output's gradient: `scale · P ⊙ (dP − Σ_j dP_j·P_j)`, in the
    /// gradient's dtype.
    fn causal_softmax_backward(
        probs: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        scale: f64,
    ) -> FloatTensor<Self> {
        composed::causal_softmax_backward::<Self>(probs, grad, scale)
    }

    /// Causal self-attention `softmax(q·kᵀ/√d + mask)·v` over `[B, H, Tq, d]` queries and
    /// `[B, H, Tk, d]` keys and values, the queries aligned with the last keys (query `i` sees
    /// keys up to `i + Tk − Tq`), with a backward of its own: no graph of Burn's unfused ops
    /// and their `T × T` temporaries kept. With `with_backward`, also what
    /// [`causal_attention_backward`] needs, opaque to the caller (under `Autodiff` the flag
    /// is ignored: whether the inputs are tracked decides).
    ///
    /// [`causal_attention_backward`]: Self::causal_attention_backward
    #[allow(clippy::type_complexity)]
    fn causal_attention(
        query: FloatTensor<Self>,
        key: FloatTensor<Self>,
        value: FloatTensor<Self>,
        with_backward: bool,
    ) -> (
        FloatTensor<Self>,
        Option<(
            FloatTensor<Self>,
            FloatTensor<Self>,
            FloatTensor<Self>,
            FloatTensor<Self>,
        )>,
    ) {
        composed::causal_attention::<Self>(query, key, value, with_backward)
    }

    /// The gradients of [`causal_attention`](Self::causal_attention)'s query, key and value
    /// from what its forward saved and the output's gradient.
    fn causal_attention_backward(
        query: FloatTensor<Self>,
        key: FloatTensor<Self>,
        value: FloatTensor<Self>,
        saved: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        composed::causal_attention_backward::<Self>(query, key, value, saved, grad)
    }

    /// Rotary embeddings of `x` `[batch, positions, heads, head_dim]` (half-split) with the
    /// tables `cos` and `sin` `[1, positions, 1, head_dim / 2]`.
    fn rotary(
        x: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        composed::rotary::<Self>(x, cos, sin)
    }

    /// The gradient of [`rotary`](Self::rotary)'s input: `grad` rotated back by the same
    /// tables.
    fn rotary_backward(
        grad: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        composed::rotary_backward::<Self>(grad, cos, sin)
    }

    /// The MLP activation `relu(x)²`.
    fn relu_square(x: FloatTensor<Self>) -> FloatTensor<Self> {
        composed::relu_square::<Self>(x)
    }

    /// The gradient of [`relu_square`](Self::relu_square): `grad · 2·relu(x)`.
    fn relu_square_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        composed::relu_square_backward::<Self>(x, grad)
    }

    /// The record's loss over logits rows `[N, V]` against `targets` `[N]`, outside autodiff:
    /// `Σ_rows (logsumexp(c) − c[target]) / mean_over` with `c = cap·tanh(z/cap)` (fp32 `[1]`),
    /// and with `with_grad` its gradient with respect to the logits, in their dtype (written
    /// over the logits' buffer where the backend can).
    fn softcapped_cross_entropy(
        logits: FloatTensor<Self>,
        targets: IntTensor<Self>,
        cap: Option<f64>,
        mean_over: usize,
        with_grad: bool,
    ) -> (FloatTensor<Self>, Option<FloatTensor<Self>>) {
        composed::softcapped_cross_entropy::<Self>(logits, targets, cap, mean_over, with_grad)
    }

    /// One Adam step of `param` with its gradient and moments (all the same shape): the
    /// updated parameter and moments. Outside autodiff (values).
    fn adam_step(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        moment_1: FloatTensor<Self>,
        moment_2: FloatTensor<Self>,
        step: AdamStep,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let (param, moment_1, moment_2, _) =
            composed::adam_step::<Self>(param, grad, moment_1, moment_2, None, step);
        (param, moment_1, moment_2)
    }

    /// [`adam_step`](Self::adam_step) with the parameter written with Kahan's `compensation`
    /// (its dtype): the updated parameter, moments and compensation. Outside autodiff
    /// (values).
    #[allow(clippy::type_complexity)]
    fn adam_step_kahan(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        moment_1: FloatTensor<Self>,
        moment_2: FloatTensor<Self>,
        compensation: FloatTensor<Self>,
        step: AdamStep,
    ) -> (
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
    ) {
        let (param, moment_1, moment_2, compensation) =
            composed::adam_step::<Self>(param, grad, moment_1, moment_2, Some(compensation), step);
        let compensation = compensation.expect("given");
        (param, moment_1, moment_2, compensation)
    }

    /// `x · factor` in `x`'s dtype with the factor in fp32, rounded once, as PyTorch multiplies
    /// a tensor by a Python number (by default a bf16 tensor is widened, multiplied and
    /// rounded). Outside autodiff (values).
    fn scale(x: FloatTensor<Self>, factor: f64) -> FloatTensor<Self> {
        composed::scale::<Self>(x, factor)
    }

    /// `a·y + b·x` in `y`'s dtype (`x` of any float dtype, cast to it), each product skipped
    /// where its factor is 1: an optimizer's update, momentum or look-ahead, in place where the
    /// backend can. Outside autodiff (values).
    fn axpby(y: FloatTensor<Self>, x: FloatTensor<Self>, a: f64, b: f64) -> FloatTensor<Self> {
        composed::axpby::<Self>(y, x, a, b)
    }

    /// `Σ x²` of `x`, each square in fp32, as an fp32 `[1]`: a gradient's contribution to the
    /// global norm, without a widened copy of it where the backend has the kernel. Outside
    /// autodiff (values).
    fn square_sum(x: FloatTensor<Self>) -> FloatTensor<Self> {
        composed::square_sum::<Self>(x)
    }

    /// `values` (fp32) rounded to bf16 stochastically, element `i` with the random bits
    /// `brainfloat_kernels::random_bits(key, i)`, the same on every backend (by default through
    /// the host, with the same kernel). Outside autodiff (values).
    fn round_stochastic(values: FloatTensor<Self>, key: u64) -> FloatTensor<Self> {
        composed::round_stochastic::<Self>(values, key)
    }

    /// `SR(a·y + b·x)` for a bf16 `y` and a float `x` of the same shape, in fp32, rounded
    /// stochastically with the stream `key` (`brainfloat_kernels::stochastic_axpby`). Outside
    /// autodiff (values).
    fn stochastic_axpby(
        y: FloatTensor<Self>,
        x: FloatTensor<Self>,
        a: f32,
        b: f32,
        key: u64,
    ) -> FloatTensor<Self> {
        composed::stochastic_axpby::<Self>(y, x, a, b, key)
    }

    /// Kahan-compensated `weight + delta` for a bf16 `weight` and `compensation` and an fp32
    /// `delta`: the new weight and compensation (`brainfloat_kernels::kahan_add`). Outside
    /// autodiff (values).
    fn kahan_add(
        weight: FloatTensor<Self>,
        compensation: FloatTensor<Self>,
        delta: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        composed::kahan_add::<Self>(weight, compensation, delta)
    }
}

#[cfg(feature = "cuda")]
impl KernelBackend for burn::backend::Cube {}
