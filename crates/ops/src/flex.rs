//! The flex implementation: every op on brainfloat's kernels for bf16 and fp32 tensors (the
//! composed op for any other dtype).

use brainfloat_kernels::{AdamStep, AttentionShape, Float, MatrixStack, batched_gemm, bf16};
use burn::backend::flex::{FlexTensor, Layout};
use burn::backend::ops::FloatTensorOps;
use burn::backend::{DType, Flex};
use burn::tensor::{Bytes, Shape};

use crate::composed;
use crate::extension::{KernelBackend, SavedAttention};

/// An element type the kernels run on, as stored in a flex tensor: bf16 or fp32.
trait Elem: Float + burn::tensor::Element + bytemuck::Pod {}
impl<T: Float + burn::tensor::Element + bytemuck::Pod> Elem for T {}

/// `Some($body)` with the type `$T` bound to the element type of `$dtype` (bf16 or fp32);
/// `None` for any other dtype, which the kernels do not run on.
macro_rules! with_elem {
    ($dtype:expr, $T:ident => $body:expr) => {
        match $dtype {
            DType::BF16 => {
                type $T = bf16;
                Some($body)
            }
            DType::F32 => {
                type $T = f32;
                Some($body)
            }
            _ => None,
        }
    };
}

impl KernelBackend for Flex {
    fn matmul(lhs: FlexTensor, rhs: FlexTensor) -> FlexTensor {
        if lhs.dtype() == DType::BF16 && rhs.dtype() == DType::BF16 {
            bf16_matmul(&readable(lhs), &readable(rhs))
        } else {
            Flex::float_matmul(lhs, rhs)
        }
    }

    fn rms_norm(x: FlexTensor, eps: f64, with_backward: bool) -> (FlexTensor, Option<FlexTensor>) {
        let x = x.to_contiguous();
        match with_elem!(x.dtype(), T => rms_norm_typed::<T>(&x, eps)) {
            Some((y, inv_rms)) => (y, with_backward.then_some(inv_rms)),
            None => composed::rms_norm::<Self>(x, eps, with_backward),
        }
    }

    fn causal_softmax(
        scores: FlexTensor,
        scale: f64,
        with_backward: bool,
    ) -> (FlexTensor, Option<FlexTensor>) {
        let scores = scores.to_contiguous();
        causal_softmax_typed(&scores, scale, with_backward)
            .unwrap_or_else(|| composed::causal_softmax::<Self>(scores, scale, with_backward))
    }

    fn causal_softmax_backward(probs: FlexTensor, grad: FlexTensor, scale: f64) -> FlexTensor {
        fn run<T: Elem>(probs: &FlexTensor, grad: &FlexTensor, scale: f64) -> FlexTensor {
            let dims = grad.layout().shape().to_vec();
            let [queries, keys] = [dims[dims.len() - 2], dims[dims.len() - 1]];
            let exact: &[f32] = contiguous_values(probs);
            let mut out = vec![T::from_f32(0.0); exact.len()];
            let grad: &[T] = contiguous_values(grad);
            brainfloat_kernels::causal_softmax_backward(
                exact,
                grad,
                queries,
                keys,
                scale as f32,
                &mut out,
            );
            tensor_of(out, dims, T::dtype())
        }
        let (probs, grad) = (probs.to_contiguous(), grad.to_contiguous());
        if probs.dtype() != DType::F32 {
            return composed::causal_softmax_backward::<Self>(probs, grad, scale);
        }
        with_elem!(grad.dtype(), T => run::<T>(&probs, &grad, scale))
            .unwrap_or_else(|| composed::causal_softmax_backward::<Self>(probs, grad, scale))
    }

