//! One transformer block of the record.

use brainfloat_precision::PrecisionPolicy;
use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor};

use crate::attention::CausalSelfAttention;
use crate::mlp::Mlp;
use crate::norm::rms_norm;
use crate::rotary::Rotary;

/// `x = λ0·x + λ1·x0; x += attn(norm(x)); x += mlp(norm(x))`.
#[derive(Module, Debug)]
pub struct Block {
    /// `[λ0, λ1]`, the x0-skip mix (init `[1, 0]`).
    pub lambdas: Param<Tensor<1>>,
    /// Attention.
    pub attn: CausalSelfAttention,
    /// MLP.
    pub mlp: Mlp,
}

impl Block {
    /// A new block.
    pub fn new(d_model: usize, n_head: usize, device: &Device) -> Self {
        Self {
            lambdas: Param::from_tensor(Tensor::from_floats([1.0, 0.0], device)),
            attn: CausalSelfAttention::new(d_model, n_head, device),
            mlp: Mlp::new(d_model, device),
        }
    }

    /// `x`, `x0` `[B, T, C]` in the activation dtype → `(x, v1)`.
    pub fn forward(
        &self,
        x: Tensor<3>,
        x0: Tensor<3>,
        v1: Option<Tensor<4>>,
        rotary: &Rotary,
        policy: &PrecisionPolicy,
    ) -> (Tensor<3>, Tensor<4>) {
        let lambdas = self.lambdas.val().cast(policy.activation());
        let lambda = |i: usize| lambdas.clone().narrow(0, i, 1).reshape([1, 1, 1]);
        let x = lambda(0) * x + lambda(1) * x0;
        let (y, v1) = self.attn.forward(rms_norm(x.clone()), v1, rotary, policy);
        let x = x + y;
        let x = x.clone() + self.mlp.forward(rms_norm(x), policy);
        (x, v1)
    }
}
