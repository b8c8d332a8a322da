//! Adam for the embedding, the head and the scalars, with PyTorch's bias correction.

use brainfloat_ops::{AdamMember, adam_steps};
use burn::tensor::Tensor;

use super::write::{Observer, Stream, Writer, host_f32, in_dtype};

/// Adam's state of one parameter: its step count and moments, flattened, in its dtype.
#[derive(Debug, Clone)]
pub(super) struct AdamState {
    pub steps: i32,
    pub moment_1: Tensor<1>,
    pub moment_2: Tensor<1>,
}

/// Adam's hyper-parameters.
pub(super) struct Adam {
    pub betas: (f64, f64),
    pub eps: f64,
    /// Decoupled weight decay (AdamW): `w ← w − lr·wd·w` beside the Adam step.
    pub weight_decay: f64,
}

impl Adam {
    /// One step of a group's parameters (flattened) with their gradients at rate `lr`: their
    /// new weights and state, in order. One fused multi-tensor step for the group where the
    /// writers allow it (no Kahan, no decay), op by op through each member's writer otherwise;
    /// an observer sees what the step wrote either way, so that observing a step never changes
    /// it. Parameters and moments are moved in: as their only owner a kernel updates them in
    /// place.
    pub fn update_group(
        &self,
        states: Vec<Option<AdamState>>,
        params: Vec<Tensor<1>>,
        grads: Vec<Tensor<1>>,
        lr: f64,
        writers: &mut [Writer],
        observer: &mut Observer<'_>,
    ) -> Vec<(Tensor<1>, AdamState)> {
        let members = states.into_iter().zip(params).zip(grads);
        let fusable = writers.iter().all(Writer::fusable);
        if !(fusable && self.weight_decay == 0.0) {
            return (members.zip(writers))
                .map(|(((state, param), grad), writer)| {
                    self.update(state, param, grad, lr, writer, observer)
                })
                .collect();
        }
        let streams = [Stream::Weight, Stream::Moment1, Stream::Moment2];
        let members: Vec<AdamMember> = (members.zip(writers.iter()))
            .map(|(((state, param), grad), writer)| {
                let AdamState {
                    steps,
                    moment_1,
                    moment_2,
                } = state.unwrap_or_else(|| AdamState {
                    steps: 0,
                    moment_1: grad.zeros_like(),
                    moment_2: grad.zeros_like(),
                });
                AdamMember {
                    param,
                    grad,
                    moment_1,
                    moment_2,
                    step: steps + 1,
                    stochastic: writer.stochastic_keys(streams),
                }
            })
            .collect();
        let steps: Vec<i32> = members.iter().map(|m| m.step).collect();
        // The weights before the step, for the observer (read before the kernel writes them).
        let before: Option<Vec<Vec<f32>>> = observer
            .is_some()
            .then(|| members.iter().map(|m| host_f32(&m.param)).collect());
        let updated = adam_steps(members, lr, self.betas, self.eps);
        let stepped = (updated.into_iter().zip(steps))
            .map(|([param, moment_1, moment_2], steps)| {
                let state = AdamState {
                    steps,
                    moment_1,
                    moment_2,
                };
                (param, state)
            })
            .collect::<Vec<_>>();
        for ((before, (param, state)), writer) in
            before.iter().flatten().zip(&stepped).zip(writers.iter())
        {
            writer.show(observer, before, &self.delta(state, lr), param);
        }
        stepped
    }

    /// What the fused step subtracted from the weights, before rounding, recomputed on the host
    /// from the moments it stored: `lr/c₁ · m / (√v/√c₂ + eps)`.
    fn delta(&self, state: &AdamState, lr: f64) -> Vec<f32> {
        let (beta_1, beta_2) = self.betas;
        let scale = (lr / (1.0 - beta_1.powi(state.steps))) as f32;
        let root_c2 = (1.0 - beta_2.powi(state.steps)).sqrt() as f32;
        let eps = self.eps as f32;
        let (m, v) = (host_f32(&state.moment_1), host_f32(&state.moment_2));
        (m.iter().zip(&v))
            .map(|(m, v)| scale * m / (v.sqrt() / root_c2 + eps))
            .collect()
    }

    /// One step of `param` op by op, each new value written by `writer`.
    fn update(
        &self,
        state: Option<AdamState>,
        param: Tensor<1>,
        grad: Tensor<1>,
        lr: f64,
        writer: &mut Writer,
        observer: &mut Observer<'_>,
    ) -> (Tensor<1>, AdamState) {
        let (beta_1, beta_2) = self.betas;
        let compute = writer.compute();
        let grad = in_dtype(grad, compute);
        let AdamState {
            steps,
            moment_1,
            moment_2,
        } = state.unwrap_or_else(|| {
            // Zeros of the parameter's dtype, as the fused path's.
            let zeros = Tensor::<1>::zeros(param.dims(), (&param.device(), param.dtype()));
            AdamState {
                steps: 0,
                moment_1: zeros.clone(),
                moment_2: zeros,
            }
        });
        let steps = steps + 1;
        let moment_1 =
            in_dtype(moment_1, compute).mul_scalar(beta_1) + grad.clone().mul_scalar(1.0 - beta_1);
        let moment_2 =
            in_dtype(moment_2, compute).mul_scalar(beta_2) + grad.square().mul_scalar(1.0 - beta_2);
        // The update uses the moments as stored, as the fused kernel does.
        let moment_1 = writer.state(moment_1, Stream::Moment1);
        let moment_2 = writer.state(moment_2, Stream::Moment2);
        let correction_1 = 1.0 - beta_1.powi(steps);
        let correction_2 = 1.0 - beta_2.powi(steps);
        let denom = in_dtype(moment_2.clone(), compute)
            .sqrt()
            .div_scalar(correction_2.sqrt())
            .add_scalar(self.eps);
        let mut direction = in_dtype(moment_1.clone(), compute) / denom;
        if self.weight_decay != 0.0 {
            // Scaled by lr/c₁ below: lr·wd·w, AdamW's decoupled decay.
            let decay = self.weight_decay * correction_1;
            direction = direction + in_dtype(param.clone(), compute).mul_scalar(decay);
        }
        let param = writer.weights(param, direction, lr / correction_1, observer);
        let state = AdamState {
            steps,
            moment_1,
            moment_2,
        };
        (param, state)
    }
}
