//! What each parameter of a model is, stated by the model in code.
//!
//! A parameter's role decides its storage dtype here ([`ParamRole::component`]) and its
//! optimizer in the trainer. Burn's module visitors hand over only field and type names;
//! deciding by those would silently regroup a parameter when a field or struct is renamed.
//! So a model lists its parameters' ids with their roles ([`ParamRoles`]), and a parameter it
//! leaves out is an error, not a guess.

use std::collections::{HashMap, HashSet};

use brainfloat_choice::choice;
use burn::module::{Module, Param, ParamId};
use burn::tensor::Tensor;

use crate::casted_linear::WeightLayout;
use crate::policy::Component;

/// The part a parameter plays in a model. Written by name in configs (`"hidden_matrix"`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub enum ParamRole {
    /// A token-embedding table.
    Embedding,
    /// A weight matrix inside the network (the record's Muon trains these).
    HiddenMatrix,
    /// The output head's weight matrix.
    OutputMatrix,
    /// The bias of a linear layer.
    LinearBias,
    /// A small learned scalar or vector (the record's lambdas).
    Scalar,
}

impl ParamRole {
    /// Every role.
    pub const ALL: [ParamRole; 5] = [
        ParamRole::Embedding,
        ParamRole::HiddenMatrix,
        ParamRole::OutputMatrix,
        ParamRole::LinearBias,
        ParamRole::Scalar,
    ];

    /// The role's name, as parsed.
    pub fn name(self) -> &'static str {
        match self {
            ParamRole::Embedding => "embedding",
            ParamRole::HiddenMatrix => "hidden_matrix",
            ParamRole::OutputMatrix => "output_matrix",
            ParamRole::LinearBias => "linear_bias",
            ParamRole::Scalar => "scalar",
        }
    }

    /// The storage component, whose dtype the policy gives: linear layers' weights and biases
    /// are master weights.
    pub fn component(self) -> Component {
        match self {
            ParamRole::Embedding => Component::Embedding,
            ParamRole::HiddenMatrix | ParamRole::OutputMatrix | ParamRole::LinearBias => {
                Component::Linear
            }
            ParamRole::Scalar => Component::Scalars,
        }
    }
}

choice!(ParamRole, "parameter role", own names);

/// The role of each parameter, by its id, and the matrices stored `[in, out]`.
#[derive(Debug, Clone, Default)]
pub struct RoleMap {
    roles: HashMap<ParamId, ParamRole>,
    in_out: HashSet<ParamId>,
}

impl RoleMap {
    /// States that `param` plays `role`.
    pub fn add<const D: usize>(&mut self, param: &Param<Tensor<D>>, role: ParamRole) -> &mut Self {
        self.roles.insert(param.id, role);
        self
    }

    /// States that the matrix `param` is stored in `layout` (`[out, in]` unless said): an
    /// optimizer whose step depends on which side is the output (Muon's aspect factor) reads it.
    pub fn set_layout(&mut self, param: &Param<Tensor<2>>, layout: WeightLayout) -> &mut Self {
        match layout {
            WeightLayout::InOut => self.in_out.insert(param.id),
            WeightLayout::OutIn => self.in_out.remove(&param.id),
        };
        self
    }

    /// The layout stated for the matrix `id` ([`WeightLayout::OutIn`] unless set).
    pub fn layout(&self, id: &ParamId) -> WeightLayout {
        if self.in_out.contains(id) {
            WeightLayout::InOut
        } else {
            WeightLayout::OutIn
        }
    }

    /// The role stated for the parameter `id`.
    pub fn role(&self, id: &ParamId) -> Option<ParamRole> {
        self.roles.get(id).copied()
    }

    /// The storage component of the parameter `id`: its role's, [`Component::Other`] without
    /// one.
    pub fn component(&self, id: &ParamId) -> Component {
        self.role(id).map_or(Component::Other, ParamRole::component)
    }

    /// Number of parameters with a role.
    pub fn len(&self) -> usize {
        self.roles.len()
    }

    /// Whether no parameter has a role.
    pub fn is_empty(&self) -> bool {
        self.roles.is_empty()
    }
}

/// A module that states the role of each of its float parameters.
pub trait ParamRoles: Module {
    /// The roles of the module's parameters: every float parameter must be in it.
    fn param_roles(&self) -> RoleMap;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_map_to_the_records_storage_components() {
        let components: Vec<Component> = ParamRole::ALL.iter().map(|r| r.component()).collect();
        assert_eq!(
            components,
            [
                Component::Embedding,
                Component::Linear,
                Component::Linear,
                Component::Linear,
                Component::Scalars
            ]
        );
    }
}
