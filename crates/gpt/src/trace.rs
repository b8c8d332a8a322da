//! The model's intermediate tensors by name, for comparing it layer by layer with a reference
//! (`tests/layer_parity.rs` against PyTorch's `--dump-layers`). With the `trace` feature, off
//! but for a thread-local check unless a caller runs a forward pass inside `collect`; without
//! it (the trainer's binary), the trace points compile to nothing.

#[cfg(feature = "trace")]
use std::cell::RefCell;

use burn::tensor::Tensor;

/// The tensors recorded so far on this thread, while [`collect`] runs; and the name of the
/// part of the model running now (`blocks.0`), which a recorded name goes under.
#[cfg(feature = "trace")]
struct Trace {
    tensors: Vec<(String, Tensor<1>)>,
    scope: String,
}

#[cfg(feature = "trace")]
std::thread_local! {
    static TRACE: RefCell<Option<Trace>> = const { RefCell::new(None) };
}

/// Runs `forward` and returns, beside its result, every tensor the model recorded during it,
/// flattened, in order, named as `scripts/pytorch_reference.py --dump-layers` names them
/// (`blocks.0.attn.q`, `blocks.1.mlp.hidden`, …).
#[cfg(feature = "trace")]
pub fn collect<T>(forward: impl FnOnce() -> T) -> (T, Vec<(String, Tensor<1>)>) {
    TRACE.with(|trace| {
        *trace.borrow_mut() = Some(Trace {
            tensors: Vec::new(),
            scope: String::new(),
        })
    });
    let result = forward();
    let trace = TRACE.with(|trace| trace.borrow_mut().take());
    (result, trace.map(|t| t.tensors).unwrap_or_default())
}

/// Records `tensor` as `name` within the current scope, when collecting.
pub(crate) fn record<const D: usize>(name: &str, tensor: &Tensor<D>) {
    record_with(name, || tensor.clone());
}

/// Records the tensor `make` makes (a view in the reference's layout) as `name`; `make` runs
/// only when collecting, so that an ordinary forward pass adds no op to the graph.
#[cfg(feature = "trace")]
pub(crate) fn record_with<const D: usize>(name: &str, make: impl FnOnce() -> Tensor<D>) {
    TRACE.with(|trace| {
        if let Some(trace) = trace.borrow_mut().as_mut() {
            let name = if trace.scope.is_empty() {
                name.to_string()
            } else {
                format!("{}.{name}", trace.scope)
            };
            trace.tensors.push((name, make().reshape([-1])));
        }
    });
}

/// Runs `part` with recorded names under the scope `scope` names (`blocks.0`), when collecting.
#[cfg(feature = "trace")]
pub(crate) fn scoped<T>(scope: impl FnOnce() -> String, part: impl FnOnce() -> T) -> T {
    let outer = TRACE.with(|trace| {
        trace
            .borrow_mut()
            .as_mut()
            .map(|t| std::mem::replace(&mut t.scope, scope()))
    });
    let result = part();
    if let Some(outer) = outer {
        TRACE.with(|trace| {
            if let Some(t) = trace.borrow_mut().as_mut() {
                t.scope = outer;
            }
        });
    }
    result
}

/// Without the `trace` feature: nothing recorded.
#[cfg(not(feature = "trace"))]
#[inline(always)]
pub(crate) fn record_with<const D: usize>(_name: &str, _make: impl FnOnce() -> Tensor<D>) {}

/// Without the `trace` feature: `part`.
#[cfg(not(feature = "trace"))]
#[inline(always)]
pub(crate) fn scoped<T>(_scope: impl FnOnce() -> String, part: impl FnOnce() -> T) -> T {
    part()
}
