//! Names of parameters inside a module tree, as a visitor or mapper walks it.

/// Tracks where a [`ModuleVisitor`](burn::module::ModuleVisitor) or
/// [`ModuleMapper`](burn::module::ModuleMapper) is in a module tree: the dotted name of the
/// current field (`transformer.h.0.attn.c_q.weight`) and the type of the struct that owns it.
#[derive(Debug, Default, Clone)]
pub struct ParamPath {
    names: Vec<String>,
    owners: Vec<String>,
}

impl ParamPath {
    /// Call from `enter_module`.
    pub fn enter(&mut self, name: &str, container_type: &str) {
        self.names.push(name.to_string());
        self.owners.push(container_type.to_string());
    }

    /// Call from `exit_module`.
    pub fn exit(&mut self) {
        self.names.pop();
        self.owners.pop();
    }

    /// The dotted name of the current field.
    pub fn name(&self) -> String {
        self.names.join(".")
    }

    /// The type name of the struct that owns the current field (`CastedLinear`, `Embedding`),
    /// or `None` at the top level.
    pub fn owner(&self) -> Option<&str> {
        let owner = self.owners.last()?;
        Some(
            owner
                .split_once(':')
                .map_or(owner.as_str(), |(_, name)| name),
        )
    }
}
