//! Errors of the GPT crate.

use std::fmt;
use std::path::PathBuf;

use brainfloat_precision::PrecisionError;

/// What went wrong building, feeding, saving or loading a GPT.
#[derive(Debug)]
pub enum GptError {
    /// A size name that is not one of [`SIZES`](crate::SIZES).
    UnknownSize {
        /// The name given.
        name: String,
        /// The valid names.
        valid: String,
    },
    /// A model shape that cannot be built.
    InvalidConfig {
        /// Why.
        reason: String,
    },
    /// A batch that does not fit the model.
    InvalidBatch {
        /// Why.
        reason: String,
    },
    /// The precision policy cannot be applied.
    Precision(PrecisionError),
    /// A checkpoint that cannot be read or does not match the model.
    Checkpoint {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

impl fmt::Display for GptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownSize { name, valid } => {
                write!(f, "unknown model size `{name}` (valid: {valid})")
            }
            Self::InvalidConfig { reason } => write!(f, "invalid model config: {reason}"),
            Self::InvalidBatch { reason } => write!(f, "invalid batch: {reason}"),
            Self::Precision(err) => err.fmt(f),
            Self::Checkpoint { path, reason } => {
                write!(f, "checkpoint {}: {reason}", path.display())
            }
        }
    }
}

impl std::error::Error for GptError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Precision(err) => Some(err),
            _ => None,
        }
    }
}

impl From<PrecisionError> for GptError {
    fn from(err: PrecisionError) -> Self {
        Self::Precision(err)
    }
}
