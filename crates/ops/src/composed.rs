//! Every op of [`KernelBackend`] written with Burn's own ops: the default bodies of the trait,
//! hence what a backend without a kernel for an op runs, and the reference each kernel is
//! checked against (the tests on the CPU; `brainfloat gpu-check` on a GPU).
//!
//! Each function takes and returns a backend's primitives and keeps the precision contract of
//! its op (fp32 inside where the op says so, the input's dtype out). Functions that build on
//! other ops call them through `B` ([`KernelBackend`]), so a backend's kernel for one op serves
//! the composition of another.

use brainfloat_kernels::{AdamStep, MAX_SHIFT_CAP, bf16};
use burn::backend::tensor::{BoolTensor, FloatTensor, IntTensor};
use burn::backend::{Backend, FloatDType, Scalar, TensorMetadata};
use burn::tensor::{DType, IndexingUpdateOp, Shape, Slice, TensorData};

use crate::extension::{KernelBackend, SavedAttention};

/// `tensor` in fp32: itself when it is fp32 already (no pass over it).
pub fn to_f32<B: Backend>(tensor: FloatTensor<B>) -> FloatTensor<B> {
    in_dtype::<B>(tensor, FloatDType::F32)
}

/// `tensor` in `dtype`: itself when it has it already, cast otherwise.
fn in_dtype<B: Backend>(tensor: FloatTensor<B>, dtype: FloatDType) -> FloatTensor<B> {
    if tensor.dtype() == DType::from(dtype) {
        tensor
    } else {
        B::float_cast(tensor, dtype)
    }
}

/// A float tensor's dtype.
fn dtype_of<B: Backend>(tensor: &FloatTensor<B>) -> FloatDType {
    FloatDType::from(tensor.dtype())
}

/// An `f32` constant as an op's scalar: the arithmetic the kernels do in fp32 with the same
/// rounded constants.
fn constant(value: f32) -> Scalar {
    Scalar::from(value as f64)
}

/// `tensor · factor` in `tensor`'s dtype with the factor in fp32, as PyTorch multiplies a tensor
/// by a Python number: a bf16 tensor is widened, multiplied and rounded once. (Burn's scalar ops
/// on flex round the factor to the tensor's dtype first: Newton–Schulz's 3.4445 would become
/// 3.4375 in bf16.)
pub fn scale<B: Backend>(tensor: FloatTensor<B>, factor: f64) -> FloatTensor<B> {
    match dtype_of::<B>(&tensor) {
        FloatDType::F32 | FloatDType::F64 => B::float_mul_scalar(tensor, Scalar::from(factor)),
        dtype => in_dtype::<B>(
            B::float_mul_scalar(to_f32::<B>(tensor), Scalar::from(factor)),
            dtype,
        ),
    }
}

/// [`KernelBackend::rms_norm`]: `x · r` with `r = 1/√(mean(x²) + eps)` per row, in fp32,
/// rounded once to `x`'s dtype; with `with_backward`, `r` (fp32 `[.., 1]`).
pub fn rms_norm<B: Backend>(
    x: FloatTensor<B>,
    eps: f64,
    with_backward: bool,
) -> (FloatTensor<B>, Option<FloatTensor<B>>) {
    let (dtype, last) = (dtype_of::<B>(&x), x.rank() - 1);
    let x = to_f32::<B>(x);
    let mean_square = B::float_mean_dim(B::float_mul(x.clone(), x.clone()), last);
    let inv_rms = B::float_recip(B::float_sqrt(B::float_add_scalar(
        mean_square,
        Scalar::from(eps),
    )));
    let y = in_dtype::<B>(B::float_mul(x, inv_rms.clone()), dtype);
    (y, with_backward.then_some(inv_rms))
}

