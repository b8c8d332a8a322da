//! The binary's one error: each library's error as it is, and the refusals of the binary's own.

use std::path::PathBuf;

use brainfloat_backend::BackendError;
use brainfloat_bench::BenchError;
use brainfloat_data::DataError;
use brainfloat_distributed::SyncError;
use brainfloat_generate::GenerateError;
use brainfloat_reports::ReportError;
use brainfloat_trainer::{ConfigError, TrainError};

/// Why a subcommand failed; `main` prints it as `error: …` and exits 1.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Training, evaluation, checkpoints.
    #[error(transparent)]
    Train(#[from] TrainError),
    /// Benchmarks, studies and their reports.
    #[error(transparent)]
    Bench(#[from] BenchError),
    /// Plots and comparisons.
    #[error(transparent)]
    Report(#[from] ReportError),
    /// Shards and corpora.
    #[error(transparent)]
    Data(#[from] DataError),
    /// Generation.
    #[error(transparent)]
    Generate(#[from] GenerateError),
    /// The backend this binary cannot make.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The ranks of a distributed run.
    #[error(transparent)]
    Sync(#[from] SyncError),
    /// A file the binary itself reads or writes.
    #[error("{}: cannot {what}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What was attempted (`write`, `create`).
        what: &'static str,
        /// The OS's error.
        source: std::io::Error,
    },
    /// A refusal of the binary's own (a model too large for the machine, failed checks).
    #[error("{0}")]
    Refused(String),
    /// One of the above, with where it happened (`rank 1 of 2`, a checkpoint's path).
    #[error("{context}: {source}")]
    In {
        /// Where.
        context: String,
        /// What.
        source: Box<CliError>,
    },
}

impl CliError {
    /// `err` of an I/O operation `what` on `path`.
    pub fn io(path: impl Into<PathBuf>, what: &'static str, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            what,
            source,
        }
    }

    /// This error with where it happened.
    pub fn within(self, context: impl Into<String>) -> Self {
        Self::In {
            context: context.into(),
            source: Box::new(self),
        }
    }
}
