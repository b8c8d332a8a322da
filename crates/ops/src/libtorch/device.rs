//! The device route: each op as libtorch's own operators, fused where libtorch has the fused
//! one (`_fused_rms_norm`, `_fused_adam_`, `_log_softmax`, `_foreach_norm`), elsewhere the
//! fewest operators that keep the op's precision contract, in place where the op owns the
//! buffer. What a GPU runs, and on the CPU what `BRAINFLOAT_TCH_ROUTE=device` runs, so that
//! every line of it is tested against the composed ops on libtorch's CPU twins of its operators
//! (`crates/ops/tests/composed.rs`). The one exception: RMSNorm's backward is libtorch's fused
//! kernel on CUDA only (libtorch has no CPU one), its composition elsewhere.

use brainfloat_kernels::AdamStep;
use burn::backend::libtorch::TchTensor;
use tch::{Device, Kind, Reduction, Tensor};

use super::owned;
use super::shim::{self, FusedAdam};
use crate::LibTorchRoute;

/// The fp32 copy of `tensor`, or `tensor` itself when it is fp32 already.
fn fp32(tensor: &Tensor) -> Tensor {
    match tensor.kind() {
        Kind::Float => tensor.shallow_clone(),
        _ => tensor.to_kind(Kind::Float),
    }
}

/// RMSNorm over the last dimension and, with `with_backward`, its fp32 statistic `[.., 1]`:
/// libtorch's `_fused_rms_norm` (fp32 inside, rounded once to `x`'s dtype).
pub(super) fn rms_norm(
    x: TchTensor,
    eps: f64,
    with_backward: bool,
) -> (TchTensor, Option<TchTensor>) {
    let last = *x
        .tensor
        .size()
        .last()
        .expect("rms_norm: a tensor of rank ≥ 1");
    let (y, rstd) = x
        .tensor
        .internal_fused_rms_norm([last], None::<Tensor>, eps);
    (
        TchTensor::new(y),
        with_backward.then(|| TchTensor::new(rstd)),
    )
}

/// RMSNorm's input gradient `r · (dy − x · r² · mean(x · dy))`, fp32 inside, `x`'s dtype out:
/// libtorch's fused kernel on CUDA; on other devices (which have none) in fp32 with one widened
/// copy of each input and the rest in place.
pub(super) fn rms_norm_backward(x: TchTensor, inv_rms: TchTensor, grad: TchTensor) -> TchTensor {
    let (x, r, dy) = (&x.tensor, &inv_rms.tensor, &grad.tensor);
    if x.device().is_cuda() {
        let dx = shim::fused_rms_norm_backward(dy, x, r)
            .unwrap_or_else(|err| panic!("libtorch's _fused_rms_norm_backward: {err}"));
        return TchTensor::new(dx);
    }
    let kind = x.kind();
    let (mut x32, mut dx) = (x.to_kind(Kind::Float), dy.to_kind(Kind::Float));
    let mean_dot = (&x32 * &dx).mean_dim(-1, true, Kind::Float);
    let coefficient = r * r * mean_dot;
    let _ = x32.g_mul_(&coefficient);
    let _ = dx.g_sub_(&x32);
    let _ = dx.g_mul_(r);
    TchTensor::new(dx.to_kind(kind))
}

/// Rotary embeddings (half-split), written into one new tensor by four operators: `y1 = x1·cos
/// + x2·sin`, `y2 = x2·cos − x1·sin`.
pub(super) fn rotary(x: TchTensor, cos: TchTensor, sin: TchTensor) -> TchTensor {
    rotate(x, cos, sin, false)
}

/// The gradient of [`rotary`]: the rotation back (`sin` negated).
pub(super) fn rotary_backward(grad: TchTensor, cos: TchTensor, sin: TchTensor) -> TchTensor {
    rotate(grad, cos, sin, true)
}

/// [`rotary`], or with `inverse` [`rotary_backward`].
fn rotate(x: TchTensor, cos: TchTensor, sin: TchTensor, inverse: bool) -> TchTensor {
    let (x, cos) = (&x.tensor, &cos.tensor);
    let half = x.size()[3] / 2;
    let (sin, minus_sin) = match inverse {
        false => (sin.tensor.shallow_clone(), sin.tensor.neg()),
        true => (sin.tensor.neg(), sin.tensor.shallow_clone()),
    };
    let out = x.empty_like();
    let (x1, x2) = (x.narrow(3, 0, half), x.narrow(3, half, half));
    let (mut y1, mut y2) = (out.narrow(3, 0, half), out.narrow(3, half, half));
    let _ = x1.mul_out(&y1, cos);
    let _ = y1.addcmul_(&x2, &sin);
    let _ = x2.mul_out(&y2, cos);
    let _ = y2.addcmul_(&x1, &minus_sin);
    TchTensor::new(out)
}

