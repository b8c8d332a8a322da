//! The libtorch implementation, two routes. On the CPU, the optimizer's kernels (stochastic
//! rounding, the fused Adam step, Kahan addition), the head's fused loss and the fp32 sum of its
//! weight's gradient run on libtorch's own buffers, with no copy to the host and back; so do
//! bf16 matmuls on a CPU without native bf16 dot products. Off the CPU (or on it, forced by
//! `BRAINFLOAT_TCH_ROUTE=device`) each op takes the device route ([`device`]): libtorch's own
//! fused operators. Attention is libtorch's fused SDPA with its own backward on every device.
//! Every other op is the composed op (the extension's default bodies on libtorch's ops).
//!
//! The matmul matters for time and memory: without AVX512-BF16 (or AMX), libtorch makes a bf16
//! product through an fp32 one the output's size, where brainfloat's GEMM (gemmkit's widening
//! kernels) rounds each register tile straight to bf16 and is several times faster on the
//! head's products; with native bf16, libtorch's oneDNN is as fast as gemmkit and keeps its
//! matmuls (the measurements: docs/kernels.md).
//!
//! The fused loss matters for memory more than for time: composed from libtorch's ops, each
//! chunk of logits passes through several logits-sized fp32 temporaries (the soft-cap, the
//! shift, the exponentials, the softmax, its gradient), the largest part of the working set
//! libtorch's forward pass adds to the activations it keeps (docs/precision.md).

// burn-tch is deprecated upstream; this module exists to serve it.
#![allow(deprecated)]

use brainfloat_kernels::{AdamStep, KernelPath, MatrixStack, batched_gemm, bf16};
use burn::backend::Scalar;
use burn::backend::libtorch::{LibTorch, TchTensor};
use burn::backend::ops::FloatTensorOps;
use tch::{Device, Kind};

use crate::composed;
use crate::extension::{KernelBackend, SavedAttention};
use device::{takes_device_route, takes_kernels};

/// The op `$op` on the device route when `$on` take it, the composed op otherwise: the methods
/// for which the CPU has no kernel on libtorch's buffers.
macro_rules! device_or_composed {
    ($op:ident($($arg:expr),*) on [$($on:expr),*]) => {
        if takes_device_route(&[$(&$on),*]) {
            device::$op($($arg),*)
        } else {
            composed::$op::<Self>($($arg),*)
        }
    };
}

mod device;
pub(crate) mod group;
pub(crate) mod rounding;
pub(crate) mod shim;

/// `$body` with the type `$T` bound to the element type of `$kind`, one that [`kernel_kind`]
/// returned: bf16 or fp32 (flex's `with_elem!` for libtorch's kinds).
macro_rules! with_kind {
    ($kind:expr, $T:ident => $body:expr) => {
        match $kind {
            Kind::BFloat16 => {
                type $T = bf16;
                $body
            }
            _ => {
                type $T = f32;
                $body
            }
        }
    };
}

impl KernelBackend for LibTorch {
    fn matmul(lhs: TchTensor, rhs: TchTensor) -> TchTensor {
        if KernelPath::cpu_has_avx512_bf16() || !takes_kernels(&[&lhs, &rhs]) {
            return LibTorch::float_matmul(lhs, rhs);
        }
        bf16_matmul(&lhs, &rhs).unwrap_or_else(|| LibTorch::float_matmul(lhs, rhs))
    }

    fn causal_attention(
        query: TchTensor,
        key: TchTensor,
        value: TchTensor,
        with_backward: bool,
    ) -> (TchTensor, Option<SavedAttention<Self>>) {
        // libtorch aligns `is_causal` from the top-left: with fewer queries than keys (a
        // generation step after cached keys) the mask must be explicit.
        if query.tensor.size()[2] != key.tensor.size()[2] {
            return composed::causal_attention::<Self>(query, key, value, with_backward);
        }
        let attend = |q: &tch::Tensor, k: &tch::Tensor, v: &tch::Tensor| {
            let no_mask = None::<tch::Tensor>;
            tch::Tensor::scaled_dot_product_attention(q, k, v, no_mask, 0.0, true, None, false)
        };
        if !with_backward {
            let output = tch::no_grad(|| attend(&query.tensor, &key.tensor, &value.tensor));
            return (TchTensor::new(output), None);
        }
        // libtorch's autograd records the kernel and what its backward needs: the inputs as
        // leaves that require a gradient, the output attached to them. Burn gets the output
        // detached, so nothing after this op enters libtorch's graph. Every handle shares its
        // buffer's `Storage` with Burn's, so that Burn never updates a buffer in place that
        // the backward still reads (libtorch would refuse the modified saved tensor).
        let leaf = |t: &TchTensor| {
            let leaf = t.tensor.detach().set_requires_grad(true);
            TchTensor::from_existing(leaf, t.storage.clone())
        };
        let (q, k, v) = (leaf(&query), leaf(&key), leaf(&value));
        let attached = tch::with_grad(|| attend(&q.tensor, &k.tensor, &v.tensor));
        let output = TchTensor::new(attached.detach());
        let attached = TchTensor::from_existing(attached, output.storage.clone());
        (output, Some((q, k, v, attached)))
    }