    fn causal_attention(
        query: FlexTensor,
        key: FlexTensor,
        value: FlexTensor,
        with_backward: bool,
    ) -> (FlexTensor, Option<SavedAttention<Self>>) {
        if ![&query, &key, &value]
            .iter()
            .all(|t| t.dtype() == DType::BF16)
        {
            return composed::causal_attention::<Self>(query, key, value, with_backward);
        }
        let [query, key, value] = [query, key, value].map(|t| t.to_contiguous());
        let (dims, shape) = attention_shape(&query, &key);
        let mut output = vec![bf16::ZERO; query.layout().num_elements()];
        brainfloat_kernels::causal_attention(
            contiguous_values(&query),
            contiguous_values(&key),
            contiguous_values(&value),
            shape,
            &mut output,
        );
        let output = tensor_of(output, dims, DType::BF16);
        // The kernel's backward needs the output beside the inputs, nothing else.
        let saved = with_backward.then(|| (query, key, value, output.clone()));
        (output, saved)
    }

    fn causal_attention_backward(
        query: FlexTensor,
        key: FlexTensor,
        value: FlexTensor,
        saved: FlexTensor,
        grad: FlexTensor,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        // What the kernel's forward saves is its bf16 output; the composed op's, fp32
        // probabilities.
        if saved.dtype() != DType::BF16 {
            return composed::causal_attention_backward::<Self>(query, key, value, saved, grad);
        }
        let [query, key, value, output, grad] =
            [query, key, value, saved, grad].map(|t| t.to_contiguous());
        let (dims, shape) = attention_shape(&query, &key);
        let key_dims = key.layout().shape().to_vec();
        let zeros = |t: &FlexTensor| vec![bf16::ZERO; t.layout().num_elements()];
        let (mut grad_query, mut grad_key, mut grad_value) =
            (zeros(&query), zeros(&key), zeros(&value));
        brainfloat_kernels::causal_attention_backward(
            contiguous_values(&query),
            contiguous_values(&key),
            contiguous_values(&value),
            contiguous_values(&output),
            contiguous_values(&grad),
            shape,
            &mut grad_query,
            &mut grad_key,
            &mut grad_value,
        );
        (
            tensor_of(grad_query, dims, DType::BF16),
            tensor_of(grad_key, key_dims.clone(), DType::BF16),
            tensor_of(grad_value, key_dims, DType::BF16),
        )
    }

    fn rotary(x: FlexTensor, cos: FlexTensor, sin: FlexTensor) -> FlexTensor {
        rotate(x, cos, sin, false)
    }

    fn rotary_backward(grad: FlexTensor, cos: FlexTensor, sin: FlexTensor) -> FlexTensor {
        rotate(grad, cos, sin, true)
    }

    fn accumulate_f32(sum: FlexTensor, part: FlexTensor) -> FlexTensor {
        let part = part.to_contiguous();
        let n = part.layout().num_elements();
        let fits = sum.dtype() == DType::F32 && sum.layout().shape() == part.layout().shape();
        if !fits || !has_kernel_dtype(part.dtype()) {
            return composed::accumulate_f32::<Self>(sum, part);
        }
        let mut sum = owned_contiguous(sum);
        let start = sum.layout().start_offset();
        let target = &mut sum.storage_mut::<f32>()[start..start + n];
        with_elem!(part.dtype(), T => {
            brainfloat_kernels::accumulate::<T>(target, contiguous_values(&part))
        });
        sum
    }

    /// One pass, in place where this call holds the tensor: the fp32 product of each element
    /// and the factor, rounded once (no widened copy of a bf16 tensor).
    fn scale(x: FlexTensor, factor: f64) -> FlexTensor {
        if !has_kernel_dtype(x.dtype()) {
            return composed::scale::<Self>(x, factor);
        }
        let n = x.layout().num_elements();
        let mut x = owned_contiguous(x);
        let start = x.layout().start_offset();
        with_elem!(x.dtype(), T => {
            brainfloat_kernels::scale::<T>(&mut x.storage_mut()[start..start + n], factor as f32)
        });
        x
    }

    /// One pass, in place where this call holds `y`, with the roundings of the composed op's
    /// cast, scalings and addition (`brainfloat_kernels::axpby`; a test holds the bits).
    fn axpby(y: FlexTensor, x: FlexTensor, a: f64, b: f64) -> FlexTensor {
        let same_shape = y.layout().shape() == x.layout().shape();
        if !has_kernel_dtype(y.dtype()) || !has_kernel_dtype(x.dtype()) || !same_shape {
            return composed::axpby::<Self>(y, x, a, b);
        }
        let x = x.to_contiguous();
        let n = x.layout().num_elements();
        let mut y = owned_contiguous(y);
        let start = y.layout().start_offset();
        let (a, b) = (a as f32, b as f32);
        with_elem!(y.dtype(), T => {
            let y = &mut y.storage_mut::<T>()[start..start + n];
            with_elem!(x.dtype(), X => {
                brainfloat_kernels::axpby::<T, X>(y, contiguous_values(&x), a, b)
            })
        });
        y
    }

