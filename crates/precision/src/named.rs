//! Every parameter (or its gradient) of a module, by name: for checkpoints, reports and tests.

use burn::module::{ModuleVisitor, Param};
use burn::tensor::{Gradients, Tensor};

use crate::path::ParamPath;
use crate::policy::Component;
use crate::role::{ParamRoles, RoleMap};

/// A parameter's value (or gradient), flattened, with its name, shape and storage component.
#[derive(Debug, Clone)]
pub struct NamedTensor {
    /// Dotted name in the module tree (`transformer.h.0.attn.c_q.weight`).
    pub name: String,
    /// Storage component of the parameter, from the role the model states for it
    /// ([`Component::Other`] without one).
    pub component: Component,
    /// Shape of the parameter.
    pub shape: Vec<usize>,
    /// The values, flattened (row-major).
    pub tensor: Tensor<1>,
}

/// Every float parameter of `module`, in visiting order.
pub fn named_params<M: ParamRoles>(module: &M) -> Vec<NamedTensor> {
    let mut visitor = Collect {
        grads: None,
        roles: module.param_roles(),
        path: ParamPath::default(),
        out: Vec::new(),
    };
    module.visit(&mut visitor);
    visitor.out
}

/// The gradient of every float parameter of `module` that has one in `grads`.
pub fn named_grads<M: ParamRoles>(module: &M, grads: &Gradients) -> Vec<NamedTensor> {
    let mut visitor = Collect {
        grads: Some(grads),
        roles: module.param_roles(),
        path: ParamPath::default(),
        out: Vec::new(),
    };
    module.visit(&mut visitor);
    visitor.out
}

struct Collect<'a> {
    grads: Option<&'a Gradients>,
    roles: RoleMap,
    path: ParamPath,
    out: Vec<NamedTensor>,
}

impl ModuleVisitor for Collect<'_> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.enter(name, container_type);
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let value = param.val();
        let tensor = match self.grads {
            Some(grads) => match value.grad(grads) {
                Some(grad) => grad,
                None => return,
            },
            None => value,
        };
        let shape = tensor.dims().to_vec();
        self.out.push(NamedTensor {
            name: self.path.name(),
            component: self.roles.component(&param.id),
            tensor: tensor.reshape([shape.iter().product::<usize>()]),
            shape,
        });
    }
}