    fn causal_attention_backward(
        query: TchTensor,
        key: TchTensor,
        value: TchTensor,
        saved: TchTensor,
        grad: TchTensor,
    ) -> (TchTensor, TchTensor, TchTensor) {
        // What the composed forward saved is its fp32 probabilities, not an output attached to
        // libtorch's graph.
        if !saved.tensor.requires_grad() {
            return composed::causal_attention_backward::<Self>(query, key, value, saved, grad);
        }
        // The vector-Jacobian product through libtorch's graph: the gradient of
        // `Σ output ⊙ grad` (with `grad` a constant) is exactly `grad` at the output.
        let inputs = [&query.tensor, &key.tensor, &value.tensor];
        let [grad_q, grad_k, grad_v]: [tch::Tensor; 3] = tch::with_grad(|| {
            let surrogate = (&saved.tensor * grad.tensor.detach()).sum(None::<Kind>);
            tch::Tensor::run_backward(&[surrogate], &inputs, false, false)
        })
        .try_into()
        .expect("one gradient per input");
        (
            TchTensor::new(grad_q),
            TchTensor::new(grad_k),
            TchTensor::new(grad_v),
        )
    }

    fn rms_norm(x: TchTensor, eps: f64, with_backward: bool) -> (TchTensor, Option<TchTensor>) {
        device_or_composed!(rms_norm(x, eps, with_backward) on [x])
    }

    fn rms_norm_backward(x: TchTensor, inv_rms: TchTensor, grad: TchTensor) -> TchTensor {
        device_or_composed!(rms_norm_backward(x, inv_rms, grad) on [x, grad])
    }

    fn rotary(x: TchTensor, cos: TchTensor, sin: TchTensor) -> TchTensor {
        device_or_composed!(rotary(x, cos, sin) on [x])
    }

    fn rotary_backward(grad: TchTensor, cos: TchTensor, sin: TchTensor) -> TchTensor {
        device_or_composed!(rotary_backward(grad, cos, sin) on [grad])
    }

    fn relu_square(x: TchTensor) -> TchTensor {
        device_or_composed!(relu_square(x) on [x])
    }

    fn relu_square_backward(x: TchTensor, grad: TchTensor) -> TchTensor {
        device_or_composed!(relu_square_backward(x, grad) on [x, grad])
    }

    /// libtorch's own scalar product keeps the factor in fp32 for a bf16 tensor.
    fn scale(x: TchTensor, factor: f64) -> TchTensor {
        LibTorch::float_mul_scalar(x, Scalar::from(factor))
    }

    fn axpby(y: TchTensor, x: TchTensor, a: f64, b: f64) -> TchTensor {
        if takes_device_route(&[&y, &x]) && y.tensor.size() == x.tensor.size() {
            return device::axpby(y, x, a, b);
        }
        composed::axpby::<Self>(y, x, a, b)
    }

    fn square_sum(x: TchTensor) -> TchTensor {
        device_or_composed!(square_sum(x) on [x])
    }

    fn round_stochastic(values: TchTensor, key: u64) -> TchTensor {
        if takes_device_route(&[&values]) {
            return rounding::round_stochastic(values, key)
                .unwrap_or_else(|values| composed::round_stochastic::<Self>(values, key));
        }
        if !takes_kernels(&[&values]) {
            return composed::round_stochastic::<Self>(values, key);
        }
        let values = values.tensor.to_kind(Kind::Float).contiguous();
        let rounded = tch::Tensor::empty(values.size(), (Kind::BFloat16, Device::Cpu));
        // SAFETY: `values` is a contiguous CPU f32 tensor and `rounded` a new contiguous CPU
        // bf16 one of the same size, which nothing else can see yet.
        unsafe {
            brainfloat_kernels::round_stochastic_into(
                elements::<f32>(&values),
                elements_mut::<bf16>(&rounded),
                key,
            )
        };
        TchTensor::new(rounded)
    }