    fn widen_f32(part: FlexTensor) -> FlexTensor {
        let part = part.to_contiguous();
        let dims = part.layout().shape().to_vec();
        let widened = with_elem!(part.dtype(), T => {
            brainfloat_kernels::widen::<T>(contiguous_values(&part))
        });
        match widened {
            Some(widened) => tensor_of(widened, dims, DType::F32),
            None => composed::to_f32::<Self>(part),
        }
    }

    fn relu_square(x: FlexTensor) -> FlexTensor {
        fn run<T: Elem>(x: &FlexTensor) -> FlexTensor {
            let values: &[T] = contiguous_values(x);
            let mut y = vec![T::from_f32(0.0); values.len()];
            brainfloat_kernels::relu_square(values, &mut y);
            tensor_of(y, x.layout().shape().to_vec(), T::dtype())
        }
        let x = x.to_contiguous();
        with_elem!(x.dtype(), T => run::<T>(&x)).unwrap_or_else(|| composed::relu_square::<Self>(x))
    }

    fn relu_square_backward(x: FlexTensor, grad: FlexTensor) -> FlexTensor {
        fn run<T: Elem>(x: &FlexTensor, grad: &FlexTensor) -> FlexTensor {
            let values: &[T] = contiguous_values(x);
            let mut dx = vec![T::from_f32(0.0); values.len()];
            brainfloat_kernels::relu_square_backward(values, contiguous_values(grad), &mut dx);
            tensor_of(dx, x.layout().shape().to_vec(), T::dtype())
        }
        if x.dtype() != grad.dtype() {
            return composed::relu_square_backward::<Self>(x, grad);
        }
        let (x, grad) = (x.to_contiguous(), grad.to_contiguous());
        with_elem!(x.dtype(), T => run::<T>(&x, &grad))
            .unwrap_or_else(|| composed::relu_square_backward::<Self>(x, grad))
    }

    fn softcapped_cross_entropy(
        logits: FlexTensor,
        targets: FlexTensor,
        cap: Option<f64>,
        mean_over: usize,
        with_grad: bool,
    ) -> (FlexTensor, Option<FlexTensor>) {
        if !has_kernel_dtype(logits.dtype()) {
            return composed::softcapped_cross_entropy::<Self>(
                logits, targets, cap, mean_over, with_grad,
            );
        }
        let logits = owned_contiguous(logits);
        with_elem!(logits.dtype(), T => {
            cross_entropy_typed::<T>(logits, &targets, cap, mean_over, with_grad)
        })
        .expect("a bf16 or fp32 loss")
    }

    fn adam_step(
        param: FlexTensor,
        grad: FlexTensor,
        moment_1: FlexTensor,
        moment_2: FlexTensor,
        step: AdamStep,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let (param, moment_1, moment_2, _) =
            adam_flex([param, grad, moment_1, moment_2], None, step);
        (param, moment_1, moment_2)
    }

    fn adam_step_kahan(
        param: FlexTensor,
        grad: FlexTensor,
        moment_1: FlexTensor,
        moment_2: FlexTensor,
        compensation: FlexTensor,
        step: AdamStep,
    ) -> (FlexTensor, FlexTensor, FlexTensor, FlexTensor) {
        let tensors = [param, grad, moment_1, moment_2];
        let (param, moment_1, moment_2, compensation) =
            adam_flex(tensors, Some(compensation), step);
        (param, moment_1, moment_2, compensation.expect("given"))
    }

