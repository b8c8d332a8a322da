//! `CastedLinear`, the record's linear layer: an fp32 master weight cast to the matmul dtype at
//! use, the dtypes its own, set by [`apply_policy`](crate::apply_policy). As the output head it
//! is fused with the loss (`head_loss.rs`).

use brainfloat_ops::matmul;
use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::Initializer;
use burn::tensor::{Device, Tensor};

use crate::convert::PrecisionAware;
use crate::policy::{ComputeDtypes, PrecisionPolicy};
use crate::role::{ParamRole, ParamRoles, RoleMap};

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
    /// How the weight is stored: `[out, in]` as PyTorch's `Linear` (the default) or `[in, out]`
    /// as Hugging Face's GPT-2 `Conv1D`.
    #[config(default = "WeightLayout::OutIn")]
    pub layout: WeightLayout,
}

/// The order of a [`CastedLinear`] weight's axes. The product is the same either way; the
/// layout only says how the weight is stored, so that a model keeps the layout of the files
/// it reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum WeightLayout {
    /// `[d_output, d_input]`: PyTorch's `nn.Linear`, `y = x · Wᵀ`.
    #[default]
    OutIn,
    /// `[d_input, d_output]`: Hugging Face's `Conv1D` (GPT-2), `y = x · W`.
    InOut,
}

/// A linear layer whose weight is stored as an fp32 master weight (in PyTorch's `[out, in]`
/// layout unless [`WeightLayout::InOut`]) and cast to the matmul dtype at use:
/// `y = cast(x) · cast(W)ᵀ + cast(b)`, returned in the activation dtype.
///
/// The cast is differentiable, so the weight's gradient (and any optimizer state built from it)
/// stays in the master weight's dtype while the matmul runs in the matmul dtype. The layer knows
/// its dtypes: fp32 until [`apply_policy`](crate::apply_policy) (or
/// [`PrecisionAware::with_policy`]) sets a policy's.
#[derive(Module, Debug)]
pub struct CastedLinear {
    /// Master weight, `[d_output, d_input]` (`[d_input, d_output]` in [`WeightLayout::InOut`]).
    pub weight: Param<Tensor<2>>,
    /// Optional bias, `[d_output]`.
    pub bias: Option<Param<Tensor<1>>>,
    #[module(skip)]
    layout: WeightLayout,
    #[module(skip)]
    dtypes: ComputeDtypes,
}

impl PrecisionAware for CastedLinear {
    fn with_policy(mut self, policy: PrecisionPolicy) -> Self {
        self.dtypes = policy.compute();
        self
    }
}

/// A layer on its own: its weight is a hidden matrix.
impl ParamRoles for CastedLinear {
    fn param_roles(&self) -> RoleMap {
        let mut roles = RoleMap::default();
        self.add_roles(&mut roles, ParamRole::HiddenMatrix);
        roles
    }
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
        let shape = match self.layout {
            WeightLayout::OutIn => [self.d_output, self.d_input],
            WeightLayout::InOut => [self.d_input, self.d_output],
        };
        CastedLinear {
            weight: initializer.init_with(shape, fan.0, fan.1, device),
            bias: self.bias.then(|| {
                // PyTorch draws the bias from the same ±1/√fan_in range, also when the weight is
                // zero-initialised by the model.
                Initializer::Uniform {
                    min: -bound,
                    max: bound,
                }
                .init_with([self.d_output], fan.0, fan.1, device)
            }),
            layout: self.layout,
            dtypes: ComputeDtypes::FP32,
        }
    }
}

impl CastedLinear {
    /// States the roles of the layer's parameters: its weight plays `weight`
    /// ([`ParamRole::HiddenMatrix`] or [`ParamRole::OutputMatrix`]), its bias
    /// [`ParamRole::LinearBias`]. For a model's [`ParamRoles`].
    pub fn add_roles(&self, roles: &mut RoleMap, weight: ParamRole) {
        roles
            .add(&self.weight, weight)
            .set_layout(&self.weight, self.layout);
        if let Some(bias) = &self.bias {
            roles.add(bias, ParamRole::LinearBias);
        }
    }

    /// Applies the layer to `input` `[..., d_input]` in its dtypes: the input and the weight
    /// (and bias) cast to the matmul dtype, the result to the activation dtype. In the `bf16` and
    /// `fp32` presets the input's cast is a no-op; in `autocast` both casts are the baseline's
    /// per-op casts.
    pub fn forward<const D: usize>(&self, input: Tensor<D>) -> Tensor<D> {
        let matmul_dtype = self.dtypes.matmul;
        let input = input.cast(matmul_dtype);
        let weight = self.weight.val().cast(matmul_dtype);
        let weight = match self.layout {
            WeightLayout::OutIn => weight.transpose(),
            WeightLayout::InOut => weight,
        };
        // One `[rows, in] × [in, out]` product, as F.linear does: a batched matmul against the
        // broadcast weight makes libtorch copy the weight once per batch (for the head, a
        // logits-sized copy each way). On flex it is a native bf16 GEMM whose backward products
        // use the same kernel (brainfloat-ops).
        let mut dims = input.dims();
        let d_input = dims[D - 1];
        let rows = input.shape().num_elements() / d_input.max(1);
        let mut output = matmul(input.reshape([rows, d_input]), weight);
        if let Some(bias) = &self.bias {
            output = output + bias.val().cast(matmul_dtype).unsqueeze();
        }
        dims[D - 1] = self.dims()[0];
        output.reshape(dims).cast(self.dtypes.activation)
    }