/// [`KernelBackend::rms_norm_backward`]: `r · (dy − x · r² · mean(x · dy))` in fp32, `x`'s
/// dtype out.
pub fn rms_norm_backward<B: Backend>(
    x: FloatTensor<B>,
    inv_rms: FloatTensor<B>,
    grad: FloatTensor<B>,
) -> FloatTensor<B> {
    let (dtype, last) = (dtype_of::<B>(&x), x.rank() - 1);
    let (x, grad) = (to_f32::<B>(x), to_f32::<B>(grad));
    let mean_dot = B::float_mean_dim(B::float_mul(x.clone(), grad.clone()), last);
    let coefficient = B::float_mul(B::float_mul(inv_rms.clone(), inv_rms.clone()), mean_dot);
    let dx = B::float_sub(grad, B::float_mul(x, coefficient));
    in_dtype::<B>(B::float_mul(dx, inv_rms), dtype)
}

/// `sum + part` in fp32.
pub fn accumulate_f32<B: Backend>(sum: FloatTensor<B>, part: FloatTensor<B>) -> FloatTensor<B> {
    B::float_add(to_f32::<B>(sum), to_f32::<B>(part))
}

/// The causal mask of `[.., queries, keys]` scores, true where a query must not look: key `j`
/// is in query `i`'s future when `j > i + keys − queries` (the queries are the last ones).
fn future_mask<B: Backend>(shape: &Shape, device: &B::Device) -> BoolTensor<B> {
    let rank = shape.num_dims();
    let (queries, keys) = (shape[rank - 2], shape[rank - 1]);
    let offset = keys as i64 - queries as i64;
    let future: Vec<bool> = (0..queries as i64)
        .flat_map(|i| (0..keys as i64).map(move |j| j > i + offset))
        .collect();
    let mut dims = vec![1; rank];
    dims[rank - 2..].copy_from_slice(&[queries, keys]);
    let mask = B::bool_from_data(TensorData::new(future, dims), device);
    B::bool_expand(mask, shape.clone())
}

/// `softmax(scale · scores)` with the causal mask over the last dimension, in fp32.
fn causal_probabilities<B: Backend>(scores: FloatTensor<B>, scale: f64) -> FloatTensor<B> {
    let (shape, device) = (scores.shape(), scores.device());
    let last = shape.num_dims() - 1;
    let scaled = B::float_mul_scalar(to_f32::<B>(scores), Scalar::from(scale));
    let masked = B::float_mask_fill(
        scaled,
        future_mask::<B>(&shape, &device),
        Scalar::from(f64::NEG_INFINITY),
    );
    let max = B::float_max_dim(masked.clone(), last);
    let exp = B::float_exp(B::float_sub(masked, max));
    let sum = B::float_sum_dim(exp.clone(), last);
    B::float_div(exp, sum)
}

/// [`KernelBackend::causal_softmax`]: fp32 inside, the scores' dtype out; with
/// `with_backward`, the fp32 probabilities too.
pub fn causal_softmax<B: Backend>(
    scores: FloatTensor<B>,
    scale: f64,
    with_backward: bool,
) -> (FloatTensor<B>, Option<FloatTensor<B>>) {
    let dtype = dtype_of::<B>(&scores);
    let probs = causal_probabilities::<B>(scores, scale);
    (
        in_dtype::<B>(probs.clone(), dtype),
        with_backward.then_some(probs),
    )
}

/// [`KernelBackend::causal_softmax_backward`]: `scale · P ⊙ (dP − Σ_j dP_j·P_j)` in fp32, the
/// gradient's dtype out.
pub fn causal_softmax_backward<B: Backend>(
    probs: FloatTensor<B>,
    grad: FloatTensor<B>,
    scale: f64,
) -> FloatTensor<B> {
    let (dtype, last) = (dtype_of::<B>(&grad), grad.rank() - 1);
    let (probs, grad) = (to_f32::<B>(probs), to_f32::<B>(grad));
    let dot = B::float_sum_dim(B::float_mul(probs.clone(), grad.clone()), last);
    let scores_grad = B::float_mul(probs, B::float_sub(grad, dot));
    in_dtype::<B>(B::float_mul_scalar(scores_grad, Scalar::from(scale)), dtype)
}

/// `1/√d` for `[.., d]` queries.
fn attention_scale<B: Backend>(query: &FloatTensor<B>) -> f64 {
    let head_dim = query.shape()[query.rank() - 1];
    1.0 / (head_dim as f64).sqrt()
}