    fn rms_norm_backward(x: FlexTensor, inv_rms: FlexTensor, grad: FlexTensor) -> FlexTensor {
        let (x, grad) = (x.to_contiguous(), grad.to_contiguous());
        let inv_rms = inv_rms.to_contiguous();
        with_elem!(x.dtype(), T => rms_norm_backward_typed::<T>(&x, &inv_rms, &grad))
            .unwrap_or_else(|| composed::rms_norm_backward::<Self>(x, inv_rms, grad))
    }

    fn square_sum(x: FlexTensor) -> FlexTensor {
        let x = x.to_contiguous();
        let sum =
            with_elem!(x.dtype(), T => brainfloat_kernels::square_sum::<T>(contiguous_values(&x)));
        match sum {
            Some(sum) => tensor_of(vec![sum as f32], vec![1], DType::F32),
            None => composed::square_sum::<Self>(x),
        }
    }

    fn round_stochastic(values: FlexTensor, key: u64) -> FlexTensor {
        let values = composed::to_f32::<Self>(values);
        let values = values.to_contiguous();
        let source: &[f32] = contiguous_values(&values);
        let mut rounded = vec![bf16::ZERO; source.len()];
        brainfloat_kernels::round_stochastic_into(source, &mut rounded, key);
        tensor_of(rounded, values.layout().shape().to_vec(), DType::BF16)
    }

    fn stochastic_axpby(y: FlexTensor, x: FlexTensor, a: f32, b: f32, key: u64) -> FlexTensor {
        if y.dtype() != DType::BF16 || !has_kernel_dtype(x.dtype()) {
            return composed::stochastic_axpby::<Self>(y, x, a, b, key);
        }
        let (mut y, x) = (owned_contiguous(y), x.to_contiguous());
        let n = y.layout().num_elements();
        let start = y.layout().start_offset();
        let target = &mut y.storage_mut::<bf16>()[start..start + n];
        with_elem!(x.dtype(), T => {
            brainfloat_kernels::stochastic_axpby::<T>(target, contiguous_values(&x), a, b, key)
        });
        y
    }

    fn kahan_add(
        weight: FlexTensor,
        compensation: FlexTensor,
        delta: FlexTensor,
    ) -> (FlexTensor, FlexTensor) {
        let dtypes = [weight.dtype(), compensation.dtype(), delta.dtype()];
        if dtypes != [DType::BF16, DType::BF16, DType::F32] {
            return composed::kahan_add::<Self>(weight, compensation, delta);
        }
        let (mut weight, mut compensation) =
            (owned_contiguous(weight), owned_contiguous(compensation));
        let delta = delta.to_contiguous();
        let n = weight.layout().num_elements();
        let range = |t: &FlexTensor| t.layout().start_offset()..t.layout().start_offset() + n;
        let (w, c) = (range(&weight), range(&compensation));
        brainfloat_kernels::kahan_add(
            &mut weight.storage_mut::<bf16>()[w],
            &mut compensation.storage_mut::<bf16>()[c],
            contiguous_values::<f32>(&delta),
        );
        (weight, compensation)
    }
}

/// Whether the kernels run on `dtype` (bf16 or fp32).
fn has_kernel_dtype(dtype: DType) -> bool {
    matches!(dtype, DType::BF16 | DType::F32)
}

/// `tensor` itself when contiguous, else a contiguous copy. Taking the tensor (rather than
/// `to_contiguous(&self)`, which clones the handle) leaves its buffer with no second owner, so
/// that a kernel writing through `storage_mut` updates it in place instead of copying it first.
fn owned_contiguous(tensor: FlexTensor) -> FlexTensor {
    if tensor.is_contiguous() {
        tensor
    } else {
        tensor.to_contiguous()
    }
}

/// `tensor`, copied to a contiguous layout only when a stride is negative (a flipped view),
/// which the GEMM's views cannot express.
fn readable(tensor: FlexTensor) -> FlexTensor {
    if tensor.layout().strides().iter().all(|s| *s >= 0) {
        tensor
    } else {
        tensor.to_contiguous()
    }
}

