//! Reductions whose bits do not depend on how rayon split the work.

use rayon::prelude::*;

/// The sum of per-task partial results, added in task order. rayon's own `sum` adds partial
/// results along the tree its work stealing happened to build, which varies from run to run;
/// a float sum's bits depend on that order, and a resumed run must retrace the uninterrupted
/// one bit for bit.
pub(crate) fn ordered_sum(partials: impl IndexedParallelIterator<Item = f64>) -> f64 {
    partials.collect::<Vec<f64>>().into_iter().sum()
}
