//! How many bytes of a model sit in each dtype, per component.

use std::collections::BTreeMap;
use std::fmt;

use burn::module::{ModuleVisitor, Param};
use burn::tensor::{DType, Tensor};

use crate::policy::Component;
use crate::role::{ParamRoles, RoleMap};

/// One row of a [`PrecisionReport`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReportRow {
    /// Number of parameter tensors.
    pub tensors: usize,
    /// Number of elements.
    pub elements: usize,
    /// Bytes of storage.
    pub bytes: usize,
}

/// Bytes per dtype per storage component of a model's parameters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PrecisionReport {
    /// Rows keyed by component and dtype name.
    pub rows: BTreeMap<(Component, &'static str), ReportRow>,
}

impl PrecisionReport {
    /// Measures `module`'s parameters, by role (a parameter without one counts as
    /// [`Component::Other`]).
    pub fn of<M: ParamRoles>(module: &M) -> Self {
        let mut visitor = ReportVisitor {
            roles: module.param_roles(),
            report: PrecisionReport::default(),
        };
        module.visit(&mut visitor);
        visitor.report
    }

    /// Total bytes.
    pub fn total_bytes(&self) -> usize {
        self.rows.values().map(|r| r.bytes).sum()
    }
}

impl fmt::Display for PrecisionReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<10} {:<6} {:>8} {:>12} {:>14}",
            "component", "dtype", "tensors", "elements", "bytes"
        )?;
        for ((component, dtype), row) in &self.rows {
            writeln!(
                f,
                "{:<10} {:<6} {:>8} {:>12} {:>14}",
                component.name(),
                dtype,
                row.tensors,
                row.elements,
                row.bytes
            )?;
        }
        write!(
            f,
            "{:<10} {:<6} {:>8} {:>12} {:>14}",
            "total",
            "",
            "",
            "",
            self.total_bytes()
        )
    }
}

/// Name and size in bytes of a dtype, for reports.
pub fn dtype_info(dtype: DType) -> (&'static str, usize) {
    match dtype {
        DType::F64 => ("fp64", 8),
        DType::F32 | DType::Flex32 => ("fp32", 4),
        DType::F16 => ("fp16", 2),
        DType::BF16 => ("bf16", 2),
        other => (other.name(), other.size()),
    }
}

struct ReportVisitor {
    roles: RoleMap,
    report: PrecisionReport,
}

impl ModuleVisitor for ReportVisitor {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let (dtype, size) = dtype_info(param.dtype());
        let elements = param.shape().num_elements();
        let row = self
            .report
            .rows
            .entry((self.roles.component(&param.id), dtype))
            .or_default();
        row.tensors += 1;
        row.elements += elements;
        row.bytes += elements * size;
    }
}