/// The dims of `[B, H, Tq, d]` queries and the kernel's shape of attention over `[B, H, Tk, d]`
/// keys.
fn attention_shape(query: &FlexTensor, key: &FlexTensor) -> (Vec<usize>, AttentionShape) {
    let dims = query.layout().shape().to_vec();
    let &[batch, heads, queries, head_dim] = dims.as_slice() else {
        panic!("causal_attention: [batch, heads, positions, head_dim] queries, not {dims:?}");
    };
    let shape = AttentionShape {
        matrices: batch * heads,
        queries,
        keys: key.layout().shape()[2],
        head_dim,
    };
    (dims, shape)
}

/// A new contiguous flex tensor of `dims` holding `values`.
fn tensor_of<E: bytemuck::NoUninit + Send + Sync>(
    values: Vec<E>,
    dims: Vec<usize>,
    dtype: DType,
) -> FlexTensor {
    FlexTensor::new(
        Bytes::from_elems(values),
        Layout::contiguous(Shape::from(dims)),
        dtype,
    )
}

/// `[.., m, k] · [.., k, n]` in bf16 (`brainfloat_kernels::batched_gemm`).
fn bf16_matmul(lhs: &FlexTensor, rhs: &FlexTensor) -> FlexTensor {
    let (l, r) = (lhs.layout().shape(), rhs.layout().shape());
    let rank = l.num_dims();
    assert!(
        rank >= 2 && r.num_dims() == rank && l[..rank - 2] == r[..rank - 2],
        "matmul: {l:?} × {r:?}"
    );
    let mut dims = l[..rank - 2].to_vec();
    dims.extend([l[rank - 2], r[rank - 1]]);
    let mut out = vec![bf16::ZERO; dims.iter().product()];
    let (lhs_strides, rhs_strides) = (strides(lhs), strides(rhs));
    batched_gemm(
        MatrixStack::new(storage_from_offset(lhs), l, &lhs_strides),
        MatrixStack::new(storage_from_offset(rhs), r, &rhs_strides),
        &mut out,
    );
    tensor_of(out, dims, DType::BF16)
}

/// A tensor's strides (non-negative: see [`readable`]).
fn strides(tensor: &FlexTensor) -> Vec<usize> {
    tensor
        .layout()
        .strides()
        .iter()
        .map(|s| *s as usize)
        .collect()
}

/// A tensor's storage from its first element on.
fn storage_from_offset(tensor: &FlexTensor) -> &[bf16] {
    &tensor.storage()[tensor.layout().start_offset()..]
}

fn rms_norm_typed<T: Elem>(x: &FlexTensor, eps: f64) -> (FlexTensor, FlexTensor) {
    let dims = x.layout().shape().to_vec();
    let width = *dims.last().expect("rms_norm of a scalar");
    let values: &[T] = contiguous_values(x);
    let mut y = vec![T::from_f32(0.0); values.len()];
    let mut inv_rms = vec![0.0f32; values.len() / width.max(1)];
    brainfloat_kernels::rms_norm(values, width, eps as f32, &mut y, &mut inv_rms);
    let mut stat_dims = dims.clone();
    *stat_dims.last_mut().expect("rank ≥ 1") = 1;
    (
        tensor_of(y, dims, x.dtype()),
        tensor_of(inv_rms, stat_dims, DType::F32),
    )
}

fn rms_norm_backward_typed<T: Elem>(
    x: &FlexTensor,
    inv_rms: &FlexTensor,
    grad: &FlexTensor,
) -> FlexTensor {
    let dims = x.layout().shape().to_vec();
    let width = *dims.last().expect("rms_norm of a scalar");
    let values: &[T] = contiguous_values(x);
    let stats: &[f32] = contiguous_values(inv_rms);
    let grad = if grad.dtype() == x.dtype() {
        grad.clone()
    } else {
        Flex::float_cast(grad.clone(), x.dtype().into())
    };
    let grad_values: &[T] = contiguous_values(&grad);
    let mut dx = vec![T::from_f32(0.0); values.len()];
    brainfloat_kernels::rms_norm_backward(values, stats, grad_values, width, &mut dx);
    tensor_of(dx, dims, x.dtype())
}

/// The elements of a contiguous tensor.
fn contiguous_values<E: burn::tensor::Element + bytemuck::Pod>(tensor: &FlexTensor) -> &[E] {
    let layout = tensor.layout();
    &tensor.storage()[layout.start_offset()..][..layout.num_elements()]
}

