//! Rotary position embeddings, half-split layout.

use burn::tensor::{DType, Device, FloatDType, Tensor, TensorData};

/// cos and sin tables for rotary embeddings, `[1, T, 1, head_dim/2]` each, in the activation
/// dtype.
#[derive(Debug, Clone)]
pub struct Rotary {
    cos: Tensor<4>,
    sin: Tensor<4>,
}

impl Rotary {
    /// Tables for positions `0..seq_len`: `inv_freq = 1/base^(2i/d)` and the angles `t·inv_freq`
    /// in fp32, cos and sin rounded to `dtype`, as the reference does.
    pub fn new(
        seq_len: usize,
        head_dim: usize,
        base: f64,
        dtype: FloatDType,
        device: &Device,
    ) -> Self {
        let half = head_dim / 2;
        let base = base as f32;
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| 1.0 / base.powf((2 * i) as f32 / head_dim as f32))
            .collect();
        let angles: Vec<f32> = (0..seq_len)
            .flat_map(|t| inv_freq.iter().map(move |f| t as f32 * f))
            .collect();
        let table = |values: Vec<f32>| {
            Tensor::<4>::from_data(
                TensorData::new(values, [1, seq_len, 1, half]),
                (device, DType::F32),
            )
            .cast(dtype)
        };
        Self {
            cos: table(angles.iter().map(|a| a.cos()).collect()),
            sin: table(angles.iter().map(|a| a.sin()).collect()),
        }
    }

    /// Rotates `x` `[B, T, H, head_dim]`: with `x = [x1, x2]` split in halves,
    /// `y = [x1·cos + x2·sin, −x1·sin + x2·cos]`.
    pub fn apply(&self, x: Tensor<4>) -> Tensor<4> {
        if let Some(rotated) = brainfloat_ops::rotary(x.clone(), self.cos.clone(), self.sin.clone())
        {
            return rotated; // fused, where the backend has the kernel (flex)
        }
        let [b, t, h, d] = x.dims();
        let half = d / 2;
        let x1 = x.clone().slice([0..b, 0..t, 0..h, 0..half]);
        let x2 = x.slice([0..b, 0..t, 0..h, half..d]);
        let y1 = x1.clone() * self.cos.clone() + x2.clone() * self.sin.clone();
        let y2 = x1 * self.sin.clone().neg() + x2 * self.cos.clone();
        Tensor::cat(vec![y1, y2], 3)
    }
}
