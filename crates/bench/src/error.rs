//! Errors of the benchmark, the study and their reports' files.

use std::path::{Path, PathBuf};

use brainfloat_trainer::TrainError;
use serde::de::DeserializeOwned;

/// What went wrong reading a report.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A report, reference or metrics file that cannot be read or does not parse.
    #[error("{}: {problem}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// A run's metrics that cannot be read.
    #[error(transparent)]
    Train(#[from] TrainError),
}

/// The JSON file `path` as a `T`; an error names the file.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T, BenchError> {
    let error = |problem: String| BenchError::File {
        path: path.to_path_buf(),
        problem,
    };
    let text = std::fs::read_to_string(path).map_err(|err| error(format!("cannot read: {err}")))?;
    serde_json::from_str(&text).map_err(|err| error(err.to_string()))
}