    fn stochastic_axpby(y: TchTensor, x: TchTensor, a: f32, b: f32, key: u64) -> TchTensor {
        if takes_device_route(&[&y, &x]) {
            return rounding::stochastic_axpby(y, x, a, b, key)
                .unwrap_or_else(|(y, x)| composed::stochastic_axpby::<Self>(y, x, a, b, key));
        }
        let runs = takes_kernels(&[&y, &x]) && y.tensor.kind() == Kind::BFloat16;
        let Some(x_kind) = kernel_kind(&x).filter(|_| runs) else {
            return composed::stochastic_axpby::<Self>(y, x, a, b, key);
        };
        let x = x.tensor.contiguous();
        let y = owned(y);
        // SAFETY: `y` is this call's own contiguous CPU bf16 buffer (`owned`), `x` a distinct
        // contiguous CPU tensor of the kind it is read as, both of one size.
        unsafe {
            let target = elements_mut::<bf16>(&y);
            with_kind!(x_kind, X => {
                brainfloat_kernels::stochastic_axpby(target, elements::<X>(&x), a, b, key)
            })
        }
        TchTensor::new(y)
    }

    fn kahan_add(
        weight: TchTensor,
        compensation: TchTensor,
        delta: TchTensor,
    ) -> (TchTensor, TchTensor) {
        if takes_device_route(&[&weight, &compensation, &delta]) {
            return rounding::kahan_add(weight, compensation, delta).unwrap_or_else(
                |[weight, compensation, delta]| {
                    composed::kahan_add::<Self>(weight, compensation, delta)
                },
            );
        }
        let kinds = [&weight, &compensation, &delta].map(|t| t.tensor.kind());
        let runs = kinds == [Kind::BFloat16, Kind::BFloat16, Kind::Float];
        if !runs || !takes_kernels(&[&weight, &compensation, &delta]) {
            return composed::kahan_add::<Self>(weight, compensation, delta);
        }
        let delta = delta.tensor.contiguous();
        let (weight, compensation) = (owned(weight), owned(compensation));
        // SAFETY: weight and compensation are this call's own contiguous CPU bf16 buffers,
        // delta a contiguous CPU f32 tensor, all of one size.
        unsafe {
            brainfloat_kernels::kahan_add(
                elements_mut::<bf16>(&weight),
                elements_mut::<bf16>(&compensation),
                elements::<f32>(&delta),
            )
        };
        (TchTensor::new(weight), TchTensor::new(compensation))
    }

    fn accumulate_f32(sum: TchTensor, part: TchTensor) -> TchTensor {
        if takes_device_route(&[&sum, &part]) && sum.tensor.size() == part.tensor.size() {
            return device::accumulate_f32(sum, part);
        }
        let runs = takes_kernels(&[&sum, &part])
            && sum.tensor.kind() == Kind::Float
            && sum.tensor.size() == part.tensor.size();
        let Some(part_kind) = kernel_kind(&part).filter(|_| runs) else {
            return composed::accumulate_f32::<Self>(sum, part);
        };
        let part = part.tensor.contiguous();
        let sum = owned(sum);
        // SAFETY: `sum` is this call's own contiguous CPU f32 buffer (`owned`), `part` a
        // distinct contiguous CPU tensor of the kind it is read as, both of one size.
        unsafe {
            let target = elements_mut::<f32>(&sum);
            with_kind!(part_kind, P => brainfloat_kernels::accumulate(target, elements::<P>(&part)))
        }
        TchTensor::new(sum)
    }

    fn widen_f32(part: TchTensor) -> TchTensor {
        // An fp32 part is the sum already: `to_kind` would hand back a second handle on its
        // buffer, which the in-place accumulation must not write through.
        match part.tensor.kind() {
            Kind::Float => part,
            _ => TchTensor::new(part.tensor.to_kind(Kind::Float)),
        }
    }

