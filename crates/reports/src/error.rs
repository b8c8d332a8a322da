//! Errors of the reports.

use std::path::PathBuf;

use brainfloat_bench::BenchError;
use brainfloat_trainer::TrainError;

/// What went wrong reading results or drawing a picture.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// A metrics file or reference that cannot be read or does not parse.
    #[error("{}: {problem}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// A picture that cannot be drawn.
    #[error("plot {}: {problem}", path.display())]
    Plot {
        /// The SVG file.
        path: PathBuf,
        /// What the drawing library said.
        problem: String,
    },
    /// A benchmark or study report that cannot be read.
    #[error(transparent)]
    Bench(#[from] BenchError),
    /// A run's metrics that cannot be read.
    #[error(transparent)]
    Train(#[from] TrainError),
}
