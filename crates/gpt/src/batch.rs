//! A batch of token ids, checked before it reaches a model: inputs and next-token targets, and
//! what a model accepts ([`Limits`]: its context and its vocabulary).

use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::cache::KvCache;
use crate::error::GptError;

/// Inputs and next-token targets, `[B, T]` each.
#[derive(Debug, Clone)]
pub struct Batch {
    inputs: Tensor<2, Int>,
    targets: Tensor<2, Int>,
    max_token: u32,
}

impl Batch {
    /// Builds a batch from a window of `B·T + 1` consecutive tokens, as the reference loader
    /// reads them: row `b` of the inputs is `window[b·T .. b·T + T]`, its targets the same shifted
    /// by one.
    pub fn from_window<T: Copy + Into<u32>>(
        window: &[T],
        batch_size: usize,
        seq_len: usize,
        device: &Device,
    ) -> Result<Self, GptError> {
        let mut batches = Self::from_windows(&[window], batch_size, seq_len, device)?;
        Ok(batches.pop().expect("one batch per window"))
    }

    /// A batch per window ([`from_window`](Self::from_window)), all of them sent to the
    /// device in one copy: a step's micro-batches, with no transfer between its micro-steps.
    pub fn from_windows<T: Copy + Into<u32>>(
        windows: &[&[T]],
        batch_size: usize,
        seq_len: usize,
        device: &Device,
    ) -> Result<Vec<Self>, GptError> {
        if batch_size == 0 || seq_len == 0 {
            return Err(GptError::InvalidBatch {
                reason: format!(
                    "batch size {batch_size} and sequence length {seq_len} must both be at least 1"
                ),
            });
        }
        let needed = batch_size * seq_len + 1;
        if let Some(window) = windows.iter().find(|w| w.len() != needed) {
            return Err(GptError::InvalidBatch {
                reason: format!(
                    "a window for {batch_size} sequences of {seq_len} tokens holds {needed} \
                     tokens, got {}",
                    window.len()
                ),
            });
        }
        let ids: Vec<i32> = windows
            .iter()
            .flat_map(|w| w.iter().map(|&t| t.into() as i32))
            .collect();
        let all =
            Tensor::<2, Int>::from_data(TensorData::new(ids, [windows.len(), needed]), device);
        let n = needed - 1;
        let batches = windows.iter().enumerate().map(|(i, window)| {
            let row = all.clone().narrow(0, i, 1).reshape([needed]);
            let rows = |start: usize| {
                row.clone()
                    .narrow(0, start, n)
                    .reshape([batch_size, seq_len])
            };
            Self {
                inputs: rows(0),
                targets: rows(1),
                max_token: window.iter().map(|&t| t.into()).max().unwrap_or(0),
            }
        });
        Ok(batches.collect())
    }

    /// Input token ids `[B, T]`.
    pub fn inputs(&self) -> &Tensor<2, Int> {
        &self.inputs
    }

    /// Target token ids `[B, T]` (the inputs shifted by one).
    pub fn targets(&self) -> &Tensor<2, Int> {
        &self.targets
    }

    /// Largest token id in the batch (the model checks it against its vocabulary).
    pub fn max_token(&self) -> u32 {
        self.max_token
    }

    /// `[B, T]`.
    pub fn dims(&self) -> [usize; 2] {
        self.inputs.dims()
    }
}

/// What a model accepts: sequences up to `max_seq_len` positions of ids below `vocab_size`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub max_seq_len: usize,
    pub vocab_size: usize,
}

impl Limits {
    /// Refuses a batch longer than the model's context or with an id outside its vocabulary.
    pub(crate) fn check(&self, batch: &Batch) -> Result<(), GptError> {
        let [_, seq_len] = batch.dims();
        if seq_len > self.max_seq_len {
            return Err(GptError::InvalidBatch {
                reason: format!(
                    "sequence length {seq_len} exceeds the model's maximum of {}",
                    self.max_seq_len
                ),
            });
        }
        self.check_token(batch.max_token as i64)
    }

    /// Refuses a token id outside the vocabulary.
    fn check_token(&self, largest: i64) -> Result<(), GptError> {
        let vocab = self.vocab_size;
        if largest >= vocab as i64 {
            return Err(GptError::InvalidBatch {
                reason: format!(
                    "token id {largest} is outside the model's vocabulary of {vocab} (ids 0..{})",
                    vocab - 1
                ),
            });
        }
        Ok(())
    }
}

/// Checks the new positions `inputs` `[B, T]` of a generation step against `limits` after the
/// positions `cache` holds; returns the first new position.
pub(crate) fn check_context(
    inputs: &Tensor<2, Int>,
    cache: &KvCache,
    limits: &Limits,
) -> Result<usize, GptError> {
    let new = inputs.dims()[1];
    let start = cache.len();
    if start + new > limits.max_seq_len {
        return Err(GptError::TooLong {
            tokens: start + new,
            max_seq_len: limits.max_seq_len,
        });
    }
    if new == 0 {
        return Err(GptError::InvalidBatch {
            reason: "no input positions to predict from".into(),
        });
    }
    limits.check_token(inputs.clone().max().into_scalar::<i64>())?;
    Ok(start)
}
