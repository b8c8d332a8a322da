//! What a forward pass reads besides the weights, built once by its caller and passed in (as
//! candle's models take their `Cache`): the rotary tables, and generation's keys and values.

use burn::tensor::{DType, Device, FloatDType, Tensor};

use crate::error::GptError;
use crate::model::Rotary;

/// A model's cache: the rotary tables for every position up to `max_seq_len` (the record's
/// model; GPT-2 learns its positions) in the model's activation dtype on one device, and the
/// keys and values of the positions generation has run ([`KvCache`]). Built by the model's
/// `cache` (`LanguageModel::cache`) once per device; training and evaluation read it, generation
/// also appends to it.
#[derive(Debug, Clone)]
pub struct Cache {
    rotary: Option<Rotary>,
    activation: FloatDType,
    device: Device,
    kv: KvCache,
}

impl Cache {
    /// A cache for a model computing in `activation` on `device`, with its rotary tables if it
    /// has any.
    pub(crate) fn new(rotary: Option<Rotary>, activation: FloatDType, device: &Device) -> Self {
        Self {
            rotary,
            activation,
            device: device.clone(),
            kv: KvCache::default(),
        }
    }

    /// The rotary tables of positions `start..start + len`, checked against what the forward
    /// pass computes in and on.
    pub(crate) fn rotary(
        &self,
        start: usize,
        len: usize,
        activation: FloatDType,
        device: &Device,
    ) -> Result<Rotary, GptError> {
        self.check(activation, device)?;
        let rotary = self
            .rotary
            .as_ref()
            .expect("the record's model builds its tables");
        // A step over every position (training at `max_seq_len`) takes the tables as they are.
        if start == 0 && len == rotary.len() {
            return Ok(rotary.clone());
        }
        Ok(rotary.narrow(start, len))
    }

    /// Refuses a cache built for another dtype or device than the forward pass's.
    pub(crate) fn check(&self, activation: FloatDType, device: &Device) -> Result<(), GptError> {
        if self.activation != activation || &self.device != device {
            return Err(GptError::CacheMismatch {
                built: format!("{:?} on {:?}", self.activation, self.device),
                wanted: format!("{activation:?} on {device:?}"),
            });
        }
        Ok(())
    }

    /// Positions of generation held.
    pub fn len(&self) -> usize {
        self.kv.len()
    }

    /// Whether generation holds no position.
    pub fn is_empty(&self) -> bool {
        self.kv.is_empty()
    }

    /// Forgets generation's positions (a new context); the tables stay.
    pub fn clear(&mut self) {
        self.kv.clear();
    }

    /// Generation's keys and values.
    pub fn kv(&self) -> &KvCache {
        &self.kv
    }

    pub(crate) fn kv_mut(&mut self) -> &mut KvCache {
        &mut self.kv
    }
}

/// The keys and values of the positions a model has run, per block, so that each generated
/// token costs one new position instead of the whole prefix
/// ([`LanguageModel::next_token_logits`](crate::LanguageModel::next_token_logits)).
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
    fn clear(&mut self) {
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