    fn softcapped_cross_entropy(
        logits: TchTensor,
        targets: TchTensor,
        cap: Option<f64>,
        mean_over: usize,
        with_grad: bool,
    ) -> (TchTensor, Option<TchTensor>) {
        if takes_device_route(&[&logits]) && logits.tensor.dim() == 2 {
            return device::softcapped_cross_entropy(logits, targets, cap, mean_over, with_grad);
        }
        let runs = takes_kernels(&[&logits, &targets]) && logits.tensor.dim() == 2;
        let Some(kind) = kernel_kind(&logits).filter(|_| runs) else {
            return composed::softcapped_cross_entropy::<Self>(
                logits, targets, cap, mean_over, with_grad,
            );
        };
        let vocab = logits.tensor.size()[1] as usize;
        let targets = targets.tensor.to_kind(Kind::Int64).contiguous();
        // SAFETY: `targets` is a contiguous CPU i64 tensor.
        let targets: Vec<usize> = unsafe { elements::<i64>(&targets) }
            .iter()
            .map(|t| *t as usize)
            .collect();
        // The gradient is written over the logits: their own buffer when this is its only
        // handle (the head hands each chunk over), a copy otherwise.
        let logits = if with_grad {
            owned(logits)
        } else {
            logits.tensor.contiguous()
        };
        let cap = cap.map(|c| c as f32);
        // SAFETY: `owned` made `logits` this call's own contiguous CPU buffer of `kind` (the
        // only view of it while the gradient is written); without the gradient it is read only.
        let value = unsafe {
            with_kind!(kind, T => if with_grad {
                let values = elements_mut::<T>(&logits);
                brainfloat_kernels::softcapped_cross_entropy_in_place(
                    values, vocab, &targets, cap, mean_over,
                )
            } else {
                let values = elements::<T>(&logits);
                brainfloat_kernels::softcapped_cross_entropy(
                    values, vocab, &targets, cap, mean_over, None,
                )
            })
        };
        let loss = TchTensor::new(tch::Tensor::from_slice(&[value as f32]));
        (loss, with_grad.then(|| TchTensor::new(logits)))
    }

    fn adam_step(
        param: TchTensor,
        grad: TchTensor,
        moment_1: TchTensor,
        moment_2: TchTensor,
        step: AdamStep,
    ) -> (TchTensor, TchTensor, TchTensor) {
        let (param, moment_1, moment_2, _) =
            adam_libtorch([param, grad, moment_1, moment_2], None, step);
        (param, moment_1, moment_2)
    }

    fn adam_step_kahan(
        param: TchTensor,
        grad: TchTensor,
        moment_1: TchTensor,
        moment_2: TchTensor,
        compensation: TchTensor,
        step: AdamStep,
    ) -> (TchTensor, TchTensor, TchTensor, TchTensor) {
        let tensors = [param, grad, moment_1, moment_2];
        let (param, moment_1, moment_2, compensation) =
            adam_libtorch(tensors, Some(compensation), step);
        (param, moment_1, moment_2, compensation.expect("given"))
    }
}

/// Both Adam ops on libtorch: `_fused_adam_` on the device route where it applies (no Kahan,
/// no decay, no stochastic rounding), brainfloat's kernel on libtorch's CPU buffers where every
/// tensor has the parameter's kind, the composed step otherwise.
fn adam_libtorch(
    [param, grad, moment_1, moment_2]: [TchTensor; 4],
    compensation: Option<TchTensor>,
    step: AdamStep,
) -> (TchTensor, TchTensor, TchTensor, Option<TchTensor>) {
    let composed = |[param, grad, moment_1, moment_2]: [TchTensor; 4], compensation| {
        composed::adam_step::<LibTorch>(param, grad, moment_1, moment_2, compensation, step)
    };
    if takes_device_route(&[&param, &grad, &moment_1, &moment_2]) {
        if compensation.is_some() {
            return composed([param, grad, moment_1, moment_2], compensation);
        }
        return match device::adam_step(param, grad, moment_1, moment_2, step) {
            Ok((param, moment_1, moment_2)) => (param, moment_1, moment_2, None),
            Err(tensors) => composed(tensors, None),
        };
    }
    let kind = param.tensor.kind();
    let runs = takes_kernels(&[&param, &grad, &moment_1, &moment_2])
        && [&grad, &moment_1, &moment_2]
            .into_iter()
            .chain(&compensation)
            .all(|t| t.tensor.kind() == kind);
    if !runs || kernel_kind(&param).is_none() {
        return composed([param, grad, moment_1, moment_2], compensation);
    }
    let grad = grad.tensor.contiguous();
    let [param, moment_1, moment_2] = [param, moment_1, moment_2].map(owned);
    let compensation = compensation.map(owned);
    // SAFETY: each tensor is contiguous on the CPU and of `kind`, the updated ones this call's
    // own (`owned`: no other view of their buffers is alive).
    unsafe {
        with_kind!(kind, T => brainfloat_kernels::adam_update(
            elements_mut::<T>(&param),
            elements::<T>(&grad),
            elements_mut::<T>(&moment_1),
            elements_mut::<T>(&moment_2),
            compensation.as_ref().map(|c| elements_mut::<T>(c)),
            &step,
        ))
    };
    (
        TchTensor::new(param),
        TchTensor::new(moment_1),
        TchTensor::new(moment_2),
        compensation.map(TchTensor::new),
    )
}