/// Integer `targets` (any layout, i32 or i64) as indices.
fn indices(targets: &FlexTensor) -> Vec<usize> {
    let targets = targets.to_contiguous();
    match targets.dtype() {
        DType::I64 => contiguous_values::<i64>(&targets)
            .iter()
            .map(|t| *t as usize)
            .collect(),
        DType::I32 => contiguous_values::<i32>(&targets)
            .iter()
            .map(|t| *t as usize)
            .collect(),
        other => panic!("cross_entropy: targets of dtype {other:?}"),
    }
}

/// The loss, and with `with_grad` its gradient written over the logits' own buffer (copied
/// first only when another tensor shares it).
fn cross_entropy_typed<T: Elem>(
    mut logits: FlexTensor,
    targets: &FlexTensor,
    cap: Option<f64>,
    mean_over: usize,
    with_grad: bool,
) -> (FlexTensor, Option<FlexTensor>) {
    let vocab = *logits.layout().shape().last().expect("logits [N, V]");
    let targets = indices(targets);
    let cap = cap.map(|c| c as f32);
    let loss = |value: f64| tensor_of(vec![value as f32], vec![1], DType::F32);
    if !with_grad {
        let values: &[T] = contiguous_values(&logits);
        let value = brainfloat_kernels::softcapped_cross_entropy(
            values, vocab, &targets, cap, mean_over, None,
        );
        return (loss(value), None);
    }
    let n = logits.layout().num_elements();
    let start = logits.layout().start_offset();
    let values = &mut logits.storage_mut::<T>()[start..start + n];
    let value = brainfloat_kernels::softcapped_cross_entropy_in_place(
        values, vocab, &targets, cap, mean_over,
    );
    (loss(value), Some(logits))
}

/// Both Adam ops on flex: the kernel where every tensor has the parameter's dtype (bf16 or
/// fp32), the composed step otherwise.
fn adam_flex(
    [param, grad, moment_1, moment_2]: [FlexTensor; 4],
    compensation: Option<FlexTensor>,
    step: AdamStep,
) -> (FlexTensor, FlexTensor, FlexTensor, Option<FlexTensor>) {
    let dtype = param.dtype();
    let one_dtype = [&grad, &moment_1, &moment_2]
        .into_iter()
        .chain(&compensation)
        .all(|t| t.dtype() == dtype);
    if !one_dtype || !has_kernel_dtype(dtype) {
        return composed::adam_step::<Flex>(param, grad, moment_1, moment_2, compensation, step);
    }
    let tensors = [param, grad, moment_1, moment_2].map(owned_contiguous);
    let compensation = compensation.map(owned_contiguous);
    with_elem!(dtype, T => adam_typed::<T>(tensors, compensation, &step))
        .expect("a bf16 or fp32 step")
}

/// [`brainfloat_kernels::adam_update`] in place on `[param, grad, moment_1, moment_2]` and the
/// compensation (contiguous): the parameter, moments and compensation are updated in their own
/// buffers when this is their only owner (the optimizer hands them over), copied first otherwise.
fn adam_typed<T: Elem>(
    [mut param, grad, mut moment_1, mut moment_2]: [FlexTensor; 4],
    mut compensation: Option<FlexTensor>,
    step: &AdamStep,
) -> (FlexTensor, FlexTensor, FlexTensor, Option<FlexTensor>) {
    let n = param.layout().num_elements();
    let range = |t: &FlexTensor| t.layout().start_offset()..t.layout().start_offset() + n;
    let (p, m1, m2) = (range(&param), range(&moment_1), range(&moment_2));
    let c = compensation.as_ref().map(range);
    brainfloat_kernels::adam_update(
        &mut param.storage_mut::<T>()[p],
        contiguous_values::<T>(&grad),
        &mut moment_1.storage_mut::<T>()[m1],
        &mut moment_2.storage_mut::<T>()[m2],
        (compensation.as_mut().zip(c)).map(|(t, c)| &mut t.storage_mut::<T>()[c]),
        step,
    );
    (param, moment_1, moment_2, compensation)
}

