//! Names of parameters inside a module tree, as a visitor or mapper walks it.

/// Tracks where a [`ModuleVisitor`](burn::module::ModuleVisitor) or
/// [`ModuleMapper`](burn::module::ModuleMapper) is in a module tree: the dotted name of the
/// current field (`transformer.h.0.attn.c_q.weight`), for checkpoints and messages. Names
/// decide nothing else: roles do ([`ParamRoles`](crate::ParamRoles)).
///
/// An enum module's variant is not part of the name: an enum of models (one chosen at run
/// time) has the names of the model it holds.
#[derive(Debug, Default, Clone)]
pub struct ParamPath {
    names: Vec<Option<String>>,
}

impl ParamPath {
    /// Call from `enter_module`.
    pub fn enter(&mut self, name: &str, container_type: &str) {
        let variant = container_type.starts_with("Enum:");
        self.names.push((!variant).then(|| name.to_string()));
    }

    /// Call from `exit_module`.
    pub fn exit(&mut self) {
        self.names.pop();
    }

    /// The dotted name of the current field.
    pub fn name(&self) -> String {
        let names: Vec<&str> = self.names.iter().flatten().map(String::as_str).collect();
        names.join(".")
    }
}