/// `relu(x)²`: ReLU, then squared in place.
pub(super) fn relu_square(x: TchTensor) -> TchTensor {
    let mut y = x.tensor.relu();
    let _ = y.square_();
    TchTensor::new(y)
}

/// `grad · 2·relu(x)`: ReLU, times the gradient and doubled in place (doubling is exact, so
/// this is the composed op's one rounding).
pub(super) fn relu_square_backward(x: TchTensor, grad: TchTensor) -> TchTensor {
    let mut dx = x.tensor.relu();
    let _ = dx.g_mul_(&grad.tensor);
    let _ = dx.g_mul_scalar_(2.0);
    TchTensor::new(dx)
}

/// The soft-capped loss over logits `[N, V]` and, with `with_grad`, its gradient in the
/// logits' dtype (with a cap, written over the logits' buffer, which held the tanh, when this
/// call holds it). The soft-cap rounds
/// to the logits' dtype after each op (as the composed op and the record); then libtorch's
/// fused `_log_softmax` in fp32 and `nll_loss` summed; the gradient `(softmax − onehot) / N` is
/// made in place over the log-probabilities (`exp(log p − ln N)`, `−1/N` added at the targets),
/// then taken back through the soft-cap op by op in the logits' kind, as autograd rounds it. At
/// most two logits-sized fp32 buffers are alive at once.
pub(super) fn softcapped_cross_entropy(
    logits: TchTensor,
    targets: TchTensor,
    cap: Option<f64>,
    mean_over: usize,
    with_grad: bool,
) -> (TchTensor, Option<TchTensor>) {
    let kind = logits.tensor.kind();
    let targets = targets.tensor.to_kind(Kind::Int64);
    let (capped, tanh) = match cap {
        Some(cap) => {
            let mut tanh = owned(logits);
            let _ = tanh.divide_scalar_(cap);
            let _ = tanh.tanh_();
            (fp32(&tanh.multiply_scalar(cap)), Some(tanh))
        }
        None => (fp32(&logits.tensor), None),
    };
    let log_probs = capped.internal_log_softmax(1, false);
    drop(capped);
    let mean_over = mean_over as f64;
    let loss = log_probs
        .g_nll_loss(&targets, None::<Tensor>, Reduction::Sum, -100)
        .divide_scalar(mean_over)
        .reshape([1]);
    if !with_grad {
        return (TchTensor::new(loss), None);
    }
    let rows = targets.size()[0];
    let mut grad = log_probs;
    let _ = grad.g_sub_scalar_(mean_over.ln());
    let _ = grad.exp_();
    let minus = Tensor::full([rows, 1], -1.0 / mean_over, (Kind::Float, grad.device()));
    let _ = grad.scatter_add_(1, &targets.reshape([rows, 1]), &minus);
    let Some(tanh) = tanh else {
        return (
            TchTensor::new(loss),
            Some(TchTensor::new(grad.to_kind(kind))),
        );
    };
    // Through the soft-cap as autograd goes: the loss's gradient cast to the logits' kind,
    // then ·cap, tanh's backward `g·(1 − tanh²)` and ÷cap, each rounded to that kind.
    let mut grad = grad.to_kind(kind);
    let _ = grad.g_mul_scalar_(cap.expect("a tanh is kept under a cap"));
    let mut grad = Tensor::tanh_backward(&grad, &tanh);
    drop(tanh);
    let _ = grad.g_div_scalar_(cap.expect("a tanh is kept under a cap"));
    (TchTensor::new(loss), Some(TchTensor::new(grad)))
}

