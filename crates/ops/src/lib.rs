//! Burn ops backed by brainfloat's CPU kernels.
//!
//! Burn's flex backend runs a bf16 matmul by widening both operands to fp32 and narrowing the
//! result, and runs its elementwise ops on one core, which makes bf16 slower than fp32 there.
//! [`KernelBackend`] is a Burn backend extension (`#[backend_extension]`) whose flex
//! implementation calls [`brainfloat_kernels`] — a bf16 GEMM with fp32 accumulation, fused
//! RMSNorm, causal softmax, rotary, soft-capped cross-entropy, Adam. Every op is one method
//! that returns its result on every backend: its default body is the op written with Burn's
//! own ops ([`composed`]), which a backend without a kernel for it (CubeCL) runs, and which the
//! kernels are tested against ([`conformance`]). libtorch off the CPU takes the device route:
//! its own fused operators and brainfloat's CUDA kernels ([`LibTorchRoute`]). Under autodiff
//! the backward passes are hand-written ([`autodiff`]): the matmul's two gradient products run through the
//! same kernel, RMSNorm keeps only its bf16 input and one fp32 statistic per row.
//!
//! Model code calls the functions below on ordinary tensors; nothing above this crate knows
//! which backend runs. The multi-tensor ones (`adam_steps`, `axpbys`, `square_sums`) take a
//! parameter group at once, as PyTorch's optimizers step a group (`_fused_adam_`, `_foreach_*`):
//! one multi-tensor operator per dtype on libtorch's device route, the single-tensor op on each
//! member elsewhere, which the grouped call is checked against ([`conformance::groups`]).
//!
//! ```
//! use burn::tensor::{DType, Device, Tensor};
//!
//! let device = Device::flex().autodiff();
//! let x = Tensor::<2>::ones([4, 8], (&device, DType::BF16)).require_grad();
//! let w = Tensor::<2>::ones([8, 3], (&device, DType::BF16)).require_grad();
//! let y = brainfloat_ops::matmul(brainfloat_ops::rms_norm(x.clone(), 1e-6), w.clone());
//! assert_eq!(y.dtype(), DType::BF16);
//! let grads = y.sum().backward();
//! assert_eq!(w.grad(&grads).unwrap().dtype(), DType::BF16);
//! ```

pub mod autodiff;
pub mod composed;
pub mod conformance;
mod extension;
mod flex;
#[cfg(feature = "tch")]
mod libtorch;
mod route;

pub use brainfloat_kernels::{AdamStep, KernelPath, MAX_SHIFT_CAP, PATH_VAR, rounding_key};
pub use extension::KernelBackend;
#[cfg(feature = "tch")]
pub use libtorch::rounding::{KernelSelfTest, kernel_self_tests};
#[cfg(feature = "tch")]
pub use libtorch::shim::{
    Traffic, ledger_by_operator, ledger_counts_gpu_launches, ledger_start, ledger_stop,
};
pub use route::{LibTorchRoute, ROUTE_VAR, libtorch_route, with_libtorch_route};

use burn::backend::Dispatch;
use burn::tensor::{DType, Int, Tensor};

/// `lhs · rhs` over the last two dimensions (`[.., m, k] × [.., k, n]`, the same leading
/// dimensions): a native bf16 GEMM with fp32 accumulation on flex for bf16 operands, Burn's
/// matmul otherwise. Differentiable.
pub fn matmul<const D: usize>(lhs: Tensor<D>, rhs: Tensor<D>) -> Tensor<D> {
    let (l, r) = (lhs.dims(), rhs.dims());
    assert!(
        l[..D - 2] == r[..D - 2] && l[D - 1] == r[D - 2],
        "matmul: {l:?} × {r:?} (the leading dimensions must agree and the inner ones match)"
    );
    Tensor::from_dispatch(<Dispatch as KernelBackend>::matmul(
        lhs.into_dispatch(),
        rhs.into_dispatch(),
    ))
}

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

/// The record's loss over logits rows `[N, V]` (values outside autodiff) against `targets`
/// `[N]`: `Σ_rows (logsumexp(c) − c[target]) / mean_over`, `c = cap·tanh(z/cap)`, as an fp32
/// `[1]`, and with `with_grad` its gradient with respect to the logits in their dtype, written
/// over the logits' buffer when this is its only handle — one fused pass per row on flex and
/// libtorch's CPU for bf16 and fp32 logits, Burn's ops elsewhere.
pub fn softcapped_cross_entropy(
    logits: Tensor<2>,
    targets: Tensor<1, Int>,
    cap: Option<f64>,
    mean_over: usize,
    with_grad: bool,
) -> (Tensor<1>, Option<Tensor<2>>) {
    let (loss, grad) = <Dispatch as KernelBackend>::softcapped_cross_entropy(
        logits.into_dispatch(),
        targets.into_dispatch(),
        cap,
        mean_over,
        with_grad,
    );
    (Tensor::from_dispatch(loss), grad.map(Tensor::from_dispatch))
}

