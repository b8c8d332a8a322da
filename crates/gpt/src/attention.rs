//! Causal self-attention with QK-norm, rotary and the value residual.

use brainfloat_precision::{CastedLinear, CastedLinearConfig, PrecisionPolicy};
use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor};

use crate::norm::rms_norm;
use crate::rotary::Rotary;

/// The record's attention: q, k, v, o CastedLinear without bias, `v = (1−λ)·v + λ·v1` with `v1`
/// block 0's values, weightless RMSNorm on q and k, rotary, causal scaled dot product.
#[derive(Module, Debug)]
pub struct CausalSelfAttention {
    /// Query projection.
    pub c_q: CastedLinear,
    /// Key projection.
    pub c_k: CastedLinear,
    /// Value projection.
    pub c_v: CastedLinear,
    /// Output projection (zero-initialised).
    pub c_proj: CastedLinear,
    /// Value-residual mix λ (a scalar; stored as `[1]`, saved as PyTorch's 0-d tensor).
    pub lamb: Param<Tensor<1>>,
    #[module(skip)]
    n_head: usize,
}

impl CausalSelfAttention {
    /// A new attention layer of width `d_model` with `n_head` heads.
    pub fn new(d_model: usize, n_head: usize, device: &Device) -> Self {
        let linear = CastedLinearConfig::new(d_model, d_model);
        Self {
            c_q: linear.init(device),
            c_k: linear.init(device),
            c_v: linear.init(device),
            c_proj: linear.clone().with_zero_init(true).init(device),
            lamb: Param::from_tensor(Tensor::from_floats([0.5], device)),
            n_head,
        }
    }

    /// `x` `[B, T, C]` (normalised) → `(y, v1)`; `v1` is `None` in block 0, which provides it.
    pub fn forward(
        &self,
        x: Tensor<3>,
        v1: Option<Tensor<4>>,
        rotary: &Rotary,
        policy: &PrecisionPolicy,
    ) -> (Tensor<3>, Tensor<4>) {
        let [b, t, c] = x.dims();
        let heads = [b, t, self.n_head, c / self.n_head];
        let q = self.c_q.forward_under(x.clone(), policy).reshape(heads);
        let k = self.c_k.forward_under(x.clone(), policy).reshape(heads);
        let v = self.c_v.forward_under(x, policy).reshape(heads);

        let v1 = v1.unwrap_or_else(|| v.clone());
        let lamb = self
            .lamb
            .val()
            .cast(policy.activation())
            .reshape([1, 1, 1, 1]);
        let v = lamb.clone().neg().add_scalar(1.0) * v + lamb * v1.clone();

        let q = rotary.apply(rms_norm(q));
        let k = rotary.apply(rms_norm(k));

        // [B, H, T, hd], matmul operands in the policy's matmul dtype.
        let to_heads = |z: Tensor<4>| z.swap_dims(1, 2).cast(policy.matmul());
        let y = brainfloat_ops::causal_attention(to_heads(q), to_heads(k), to_heads(v));
        let y = y
            .cast(policy.activation())
            .swap_dims(1, 2)
            .reshape([b, t, c]);
        (self.c_proj.forward_under(y, policy), v1)
    }
}
