//! Errors of a training run.

use std::fmt;
use std::path::PathBuf;

use brainfloat_accum::SyncError;
use brainfloat_data::DataError;
use brainfloat_gpt::GptError;

use crate::config::ConfigError;

/// Why a run could not start or had to stop.
#[derive(Debug)]
pub enum TrainError {
    /// The configuration.
    Config(ConfigError),
    /// The data.
    Data(DataError),
    /// The model or its weights.
    Model(GptError),
    /// A checkpoint that cannot be written or read.
    Checkpoint {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// The output folder.
    Output {
        /// The folder.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// The data-parallel ranks could not exchange gradients or losses.
    Sync(SyncError),
    /// The loss or the gradient norm of a step stopped being a number; the step's update was
    /// not applied.
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

impl fmt::Display for TrainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Config(err) => err.fmt(f),
            Self::Data(err) => err.fmt(f),
            Self::Model(err) => err.fmt(f),
            Self::Sync(err) => err.fmt(f),
            Self::Checkpoint { path, problem } => {
                write!(f, "checkpoint {}: {problem}", path.display())
            }
            Self::Output { path, problem } => {
                write!(f, "output folder {}: {problem}", path.display())
            }
            Self::NonFinite {
                step,
                loss,
                grad_norm,
                last_checkpoint,
            } => {
                if loss.is_finite() {
                    write!(
                        f,
                        "gradient norm is {grad_norm} at step {step} (the loss was finite); \
                         stopped without applying it"
                    )?;
                } else {
                    write!(f, "training loss is {loss} at step {step}; stopped")?;
                }
                match last_checkpoint {
                    Some(path) => write!(f, " (last good checkpoint: {})", path.display()),
                    None => write!(f, " (no checkpoint was written before it)"),
                }
            }
        }
    }
}

impl std::error::Error for TrainError {}

impl From<ConfigError> for TrainError {
    fn from(err: ConfigError) -> Self {
        Self::Config(err)
    }
}

impl From<DataError> for TrainError {
    fn from(err: DataError) -> Self {
        Self::Data(err)
    }
}

impl From<SyncError> for TrainError {
    fn from(err: SyncError) -> Self {
        Self::Sync(err)
    }
}

impl From<GptError> for TrainError {
    fn from(err: GptError) -> Self {
        Self::Model(err)
    }
}
