//! The key-value cache of generation.

use burn::tensor::{DType, Tensor};

/// The keys and values of the positions a model has run, per block, so that each generated
/// token costs one new position instead of the whole prefix ([`Gpt::next_token_logits`]).
/// Keys are stored after QK-norm and rotary, values after the value-residual mix, both
/// `[B, H, T, head_dim]` in the policy's matmul dtype: exactly what attention reads.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<LayerCache>,
}

/// One block's part of a [`KvCache`].
#[derive(Debug, Clone, Default)]
pub struct LayerCache {
    keys_values: Option<(Tensor<4>, Tensor<4>)>,
}

impl KvCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Positions held.
    pub fn len(&self) -> usize {
        self.first_keys().map_or(0, |keys| keys.dims()[2])
    }

    /// Whether no position is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The dtype keys and values are held in (the policy's matmul dtype); `None` when empty.
    pub fn dtype(&self) -> Option<DType> {
        self.first_keys().map(Tensor::dtype)
    }

    /// The first block's keys: every block holds the same positions in the same dtype.
    fn first_keys(&self) -> Option<&Tensor<4>> {
        let layer = self.layers.first()?;
        layer.keys_values.as_ref().map(|(keys, _)| keys)
    }

    /// Forgets every position (a new context).
    pub fn clear(&mut self) {
        self.layers.clear();
    }

    /// Block `index`'s part, created empty on first use.
    pub(crate) fn layer(&mut self, index: usize) -> &mut LayerCache {
        if self.layers.len() <= index {
            self.layers.resize_with(index + 1, LayerCache::default);
        }
        &mut self.layers[index]
    }
}

impl LayerCache {
    /// Appends the new positions' `keys` and `values` and returns all of them.
    pub(crate) fn append(&mut self, keys: Tensor<4>, values: Tensor<4>) -> (Tensor<4>, Tensor<4>) {
        let all = match self.keys_values.take() {
            Some((past_keys, past_values)) => (
                Tensor::cat(vec![past_keys, keys], 2),
                Tensor::cat(vec![past_values, values], 2),
            ),
            None => (keys, values),
        };
        self.keys_values = Some(all.clone());
        all
    }
}
