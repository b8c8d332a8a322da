//! CastedLinear in your own Burn model: a two-layer MLP with fp32 master weights and bf16
//! compute, fitted to `y = sin(3x)` for a few hundred Adam steps.
//!
//! ```text
//! cargo run --release -p brainfloat-examples --example casted_mlp
//! ```

use brainfloat_precision::{
    CastedLinear, CastedLinearConfig, ParamRole, ParamRoles, PrecisionPolicy, PrecisionReport,
    RoleMap, cast_params,
};
use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::activation::relu;
use burn::tensor::{DType, Device, FloatDType, Tensor, TensorData};

#[derive(Module, Debug)]
struct Mlp {
    hidden: CastedLinear,
    output: CastedLinear,
}

/// What each parameter is: the policy gives each role its dtype (every one of these is a
/// CastedLinear master weight or bias: fp32 under the bf16 preset).
impl ParamRoles for Mlp {
    fn param_roles(&self) -> RoleMap {
        let mut roles = RoleMap::default();
        self.hidden.add_roles(&mut roles, ParamRole::HiddenMatrix);
        self.output.add_roles(&mut roles, ParamRole::OutputMatrix);
        roles
    }
}

impl Mlp {
    fn new(device: &Device) -> Self {
        Self {
            hidden: CastedLinearConfig::new(1, 64).with_bias(true).init(device),
            output: CastedLinearConfig::new(64, 1).with_bias(true).init(device),
        }
    }

    /// Runs in whatever dtype `x` has; each CastedLinear casts its fp32 weights to it.
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.output.forward(relu(self.hidden.forward(x)))
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let device = Device::flex().autodiff();
    let policy = PrecisionPolicy::bf16();
    policy.check_device(&device)?;
    // Under the bf16 policy CastedLinear weights stay fp32; everything else would be bf16.
    let mut model = cast_params(Mlp::new(&device), &policy)?;
    println!("{}\n", PrecisionReport::of(&model));

    let n = 256;
    let xs: Vec<f32> = (0..n)
        .map(|i| -1.0 + 2.0 * i as f32 / (n - 1) as f32)
        .collect();
    let ys: Vec<f32> = xs.iter().map(|x| (3.0 * x).sin()).collect();
    let x = Tensor::<2>::from_data(TensorData::new(xs, [n, 1]), (&device, DType::F32))
        .cast(policy.activation());
    let y = Tensor::<2>::from_data(TensorData::new(ys, [n, 1]), (&device, DType::F32));

    let mut optimizer = AdamConfig::new().with_epsilon(1e-8).init();
    for step in 0..=300 {
        let prediction = model.forward(x.clone());
        let activation_dtype = prediction.dtype();
        // The loss, like the record's, is computed in fp32.
        let loss = (prediction.cast(FloatDType::F32) - y.clone())
            .square()
            .mean();
        let grads = loss.backward();
        if step % 50 == 0 {
            let grad = model.hidden.weight.val().grad(&grads).unwrap();
            println!(
                "step {step:>3}  loss {:.5}  activations {activation_dtype:?}  \
                 master weight {:?}  its gradient {:?}",
                loss.into_scalar::<f32>(),
                model.hidden.weight.dtype(),
                grad.dtype(),
            );
        }
        let grads = GradientsParams::from_grads(grads, &model);
        model = optimizer.step(1e-2, model, grads);
    }
    Ok(())
}
