//! Names of parameters inside a module tree, as a visitor or mapper walks it.

/// Tracks where a [`ModuleVisitor`](burn::module::ModuleVisitor) or
/// [`ModuleMapper`](burn::module::ModuleMapper) is in a module tree: the dotted name of the
/// current field (`transformer.h.0.attn.c_q.weight`), for checkpoints and messages. Names
/// decide nothing else: roles do ([`ParamRoles`](crate::ParamRoles)).
#[derive(Debug, Default, Clone)]
pub struct ParamPath {
    names: Vec<String>,
}

impl ParamPath {
    /// Call from `enter_module`.
    pub fn enter(&mut self, name: &str, _container_type: &str) {
        self.names.push(name.to_string());
    }

    /// Call from `exit_module`.
    pub fn exit(&mut self) {
        self.names.pop();
    }

    /// The dotted name of the current field.
    pub fn name(&self) -> String {
        self.names.join(".")
    }
}
