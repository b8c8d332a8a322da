//! Adam for the embedding, the head and the scalars, with PyTorch's bias correction.

use brainfloat_ops::{AdamGroup, AdamMember, adam_steps};
use burn::tensor::Tensor;

use super::write::{Observer, Stream, Writer, host_f32};

/// Adam's state of one parameter: its step count and moments, flattened, in its dtype.
#[derive(Debug, Clone)]
pub(super) struct AdamState {
    pub steps: i32,
    pub moment_1: Tensor<1>,
    pub moment_2: Tensor<1>,
}

/// One step of a group's parameters (flattened) with their gradients under `adam`: their new
/// weights and state, in order, by one fused multi-tensor step for the group — decay,
/// stochastic rounding and Kahan's compensation (taken from and given back to each member's
/// writer) inside it. The observer, if any, reads what the step wrote, so that observing a step
/// never changes it. Parameters and moments are moved in: as their only owner a kernel updates
/// them in place.
pub(super) fn update_group(
    adam: &AdamGroup,
    states: Vec<Option<AdamState>>,
    params: Vec<Tensor<1>>,
    grads: Vec<Tensor<1>>,
    writers: &mut [Writer],
    observer: &mut Observer<'_>,
) -> Vec<(Tensor<1>, AdamState)> {
    let streams = [Stream::Weight, Stream::Moment1, Stream::Moment2];
    let members: Vec<AdamMember> = (states.into_iter().zip(params).zip(grads))
        .zip(writers.iter_mut())
        .map(|(((state, param), grad), writer)| {
            let AdamState {
                steps,
                moment_1,
                moment_2,
            } = state.unwrap_or_else(|| AdamState {
                steps: 0,
                moment_1: param.zeros_like(),
                moment_2: param.zeros_like(),
            });
            let compensation = writer.take_compensation(&param);
            AdamMember {
                param,
                grad,
                moment_1,
                moment_2,
                compensation,
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
    let updated = adam_steps(members, *adam);
    let stepped = (updated.into_iter().zip(steps).zip(writers.iter_mut()))
        .map(|((update, steps), writer)| {
            writer.compensation = update.compensation;
            let state = AdamState {
                steps,
                moment_1: update.moment_1,
                moment_2: update.moment_2,
            };
            (update.param, state)
        })
        .collect::<Vec<_>>();
    for ((before, (param, state)), writer) in
        before.iter().flatten().zip(&stepped).zip(writers.iter())
    {
        writer.show(observer, before, &delta(adam, state, before), param);
    }
    stepped
}

/// What the fused step subtracted from the weights `before` it, before rounding, recomputed on
/// the host from the moments it stored (the kernel used them before their rounding: the probe's
/// count is within that rounding): `lr/c₁ · m / (√v/√c₂ + eps) + lr·wd·w`.
fn delta(adam: &AdamGroup, state: &AdamState, before: &[f32]) -> Vec<f32> {
    let (beta_1, beta_2) = adam.betas;
    let scale = (adam.lr / (1.0 - beta_1.powi(state.steps))) as f32;
    let root_c2 = (1.0 - beta_2.powi(state.steps)).sqrt() as f32;
    let (eps, decay) = (adam.eps as f32, (adam.lr * adam.weight_decay) as f32);
    let (m, v) = (host_f32(&state.moment_1), host_f32(&state.moment_2));
    (m.iter().zip(&v).zip(before))
        .map(|((m, v), w)| m / (v.sqrt() / root_c2 + eps) * scale + w * decay)
        .collect()
}