    /// The dtypes the layer computes in.
    pub fn dtypes(&self) -> ComputeDtypes {
        self.dtypes
    }

    /// `[d_output, d_input]`, whatever the layout.
    pub fn dims(&self) -> [usize; 2] {
        let [rows, cols] = self.weight.dims();
        match self.layout {
            WeightLayout::OutIn => [rows, cols],
            WeightLayout::InOut => [cols, rows],
        }
    }

    /// How the weight is stored.
    pub fn layout(&self) -> WeightLayout {
        self.layout
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{DType, FloatDType, TensorData};

    fn layer(device: &Device) -> CastedLinear {
        // W = [[1, 2], [3, 4], [5, 6]] ([out = 3, in = 2]), b = [0.5, -0.5, 1].
        let mut layer = CastedLinearConfig::new(2, 3).with_bias(true).init(device);
        layer.weight = Param::from_data(
            TensorData::new(vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], [3, 2]),
            device,
        );
        layer.bias = Some(Param::from_data(
            TensorData::new(vec![0.5f32, -0.5, 1.0], [3]),
            device,
        ));
        layer
    }

    #[test]
    fn computes_x_times_w_transposed_plus_b_in_the_policys_activation_dtype() {
        let device = brainfloat_test_support::test_device().autodiff();
        // x = [1, -1]: y = [1−2+0.5, 3−4−0.5, 5−6+1] = [−0.5, −1.5, 0].
        for (dtype, policy) in [
            (DType::F32, PrecisionPolicy::fp32()),
            (DType::BF16, PrecisionPolicy::bf16()),
        ] {
            let layer = layer(&device).with_policy(policy);
            let x = Tensor::<2>::from_data(
                TensorData::new(vec![1.0f32, -1.0], [1, 2]),
                (&device, dtype),
            );
            let y = layer.forward(x);
            assert_eq!(y.dtype(), dtype);
            let y = y
                .cast(FloatDType::F32)
                .into_data()
                .try_to_vec::<f32>()
                .unwrap();
            assert_eq!(y, vec![-0.5, -1.5, 0.0]);
        }
    }

    #[test]
    fn master_weight_gradient_stays_fp32_under_bf16_compute() {
        let device = brainfloat_test_support::test_device().autodiff();
        let layer = layer(&device).with_policy(PrecisionPolicy::bf16());
        let x = Tensor::<2>::from_data(
            TensorData::new(vec![1.0f32, -1.0, 2.0, 0.5], [2, 2]),
            (&device, DType::BF16),
        );
        let grads = layer.forward(x).sum().backward();
        let grad = layer.weight.val().grad(&grads).unwrap();
        assert_eq!(grad.dtype(), DType::F32);
        // d(sum y)/dW[o, i] = Σ_rows x[r, i] = [3, −0.5] for every output o.
        let grad = grad.into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(grad, vec![3.0, -0.5, 3.0, -0.5, 3.0, -0.5]);
        let bias_grad = layer.bias.as_ref().unwrap().val().grad(&grads).unwrap();
        assert_eq!(bias_grad.dtype(), DType::F32);
        assert_eq!(
            bias_grad.into_data().try_to_vec::<f32>().unwrap(),
            vec![2.0, 2.0, 2.0]
        );
    }

    #[test]
    fn autocast_runs_the_matmul_in_bf16_and_returns_fp32() {
        let device = brainfloat_test_support::test_device();
        let layer = layer(&device);
        // 1 + 2⁻⁸ is not a bf16 value (8 significand bits): bf16 operands round it to 1.
        let just_above_one = 1.0 + 2f32.powi(-8);
        let x = Tensor::<2>::from_data(
            TensorData::new(vec![just_above_one, 0.0], [1, 2]),
            (&device, DType::F32),
        );
        let fp32 = layer.forward(x.clone());
        let autocast = layer.with_policy(PrecisionPolicy::autocast()).forward(x);
        assert_eq!(autocast.dtype(), DType::F32);
        let (fp32, autocast) = (
            fp32.into_data().try_to_vec::<f32>().unwrap(),
            autocast.into_data().try_to_vec::<f32>().unwrap(),
        );
        assert_eq!(fp32[0], just_above_one + 0.5);
        assert_eq!(autocast[0], 1.0 + 0.5);
    }

    #[test]
    fn initialises_like_pytorch() {
        let device = brainfloat_test_support::test_device();
        let layer = CastedLinearConfig::new(16, 8).init(&device);
        assert_eq!(layer.dims(), [8, 16]);
        let w = layer.weight.val().into_data().try_to_vec::<f32>().unwrap();
        assert!(w.iter().all(|v| v.abs() <= 0.25) && w.iter().any(|v| *v != 0.0));
        let zero = CastedLinearConfig::new(16, 8)
            .with_zero_init(true)
            .init(&device);
        assert!(
            zero.weight
                .val()
                .into_data()
                .try_to_vec::<f32>()
                .unwrap()
                .iter()
                .all(|v| *v == 0.0)
        );
    }
}
