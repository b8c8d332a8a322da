//! The hand-written backward passes of [`KernelBackend`] under Burn's autodiff.
//!
//! - matmul `C = A·B`: `dA = dC·Bᵀ` and `dB = Aᵀ·dC`, each through the inner backend's
//!   [`KernelBackend::matmul`] on transposed views (no copies on flex), so the backward
//!   products run on the same kernel as the forward. The result keeps the operands' dtype; for
//!   CastedLinear's weight, the cast it came through brings the gradient back to fp32, as in
//!   PyTorch (the bf16 product is rounded, then widened).
//! - RMSNorm: the state is the input and one fp32 statistic per row, not fp32 copies of the
//!   activations.
//! - causal softmax: the state is the fp32 probabilities; the backward is one pass per row.
//! - causal attention: the state is what the inner backend's forward keeps for its own
//!   backward (libtorch's graph of `scaled_dot_product_attention`; elsewhere the fp32
//!   probabilities), not Burn's graph of a dozen ops.
//! - rotary: the state is the tables; the gradient is the inverse rotation.
//! - ReLU²: the state is the input; one pass each way.
//! - attached gradients: a loss computed outside autodiff hands the gradients computed with
//!   it to the tensors it came from, with no surrogate products in the graph.
//! - values (the loss, the optimizer's kernels, fp32 sums): run by the inner backend, untracked.

use brainfloat_kernels::AdamStep;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Autodiff, AutodiffBackend, Backend, FloatDType, TensorMetadata};
use burn::tensor::Shape;

use crate::extension::{KernelBackend, SavedAttention};

impl<B: Backend + KernelBackend, C: CheckpointStrategy> KernelBackend for Autodiff<B, C> {
    fn matmul(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self> {
        match MatmulBackward
            .prepare::<C>([lhs.node(), rhs.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (lhs, rhs) = (lhs.into_primitive(), rhs.into_primitive());
                let output = B::matmul(lhs.clone(), rhs.clone());
                prep.finish((lhs, rhs), output)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::matmul(lhs.into_primitive(), rhs.into_primitive()))
            }
        }
    }