/// [`KernelBackend::causal_attention`]: both products in the inputs' dtype (a bf16 product is
/// rounded once from its fp32 accumulator) around the causal softmax
/// ([`KernelBackend::causal_softmax`]: fp32 inside, rounded once to the inputs'
/// dtype for the product with the values). Saved for the backward: `(q, k, v, P)` with the
/// fp32 probabilities `P` (`[B, H, Tq, Tk]`).
pub fn causal_attention<B: KernelBackend>(
    query: FloatTensor<B>,
    key: FloatTensor<B>,
    value: FloatTensor<B>,
    with_backward: bool,
) -> (FloatTensor<B>, Option<SavedAttention<B>>) {
    let scale = attention_scale::<B>(&query);
    let scores = B::matmul(query.clone(), B::float_swap_dims(key.clone(), 2, 3));
    if !with_backward {
        let (probs, _) = B::causal_softmax(scores, scale, false);
        return (B::matmul(probs, value), None);
    }
    let (probs, exact) = B::causal_softmax(scores, scale, true);
    let exact = exact.expect("asked for with the probabilities");
    let output = B::matmul(probs, value.clone());
    (output, Some((query, key, value, exact)))
}

/// [`KernelBackend::causal_attention_backward`] of [`causal_attention`], each product in the
/// inputs' dtype: `dV = Pᵀ·dO`, `dP = dO·Vᵀ`, `dS` the softmax's backward from the fp32
/// probabilities, `dQ = dS·K` and `dK = dSᵀ·Q`.
pub fn causal_attention_backward<B: KernelBackend>(
    query: FloatTensor<B>,
    key: FloatTensor<B>,
    value: FloatTensor<B>,
    probs: FloatTensor<B>,
    grad: FloatTensor<B>,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let (dtype, scale) = (dtype_of::<B>(&query), attention_scale::<B>(&query));
    let transpose = |t: FloatTensor<B>| B::float_swap_dims(t, 2, 3);
    let probs_rounded = in_dtype::<B>(probs.clone(), dtype);
    let grad_value = B::matmul(transpose(probs_rounded), grad.clone());
    let grad_probs = B::matmul(grad, transpose(value));
    let grad_scores = B::causal_softmax_backward(probs, grad_probs, scale);
    let grad_query = B::matmul(grad_scores.clone(), key);
    let grad_key = B::matmul(transpose(grad_scores), query);
    (grad_query, grad_key, grad_value)
}

/// [`KernelBackend::rotary`]: `[x1·cos + x2·sin, −x1·sin + x2·cos]`.
pub fn rotary<B: Backend>(
    x: FloatTensor<B>,
    cos: FloatTensor<B>,
    sin: FloatTensor<B>,
) -> FloatTensor<B> {
    rotate::<B>(x, cos, sin, false)
}

/// [`KernelBackend::rotary_backward`]: the rotation back, `[g1·cos − g2·sin, g1·sin + g2·cos]`.
pub fn rotary_backward<B: Backend>(
    grad: FloatTensor<B>,
    cos: FloatTensor<B>,
    sin: FloatTensor<B>,
) -> FloatTensor<B> {
    rotate::<B>(grad, cos, sin, true)
}

/// The rotation of [`rotary`], or with `inverse` of [`rotary_backward`].
fn rotate<B: Backend>(
    x: FloatTensor<B>,
    cos: FloatTensor<B>,
    sin: FloatTensor<B>,
    inverse: bool,
) -> FloatTensor<B> {
    let head_dim = x.shape()[3];
    let half = (head_dim / 2) as isize;
    let whole = Slice::new(0, None, 1);
    let part = |x: FloatTensor<B>, start: isize, end: isize| {
        B::float_slice(x, &[whole, whole, whole, Slice::new(start, Some(end), 1)])
    };
    let x1 = part(x.clone(), 0, half);
    let x2 = part(x, half, 2 * half);
    let sin = if inverse { B::float_neg(sin) } else { sin };
    let y1 = B::float_add(
        B::float_mul(x1.clone(), cos.clone()),
        B::float_mul(x2.clone(), sin.clone()),
    );
    let y2 = B::float_add(B::float_mul(x1, B::float_neg(sin)), B::float_mul(x2, cos));
    B::float_cat(vec![y1, y2], 3)
}

