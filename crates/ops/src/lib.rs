//! Burn ops backed by brainfloat's CPU kernels.
//!
//! Burn's flex backend runs a bf16 matmul by widening both operands to fp32 and narrowing the
//! result, and runs its elementwise ops on one core, which made bf16 slower than fp32 there.
//! [`KernelBackend`] is a Burn backend extension (`#[backend_extension]`) whose flex
//! implementation calls [`brainfloat_kernels`] — a bf16 GEMM with fp32 accumulation, fused
//! RMSNorm, causal softmax, rotary, soft-capped cross-entropy, Adam — and whose other backends
//! (libtorch, CubeCL) keep Burn's own ops (or answer `None` for a fused op Burn has no
//! counterpart of, and the caller composes it from Burn's ops). Under autodiff the backward
//! passes are hand-written ([`autodiff`]): the matmul's two gradient products run through the
//! same kernel, RMSNorm keeps only its bf16 input and one fp32 statistic per row.
//!
//! Model code calls the functions below on ordinary tensors; nothing above this crate knows
//! which backend runs.
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

mod attention;
pub mod autodiff;
mod extension;
mod flex;
#[cfg(feature = "tch")]
mod libtorch;

pub use attention::{causal_attention, host_kernels, runs_kernels};
pub use brainfloat_kernels::{KernelPath, MAX_SHIFT_CAP, PATH_VAR, rounding_key};
pub use extension::KernelBackend;

use burn::backend::Dispatch;
use burn::tensor::{DType, FloatDType, Int, Tensor, TensorData};

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

/// The record's loss over logits rows `[N, V]` (values outside autodiff) against `targets`
/// `[N]`: `Σ_rows (logsumexp(c) − c[target]) / mean_over`, `c = cap·tanh(z/cap)`, as an fp32
/// `[1]`, and with `with_grad` its gradient with respect to the logits in their dtype, written
/// over the logits' buffer when this is its only handle — one fused pass per row on flex and
/// libtorch's CPU for bf16 and fp32 logits. Elsewhere the logits come back as the error:
/// compose the loss from Burn's ops there.
// The error is the caller's own logits handed back (a tensor handle, as the result holds).
#[allow(clippy::type_complexity, clippy::result_large_err)]
pub fn fused_cross_entropy(
    logits: Tensor<2>,
    targets: Tensor<1, Int>,
    cap: Option<f64>,
    mean_over: usize,
    with_grad: bool,
) -> Result<(Tensor<1>, Option<Tensor<2>>), Tensor<2>> {
    if !host_kernels(&logits.device()) || !matches!(logits.dtype(), DType::BF16 | DType::F32) {
        return Err(logits);
    }
    let (loss, grad) = <Dispatch as KernelBackend>::softcapped_cross_entropy(
        logits.into_dispatch(),
        targets.into_dispatch(),
        cap,
        mean_over,
        with_grad,
    )
    .expect("the CPU backends compute the loss of bf16 and fp32 logits");
    Ok((Tensor::from_dispatch(loss), grad.map(Tensor::from_dispatch)))
}

/// Rotary embeddings of `x` `[batch, positions, heads, head_dim]` (half-split:
/// `[x1·cos + x2·sin, −x1·sin + x2·cos]`) with the tables `cos`, `sin` `[1, positions, 1,
/// head_dim / 2]` in `x`'s dtype: one fused pass each way on flex, differentiable in `x`.
/// `None` on backends without the kernel (compose it from Burn's ops there).
pub fn rotary(x: Tensor<4>, cos: Tensor<4>, sin: Tensor<4>) -> Option<Tensor<4>> {
    <Dispatch as KernelBackend>::rotary(
        x.into_dispatch(),
        cos.into_dispatch(),
        sin.into_dispatch(),
        false,
    )
    .map(Tensor::from_dispatch)
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
    if !host_kernels(&part.device()) {
        let part = part.cast(FloatDType::F32);
        return match sum {
            Some(sum) => sum + part,
            None => part,
        };
    }
    // The sum moves into the kernel, which adds in place when it is the only owner.
    let total = match sum {
        Some(sum) => {
            <Dispatch as KernelBackend>::accumulate_f32(sum.into_dispatch(), part.into_dispatch())
        }
        None => <Dispatch as KernelBackend>::widen_f32(part.into_dispatch()),
    };
    Tensor::from_dispatch(total.expect("the CPU backends accumulate fp32 sums of float parts"))
}

/// `relu(x)²`, the record's MLP activation: one fused pass each way on flex (the input is kept
/// for the backward, not the ReLU's output), differentiable. `None` on backends without the
/// kernel (compose it from Burn's ops there).
pub fn relu_square<const D: usize>(x: Tensor<D>) -> Option<Tensor<D>> {
    <Dispatch as KernelBackend>::relu_square(x.into_dispatch()).map(Tensor::from_dispatch)
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
    /// `Σ grad²`, fp32 `[1]` (for the gradient norm).
    pub grad_square_sum: Tensor<1>,
}