    fn rms_norm(
        x: FloatTensor<Self>,
        eps: f64,
        _with_backward: bool,
    ) -> (FloatTensor<Self>, Option<FloatTensor<Self>>) {
        match RmsNormBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let x = x.into_primitive();
                let (y, inv_rms) = B::rms_norm(x.clone(), eps, true);
                let inv_rms = inv_rms.expect("asked for what the backward needs");
                (prep.finish((x, inv_rms), y), None)
            }
            OpsKind::UnTracked(prep) => {
                let (y, _) = B::rms_norm(x.into_primitive(), eps, false);
                (prep.finish(y), None)
            }
        }
    }

    fn causal_softmax(
        scores: FloatTensor<Self>,
        scale: f64,
        _with_backward: bool,
    ) -> (FloatTensor<Self>, Option<FloatTensor<Self>>) {
        let backward = CausalSoftmaxBackward { scale };
        match backward
            .prepare::<C>([scores.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (probs, exact) = B::causal_softmax(scores.into_primitive(), scale, true);
                let exact = exact.expect("asked for what the backward needs");
                (prep.finish(exact, probs), None)
            }
            OpsKind::UnTracked(prep) => {
                let (probs, _) = B::causal_softmax(scores.into_primitive(), scale, false);
                (prep.finish(probs), None)
            }
        }
    }

    fn causal_attention(
        query: FloatTensor<Self>,
        key: FloatTensor<Self>,
        value: FloatTensor<Self>,
        _with_backward: bool,
    ) -> (FloatTensor<Self>, Option<SavedAttention<Self>>) {
        let prepared = CausalAttentionBackward
            .prepare::<C>([query.node(), key.node(), value.node()])
            .compute_bound()
            .stateful();
        let (q, k, v) = (
            query.into_primitive(),
            key.into_primitive(),
            value.into_primitive(),
        );
        match prepared {
            OpsKind::Tracked(prep) => {
                let (output, saved) = B::causal_attention(q, k, v, true);
                let saved = saved.expect("asked for what the backward needs");
                (prep.finish(saved, output), None)
            }
            OpsKind::UnTracked(prep) => {
                let (output, _) = B::causal_attention(q, k, v, false);
                (prep.finish(output), None)
            }
        }
    }

    fn rotary(
        x: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        // The tables are constants: only `x` gets a gradient.
        let (cos, sin) = (cos.into_primitive(), sin.into_primitive());
        match RotaryBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let y = B::rotary(x.into_primitive(), cos.clone(), sin.clone());
                prep.finish((cos, sin), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::rotary(x.into_primitive(), cos, sin)),
        }
    }

    fn attach_gradient(
        loss: FloatTensor<Self>,
        tracked: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let grad = grad.into_primitive();
        match AttachedGradient
            .prepare::<C>([loss.node(), tracked.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(grad, loss.into_primitive()),
            OpsKind::UnTracked(prep) => prep.finish(loss.into_primitive()),
        }
    }

    fn relu_square(x: FloatTensor<Self>) -> FloatTensor<Self> {
        match ReluSquareBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let x = x.into_primitive();
                let y = B::relu_square(x.clone());
                prep.finish(x, y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::relu_square(x.into_primitive())),
        }
    }

    // The ops below work on values outside autodiff: the inner backend runs them (its kernel
    // where it has one) and the results are untracked.

    fn accumulate_f32(sum: FloatTensor<Self>, part: FloatTensor<Self>) -> FloatTensor<Self> {
        value::<B, C>(B::accumulate_f32(inner::<B, C>(sum), inner::<B, C>(part)))
    }

    fn widen_f32(part: FloatTensor<Self>) -> FloatTensor<Self> {
        value::<B, C>(B::widen_f32(inner::<B, C>(part)))
    }

    fn softcapped_cross_entropy(
        logits: FloatTensor<Self>,
        targets: IntTensor<Self>,
        cap: Option<f64>,
        mean_over: usize,
        with_grad: bool,
    ) -> (FloatTensor<Self>, Option<FloatTensor<Self>>) {
        let (loss, grad) =
            B::softcapped_cross_entropy(inner::<B, C>(logits), targets, cap, mean_over, with_grad);
        (value::<B, C>(loss), grad.map(value::<B, C>))
    }

    fn adam_step(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        moment_1: FloatTensor<Self>,
        moment_2: FloatTensor<Self>,
        step: AdamStep,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let [param, grad, moment_1, moment_2] =
            [param, grad, moment_1, moment_2].map(inner::<B, C>);
        let (param, moment_1, moment_2) = B::adam_step(param, grad, moment_1, moment_2, step);
        (
            value::<B, C>(param),
            value::<B, C>(moment_1),
            value::<B, C>(moment_2),
        )
    }

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
        let [param, grad, moment_1, moment_2, compensation] =
            [param, grad, moment_1, moment_2, compensation].map(inner::<B, C>);
        let updated = B::adam_step_kahan(param, grad, moment_1, moment_2, compensation, step);
        let (param, moment_1, moment_2, compensation) = updated;
        (
            value::<B, C>(param),
            value::<B, C>(moment_1),
            value::<B, C>(moment_2),
            value::<B, C>(compensation),
        )
    }

    fn axpby(y: FloatTensor<Self>, x: FloatTensor<Self>, a: f64, b: f64) -> FloatTensor<Self> {
        value::<B, C>(B::axpby(inner::<B, C>(y), inner::<B, C>(x), a, b))
    }

    fn square_sum(x: FloatTensor<Self>) -> FloatTensor<Self> {
        value::<B, C>(B::square_sum(inner::<B, C>(x)))
    }

    fn round_stochastic(values: FloatTensor<Self>, key: u64) -> FloatTensor<Self> {
        value::<B, C>(B::round_stochastic(inner::<B, C>(values), key))
    }

    fn stochastic_axpby(
        y: FloatTensor<Self>,
        x: FloatTensor<Self>,
        a: f32,
        b: f32,
        key: u64,
    ) -> FloatTensor<Self> {
        value::<B, C>(B::stochastic_axpby(
            inner::<B, C>(y),
            inner::<B, C>(x),
            a,
            b,
            key,
        ))
    }

    fn kahan_add(
        weight: FloatTensor<Self>,
        compensation: FloatTensor<Self>,
        delta: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (weight, compensation) = B::kahan_add(
            inner::<B, C>(weight),
            inner::<B, C>(compensation),
            inner::<B, C>(delta),
        );
        (value::<B, C>(weight), value::<B, C>(compensation))
    }

    fn rms_norm_backward(
        _x: FloatTensor<Self>,
        _inv_rms: FloatTensor<Self>,
        _grad: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        unreachable!("called by the backward pass on the inner backend only")
    }

    fn rotary_backward(
        _grad: FloatTensor<Self>,
        _cos: FloatTensor<Self>,
        _sin: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        unreachable!("called by the backward pass on the inner backend only")
    }
}

/// The inner backend's tensor of a value outside autodiff.
fn inner<B: Backend, C: CheckpointStrategy>(tensor: FloatTensor<Autodiff<B, C>>) -> FloatTensor<B> {
    <Autodiff<B, C> as AutodiffBackend>::inner(tensor)
}

