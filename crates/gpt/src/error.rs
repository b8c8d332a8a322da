//! Errors of the GPT crate.

use brainfloat_precision::PrecisionError;

/// What went wrong building or feeding a GPT.
#[derive(Debug, thiserror::Error)]
pub enum GptError {
    /// A model shape that cannot be built.
    #[error("invalid model config: {reason}")]
    InvalidConfig {
        /// The [`GptConfig`](crate::GptConfig) field at fault (`d_model`, `n_head`, ...).
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// Tokens beyond the model's longest sequence (`max_seq_len`), from a batch or a
    /// generation's context.
    #[error("{tokens} positions exceed the model's maximum sequence length of {max_seq_len}")]
    TooLong {
        /// Positions asked for.
        tokens: usize,
        /// The model's maximum.
        max_seq_len: usize,
    },
    /// A batch that does not fit the model.
    #[error("invalid batch: {reason}")]
    InvalidBatch {
        /// Why.
        reason: String,
    },
    /// A [`Cache`](crate::Cache) built for another dtype or device than the forward pass's.
    #[error(
        "the cache was built for {built}, the forward pass runs in {wanted}: build it with the \
         model's `cache` after `apply_policy`, for the device the model runs on"
    )]
    CacheMismatch {
        /// Dtype and device the cache holds its tables in.
        built: String,
        /// Dtype and device of the forward pass.
        wanted: String,
    },
    /// The precision policy cannot be applied.
    #[error(transparent)]
    Precision(#[from] PrecisionError),
}