/// Rotary embeddings of `x` `[batch, positions, heads, head_dim]` (half-split:
/// `[x1·cos + x2·sin, −x1·sin + x2·cos]`) with the tables `cos`, `sin` `[1, positions, 1,
/// head_dim / 2]` in `x`'s dtype: one fused pass each way on flex, differentiable in `x`.
pub fn rotary(x: Tensor<4>, cos: Tensor<4>, sin: Tensor<4>) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as KernelBackend>::rotary(
        x.into_dispatch(),
        cos.into_dispatch(),
        sin.into_dispatch(),
    ))
}

/// `loss` (a value computed outside autodiff, as fused losses are) with `grad` attached as
/// the gradient of `tracked`: same value, and backward hands `grad` (times the gradient reaching
/// the result, normally 1) to `tracked`. Chain calls to attach several.
pub fn attach_gradient<const D: usize>(
    loss: Tensor<1>,
    tracked: Tensor<D>,
    grad: Tensor<D>,
) -> Tensor<1> {
    Tensor::from_dispatch(<Dispatch as KernelBackend>::attach_gradient(
        loss.into_dispatch(),
        tracked.into_dispatch(),
        grad.into_dispatch(),
    ))
}

/// `sum + part` in fp32, or `part` widened to fp32 when `sum` is `None`: partial results (a
/// chunked product's bf16 parts) added up without intermediate rounding, in one parallel pass
/// on flex and libtorch's CPU (in place, with no widened copy of the part), with Burn's cast
/// and add elsewhere. Outside autodiff (values).
pub fn accumulate_f32<const D: usize>(sum: Option<Tensor<D>>, part: Tensor<D>) -> Tensor<D> {
    // The sum moves into the kernel, which adds in place when it is the only owner.
    Tensor::from_dispatch(match sum {
        Some(sum) => {
            <Dispatch as KernelBackend>::accumulate_f32(sum.into_dispatch(), part.into_dispatch())
        }
        None => <Dispatch as KernelBackend>::widen_f32(part.into_dispatch()),
    })
}

/// `relu(x)²`, the record's MLP activation: one fused pass each way on flex (the input is kept
/// for the backward, not the ReLU's output), differentiable.
pub fn relu_square<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as KernelBackend>::relu_square(x.into_dispatch()))
}

/// The state of one parameter after a fused Adam step.
#[derive(Debug, Clone)]
pub struct AdamUpdate<const D: usize> {
    /// The updated parameter.
    pub param: Tensor<D>,
    /// The updated first moment.
    pub moment_1: Tensor<D>,
    /// The updated second moment.
    pub moment_2: Tensor<D>,
    /// The updated Kahan compensation, when the step was given one.
    pub compensation: Option<Tensor<D>>,
}

/// One Adam step of `param` with its gradient and moments: PyTorch's fused `Adam`, or `AdamW`
/// with `step.weight_decay` (`step.step` counts from one). One fused pass on flex and
/// libtorch's CPU when all share a dtype, libtorch's `_fused_adam_` on its device route where it
/// applies, Burn's ops otherwise, all with the same fp32 arithmetic. The stored values are
/// rounded once: to nearest, stochastically with `step.stochastic`, or — the parameter — with
/// Kahan's `compensation` when one is given (bf16, zeros at first). Outside autodiff (values).
pub fn adam_step<const D: usize>(
    param: Tensor<D>,
    grad: Tensor<D>,
    moment_1: Tensor<D>,
    moment_2: Tensor<D>,
    compensation: Option<Tensor<D>>,
    step: AdamStep,
) -> AdamUpdate<D> {
    let [param, grad, moment_1, moment_2] =
        [param, grad, moment_1, moment_2].map(Tensor::into_dispatch);
    let (param, moment_1, moment_2, compensation) = match compensation {
        Some(compensation) => {
            let (param, moment_1, moment_2, compensation) =
                <Dispatch as KernelBackend>::adam_step_kahan(
                    param,
                    grad,
                    moment_1,
                    moment_2,
                    compensation.into_dispatch(),
                    step,
                );
            (param, moment_1, moment_2, Some(compensation))
        }
        None => {
            let (param, moment_1, moment_2) =
                <Dispatch as KernelBackend>::adam_step(param, grad, moment_1, moment_2, step);
            (param, moment_1, moment_2, None)
        }
    };
    AdamUpdate {
        param: Tensor::from_dispatch(param),
        moment_1: Tensor::from_dispatch(moment_1),
        moment_2: Tensor::from_dispatch(moment_2),
        compensation: compensation.map(Tensor::from_dispatch),
    }
}

