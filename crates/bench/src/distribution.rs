//! Where a training step's memory sits, by part and dtype: weights, gradients, optimizer state
//! (counted from the tensors' dtypes and sizes) and the activations kept for the backward pass
//! (measured by the backend's memory measure: the heap on flex, the resident set on libtorch's
//! CPU, the device pool on Burn's CUDA; on libtorch's CUDA, whose caching allocator only grows,
//! what the driver reports stays 0 for a warmed-up model).

use std::collections::BTreeMap;

use brainfloat_backend::MemoryMeasure;
use brainfloat_gpt::{Batch, LanguageModel};
use brainfloat_memory as memory;
use brainfloat_precision::{PrecisionError, dtype_name, named_grads, named_params, parse_dtype};
use burn::tensor::{Device, FloatDType, Tensor};
use serde::{Deserialize, Serialize};

/// What a block of memory holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Part {
    /// The parameters as stored (master weights and bf16 parameters).
    Weights,
    /// One gradient per parameter, in its parameter's dtype.
    Gradients,
    /// Adam's moments and Muon's momentum buffers.
    OptimizerState,
    /// Tensors the autodiff graph holds between the forward and the backward pass, at their
    /// peak (the end of the forward pass).
    Activations,
}

impl Part {
    /// Every part, in report order.
    pub const ALL: [Part; 4] = [
        Part::Weights,
        Part::Gradients,
        Part::OptimizerState,
        Part::Activations,
    ];

    /// Name in tables.
    pub fn name(self) -> &'static str {
        match self {
            Part::Weights => "weights",
            Part::Gradients => "gradients",
            Part::OptimizerState => "optimizer state",
            Part::Activations => "activations",
        }
    }
}

/// The dtype of a row's bytes: one float dtype, or several where a measurement cannot tell them
/// apart (the activations: an allocator does not know which allocation holds which dtype).
/// Written `fp32`, `bf16`, … or `mixed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum RowDtype {
    /// Tensors of one dtype.
    Float(FloatDType),
    /// A measured total of several.
    Mixed,
}

impl std::fmt::Display for RowDtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RowDtype::Float(dtype) => f.write_str(dtype_name(*dtype)),
            RowDtype::Mixed => f.write_str("mixed"),
        }
    }
}

impl TryFrom<String> for RowDtype {
    type Error = PrecisionError;

    fn try_from(name: String) -> Result<Self, PrecisionError> {
        match name.as_str() {
            "mixed" => Ok(RowDtype::Mixed),
            name => parse_dtype(name).map(RowDtype::Float),
        }
    }
}

impl From<RowDtype> for String {
    fn from(dtype: RowDtype) -> String {
        dtype.to_string()
    }
}

/// Bytes of one part in one dtype.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DistributionRow {
    /// What the bytes hold.
    pub part: Part,
    /// Their dtype.
    pub dtype: RowDtype,
    /// Number of tensors (0 for a heap measurement).
    pub tensors: usize,
    /// Bytes.
    pub bytes: u64,
}

/// Sums `tensors` by dtype into rows of `part`.
fn rows_by_dtype<'a>(
    part: Part,
    tensors: impl IntoIterator<Item = &'a Tensor<1>>,
) -> Vec<DistributionRow> {
    // Keyed by name: rows in the order of their dtypes' names.
    let mut by_dtype: BTreeMap<&'static str, (FloatDType, usize, u64)> = BTreeMap::new();
    for tensor in tensors {
        let dtype = FloatDType::from(tensor.dtype());
        let size = tensor.dtype().size();
        let entry = by_dtype.entry(dtype_name(dtype)).or_insert((dtype, 0, 0));
        entry.1 += 1;
        entry.2 += (tensor.shape().num_elements() * size) as u64;
    }
    by_dtype
        .into_values()
        .map(|(dtype, tensors, bytes)| DistributionRow {
            part,
            dtype: RowDtype::Float(dtype),
            tensors,
            bytes,
        })
        .collect()
}

/// The distribution of one training step of `model` on `batch`, with `optimizer_state` (the
/// trainer's state tensors): weights, gradients and state from their tensors, activations as
/// the bytes the forward pass leaves allocated by `measure` (no row where it measures nothing).
pub fn measure_distribution(
    model: &impl LanguageModel,
    optimizer_state: &[Tensor<1>],
    batch: &Batch,
    measure: MemoryMeasure,
    device: &Device,
) -> Result<Vec<DistributionRow>, brainfloat_gpt::GptError> {
    let params = named_params(model);
    let mut rows = rows_by_dtype(Part::Weights, params.iter().map(|p| &p.tensor));
    let cache = model.cache(&batch.inputs().device());
    let before = memory_in_use(measure, device);
    let loss = model.forward(batch, &cache)?;
    let retained = memory_in_use(measure, device);
    let grads = loss.backward();
    let grads = named_grads(model, &grads);
    rows.extend(rows_by_dtype(
        Part::Gradients,
        grads.iter().map(|g| &g.tensor),
    ));
    rows.extend(rows_by_dtype(Part::OptimizerState, optimizer_state));
    if let (Some(before), Some(retained)) = (before, retained) {
        rows.push(DistributionRow {
            part: Part::Activations,
            dtype: RowDtype::Mixed,
            tensors: 0,
            bytes: retained.saturating_sub(before),
        });
    }
    Ok(rows)
}

/// Bytes allocated now, by `measure`.
pub fn memory_in_use(measure: MemoryMeasure, device: &Device) -> Option<u64> {
    match measure {
        MemoryMeasure::Heap => memory::heap().map(|h| h.current as u64),
        MemoryMeasure::ResidentSet => {
            // Freed blocks that malloc still holds would count as in use.
            memory::release_free_memory();
            memory::rss().map(|r| r.current as u64)
        }
        MemoryMeasure::DevicePool => device.memory_pool_usage().map(|u| u.bytes_in_use),
        MemoryMeasure::ProcessGpuMemory => brainfloat_backend::process_gpu_memory(),
    }
}

/// Total bytes of `part` in `rows`.
pub fn part_bytes(rows: &[DistributionRow], part: Part) -> u64 {
    rows.iter()
        .filter(|r| r.part == part)
        .map(|r| r.bytes)
        .sum()
}
