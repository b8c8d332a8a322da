//! Errors of a training run.

use std::path::{Path, PathBuf};

use brainfloat_data::DataError;
use brainfloat_distributed::SyncError;
use brainfloat_generate::GenerateError;
use brainfloat_gpt::GptError;

use crate::config::ConfigError;

/// Why a run could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The data.
    #[error(transparent)]
    Data(#[from] DataError),
    /// The model or its weights.
    #[error(transparent)]
    Model(#[from] GptError),
    /// A sample during training could not be generated.
    #[error("sample: {0}")]
    Generate(#[from] GenerateError),
    /// A checkpoint that cannot be written or read.
    #[error("checkpoint {}: {problem}", path.display())]
    Checkpoint {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// The folder an export writes.
    #[error("export destination {}: {problem}", path.display())]
    Export {
        /// The folder.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// The output folder.
    #[error("output folder {}: {problem}", path.display())]
    Output {
        /// The folder.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// The data-parallel ranks could not exchange gradients or losses.
    #[error(transparent)]
    Sync(#[from] SyncError),
    /// `train.max_skipped_steps` steps in a row were skipped for non-finite values: the run
    /// trains nothing any more.
    #[error(
        "{steps} steps in a row skipped for a non-finite loss or gradient, up to step {step} \
         (train.max_skipped_steps); the weights are not what diverged from here{}",
        last_checkpoint.as_ref().map(|p| format!(" (last good checkpoint: {})", p.display())).unwrap_or_default()
    )]
    OnlySkipping {
        /// Steps skipped in a row.
        steps: usize,
        /// The last of them.
        step: usize,
        /// The last good checkpoint, kept.
        last_checkpoint: Option<PathBuf>,
    },
    /// The loss or the gradient norm of a step stopped being a number; the step's update was
    /// not applied.
    #[error("{}", non_finite(*step, *loss, *grad_norm, last_checkpoint.as_deref()))]
    NonFinite {
        /// The step.
        step: usize,
        /// Its loss.
        loss: f64,
        /// Its global gradient norm.
        grad_norm: f64,
        /// The last good checkpoint, kept.
        last_checkpoint: Option<PathBuf>,
    },
}

/// What stopped at a non-finite step, and where to go back to.
fn non_finite(step: usize, loss: f64, grad_norm: f64, last_checkpoint: Option<&Path>) -> String {
    let what = if loss.is_finite() {
        format!(
            "gradient norm is {grad_norm} at step {step} (the loss was finite); stopped without \
             applying it"
        )
    } else {
        format!("training loss is {loss} at step {step}; stopped")
    };
    match last_checkpoint {
        Some(path) => format!("{what} (last good checkpoint: {})", path.display()),
        None => format!("{what} (no checkpoint was written before it)"),
    }
}

/// Why a tensor file (weights or optimizer state, safetensors) does not fit what loads it:
/// every problem found (missing, unexpected, misshapen or non-float tensors), so that one
/// attempt names them all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .problems.join("; "))]
pub struct TensorFileError {
    /// One sentence per problem.
    pub problems: Vec<String>,
}

impl TensorFileError {
    /// An error of one problem.
    pub fn one(problem: impl Into<String>) -> Self {
        Self {
            problems: vec![problem.into()],
        }
    }
}