/// Weightless RMSNorm over the last dimension, `x / √(mean(x²) + eps)`, computed in fp32 and
/// rounded once to `x`'s dtype. Fused on flex (forward and backward); Burn's ops elsewhere.
/// Differentiable.
pub fn rms_norm<const D: usize>(x: Tensor<D>, eps: f64) -> Tensor<D> {
    let (y, _) = <Dispatch as KernelBackend>::rms_norm(x.into_dispatch(), eps, false);
    Tensor::from_dispatch(y)
}

/// `a·y + b·x` in `y`'s dtype (`x` cast to it; a product whose factor is 1 is skipped): an
/// optimizer's update, momentum or look-ahead. One pass on flex and one libtorch operator on
/// the device route (`add` with its `alpha`), each in place when `y` is this call's own; Burn's
/// ops elsewhere. Outside autodiff (values).
pub fn axpby<const D: usize>(y: Tensor<D>, x: Tensor<D>, a: f64, b: f64) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as KernelBackend>::axpby(
        y.into_dispatch(),
        x.into_dispatch(),
        a,
        b,
    ))
}

/// `x · factor` in `x`'s dtype with the factor in fp32, rounded once, as PyTorch multiplies a
/// tensor by a Python number (Burn's `mul_scalar` on flex rounds a bf16 tensor's factor to bf16
/// first): one pass on flex, libtorch's own product there, a widened one elsewhere. Outside
/// autodiff (values).
pub fn scale<const D: usize>(x: Tensor<D>, factor: f64) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as KernelBackend>::scale(
        x.into_dispatch(),
        factor,
    ))
}

/// `Σ x²` of `x` with each square in fp32, as an fp32 `[1]`: one parallel pass over the
/// buffer on flex, Burn's ops elsewhere. Outside autodiff (values).
pub fn square_sum<const D: usize>(x: Tensor<D>) -> Tensor<1> {
    Tensor::from_dispatch(<Dispatch as KernelBackend>::square_sum(x.into_dispatch()))
}

/// `values` rounded to bf16 stochastically: each element up or down with probability by its
/// distance, so that `E[rounded] = value` (`brainfloat_kernels::round_stochastic`). The random
/// bits of element `i` are `random_bits(key, i)`: the same on every backend, in one parallel
/// pass over the tensor's buffer on flex and on libtorch's CPU, elsewhere through the host.
/// Outside autodiff (values).
pub fn round_stochastic<const D: usize>(values: Tensor<D>, key: u64) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as KernelBackend>::round_stochastic(
        values.into_dispatch(),
        key,
    ))
}

/// `SR(a·y + b·x)`: `y` (bf16) scaled and `x` (bf16 or fp32) added in fp32, the result rounded
/// to bf16 stochastically with the random bits `random_bits(key, i)` of element `i`: one
/// parallel pass on flex and libtorch's CPU; Burn's ops and [`round_stochastic`] elsewhere, bit
/// for bit the same. A momentum buffer's update (`a` the momentum, `b = 1`) or a weight's
/// (`a = 1`, `b = −lr`). Outside autodiff (values).
///
/// # Panics
/// When `y` is not bf16.
pub fn stochastic_axpby<const D: usize>(
    y: Tensor<D>,
    x: Tensor<D>,
    a: f32,
    b: f32,
    key: u64,
) -> Tensor<D> {
    assert_eq!(y.dtype(), DType::BF16, "stochastic_axpby: y must be bf16");
    Tensor::from_dispatch(<Dispatch as KernelBackend>::stochastic_axpby(
        y.into_dispatch(),
        x.into_dispatch(),
        a,
        b,
        key,
    ))
}

/// `weight + delta` with Kahan compensation, for a bf16 `weight` and `compensation` and an fp32
/// `delta`: the compensation carries what each rounding to bf16 lost into the next addition
/// (`brainfloat_kernels::kahan_add`: `c = compensation + delta`, `weight' = bf16(weight + c)`,
/// `compensation' = bf16(c − (weight' − weight))`). One pass on flex and libtorch's CPU; the
/// same arithmetic with Burn's ops elsewhere. Returns the new weight and compensation. Outside
/// autodiff (values).
///
/// # Panics
/// When the dtypes are not bf16, bf16 and fp32.
pub fn kahan_add<const D: usize>(
    weight: Tensor<D>,
    compensation: Tensor<D>,
    delta: Tensor<D>,
) -> (Tensor<D>, Tensor<D>) {
    let dtypes = [weight.dtype(), compensation.dtype(), delta.dtype()];
    assert_eq!(
        dtypes,
        [DType::BF16, DType::BF16, DType::F32],
        "kahan_add: a bf16 weight and compensation and an fp32 delta"
    );
    let (weight, compensation) = <Dispatch as KernelBackend>::kahan_add(
        weight.into_dispatch(),
        compensation.into_dispatch(),
        delta.into_dispatch(),
    );
    (
        Tensor::from_dispatch(weight),
        Tensor::from_dispatch(compensation),
    )
}