/// An inner backend's result as an untracked autodiff tensor.
fn value<B: Backend, C: CheckpointStrategy>(tensor: FloatTensor<B>) -> FloatTensor<Autodiff<B, C>> {
    <Autodiff<B, C> as AutodiffBackend>::from_inner(tensor)
}

/// The backward step of [`KernelBackend::matmul`].
#[derive(Debug)]
struct MatmulBackward;

impl<B: Backend + KernelBackend> Backward<B, 2> for MatmulBackward {
    /// The operands.
    type State = (FloatTensor<B>, FloatTensor<B>);

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [lhs_node, rhs_node] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (lhs, rhs) = ops.state;
        if let Some(node) = lhs_node {
            let grad_lhs = B::matmul(grad.clone(), B::float_transpose(rhs));
            grads.register::<B>(node.id, grad_lhs);
        }
        if let Some(node) = rhs_node {
            grads.register::<B>(node.id, B::matmul(B::float_transpose(lhs), grad));
        }
    }
}

/// The backward step of a one-input op: `input_grad(state, output gradient)`, registered for
/// the input when it is tracked.
fn one_input_backward<B: Backend, S>(
    ops: Ops<S, 1>,
    grads: &mut Gradients,
    input_grad: impl FnOnce(S, FloatTensor<B>) -> FloatTensor<B>,
) {
    let [node] = ops.parents;
    let grad = grads.consume::<B>(&ops.node);
    if let Some(node) = node {
        grads.register::<B>(node.id, input_grad(ops.state, grad));
    }
}

/// The backward step of [`KernelBackend::rms_norm`].
#[derive(Debug)]
struct RmsNormBackward;

impl<B: Backend + KernelBackend> Backward<B, 1> for RmsNormBackward {
    /// The input and its fp32 statistic per row.
    type State = (FloatTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        one_input_backward::<B, _>(ops, grads, |(x, inv_rms), grad| {
            B::rms_norm_backward(x, inv_rms, grad)
        });
    }
}

/// The backward step of [`KernelBackend::causal_softmax`].
#[derive(Debug)]
struct CausalSoftmaxBackward {
    scale: f64,
}

impl<B: Backend + KernelBackend> Backward<B, 1> for CausalSoftmaxBackward {
    /// The probabilities in fp32.
    type State = FloatTensor<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        one_input_backward::<B, _>(ops, grads, |probs, grad| {
            B::causal_softmax_backward(probs, grad, self.scale)
        });
    }
}

/// The backward step of [`KernelBackend::causal_attention`]: the inner backend's own.
#[derive(Debug)]
struct CausalAttentionBackward;

impl<B: Backend + KernelBackend> Backward<B, 3> for CausalAttentionBackward {
    /// What the forward saved for its backward.
    type State = SavedAttention<B>;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        let (q, k, v, saved) = ops.state;
        let (grad_q, grad_k, grad_v) = B::causal_attention_backward(q, k, v, saved, grad);
        for (node, grad) in ops.parents.into_iter().zip([grad_q, grad_k, grad_v]) {
            if let Some(node) = node {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

/// The backward step of [`KernelBackend::rotary`]: the gradient rotates back.
#[derive(Debug)]
struct RotaryBackward;

impl<B: Backend + KernelBackend> Backward<B, 1> for RotaryBackward {
    /// The cos and sin tables.
    type State = (FloatTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        one_input_backward::<B, _>(ops, grads, |(cos, sin), grad| {
            B::rotary_backward(grad, cos, sin)
        });
    }
}

/// The backward step of [`KernelBackend::relu_square`].
#[derive(Debug)]
struct ReluSquareBackward;

impl<B: Backend + KernelBackend> Backward<B, 1> for ReluSquareBackward {
    /// The input.
    type State = FloatTensor<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        one_input_backward::<B, _>(ops, grads, |x, grad| B::relu_square_backward(x, grad));
    }
}

/// The backward step of [`KernelBackend::attach_gradient`].
#[derive(Debug)]
struct AttachedGradient;

impl<B: Backend + KernelBackend> Backward<B, 2> for AttachedGradient {
    /// The gradient to hand to the tracked tensor.
    type State = FloatTensor<B>;

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [loss_node, tracked_node] = ops.parents;
        let upstream = grads.consume::<B>(&ops.node);
        if let Some(node) = tracked_node {
            // The upstream gradient is one value: broadcast it, in the attached gradient's
            // dtype, over the attached gradient.
            let (rank, dtype) = (ops.state.rank(), FloatDType::from(ops.state.dtype()));
            let scale = B::float_reshape(upstream.clone(), Shape::from(vec![1usize; rank]));
            let scale = B::float_cast(scale, dtype);
            grads.register::<B>(node.id, B::float_mul(ops.state, scale));
        }
        if let Some(node) = loss_node {
            grads.register::<B>(node.id, upstream);
        }
    }
}
