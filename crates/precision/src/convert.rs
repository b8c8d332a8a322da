//! One call that applies a [`PrecisionPolicy`] to a whole model.

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{Device, FloatDType, Tensor};

use crate::error::PrecisionError;
use crate::path::ParamPath;
use crate::policy::{Component, PrecisionPolicy};

/// The storage component of a parameter, from the type of the struct that owns it and its rank:
/// weights of a `CastedLinear` are [`Component::Linear`], of an `Embedding`
/// [`Component::Embedding`]; other parameters of rank ≤ 1 are [`Component::Scalars`] and the rest
/// [`Component::Other`].
pub fn classify(owner: Option<&str>, rank: usize) -> Component {
    match owner {
        Some("CastedLinear") => Component::Linear,
        Some("Embedding") => Component::Embedding,
        _ if rank <= 1 => Component::Scalars,
        _ => Component::Other,
    }
}

/// A model whose forward pass takes its compute dtypes from a [`PrecisionPolicy`].
///
/// [`apply_policy`] casts the parameters; this trait hands the policy to the model so that its
/// forward pass asks the policy rather than hard-coding dtypes.
pub trait PrecisionAware: Module + Sized {
    /// The model with `policy` as its compute policy (parameters untouched).
    fn with_policy(self, policy: PrecisionPolicy) -> Self;
}

/// Applies `policy` to `model`: checks that `device` supports every dtype of the policy, casts
/// each parameter to its storage dtype ([`classify`]) and sets the model's compute dtypes.
///
/// This is the record's "cast the whole model, then every CastedLinear back to fp32", done in
/// one pass, and it works in both directions (a bf16 model can be brought back to fp32).
pub fn apply_policy<M: PrecisionAware>(
    model: M,
    policy: &PrecisionPolicy,
    device: &Device,
) -> Result<M, PrecisionError> {
    policy.check_device(device)?;
    let model = cast_params(model, policy);
    Ok(model.with_policy(*policy))
}

/// Casts every parameter of `module` to its storage dtype under `policy`, without touching compute
/// dtypes. For any Burn module, also one that does not implement [`PrecisionAware`].
pub fn cast_params<M: Module>(module: M, policy: &PrecisionPolicy) -> M {
    module.map(&mut CastParams {
        policy,
        path: ParamPath::default(),
    })
}

struct CastParams<'a> {
    policy: &'a PrecisionPolicy,
    path: ParamPath,
}

impl ModuleMapper for CastParams<'_> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.enter(name, container_type);
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let dtype = self.policy.dtype(classify(self.path.owner(), D));
        param.map(|tensor| cast_leaf(tensor, dtype))
    }
}

/// Casts a parameter tensor, keeping it a leaf of the autodiff graph with its `require_grad`.
fn cast_leaf<const D: usize>(tensor: Tensor<D>, dtype: FloatDType) -> Tensor<D> {
    if tensor.dtype() == dtype.into() {
        return tensor;
    }
    let require_grad = tensor.is_require_grad();
    tensor.cast(dtype).detach().set_require_grad(require_grad)
}