/// `[.., m, k] · [.., k, n]` on the CPU in bf16 with brainfloat's GEMM, read from libtorch's
/// buffers through their strides (the backward's transposed views cost no copy) into a new
/// contiguous bf16 tensor. `None` unless both are CPU bf16 tensors of one rank ≥ 2 with the
/// same leading dimensions (libtorch broadcasts those; the kernel does not).
fn bf16_matmul(lhs: &TchTensor, rhs: &TchTensor) -> Option<TchTensor> {
    let (lhs, rhs) = (&lhs.tensor, &rhs.tensor);
    let (l, r) = (dims(lhs), dims(rhs));
    let rank = l.len();
    let multipliable = rank >= 2
        && r.len() == rank
        && l[..rank - 2] == r[..rank - 2]
        && l[rank - 1] == r[rank - 2]
        && [lhs, rhs]
            .iter()
            .all(|t| t.device() == Device::Cpu && t.kind() == Kind::BFloat16);
    if !multipliable {
        return None;
    }
    let mut out_dims = l[..rank - 2].to_vec();
    out_dims.extend([l[rank - 2], r[rank - 1]]);
    let shape: Vec<i64> = out_dims.iter().map(|d| *d as i64).collect();
    let out = tch::Tensor::empty(shape, (Kind::BFloat16, Device::Cpu));
    let (lhs_strides, rhs_strides) = (strides(lhs)?, strides(rhs)?);
    // SAFETY: both operands are CPU bf16 tensors (checked above) read through their own sizes
    // and strides; `out` is new, contiguous, bf16 and seen by nothing else.
    unsafe {
        batched_gemm(
            MatrixStack::new(strided_elements(lhs, &l, &lhs_strides), &l, &lhs_strides),
            MatrixStack::new(strided_elements(rhs, &r, &rhs_strides), &r, &rhs_strides),
            elements_mut::<bf16>(&out),
        );
    }
    Some(TchTensor::new(out))
}

/// A tensor's sizes.
fn dims(tensor: &tch::Tensor) -> Vec<usize> {
    tensor.size().iter().map(|d| *d as usize).collect()
}

/// A tensor's strides in elements; `None` if one is negative (libtorch makes none).
fn strides(tensor: &tch::Tensor) -> Option<Vec<usize>> {
    tensor
        .stride()
        .iter()
        .map(|s| usize::try_from(*s).ok())
        .collect()
}

/// The elements a strided view reaches, from its first (`data_ptr`, storage offset included) to
/// its last: `1 + Σ (size − 1)·stride` of them, none when it is empty.
///
/// # Safety
/// `tensor` is on the CPU, of element type `T`, with these `dims` and `strides`, and no mutable
/// view of its buffer is alive.
unsafe fn strided_elements<'a, T>(
    tensor: &'a tch::Tensor,
    dims: &[usize],
    strides: &[usize],
) -> &'a [T] {
    if dims.contains(&0) {
        return &[];
    }
    let len = 1 + dims
        .iter()
        .zip(strides)
        .map(|(d, s)| (d - 1) * s)
        .sum::<usize>();
    // SAFETY: the caller's guarantee; libtorch's view of a non-empty tensor reaches exactly
    // these elements of its storage.
    unsafe { std::slice::from_raw_parts(tensor.data_ptr() as *const T, len) }
}