// ----------------------------------------------------------------------------------------------
// Multi-tensor ops: one call over the flattened (`[numel]`) tensors of a parameter group,
// outside autodiff.

/// One parameter's share of a grouped Adam step ([`adam_steps`]).
#[derive(Debug, Clone)]
pub struct AdamMember {
    /// The parameter.
    pub param: Tensor<1>,
    /// Its gradient.
    pub grad: Tensor<1>,
    /// Its first moment.
    pub moment_1: Tensor<1>,
    /// Its second moment.
    pub moment_2: Tensor<1>,
    /// Its Kahan compensation, when its rounding is Kahan's.
    pub compensation: Option<Tensor<1>>,
    /// Its step count, this step included (from 1).
    pub step: i32,
    /// The keys of its stochastic rounding streams (parameter, first and second moment), or
    /// `None` to round to nearest.
    pub stochastic: Option<[u64; 3]>,
}

/// Adam's hyper-parameters for a group ([`adam_steps`]).
#[derive(Debug, Clone, Copy)]
pub struct AdamGroup {
    /// Learning rate.
    pub lr: f64,
    /// `(β1, β2)`.
    pub betas: (f64, f64),
    /// Added to the denominator.
    pub eps: f64,
    /// Decoupled weight decay (AdamW).
    pub weight_decay: f64,
}

impl AdamGroup {
    /// The step of one member.
    pub(crate) fn step(&self, member: &AdamMember) -> AdamStep {
        AdamStep {
            lr: self.lr,
            betas: self.betas,
            eps: self.eps,
            weight_decay: self.weight_decay,
            step: member.step,
            stochastic: member.stochastic,
        }
    }
}

/// One Adam step of each member, as [`adam_step`] computes it: on the device route, libtorch's
/// `_fused_adam_` over all members of one dtype when all round to nearest without decay.
/// Returns each member's update, in order.
pub fn adam_steps(members: Vec<AdamMember>, group: AdamGroup) -> Vec<AdamUpdate<1>> {
    #[cfg(feature = "tch")]
    let members = match crate::libtorch::group::adam_steps(members, group) {
        Ok(updated) => return updated,
        Err(members) => members,
    };
    members
        .into_iter()
        .map(|m| {
            let step = group.step(&m);
            crate::adam_step(
                m.param,
                m.grad,
                m.moment_1,
                m.moment_2,
                m.compensation,
                step,
            )
        })
        .collect()
}

/// `a·ys[i] + b·xs[i]` for each pair, as [`axpby`]: on the device route one or two
/// multi-tensor operators for pairs of one dtype (in place over `ys` where the call holds them).
///
/// # Panics
/// When `ys` and `xs` differ in length or a pair in shape.
pub fn axpbys(ys: Vec<Tensor<1>>, xs: Vec<Tensor<1>>, a: f64, b: f64) -> Vec<Tensor<1>> {
    assert_eq!(ys.len(), xs.len(), "axpbys: one x per y");
    for (y, x) in ys.iter().zip(&xs) {
        assert_eq!(y.dims(), x.dims(), "axpbys: a pair of different shapes");
    }
    #[cfg(feature = "tch")]
    let (ys, xs) = match crate::libtorch::group::axpbys(ys, xs, a, b) {
        Ok(sums) => return sums,
        Err(pairs) => pairs,
    };
    ys.into_iter()
        .zip(xs)
        .map(|(y, x)| crate::axpby(y, x, a, b))
        .collect()
}

/// `Σ x²` of each tensor, squares in fp32, as fp32 `[1]`s, as [`square_sum`]: on the device
/// route one multi-tensor norm (`_foreach_norm`) for the whole list.
pub fn square_sums(xs: Vec<Tensor<1>>) -> Vec<Tensor<1>> {
    #[cfg(feature = "tch")]
    let xs = match crate::libtorch::group::square_sums(xs) {
        Ok(sums) => return sums,
        Err(xs) => xs,
    };
    xs.into_iter().map(crate::square_sum).collect()
}