/// [`KernelBackend::relu_square`]: `relu(x)²`.
pub fn relu_square<B: Backend>(x: FloatTensor<B>) -> FloatTensor<B> {
    let relu = B::float_clamp_min(x, Scalar::from(0.0));
    B::float_mul(relu.clone(), relu)
}

/// [`KernelBackend::relu_square_backward`]: `grad · 2·relu(x)`.
pub fn relu_square_backward<B: Backend>(x: FloatTensor<B>, grad: FloatTensor<B>) -> FloatTensor<B> {
    let twice = B::float_mul_scalar(B::float_clamp_min(x, Scalar::from(0.0)), Scalar::from(2.0));
    B::float_mul(grad, twice)
}

/// [`KernelBackend::softcapped_cross_entropy`]: the soft-cap rounds to the logits' dtype after
/// each op (as in the record), the rest runs in fp32; the gradient comes back in the logits'
/// dtype.
pub fn softcapped_cross_entropy<B: Backend>(
    logits: FloatTensor<B>,
    targets: IntTensor<B>,
    cap: Option<f64>,
    mean_over: usize,
    with_grad: bool,
) -> (FloatTensor<B>, Option<FloatTensor<B>>) {
    let dtype = dtype_of::<B>(&logits);
    let (rows, device) = (logits.shape()[0], logits.device());
    let targets = B::int_reshape(targets, Shape::from(vec![rows, 1]));
    // `tanh` is kept for the soft-cap's derivative.
    let (capped, tanh) = match cap {
        Some(cap) => {
            let tanh = B::float_tanh(B::float_div_scalar(logits, Scalar::from(cap)));
            (
                B::float_mul_scalar(tanh.clone(), Scalar::from(cap)),
                Some(tanh),
            )
        }
        None => (logits, None),
    };
    let capped = to_f32::<B>(capped);
    // Log-sum-exp is shifted by an upper bound of each row: a small cap itself (|capped| ≤ cap,
    // so exp stays normal in fp32), else the row's maximum.
    let shifted = match cap {
        Some(cap) if cap <= MAX_SHIFT_CAP as f64 => B::float_sub_scalar(capped, Scalar::from(cap)),
        _ => {
            let max = B::float_max_dim(capped.clone(), 1);
            B::float_sub(capped, max)
        }
    };
    let picked = B::float_gather(1, shifted.clone(), targets.clone());
    let exp = B::float_exp(shifted);
    let sum_exp = B::float_sum_dim(exp.clone(), 1);
    let per_row = B::float_sub(B::float_log(sum_exp.clone()), picked);
    let loss = B::float_div_scalar(B::float_sum(per_row), Scalar::from(mean_over as f64));
    if !with_grad {
        return (loss, None);
    }
    let minus_one = B::float_full(
        Shape::from(vec![rows, 1]),
        Scalar::from(-1.0),
        &device,
        FloatDType::F32,
    );
    let grad = B::float_scatter(
        1,
        B::float_div(exp, sum_exp),
        targets,
        minus_one,
        IndexingUpdateOp::Add,
    );
    let grad = B::float_div_scalar(grad, Scalar::from(mean_over as f64));
    let grad = match (tanh, cap) {
        // Through the soft-cap as autograd goes: the loss's gradient cast to the logits'
        // dtype, then ·cap, `g·(1 − tanh²)` and ÷cap, each computed in fp32 and rounded to it.
        (Some(tanh), Some(cap)) => {
            let rounded = |t: FloatTensor<B>| to_f32::<B>(in_dtype::<B>(t, dtype));
            let tanh = to_f32::<B>(tanh);
            let slope = B::float_add_scalar(
                B::float_neg(B::float_mul(tanh.clone(), tanh)),
                Scalar::from(1.0),
            );
            let grad = B::float_mul_scalar(rounded(grad), Scalar::from(cap));
            let grad = B::float_mul(rounded(grad), slope);
            B::float_div_scalar(rounded(grad), Scalar::from(cap))
        }
        _ => grad,
    };
    (loss, Some(in_dtype::<B>(grad, dtype)))
}