/// The causal softmax of contiguous `scores` in their dtype, and with `exact` also in fp32.
fn causal_softmax_typed(
    scores: &FlexTensor,
    scale: f64,
    exact: bool,
) -> Option<(FlexTensor, Option<FlexTensor>)> {
    fn run<T: Elem>(
        scores: &FlexTensor,
        scale: f64,
        exact: bool,
    ) -> (FlexTensor, Option<FlexTensor>) {
        let dims = scores.layout().shape().to_vec();
        let [queries, keys] = [dims[dims.len() - 2], dims[dims.len() - 1]];
        let values: &[T] = contiguous_values(scores);
        let mut probs = vec![T::from_f32(0.0); values.len()];
        let mut fp32 = exact.then(|| vec![0.0f32; values.len()]);
        brainfloat_kernels::causal_softmax(
            values,
            queries,
            keys,
            scale as f32,
            &mut probs,
            fp32.as_deref_mut(),
        );
        (
            tensor_of(probs, dims.clone(), scores.dtype()),
            fp32.map(|p| tensor_of(p, dims, DType::F32)),
        )
    }
    with_elem!(scores.dtype(), T => run::<T>(scores, scale, exact))
}

/// [`KernelBackend::rotary`], or with `inverse` its backward, by the kernel where the tables
/// have `x`'s dtype.
fn rotate(x: FlexTensor, cos: FlexTensor, sin: FlexTensor, inverse: bool) -> FlexTensor {
    let composed = |x, cos, sin| match inverse {
        false => composed::rotary::<Flex>(x, cos, sin),
        true => composed::rotary_backward::<Flex>(x, cos, sin),
    };
    let dtype = x.dtype();
    if cos.dtype() != dtype || sin.dtype() != dtype {
        return composed(x, cos, sin);
    }
    let [x, cos, sin] = [x, cos, sin].map(|t| t.to_contiguous());
    with_elem!(dtype, T => rotary_typed::<T>(&x, &cos, &sin, inverse))
        .unwrap_or_else(|| composed(x, cos, sin))
}

