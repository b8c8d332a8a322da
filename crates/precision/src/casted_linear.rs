//! `CastedLinear`: a linear layer whose master weight stays fp32 while its matmul runs in the
//! activation dtype.

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::Initializer;
use burn::tensor::module::linear;
use burn::tensor::{Device, FloatDType, Tensor};

/// Configuration of a [`CastedLinear`].
#[derive(Config, Debug)]
pub struct CastedLinearConfig {
    /// Input features.
    pub d_input: usize,
    /// Output features.
    pub d_output: usize,
    /// Whether the layer has a bias.
    #[config(default = false)]
    pub bias: bool,
    /// Zero-initialise the weight (the record's output projections and `lm_head`); otherwise
    /// PyTorch's default, uniform in ±1/√fan_in.
    #[config(default = false)]
    pub zero_init: bool,
}

/// A linear layer whose weight is stored as an fp32 master weight in PyTorch's `[out, in]`
/// layout and cast to the input's dtype at use: `y = x · cast(W)ᵀ + cast(b)`.
///
/// The cast is differentiable, so the weight's gradient (and any optimizer state built from it)
/// stays in the master weight's dtype while the matmul runs in the activation dtype.
#[derive(Module, Debug)]
pub struct CastedLinear {
    /// Master weight, `[d_output, d_input]`.
    pub weight: Param<Tensor<2>>,
    /// Optional bias, `[d_output]`.
    pub bias: Option<Param<Tensor<1>>>,
}

impl CastedLinearConfig {
    /// Creates the layer on `device` (parameters in the device's default float dtype, fp32).
    pub fn init(&self, device: &Device) -> CastedLinear {
        let bound = 1.0 / (self.d_input as f64).sqrt();
        let initializer = if self.zero_init {
            Initializer::Zeros
        } else {
            Initializer::Uniform {
                min: -bound,
                max: bound,
            }
        };
        let fan = (Some(self.d_input), Some(self.d_output));
        CastedLinear {
            weight: initializer.init_with([self.d_output, self.d_input], fan.0, fan.1, device),
            bias: self.bias.then(|| {
                // PyTorch draws the bias from the same ±1/√fan_in range, also when the weight is
                // zero-initialised by the model.
                Initializer::Uniform {
                    min: -bound,
                    max: bound,
                }
                .init_with([self.d_output], fan.0, fan.1, device)
            }),
        }
    }
}

impl CastedLinear {
    /// Applies the layer to `input` of shape `[..., d_input]`, casting the weight (and bias) to
    /// the input's dtype. The output has the input's dtype.
    pub fn forward<const D: usize>(&self, input: Tensor<D>) -> Tensor<D> {
        let dtype = FloatDType::from(input.dtype());
        let weight = self.weight.val().cast(dtype).transpose();
        let bias = self.bias.as_ref().map(|b| b.val().cast(dtype));
        linear(input, weight, bias)
    }

    /// `[d_output, d_input]`.
    pub fn dims(&self) -> [usize; 2] {
        self.weight.dims()
    }
}

impl CastedLinear {
    /// Applies the layer under `policy`: the input is cast to the matmul dtype, the weight to
    /// the same, and the result to the activation dtype. In the `bf16` and `fp32` presets both
    /// casts are no-ops; in `autocast` they are the per-op casts of the baseline.
    pub fn forward_under<const D: usize>(
        &self,
        input: Tensor<D>,
        policy: &crate::PrecisionPolicy,
    ) -> Tensor<D> {
        self.forward(input.cast(policy.matmul()))
            .cast(policy.activation())
    }
}