/// `values` (fp32) stored in `dtype`: stochastically rounded with the stream `key` when that
/// is bf16 and a key is given, rounded to nearest otherwise.
fn store<B: KernelBackend>(
    values: FloatTensor<B>,
    dtype: FloatDType,
    key: Option<u64>,
) -> FloatTensor<B> {
    match key {
        Some(key) if dtype == FloatDType::BF16 => B::round_stochastic(values, key),
        _ => in_dtype::<B>(values, dtype),
    }
}

/// [`KernelBackend::adam_step`] op by op, with the kernel's fp32 constants and order of
/// operations (`brainfloat_kernels::adam_update`, PyTorch's fused Adam; its fused multiply-adds
/// are two ops here): `m1 + (1−β1)·(g − m1)`, `β2·m2 + ((1−β2)·g)·g`, the step taken from the
/// fp32 moments, the decay beside it, each stored value rounded once, and the parameter written
/// with its Kahan compensation when one is given ([`kahan_add`]'s arithmetic).
pub fn adam_step<B: KernelBackend>(
    param: FloatTensor<B>,
    grad: FloatTensor<B>,
    moment_1: FloatTensor<B>,
    moment_2: FloatTensor<B>,
    compensation: Option<FloatTensor<B>>,
    step: AdamStep,
) -> (
    FloatTensor<B>,
    FloatTensor<B>,
    FloatTensor<B>,
    Option<FloatTensor<B>>,
) {
    let (beta_1, beta_2) = step.betas;
    let step_size = (step.lr / (1.0 - beta_1.powi(step.step))) as f32;
    let correction_2_sqrt = (1.0 - beta_2.powi(step.step)).sqrt() as f32;
    let decay = (step.lr * step.weight_decay) as f32;
    let [param_key, moment_1_key, moment_2_key] = match step.stochastic {
        Some(keys) => keys.map(Some),
        None => [None; 3],
    };
    let dtypes = [&param, &moment_1, &moment_2].map(|t| dtype_of::<B>(t));
    let grad = to_f32::<B>(grad);
    let moment_1 = to_f32::<B>(moment_1);
    let lerp_weight = 1.0 - beta_1;
    let new_moment_1 = if lerp_weight.abs() < 0.5 {
        let towards = B::float_sub(grad.clone(), moment_1.clone());
        B::float_add(
            moment_1,
            B::float_mul_scalar(towards, constant(lerp_weight as f32)),
        )
    } else {
        let back = B::float_sub(grad.clone(), moment_1);
        B::float_add(
            grad.clone(),
            B::float_mul_scalar(back, constant((lerp_weight - 1.0) as f32)),
        )
    };
    let new_moment_2 = B::float_add(
        B::float_mul(
            B::float_mul_scalar(grad.clone(), constant((1.0 - beta_2) as f32)),
            grad,
        ),
        B::float_mul_scalar(to_f32::<B>(moment_2), constant(beta_2 as f32)),
    );
    let denom = B::float_add_scalar(
        B::float_div_scalar(
            B::float_sqrt(new_moment_2.clone()),
            constant(correction_2_sqrt),
        ),
        constant(step.eps as f32),
    );
    let old = to_f32::<B>(param);
    let mut update = B::float_div(
        B::float_mul_scalar(new_moment_1.clone(), constant(step_size)),
        denom,
    );
    if decay != 0.0 {
        update = B::float_add(update, B::float_mul_scalar(old.clone(), constant(decay)));
    }
    let moment_1 = store::<B>(new_moment_1, dtypes[1], moment_1_key);
    let moment_2 = store::<B>(new_moment_2, dtypes[2], moment_2_key);
    let (param, compensation) = match compensation {
        Some(compensation) => {
            let (param, compensation) =
                kahan_step::<B>(old, compensation, B::float_neg(update), dtypes[0]);
            (param, Some(compensation))
        }
        None => (
            store::<B>(B::float_sub(old, update), dtypes[0], param_key),
            None,
        ),
    };
    (param, moment_1, moment_2, compensation)
}

