//! The record's MLP: 4× width, ReLU², no bias.

use brainfloat_precision::{CastedLinear, CastedLinearConfig, PrecisionPolicy};
use burn::module::Module;
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};

/// `c_proj(relu(c_fc(x))²)`.
#[derive(Module, Debug)]
pub struct Mlp {
    /// Up projection, `[4C, C]`.
    pub c_fc: CastedLinear,
    /// Down projection, `[C, 4C]` (zero-initialised).
    pub c_proj: CastedLinear,
}

impl Mlp {
    /// A new MLP of width `d_model`.
    pub fn new(d_model: usize, device: &Device) -> Self {
        Self {
            c_fc: CastedLinearConfig::new(d_model, 4 * d_model).init(device),
            c_proj: CastedLinearConfig::new(4 * d_model, d_model)
                .with_zero_init(true)
                .init(device),
        }
    }

    /// `x` `[B, T, C]` → `[B, T, C]`.
    pub fn forward(&self, x: Tensor<3>, policy: &PrecisionPolicy) -> Tensor<3> {
        let up = self.c_fc.forward_under(x, policy);
        // Fused where the backend has the kernel (flex).
        let hidden = brainfloat_ops::relu_square(up.clone()).unwrap_or_else(|| relu(up).square());
        self.c_proj.forward_under(hidden, policy)
    }
}