/// The tensor's kind when the kernels run on it: bf16 or fp32.
fn kernel_kind(tensor: &TchTensor) -> Option<Kind> {
    let kind = tensor.tensor.kind();
    matches!(kind, Kind::BFloat16 | Kind::Float).then_some(kind)
}

/// A contiguous buffer of `tensor`'s values on its device that this call alone holds, to be
/// updated in place: the tensor's own when this handle is its only owner (Burn's `can_mut`: the
/// optimizer hands its state over), one copy otherwise (both routes use it).
fn owned(tensor: TchTensor) -> tch::Tensor {
    let contiguous = tensor.tensor.is_contiguous();
    if tensor.can_mut() && contiguous {
        return tensor.tensor;
    }
    if !contiguous {
        // A new buffer already: copying it again would be a second pass.
        return tensor.tensor.contiguous();
    }
    let mut copy = tensor.tensor.empty_like();
    copy.copy_(&tensor.tensor);
    copy
}

/// The elements of `tensor`.
///
/// # Safety
/// `tensor` is contiguous, on the CPU, of element type `T`, and no mutable view of its
/// buffer is alive.
unsafe fn elements<T>(tensor: &tch::Tensor) -> &[T] {
    let len = tensor.numel();
    if len == 0 {
        return &[];
    }
    // SAFETY: the caller's guarantee; the pointer is non-null for a non-empty tensor.
    unsafe { std::slice::from_raw_parts(tensor.data_ptr() as *const T, len) }
}

