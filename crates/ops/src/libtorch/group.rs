//! The multi-tensor ops ([`crate::adam_steps`], [`crate::axpbys`], [`crate::square_sums`]) on
//! the device route: libtorch's multi-tensor operators over a whole list of its tensors. Each
//! function hands its inputs back untouched where the route does not apply (a tensor of another
//! backend or under autodiff, the composed route, a dtype the operator does not take), and the
//! caller runs the single-tensor op on each.

use burn::backend::libtorch::TchTensor;
use burn::backend::{BackendTensor, DispatchAutodiffContext, DispatchTensor, DispatchTensorKind};
use burn::tensor::Tensor;
use tch::Kind;

use super::device::{self, fused_adam_kind, step_counts, takes_device_route};
use super::owned;
use super::shim::{self, FusedAdam};
use crate::AdamUpdate;
use crate::{AdamGroup, AdamMember};

/// The libtorch tensor inside `tensor`, when it is one outside autodiff.
fn libtorch(tensor: &DispatchTensor) -> Option<&TchTensor> {
    match (&tensor.kind, tensor.autodiff) {
        (
            DispatchTensorKind::LibTorch(BackendTensor::Float(tensor)),
            DispatchAutodiffContext::Disabled,
        ) => Some(tensor),
        _ => None,
    }
}

/// `tensor` as Burn's tensor again.
fn to_burn(tensor: TchTensor) -> Tensor<1> {
    Tensor::from_dispatch(DispatchTensor {
        kind: DispatchTensorKind::LibTorch(BackendTensor::Float(tensor)),
        autodiff: DispatchAutodiffContext::Disabled,
    })
}

/// Lists of libtorch tensors, handed back to Burn.
fn back<const N: usize>(lists: [Vec<TchTensor>; N]) -> [Vec<Tensor<1>>; N] {
    lists.map(|list| list.into_iter().map(to_burn).collect())
}

/// The libtorch tensors of `lists` when every tensor is one, outside autodiff, and they take the
/// device route; `lists` back otherwise.
#[allow(clippy::type_complexity)]
fn on_device_route<const N: usize>(
    lists: [Vec<Tensor<1>>; N],
) -> Result<[Vec<TchTensor>; N], [Vec<Tensor<1>>; N]> {
    let lists = lists.map(|list| {
        list.into_iter()
            .map(Tensor::into_dispatch)
            .collect::<Vec<_>>()
    });
    let tensors: Option<Vec<&TchTensor>> = lists.iter().flatten().map(libtorch).collect();
    let takes = tensors.is_some_and(|tensors| !tensors.is_empty() && takes_device_route(&tensors));
    if !takes {
        return Err(lists.map(|list| list.into_iter().map(Tensor::from_dispatch).collect()));
    }
    Ok(lists.map(|list| {
        list.into_iter()
            .map(|t| match t.kind {
                DispatchTensorKind::LibTorch(BackendTensor::Float(tensor)) => tensor,
                _ => unreachable!("every tensor was checked to be libtorch's"),
            })
            .collect()
    }))
}

