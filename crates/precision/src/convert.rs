//! One call that applies a [`PrecisionPolicy`] to a whole model.

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{Device, FloatDType, Tensor};

use crate::error::PrecisionError;
use crate::path::ParamPath;
use crate::policy::PrecisionPolicy;
use crate::role::{ParamRoles, RoleMap};

/// A model whose forward pass takes its compute dtypes from a [`PrecisionPolicy`].
///
/// [`apply_policy`] casts the parameters; this trait hands the policy to the model so that its
/// forward pass asks the policy rather than hard-coding dtypes.
pub trait PrecisionAware: Module + Sized {
    /// The model with `policy` as its compute policy (parameters untouched).
    fn with_policy(self, policy: PrecisionPolicy) -> Self;
}

/// Applies `policy` to `model`: checks that `device` supports every dtype of the policy, casts
/// each parameter to its storage dtype (its [role](ParamRoles)'s component) and sets the model's
/// compute dtypes. A parameter the model gives no role is an error naming it.
///
/// This is the record's "cast the whole model, then every CastedLinear back to fp32", done in
/// one pass, and it works in both directions (a bf16 model can be brought back to fp32).
pub fn apply_policy<M: PrecisionAware + ParamRoles>(
    model: M,
    policy: &PrecisionPolicy,
    device: &Device,
) -> Result<M, PrecisionError> {
    policy.check_device(device)?;
    let model = cast_params(model, policy)?;
    Ok(model.with_policy(*policy))
}

/// Casts every parameter of `module` to its storage dtype under `policy`, without touching compute
/// dtypes. For any Burn module that states its parameters' roles, also one that does not
/// implement [`PrecisionAware`].
pub fn cast_params<M: ParamRoles>(
    module: M,
    policy: &PrecisionPolicy,
) -> Result<M, PrecisionError> {
    let roles = module.param_roles();
    let mut mapper = CastParams {
        policy,
        roles: &roles,
        path: ParamPath::default(),
        without_role: Vec::new(),
    };
    let module = module.map(&mut mapper);
    if mapper.without_role.is_empty() {
        Ok(module)
    } else {
        Err(PrecisionError::WithoutRole {
            params: mapper.without_role.join(", "),
        })
    }
}

struct CastParams<'a> {
    policy: &'a PrecisionPolicy,
    roles: &'a RoleMap,
    path: ParamPath,
    without_role: Vec<String>,
}

impl ModuleMapper for CastParams<'_> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.enter(name, container_type);
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let Some(role) = self.roles.role(&param.id) else {
            self.without_role.push(self.path.name());
            return param;
        };
        let dtype = self.policy.dtype(role.component());
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
