//! Multi-tensor ops: one call over the tensors of a parameter group, as PyTorch's optimizers
//! step a group (`_fused_adam_`, `_foreach_*`). On libtorch's device route each call is one
//! multi-tensor operator per dtype over the whole list, whatever the group's size; elsewhere
//! it is the single-tensor op on each member in turn, which the grouped call is checked against
//! ([`crate::conformance::groups`]). Tensors are flattened (`[numel]`), outside autodiff.

use burn::tensor::Tensor;

use crate::{AdamStep, AdamUpdate};

/// One parameter's share of a grouped Adam step ([`adam_steps`]).
#[derive(Debug, Clone)]
pub struct AdamMember {
    /// The parameter.
    pub param: Tensor<1>,
    /// Its gradient.
    pub grad: Tensor<1>,
    /// Its first moment.
    pub moment_1: Tensor<1>,
    /// Its second moment.
    pub moment_2: Tensor<1>,
    /// Its Kahan compensation, when its rounding is Kahan's.
    pub compensation: Option<Tensor<1>>,
    /// Its step count, this step included (from 1).
    pub step: i32,
    /// The keys of its stochastic rounding streams (parameter, first and second moment), or
    /// `None` to round to nearest.
    pub stochastic: Option<[u64; 3]>,
}

/// Adam's hyper-parameters for a group ([`adam_steps`]).
#[derive(Debug, Clone, Copy)]
pub struct AdamGroup {
    /// Learning rate.
    pub lr: f64,
    /// `(β1, β2)`.
    pub betas: (f64, f64),
    /// Added to the denominator.
    pub eps: f64,
    /// Decoupled weight decay (AdamW).
    pub weight_decay: f64,
}

impl AdamGroup {
    /// The step of one member.
    pub(crate) fn step(&self, member: &AdamMember) -> AdamStep {
        AdamStep {
            lr: self.lr,
            betas: self.betas,
            eps: self.eps,
            weight_decay: self.weight_decay,
            step: member.step,
            stochastic: member.stochastic,
        }
    }
}

/// One Adam step of each member, as [`adam_step`](crate::adam_step) computes it: on the device
/// route, libtorch's `_fused_adam_` over all members of one dtype when all round to nearest
/// without decay. Returns each member's update, in order.
pub fn adam_steps(members: Vec<AdamMember>, group: AdamGroup) -> Vec<AdamUpdate<1>> {
    #[cfg(feature = "tch")]
    let members = match crate::libtorch::group::adam_steps(members, group) {
        Ok(updated) => return updated,
        Err(members) => members,
    };
    members
        .into_iter()
        .map(|m| {
            let step = group.step(&m);
            crate::adam_step(
                m.param,
                m.grad,
                m.moment_1,
                m.moment_2,
                m.compensation,
                step,
            )
        })
        .collect()
}

/// `a·ys[i] + b·xs[i]` for each pair, as [`axpby`](crate::axpby): on the device route one or
/// two multi-tensor operators for pairs of one dtype (in place over `ys` where the call holds
/// them).
///
/// # Panics
/// When `ys` and `xs` differ in length or a pair in shape.
pub fn axpbys(ys: Vec<Tensor<1>>, xs: Vec<Tensor<1>>, a: f64, b: f64) -> Vec<Tensor<1>> {
    assert_eq!(ys.len(), xs.len(), "axpbys: one x per y");
    for (y, x) in ys.iter().zip(&xs) {
        assert_eq!(y.dims(), x.dims(), "axpbys: a pair of different shapes");
    }
    #[cfg(feature = "tch")]
    let (ys, xs) = match crate::libtorch::group::axpbys(ys, xs, a, b) {
        Ok(sums) => return sums,
        Err(pairs) => pairs,
    };
    ys.into_iter()
        .zip(xs)
        .map(|(y, x)| crate::axpby(y, x, a, b))
        .collect()
}

/// `Σ x²` of each tensor, squares in fp32, as fp32 `[1]`s, as [`square_sum`](crate::square_sum):
/// on the device route one multi-tensor norm (`_foreach_norm`) for the whole list.
pub fn square_sums(xs: Vec<Tensor<1>>) -> Vec<Tensor<1>> {
    #[cfg(feature = "tch")]
    let xs = match crate::libtorch::group::square_sums(xs) {
        Ok(sums) => return sums,
        Err(xs) => xs,
    };
    xs.into_iter().map(crate::square_sum).collect()
}