/// Adam over `members` by `_fused_adam_`, one call per dtype, when all round to nearest without
/// decay and each member's tensors share a dtype (bf16 or fp32).
pub(crate) fn adam_steps(
    members: Vec<AdamMember>,
    group: AdamGroup,
) -> Result<Vec<AdamUpdate<1>>, Vec<AdamMember>> {
    let plain = |m: &AdamMember| m.stochastic.is_none() && m.compensation.is_none();
    if group.weight_decay != 0.0 || !members.iter().all(plain) {
        return Err(members);
    }
    let steps: Vec<i32> = members.iter().map(|m| m.step).collect();
    let mut lists: [Vec<Tensor<1>>; 4] = Default::default();
    for member in members {
        let tensors = [member.param, member.grad, member.moment_1, member.moment_2];
        for (list, tensor) in lists.iter_mut().zip(tensors) {
            list.push(tensor);
        }
    }
    let rebuild = |[params, grads, moments_1, moments_2]: [Vec<Tensor<1>>; 4]| {
        let tensors = params.into_iter().zip(grads).zip(moments_1).zip(moments_2);
        tensors
            .zip(&steps)
            .map(
                |((((param, grad), moment_1), moment_2), &step)| AdamMember {
                    param,
                    grad,
                    moment_1,
                    moment_2,
                    compensation: None,
                    step,
                    stochastic: None,
                },
            )
            .collect()
    };
    let [params, grads, moments_1, moments_2] = on_device_route(lists).map_err(rebuild)?;
    let member_kind = |i: usize| {
        fused_adam_kind([&params[i], &grads[i], &moments_1[i], &moments_2[i]].map(|t| &t.tensor))
    };
    let kinds: Option<Vec<Kind>> = (0..params.len()).map(member_kind).collect();
    let Some(kinds) = kinds else {
        return Err(rebuild(back([params, grads, moments_1, moments_2])));
    };
    let grads: Vec<tch::Tensor> = grads.into_iter().map(|g| g.tensor.contiguous()).collect();
    let [params, moments_1, moments_2] =
        [params, moments_1, moments_2].map(|list| list.into_iter().map(owned).collect::<Vec<_>>());
    let adam = FusedAdam {
        lr: group.lr,
        betas: group.betas,
        eps: group.eps,
    };
    for kind in [Kind::Float, Kind::BFloat16] {
        let members: Vec<usize> = (0..kinds.len()).filter(|&i| kinds[i] == kind).collect();
        let Some(&first) = members.first() else {
            continue;
        };
        let pick = |list| picked(list, &members);
        let counts = step_counts(
            &members.iter().map(|&i| steps[i]).collect::<Vec<_>>(),
            params[first].device(),
        );
        let counts: Vec<&tch::Tensor> = counts.iter().collect();
        shim::fused_adam(
            &pick(&params),
            &pick(&grads),
            &pick(&moments_1),
            &pick(&moments_2),
            &counts,
            adam,
        )
        .unwrap_or_else(|err| panic!("libtorch's _fused_adam_: {err}"));
    }
    let updated = params.into_iter().zip(moments_1).zip(moments_2);
    Ok(updated
        .map(|((param, moment_1), moment_2)| {
            let [param, moment_1, moment_2] =
                [param, moment_1, moment_2].map(|t| to_burn(TchTensor::new(t)));
            AdamUpdate {
                param,
                moment_1,
                moment_2,
                compensation: None,
            }
        })
        .collect())
}

/// The tensors of `list` at `indices`, borrowed.
fn picked<'a>(list: &'a [tch::Tensor], indices: &[usize]) -> Vec<&'a tch::Tensor> {
    indices.iter().map(|&i| &list[i]).collect()
}

/// `a·ys[i] + b·xs[i]` by multi-tensor operators, when every tensor has one kind.
#[allow(clippy::type_complexity)]
pub(crate) fn axpbys(
    ys: Vec<Tensor<1>>,
    xs: Vec<Tensor<1>>,
    a: f64,
    b: f64,
) -> Result<Vec<Tensor<1>>, (Vec<Tensor<1>>, Vec<Tensor<1>>)> {
    let [ys, xs] = on_device_route([ys, xs]).map_err(|[ys, xs]| (ys, xs))?;
    let kind = ys[0].tensor.kind();
    if ys.iter().chain(&xs).any(|t| t.tensor.kind() != kind) {
        let [ys, xs] = back([ys, xs]);
        return Err((ys, xs));
    }
    // Where the operators write over `ys`, the call must hold them.
    let writes_ys = a == 1.0 || b != 1.0;
    let ys: Vec<tch::Tensor> = ys
        .into_iter()
        .map(|y| if writes_ys { owned(y) } else { y.tensor })
        .collect();
    let xs: Vec<tch::Tensor> = xs.into_iter().map(|x| x.tensor).collect();
    let all: Vec<usize> = (0..ys.len()).collect();
    let sums = shim::foreach_axpby(&picked(&ys, &all), &picked(&xs, &all), a, b)
        .unwrap_or_else(|err| panic!("libtorch's _foreach_add: {err}"));
    Ok(sums
        .into_iter()
        .map(|t| to_burn(TchTensor::new(t)))
        .collect())
}

/// `Σ x²` of each tensor by one `_foreach_norm`.
pub(crate) fn square_sums(xs: Vec<Tensor<1>>) -> Result<Vec<Tensor<1>>, Vec<Tensor<1>>> {
    let [xs] = on_device_route([xs]).map_err(|[xs]| xs)?;
    let sums = device::square_sums(&xs.iter().map(|x| &x.tensor).collect::<Vec<_>>());
    Ok(sums
        .into_iter()
        .map(|sum| to_burn(TchTensor::new(sum.reshape([1]))))
        .collect())
}
