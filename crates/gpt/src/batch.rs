//! A batch of token ids, checked before it reaches the model.

use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::error::GptError;

/// Inputs and next-token targets, `[B, T]` each.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Input token ids.
    pub inputs: Tensor<2, Int>,
    /// Target token ids (the inputs shifted by one).
    pub targets: Tensor<2, Int>,
    /// Largest token id in the batch, checked against the model's vocabulary.
    pub max_token: u32,
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
        if batch_size == 0 || seq_len == 0 {
            return Err(GptError::InvalidBatch {
                reason: format!(
                    "batch size {batch_size} and sequence length {seq_len} must both be at least 1"
                ),
            });
        }
        let needed = batch_size * seq_len + 1;
        if window.len() != needed {
            return Err(GptError::InvalidBatch {
                reason: format!(
                    "a window for {batch_size} sequences of {seq_len} tokens holds {needed} \
                     tokens, got {}",
                    window.len()
                ),
            });
        }
        let ids: Vec<u32> = window.iter().map(|&t| t.into()).collect();
        let n = needed - 1;
        let max_token = ids.iter().copied().max().unwrap_or(0);
        let tensor = |slice: &[u32]| {
            let data: Vec<i32> = slice.iter().map(|&t| t as i32).collect();
            Tensor::<2, Int>::from_data(TensorData::new(data, [batch_size, seq_len]), device)
        };
        Ok(Self {
            inputs: tensor(&ids[..n]),
            targets: tensor(&ids[1..]),
            max_token,
        })
    }

    /// `[B, T]`.
    pub fn dims(&self) -> [usize; 2] {
        self.inputs.dims()
    }
}