/// The elements of `tensor`, to write.
///
/// # Safety
/// As for [`elements`], and no other view of its buffer is alive while this one is.
#[allow(clippy::mut_from_ref)]
unsafe fn elements_mut<T>(tensor: &tch::Tensor) -> &mut [T] {
    let len = tensor.numel();
    if len == 0 {
        return &mut [];
    }
    // SAFETY: the caller's guarantee; the pointer is non-null for a non-empty tensor.
    unsafe { std::slice::from_raw_parts_mut(tensor.data_ptr() as *mut T, len) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(values: &[f32], kind: Kind) -> TchTensor {
        TchTensor::new(tch::Tensor::from_slice(values).to_kind(kind))
    }

    /// A CPU bf16 tensor of `dims` with deterministic values in [−2, 2).
    fn bf16_values(dims: &[i64], seed: i64) -> tch::Tensor {
        let len: i64 = dims.iter().product();
        let values: Vec<f32> = (0..len)
            .map(|i| ((i * 7919 + seed * 104_729) % 4001) as f32 / 1000.0 - 2.0)
            .collect();
        tch::Tensor::from_slice(&values)
            .view(dims)
            .to_kind(Kind::BFloat16)
    }

    /// brainfloat's GEMM on libtorch's buffers against libtorch's fp32 matmul of the same bf16
    /// values, on ragged shapes, batched, through transposed and sliced views (strides and a
    /// storage offset): within one bf16 rounding of the fp32 product, bf16 out, libtorch's
    /// shape.
    #[test]
    fn the_bf16_matmul_on_libtorchs_buffers_matches_its_fp32_product() {
        let cases: Vec<(tch::Tensor, tch::Tensor)> = vec![
            (bf16_values(&[3, 5], 1), bf16_values(&[5, 7], 2)),
            (bf16_values(&[17, 64], 3), bf16_values(&[33, 64], 4).tr()),
            (bf16_values(&[64, 17], 5).tr(), bf16_values(&[64, 255], 6)),
            (bf16_values(&[1, 256], 7), bf16_values(&[1000, 256], 8).tr()),
            (bf16_values(&[4, 9, 33], 9), bf16_values(&[4, 33, 12], 10)),
            (
                bf16_values(&[2, 3, 8, 16], 11),
                bf16_values(&[2, 3, 5, 16], 12).transpose(-1, -2),
            ),
            // A slice: its first element at a storage offset, its rows a stride apart.
            (
                bf16_values(&[10, 40], 13).narrow(0, 3, 6).narrow(1, 5, 30),
                bf16_values(&[30, 20], 14),
            ),
        ];
        for (lhs, rhs) in cases {
            let want = lhs.to_kind(Kind::Float).matmul(&rhs.to_kind(Kind::Float));
            let got = bf16_matmul(&TchTensor::new(lhs.shallow_clone()), &TchTensor::new(rhs))
                .expect("CPU bf16 operands")
                .tensor;
            assert_eq!(got.kind(), Kind::BFloat16);
            assert_eq!(got.size(), want.size());
            let (got, want) = (
                Vec::<f32>::try_from(got.to_kind(Kind::Float).view([-1])).unwrap(),
                Vec::<f32>::try_from(want.view([-1])).unwrap(),
            );
            let scale = want.iter().map(|w| w.abs()).fold(0.0f32, f32::max);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                // One rounding to bf16 (2⁻⁸ relative) of an fp32 sum; fp32 summation orders
                // differ by a few fp32 ulp of the largest term.
                let bound = w.abs() * 2f32.powi(-8) + 1e-5 * scale;
                assert!((g - w).abs() <= bound, "{:?} [{i}]: {g} vs {w}", lhs.size());
            }
        }
    }

    #[test]
    fn the_bf16_matmul_on_libtorchs_buffers_leaves_what_it_cannot_run_to_libtorch() {
        let run = |lhs: tch::Tensor, rhs: tch::Tensor| {
            bf16_matmul(&TchTensor::new(lhs), &TchTensor::new(rhs)).map(|t| t.tensor.size())
        };
        // fp32 operands, mixed kinds, broadcast leading dimensions, mismatched inner ones.
        let fp32 = |dims: &[i64]| bf16_values(dims, 0).to_kind(Kind::Float);
        assert_eq!(run(fp32(&[2, 3]), fp32(&[3, 2])), None);
        assert_eq!(run(bf16_values(&[2, 3], 0), fp32(&[3, 2])), None);
        assert_eq!(
            run(bf16_values(&[2, 2, 3], 0), bf16_values(&[1, 3, 2], 0)),
            None
        );
        assert_eq!(run(bf16_values(&[2, 3], 0), bf16_values(&[4, 2], 0)), None);
        // An empty inner dimension is a product of zeros, an empty outer one an empty product.
        let zeros = bf16_matmul(
            &TchTensor::new(bf16_values(&[2, 0], 0)),
            &TchTensor::new(bf16_values(&[0, 3], 0)),
        )
        .unwrap()
        .tensor;
        assert_eq!(
            Vec::<f32>::try_from(zeros.to_kind(Kind::Float).view([-1])).unwrap(),
            [0.0; 6]
        );
        assert_eq!(
            run(bf16_values(&[0, 4], 0), bf16_values(&[4, 3], 0)),
            Some(vec![0, 3])
        );
    }

    /// As on flex: a kernel writes its result into an input's own buffer when it holds the
    /// tensor's only handle, and leaves a buffer another handle shares untouched.
    #[test]
    fn kernels_update_a_buffer_they_alone_hold_in_place() {
        let values = [0.5f32, -1.0, 2.0, 0.25];
        let sum = tensor(&values, Kind::Float);
        let at = sum.tensor.data_ptr();
        let sum = LibTorch::accumulate_f32(sum, tensor(&values, Kind::BFloat16));
        assert_eq!(sum.tensor.data_ptr(), at, "accumulate_f32");

        let y = tensor(&values, Kind::BFloat16);
        let at = y.tensor.data_ptr();
        let y = LibTorch::stochastic_axpby(y, tensor(&values, Kind::Float), 0.5, 1.0, 7);
        assert_eq!(y.tensor.data_ptr(), at, "stochastic_axpby");

        let logits = TchTensor::new(tch::Tensor::from_slice(&values).view([2, 2]));
        let targets = TchTensor::new(tch::Tensor::from_slice(&[1i64, 0]));
        let at = logits.tensor.data_ptr();
        let (_, grad) =
            LibTorch::softcapped_cross_entropy(logits, targets.clone(), Some(30.0), 2, true);
        assert_eq!(grad.unwrap().tensor.data_ptr(), at, "the loss's gradient");

        let logits = TchTensor::new(tch::Tensor::from_slice(&values).view([2, 2]));
        let (_, grad) = LibTorch::softcapped_cross_entropy(logits.clone(), targets, None, 2, true);
        assert_ne!(grad.unwrap().tensor.data_ptr(), logits.tensor.data_ptr());
        assert_eq!(
            Vec::<f32>::try_from(logits.tensor.view([-1])).unwrap(),
            values
        );
    }
}