/// One Adam step (PyTorch's, no weight decay; `step` counts from 1) of `param` with its
/// gradient and moments, in one fused pass on flex and libtorch's CPU when all four share a
/// dtype; the stored
/// values rounded to nearest, or stochastically with the streams `stochastic` (the keys of the
/// parameter's, the first and the second moment's random bits). `None` on backends without the
/// kernel (compose the update from Burn's ops there).
#[allow(clippy::too_many_arguments)]
pub fn fused_adam<const D: usize>(
    param: Tensor<D>,
    grad: Tensor<D>,
    moment_1: Tensor<D>,
    moment_2: Tensor<D>,
    lr: f64,
    betas: (f64, f64),
    eps: f64,
    step: i32,
    stochastic: Option<[u64; 3]>,
) -> Option<AdamUpdate<D>> {
    let step = brainfloat_kernels::AdamStep {
        lr,
        betas,
        eps,
        step,
        stochastic,
    };
    let (param, moment_1, moment_2, grad_square_sum) = <Dispatch as KernelBackend>::adam_step(
        param.into_dispatch(),
        grad.into_dispatch(),
        moment_1.into_dispatch(),
        moment_2.into_dispatch(),
        step,
    )?;
    Some(AdamUpdate {
        param: Tensor::from_dispatch(param),
        moment_1: Tensor::from_dispatch(moment_1),
        moment_2: Tensor::from_dispatch(moment_2),
        grad_square_sum: Tensor::from_dispatch(grad_square_sum),
    })
}

/// Weightless RMSNorm over the last dimension, `x / √(mean(x²) + eps)`, computed in fp32 and
/// rounded once to `x`'s dtype. Fused on flex (forward and backward); Burn's ops elsewhere.
/// Differentiable.
pub fn rms_norm<const D: usize>(x: Tensor<D>, eps: f64) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as KernelBackend>::rms_norm(
        x.into_dispatch(),
        eps,
    ))
}

/// `values` rounded to bf16 stochastically: each element up or down with probability by its
/// distance, so that `E[rounded] = value` (`brainfloat_kernels::round_stochastic`). The random
/// bits of element `i` are `random_bits(key, i)`: the same on every backend, in one parallel
/// pass over the tensor's buffer on flex and on libtorch's CPU, elsewhere through the host.
/// Outside autodiff (values).
pub fn round_stochastic<const D: usize>(values: Tensor<D>, key: u64) -> Tensor<D> {
    let values = values.cast(FloatDType::F32);
    let device = values.device();
    if host_kernels(&device) {
        let rounded = <Dispatch as KernelBackend>::round_stochastic(values.into_dispatch(), key);
        return Tensor::from_dispatch(rounded.expect("the CPU backends round fp32 values"));
    }
    let dims = values.dims();
    let host = values
        .into_data()
        .try_into_vec::<f32>()
        .expect("an fp32 tensor reads back as f32");
    let mut rounded = vec![brainfloat_kernels::bf16::ZERO; host.len()];
    brainfloat_kernels::round_stochastic_into(&host, &mut rounded, key);
    Tensor::from_data(TensorData::new(rounded, dims), (&device, DType::BF16))
}

/// `SR(a·y + b·x)`: `y` (bf16) scaled and `x` (bf16 or fp32) added in fp32, the result rounded
/// to bf16 stochastically with the random bits `random_bits(key, i)` of element `i`: one
/// parallel pass on flex; Burn's ops and [`round_stochastic`] (through the host) elsewhere, bit
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
    if host_kernels(&y.device()) && matches!(x.dtype(), DType::BF16 | DType::F32) {
        let result = <Dispatch as KernelBackend>::stochastic_axpby(
            y.into_dispatch(),
            x.into_dispatch(),
            a,
            b,
            key,
        );
        return Tensor::from_dispatch(result.expect("the CPU backends compute bf16 axpby"));
    }
    let value = y.cast(FloatDType::F32).mul_scalar(a) + x.cast(FloatDType::F32).mul_scalar(b);
    round_stochastic(value, key)
}

/// `weight + delta` with Kahan compensation, for a bf16 `weight` and `compensation` and an fp32
/// `delta`: the compensation carries what each rounding to bf16 lost into the next addition
/// (`brainfloat_kernels::kahan_add`: `c = compensation + delta`, `weight' = bf16(weight + c)`,
/// `compensation' = bf16(c − (weight' − weight))`). One pass on flex and libtorch's CPU; the
/// same arithmetic with Burn's ops elsewhere. Returns the new weight and compensation. Outside autodiff (values).
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
    if host_kernels(&weight.device()) {
        let (weight, compensation) = <Dispatch as KernelBackend>::kahan_add(
            weight.into_dispatch(),
            compensation.into_dispatch(),
            delta.into_dispatch(),
        )
        .expect("the CPU backends add bf16 weights with Kahan compensation");
        return (
            Tensor::from_dispatch(weight),
            Tensor::from_dispatch(compensation),
        );
    }
    let old = weight.cast(FloatDType::F32);
    let carried = compensation.cast(FloatDType::F32) + delta;
    let new = (old.clone() + carried.clone()).cast(FloatDType::BF16);
    let applied = new.clone().cast(FloatDType::F32) - old;
    (new, (carried - applied).cast(FloatDType::BF16))
}