/// [`KernelBackend::axpby`]: `x` cast to `y`'s dtype, each product in that dtype (skipped
/// where its factor is 1), then the sum.
pub fn axpby<B: KernelBackend>(
    y: FloatTensor<B>,
    x: FloatTensor<B>,
    a: f64,
    b: f64,
) -> FloatTensor<B> {
    let x = in_dtype::<B>(x, dtype_of::<B>(&y));
    let scaled = |t: FloatTensor<B>, factor: f64| match factor {
        1.0 => t,
        _ => B::scale(t, factor),
    };
    B::float_add(scaled(y, a), scaled(x, b))
}

/// [`KernelBackend::square_sum`]: widened, squared, summed.
pub fn square_sum<B: Backend>(x: FloatTensor<B>) -> FloatTensor<B> {
    let x = to_f32::<B>(x);
    B::float_sum(B::float_mul(x.clone(), x))
}

/// [`KernelBackend::round_stochastic`] through the host: the values read back, rounded by the
/// kernel (`brainfloat_kernels::round_stochastic_into`), and written to the device, so that
/// every backend draws the same bits.
pub fn round_stochastic<B: Backend>(values: FloatTensor<B>, key: u64) -> FloatTensor<B> {
    let values = to_f32::<B>(values);
    let (shape, device) = (values.shape(), values.device());
    let host = burn::tensor::try_read_sync(B::float_into_data(values))
        .expect("this platform reads tensors back synchronously")
        .expect("the device reads the values back")
        .try_into_vec::<f32>()
        .expect("an fp32 tensor reads back as f32");
    let mut rounded = vec![bf16::ZERO; host.len()];
    brainfloat_kernels::round_stochastic_into(&host, &mut rounded, key);
    B::float_from_data(TensorData::new(rounded, shape), &device)
}

/// [`KernelBackend::stochastic_axpby`]: `a·y + b·x` in fp32, rounded by
/// [`KernelBackend::round_stochastic`].
pub fn stochastic_axpby<B: KernelBackend>(
    y: FloatTensor<B>,
    x: FloatTensor<B>,
    a: f32,
    b: f32,
    key: u64,
) -> FloatTensor<B> {
    let value = B::float_add(
        B::float_mul_scalar(to_f32::<B>(y), constant(a)),
        B::float_mul_scalar(to_f32::<B>(x), constant(b)),
    );
    B::round_stochastic(value, key)
}

/// [`KernelBackend::kahan_add`]: `c = compensation + delta`, `weight' = bf16(weight + c)`,
/// `compensation' = bf16(c − (weight' − weight))`.
pub fn kahan_add<B: Backend>(
    weight: FloatTensor<B>,
    compensation: FloatTensor<B>,
    delta: FloatTensor<B>,
) -> (FloatTensor<B>, FloatTensor<B>) {
    kahan_step::<B>(
        to_f32::<B>(weight),
        compensation,
        to_f32::<B>(delta),
        FloatDType::BF16,
    )
}

/// Kahan's step from the fp32 weight `old` and an fp32 `delta`: `c = compensation + delta`,
/// `weight' = round(old + c)`, `compensation' = round(c − (weight' − old))`, rounded to `dtype`.
fn kahan_step<B: Backend>(
    old: FloatTensor<B>,
    compensation: FloatTensor<B>,
    delta: FloatTensor<B>,
    dtype: FloatDType,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let carried = B::float_add(to_f32::<B>(compensation), delta);
    let new = in_dtype::<B>(B::float_add(old.clone(), carried.clone()), dtype);
    let applied = B::float_sub(to_f32::<B>(new.clone()), old);
    let compensation = in_dtype::<B>(B::float_sub(carried, applied), dtype);
    (new, compensation)
}