/// One Adam step by libtorch's fused multi-tensor operator over this one parameter; the
/// tensors back where the fused operator does not apply (stochastic rounding, weight decay,
/// mixed dtypes, dtypes other than bf16 and fp32).
#[allow(clippy::type_complexity)]
pub(super) fn adam_step(
    param: TchTensor,
    grad: TchTensor,
    moment_1: TchTensor,
    moment_2: TchTensor,
    step: AdamStep,
) -> Result<(TchTensor, TchTensor, TchTensor), [TchTensor; 4]> {
    let fusable = step.stochastic.is_none()
        && step.weight_decay == 0.0
        && fused_adam_kind([&param, &grad, &moment_1, &moment_2].map(|t| &t.tensor)).is_some();
    if !fusable {
        return Err([param, grad, moment_1, moment_2]);
    }
    let grad = grad.tensor.contiguous();
    let [param, moment_1, moment_2] = [param, moment_1, moment_2].map(owned);
    let steps = step_counts(&[step.step], param.device()).remove(0);
    let adam = FusedAdam {
        lr: step.lr,
        betas: step.betas,
        eps: step.eps,
    };
    shim::fused_adam(
        &[&param],
        &[&grad],
        &[&moment_1],
        &[&moment_2],
        &[&steps],
        adam,
    )
    .unwrap_or_else(|err| panic!("libtorch's _fused_adam_: {err}"));
    Ok((
        TchTensor::new(param),
        TchTensor::new(moment_1),
        TchTensor::new(moment_2),
    ))
}

/// The kind `_fused_adam_` takes for a parameter, its gradient and its moments: bf16 or fp32,
/// all four alike; `None` otherwise.
pub(super) fn fused_adam_kind(tensors: [&Tensor; 4]) -> Option<Kind> {
    let kind = tensors[0].kind();
    let alike = tensors.iter().all(|t| t.kind() == kind);
    (alike && matches!(kind, Kind::Float | Kind::BFloat16)).then_some(kind)
}

/// Each parameter's step count as the fp32 scalar `_fused_adam_` reads, made on the device (a
/// copy from the host would wait for the GPU): views of one tensor filled at once when all
/// counts agree, as they do unless a resumed state mixed them.
pub(super) fn step_counts(steps: &[i32], device: Device) -> Vec<Tensor> {
    let full = |shape: &[i64], step: i32| Tensor::full(shape, step as f64, (Kind::Float, device));
    if steps.windows(2).all(|w| w[0] == w[1]) {
        let counts = full(&[steps.len() as i64], steps[0]);
        return (0..steps.len() as i64)
            .map(|i| counts.select(0, i))
            .collect();
    }
    steps.iter().map(|&step| full(&[], step)).collect()
}

/// `Σ x²` of each tensor, squares in fp32, as fp32 scalars (`_foreach_norm`, squared).
pub(super) fn square_sums(tensors: &[&Tensor]) -> Vec<Tensor> {
    shim::square_sums(tensors).unwrap_or_else(|err| panic!("libtorch's _foreach_norm: {err}"))
}

/// `Σ x²` in fp32 as `[1]`.
pub(super) fn square_sum(x: TchTensor) -> TchTensor {
    TchTensor::new(square_sums(&[&x.tensor]).remove(0).reshape([1]))
}

/// `a·y + b·x` in `y`'s dtype, in place over `y` when this call holds it: libtorch's `add`
/// with its `alpha` (one operator where a factor is 1), which rounds once where the composed
/// op rounds each product.
pub(super) fn axpby(y: TchTensor, x: TchTensor, a: f64, b: f64) -> TchTensor {
    let y = owned(y);
    shim::axpby_(&y, &x.tensor, a, b).unwrap_or_else(|err| panic!("libtorch's add: {err}"));
    TchTensor::new(y)
}

/// `sum + part` in fp32, in place over `sum` when this call holds it.
pub(super) fn accumulate_f32(sum: TchTensor, part: TchTensor) -> TchTensor {
    let mut sum = match sum.tensor.kind() {
        Kind::Float => owned(sum),
        _ => sum.tensor.to_kind(Kind::Float),
    };
    let _ = sum.g_add_(&part.tensor);
    TchTensor::new(sum)
}

/// Whether `tensors` take the device route on this thread: off the CPU unless the composed
/// ops are forced, on the CPU when the device route is forced ([`crate::LibTorchRoute`]).
pub(super) fn takes_device_route(tensors: &[&TchTensor]) -> bool {
    match crate::libtorch_route() {
        LibTorchRoute::Auto => tensors.iter().any(|t| t.tensor.device() != Device::Cpu),
        LibTorchRoute::Device => true,
        LibTorchRoute::Composed => false,
    }
}

/// Whether brainfloat's CPU kernels run on `tensors` on this thread: on the CPU, unless a route
/// is forced.
pub(super) fn takes_kernels(tensors: &[&TchTensor]) -> bool {
    crate::libtorch_route() == LibTorchRoute::Auto
        && tensors.iter().all(|t| t.tensor.device() == Device::Cpu)
}