fn rotary_typed<T: Elem>(
    x: &FlexTensor,
    cos: &FlexTensor,
    sin: &FlexTensor,
    inverse: bool,
) -> FlexTensor {
    let dims = x.layout().shape().to_vec();
    let (positions, heads, head_dim) = (dims[1], dims[2], dims[3]);
    let values: &[T] = contiguous_values(x);
    let mut y = vec![T::from_f32(0.0); values.len()];
    brainfloat_kernels::rotary(
        values,
        contiguous_values(cos),
        contiguous_values(sin),
        (positions, heads, head_dim),
        inverse,
        &mut y,
    );
    tensor_of(y, dims, x.dtype())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(values: &[f32], dtype: DType) -> FlexTensor {
        let n = values.len();
        match dtype {
            DType::BF16 => tensor_of(
                values.iter().map(|v| bf16::from_f32(*v)).collect(),
                vec![n],
                dtype,
            ),
            _ => tensor_of(values.to_vec(), vec![n], dtype),
        }
    }

    /// A tensor's elements as bits (bf16 widened to the fp32 with the same value).
    fn bits(tensor: &FlexTensor) -> Vec<u32> {
        with_elem!(tensor.dtype(), T => {
            contiguous_values::<T>(tensor).iter().map(|v| v.to_f32().to_bits()).collect()
        })
        .expect("a kernel dtype")
    }

    /// The one-pass `scale` and `axpby` round as the composed ops do, one tensor op at a
    /// time: the same bits (the optimizer's updates, and so the training curve, do not move),
    /// on values of every magnitude whose sums cancel, carry and tie.
    #[test]
    fn one_pass_scale_and_axpby_give_the_composed_ops_bits() {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut draw = || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            let unit = (state >> 40) as f32 / (1u64 << 24) as f32;
            (unit - 0.5) * 2f32.powi((state >> 33) as i32 % 40 - 20)
        };
        let (ys, xs): (Vec<f32>, Vec<f32>) = (0..4099).map(|_| (draw(), draw())).unzip();
        // Ties and cancellation: x equal to −y, and y one bf16 ulp from x.
        let xs: Vec<f32> = (xs.iter().zip(&ys).enumerate())
            .map(|(i, (x, y))| match i % 7 {
                0 => -y,
                1 => y * (1.0 + 2f32.powi(-8)),
                _ => *x,
            })
            .collect();
        for y_dtype in [DType::BF16, DType::F32] {
            for x_dtype in [DType::BF16, DType::F32] {
                for (a, b) in [
                    (1.0, -0.01),
                    (0.95, 1.0),
                    (0.5, 2.0),
                    (0.9, -3e-4),
                    (1.0, 1.0),
                ] {
                    let y = || tensor(&ys, y_dtype);
                    let x = || tensor(&xs, x_dtype);
                    let fused = Flex::axpby(y(), x(), a, b);
                    let composed = composed::axpby::<Flex>(y(), x(), a, b);
                    assert_eq!(fused.dtype(), y_dtype);
                    let case = format!("axpby y {y_dtype:?}, x {x_dtype:?}, a {a}, b {b}");
                    assert!(bits(&fused) == bits(&composed), "{case}");
                }
            }
            for factor in [0.95, -3.4445, 1e-3] {
                let x = || tensor(&ys, y_dtype);
                let fused = Flex::scale(x(), factor);
                let composed = composed::scale::<Flex>(x(), factor);
                assert_eq!(fused.dtype(), y_dtype);
                let case = format!("scale {y_dtype:?} by {factor}");
                assert!(bits(&fused) == bits(&composed), "{case}");
            }
        }
    }

    /// Where a tensor's elements start.
    fn address(tensor: &FlexTensor) -> *const u8 {
        match tensor.dtype() {
            DType::BF16 => tensor.storage::<bf16>().as_ptr().cast(),
            _ => tensor.storage::<f32>().as_ptr().cast(),
        }
    }

    /// The kernels that write their result into an input do so in that input's own buffer when
    /// they hold its only handle (no logits-, weight- or state-sized copy first), and leave a
    /// buffer that another handle shares untouched.
    #[test]
    fn kernels_update_a_buffer_they_alone_hold_in_place() {
        let values = [0.5f32, -1.0, 2.0, 0.25];
        let sum = tensor(&values, DType::F32);
        let at = address(&sum);
        let sum = Flex::accumulate_f32(sum, tensor(&values, DType::BF16));
        assert_eq!(address(&sum), at, "accumulate_f32");

        let y = tensor(&values, DType::BF16);
        let at = address(&y);
        let y = Flex::stochastic_axpby(y, tensor(&values, DType::F32), 0.5, 1.0, 7);
        assert_eq!(address(&y), at, "stochastic_axpby");

        for dtype in [DType::BF16, DType::F32] {
            let y = tensor(&values, dtype);
            let at = address(&y);
            let y = Flex::axpby(y, tensor(&values, DType::F32), 0.5, 2.0);
            assert_eq!(address(&y), at, "axpby {dtype:?}");
            let y = Flex::scale(y, 3.0);
            assert_eq!(address(&y), at, "scale {dtype:?}");
        }

        let (weight, compensation) = (tensor(&values, DType::BF16), tensor(&[0.0; 4], DType::BF16));
        let at = [address(&weight), address(&compensation)];
        let (weight, compensation) =
            Flex::kahan_add(weight, compensation, tensor(&values, DType::F32));
        assert_eq!([address(&weight), address(&compensation)], at, "kahan_add");

        let logits = tensor_of(values.to_vec(), vec![2, 2], DType::F32);
        let targets = tensor_of(vec![1i64, 0], vec![2], DType::I64);
        let at = address(&logits);
        let (_, grad) =
            Flex::softcapped_cross_entropy(logits, targets.clone(), Some(30.0), 2, true);
        assert_eq!(
            address(&grad.unwrap()),
            at,
            "the loss's gradient over its logits"
        );

        // A shared buffer is copied, not written.
        let logits = tensor_of(values.to_vec(), vec![2, 2], DType::F32);
        let (_, grad) = Flex::softcapped_cross_entropy(logits.clone(), targets, None, 2, true);
        assert_ne!(address(&grad.unwrap()), address(&logits));
        assert_eq!(logits.storage::<f32>(), values);
    }
}
