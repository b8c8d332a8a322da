//! Errors of the data crate: every one names the file and the problem.

use std::path::PathBuf;

/// A shard or shard set that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("data shard {}: {problem}", path.display())]
pub struct DataError {
    /// The file (or pattern) concerned.
    pub path: PathBuf,
    /// What is wrong with it.
    pub problem: String,
}

impl DataError {
    /// The error `problem` about `path`.
    pub fn new(path: impl Into<PathBuf>, problem: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            problem: problem.into(),
        }
    }
}
