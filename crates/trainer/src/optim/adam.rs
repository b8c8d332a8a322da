//! Adam for the embedding, the head and the scalars, with PyTorch's bias correction.

use brainfloat_ops::adam_step;
use burn::tensor::Tensor;

use super::write::{Stream, Writer, in_dtype};

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
    /// One step of `param` (flattened) with gradient `grad` at rate `lr`: its new weights and
    /// state, by one fused kernel where the writer allows it, op by op through it otherwise.
    /// Parameter and moments are moved in: as their only owner a kernel updates them in place.
    pub fn update(
        &self,
        state: Option<AdamState>,
        param: Tensor<1>,
        grad: Tensor<1>,
        lr: f64,
        writer: &mut Writer,
    ) -> (Tensor<1>, AdamState) {
        let (beta_1, beta_2) = self.betas;
        // The fused kernel has no decay.
        if writer.fusable() && self.weight_decay == 0.0 {
            let AdamState {
                steps,
                moment_1,
                moment_2,
            } = state.unwrap_or_else(|| AdamState {
                steps: 0,
                moment_1: grad.zeros_like(),
                moment_2: grad.zeros_like(),
            });
            let streams = [Stream::Weight, Stream::Moment1, Stream::Moment2];
            let update = adam_step(
                param,
                grad,
                moment_1,
                moment_2,
                lr,
                self.betas,
                self.eps,
                steps + 1,
                writer.stochastic_keys(streams),
            );
            let state = AdamState {
                steps: steps + 1,
                moment_1: update.moment_1,
                moment_2: update.moment_2,
            };
            return (update.param, state);
        }
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
        let param = writer.weights(param, direction, lr / correction_1);
        let state = AdamState {
            steps,
            moment_1,
            moment_2,
        };
        (param, state)
    }
}
