//! Each op as a backend runs it against the composed op ([`crate::composed`], the default body
//! that a backend without a kernel runs) on the same device and inputs: values within a
//! tolerance, dtypes equal. The tests run every check on the CPU (flex's kernels; libtorch's
//! CPU kernels and its device route), and `brainfloat gpu-check` runs the same checks on a
//! GPU's device route, where only a GPU can.
//!
//! ```
//! use burn::tensor::Device;
//!
//! for agreement in brainfloat_ops::conformance::rms_norm(&Device::flex()) {
//!     assert!(agreement.holds(), "{agreement}");
//! }
//! ```

use burn::backend::Dispatch;
use burn::backend::ops::FloatTensorOps;
use burn::backend::tensor::FloatTensor;
use burn::tensor::{DType, Device, FloatDType, Int, Tensor, TensorData};

use crate::{KernelBackend, composed};

type Primitive = FloatTensor<Dispatch>;

/// How closely one output of an op agreed with the composed op's.
#[derive(Debug, Clone, PartialEq)]
pub struct Agreement {
    /// The output (`rms_norm backward`, `adam moment 1`).
    pub output: &'static str,
    /// The inputs' dtype.
    pub dtype: FloatDType,
    /// The largest difference over the reference's largest magnitude.
    pub error: f64,
    /// The largest error allowed.
    pub tolerance: f64,
    /// The output's dtype, and the reference's where they differ.
    pub dtypes: (DType, DType),
}

impl Agreement {
    /// Whether the output agreed: its dtype the reference's, its error within the tolerance.
    pub fn holds(&self) -> bool {
        self.dtypes.0 == self.dtypes.1 && self.error <= self.tolerance
    }
}

impl std::fmt::Display for Agreement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({:?}): {:.2e} of the scale (≤ {:.0e})",
            self.output, self.dtype, self.error, self.tolerance
        )?;
        if self.dtypes.0 != self.dtypes.1 {
            write!(
                f,
                ", dtype {:?} where the composed op gives {:?}",
                self.dtypes.0, self.dtypes.1
            )?;
        }
        Ok(())
    }
}

/// One check: each output's agreement on a device.
pub type Check = fn(&Device) -> Vec<Agreement>;

/// Every check, by name.
pub const CHECKS: [(&str, Check); 10] = [
    ("rms_norm", rms_norm),
    ("rotary and relu_square", rotary_and_relu_square),
    ("causal_softmax", causal_softmax),
    ("causal_attention", causal_attention),
    ("softcapped_cross_entropy", softcapped_cross_entropy),
    ("adam_step", adam_step),
    ("fp32 sums", fp32_sums),
    ("axpby", axpby),
    ("rounding", rounding),
    ("groups", groups),
];

/// A deterministic spread of values in about ±`scale`.
fn spread(len: usize, seed: usize, scale: f32) -> Vec<f32> {
    (0..len)
        .map(|i| (((i * 7919 + seed * 104_729) % 1009) as f32 / 504.5 - 1.0) * scale)
        .collect()
}

/// A tensor of `dims` on `device` in `dtype`, as the backend's primitive.
fn input<const D: usize>(
    device: &Device,
    dims: [usize; D],
    seed: usize,
    scale: f32,
    dtype: FloatDType,
) -> Primitive {
    let values = spread(dims.iter().product(), seed, scale);
    Tensor::<D>::from_data(TensorData::new(values, dims), (device, DType::F32))
        .cast(dtype)
        .into_dispatch()
}

/// A primitive's values in fp32, and its dtype.
fn read(tensor: Primitive) -> (Vec<f32>, DType) {
    let tensor = Tensor::<1>::from_dispatch(tensor);
    let dtype = tensor.dtype();
    let flat = tensor.clone().reshape([tensor.shape().num_elements()]);
    let values = flat
        .cast(FloatDType::F32)
        .into_data()
        .try_to_vec::<f32>()
        .expect("an fp32 tensor reads back as f32");
    (values, dtype)
}

/// `$op` as the backend runs it and as the composed op, each on its own fresh arguments.
macro_rules! both {
    ($op:ident($($arg:expr),* $(,)?)) => {
        (Dispatch::$op($($arg),*), composed::$op::<Dispatch>($($arg),*))
    };
}

/// How `ours` agrees with `reference` (inputs of `dtype`), within `tolerance` of the
/// reference's largest magnitude.
fn agree(
    agrees: &mut Vec<Agreement>,
    dtype: FloatDType,
    output: &'static str,
    (ours, reference): (Primitive, Primitive),
    tolerance: f64,
) {
    let ((got, got_dtype), (want, want_dtype)) = (read(ours), read(reference));
    let error = if got.len() != want.len() {
        f64::INFINITY
    } else {
        let scale = want.iter().fold(1e-30f64, |m, v| m.max(v.abs() as f64));
        got.iter()
            .zip(&want)
            .map(|(a, b)| (*a as f64 - *b as f64).abs())
            .fold(0.0, f64::max)
            / scale
    };
    agrees.push(Agreement {
        output,
        dtype,
        error,
        tolerance,
        dtypes: (got_dtype, want_dtype),
    });
}

/// One rounding to bf16 (2⁻⁸ relative) where the two paths may round a value that lies near
/// a rounding boundary differently; fp32 paths differ by summation order only.
fn tolerance(dtype: FloatDType) -> f64 {
    match dtype {
        FloatDType::BF16 => 2f64.powi(-7),
        _ => 1e-5,
    }
}

const DTYPES: [FloatDType; 2] = [FloatDType::F32, FloatDType::BF16];

/// RMSNorm, its fp32 statistic and its backward.
pub fn rms_norm(device: &Device) -> Vec<Agreement> {
    let mut agrees = Vec::new();
    for dtype in DTYPES {
        let x = || input(device, [3, 5, 64], 1, 2.0, dtype);
        let (y, inv_rms) = Dispatch::rms_norm(x(), 1e-6, true);
        let (want_y, want_inv_rms) = composed::rms_norm::<Dispatch>(x(), 1e-6, true);
        let (inv_rms, want_inv_rms) = (
            inv_rms.expect("asked for"),
            want_inv_rms.expect("asked for"),
        );
        agree(
            &mut agrees,
            dtype,
            "rms_norm",
            (y, want_y),
            tolerance(dtype),
        );
        agree(
            &mut agrees,
            dtype,
            "rms_norm statistic",
            (inv_rms.clone(), want_inv_rms),
            1e-6,
        );
        let grad = || input(device, [3, 5, 64], 2, 1.0, dtype);
        agree(
            &mut agrees,
            dtype,
            "rms_norm backward",
            (
                Dispatch::rms_norm_backward(x(), inv_rms.clone(), grad()),
                composed::rms_norm_backward::<Dispatch>(x(), inv_rms, grad()),
            ),
            tolerance(dtype),
        );
    }
    agrees
}

/// Rotary embeddings each way, ReLU² and its backward.
pub fn rotary_and_relu_square(device: &Device) -> Vec<Agreement> {
    let mut agrees = Vec::new();
    for dtype in DTYPES {
        let x = || input(device, [2, 7, 3, 16], 3, 2.0, dtype);
        let table = |seed| input(device, [1, 7, 1, 8], seed, 1.0, dtype);
        agree(
            &mut agrees,
            dtype,
            "rotary",
            both!(rotary(x(), table(4), table(5))),
            tolerance(dtype),
        );
        agree(
            &mut agrees,
            dtype,
            "rotary backward",
            both!(rotary_backward(x(), table(4), table(5))),
            tolerance(dtype),
        );
        let grad = || input(device, [2, 7, 3, 16], 6, 1.0, dtype);
        // relu and doubling are exact: one rounding each way, as the composed ops do.
        agree(
            &mut agrees,
            dtype,
            "relu_square",
            both!(relu_square(x())),
            0.0,
        );
        agree(
            &mut agrees,
            dtype,
            "relu_square backward",
            both!(relu_square_backward(x(), grad())),
            0.0,
        );
    }
    agrees
}

/// The causal softmax each way, on square scores and on the last queries of longer keys.
pub fn causal_softmax(device: &Device) -> Vec<Agreement> {
    let mut agrees = Vec::new();
    for dtype in DTYPES {
        for (queries, keys) in [(9, 9), (3, 9)] {
            let scores = || input(device, [2, 3, queries, keys], 7, 4.0, dtype);
            let (probs, exact) = Dispatch::causal_softmax(scores(), 0.25, true);
            let (want_probs, want_exact) =
                composed::causal_softmax::<Dispatch>(scores(), 0.25, true);
            let (exact, want_exact) = (exact.expect("asked for"), want_exact.expect("asked for"));
            agree(
                &mut agrees,
                dtype,
                "softmax",
                (probs, want_probs),
                tolerance(dtype),
            );
            agree(
                &mut agrees,
                dtype,
                "softmax fp32",
                (exact.clone(), want_exact),
                1e-6,
            );
            let grad = || input(device, [2, 3, queries, keys], 8, 1.0, dtype);
            agree(
                &mut agrees,
                dtype,
                "softmax backward",
                (
                    Dispatch::causal_softmax_backward(exact.clone(), grad(), 0.25),
                    composed::causal_softmax_backward::<Dispatch>(exact, grad(), 0.25),
                ),
                tolerance(dtype),
            );
        }
    }
    agrees
}

/// Attention as the backend runs it (libtorch: its SDPA; flex: PyTorch's SDPA scheme in bf16,
/// the composition on its kernels in fp32) against the composed op, forward and backward.
pub fn causal_attention(device: &Device) -> Vec<Agreement> {
    let mut agrees = Vec::new();
    for dtype in DTYPES {
        let qkv = |seed| input(device, [2, 3, 17, 16], seed, 1.7, dtype);
        let (output, saved) = Dispatch::causal_attention(qkv(1), qkv(2), qkv(3), true);
        let (want, want_saved) =
            composed::causal_attention::<Dispatch>(qkv(1), qkv(2), qkv(3), true);
        // In bf16 flex's kernel and libtorch's SDPA keep the scores in fp32 and round the
        // unnormalised exponentials, where the composed op rounds scores and probabilities.
        let tolerance = match dtype {
            FloatDType::BF16 => 2e-2,
            _ => 1e-5,
        };
        agree(&mut agrees, dtype, "attention", (output, want), tolerance);
        let grad = || input(device, [2, 3, 17, 16], 4, 1.0, dtype);
        let (q, k, v, kept) = saved.expect("asked for");
        let ours = Dispatch::causal_attention_backward(q, k, v, kept, grad());
        let (q, k, v, kept) = want_saved.expect("asked for");
        let reference = composed::causal_attention_backward::<Dispatch>(q, k, v, kept, grad());
        agree(
            &mut agrees,
            dtype,
            "attention grad q",
            (ours.0, reference.0),
            tolerance,
        );
        agree(
            &mut agrees,
            dtype,
            "attention grad k",
            (ours.1, reference.1),
            tolerance,
        );
        agree(
            &mut agrees,
            dtype,
            "attention grad v",
            (ours.2, reference.2),
            tolerance,
        );
    }
    agrees
}

/// The soft-capped loss and its gradient, without a cap and with a small and a large one.
pub fn softcapped_cross_entropy(device: &Device) -> Vec<Agreement> {
    let mut agrees = Vec::new();
    let targets = || {
        let ids: Vec<i64> = (0..6).map(|i| (i * 37) % 50).collect();
        Tensor::<1, Int>::from_data(TensorData::new(ids, [6]), device).into_dispatch()
    };
    for dtype in DTYPES {
        for cap in [None, Some(15.0), Some(50.0)] {
            let logits = || input(device, [6, 50], 9, 30.0, dtype);
            let (loss, grad) =
                Dispatch::softcapped_cross_entropy(logits(), targets(), cap, 12, true);
            let (want_loss, want_grad) =
                composed::softcapped_cross_entropy::<Dispatch>(logits(), targets(), cap, 12, true);
            agree(&mut agrees, dtype, "loss", (loss, want_loss), 1e-5);
            agree(
                &mut agrees,
                dtype,
                "loss gradient",
                (grad.unwrap(), want_grad.unwrap()),
                tolerance(dtype),
            );
        }
    }
    agrees
}

/// Adam's kernel and the composed step use the same fp32 constants and order of operations:
/// to nearest they agree to a rounding of the stored dtype; stochastically they draw the same
/// bits, so they agree as closely; with Kahan compensation (bf16) and with weight decay too.
pub fn adam_step(device: &Device) -> Vec<Agreement> {
    let mut agrees = Vec::new();
    let n = 40_001;
    for dtype in DTYPES {
        // Kahan's compensation is bf16 storage's.
        let mut roundings = vec![(None, false), (Some([11, 12, 13]), false)];
        if dtype == FloatDType::BF16 {
            roundings.push((None, true));
        }
        for (stochastic, kahan) in roundings {
            for weight_decay in [0.0, 0.1] {
                let step = brainfloat_kernels::AdamStep {
                    lr: 0.01,
                    betas: (0.9, 0.95),
                    eps: 1e-8,
                    weight_decay,
                    step: 3,
                    stochastic,
                };
                let state = || {
                    (
                        input(device, [n], 1, 1.0, dtype),
                        input(device, [n], 2, 0.5, dtype),
                        input(device, [n], 3, 0.1, dtype),
                        Dispatch::float_abs(input(device, [n], 4, 0.01, dtype)),
                        kahan.then(|| input(device, [n], 5, 1e-3, dtype)),
                    )
                };
                let (p, g, m1, m2, c) = state();
                let ours = match c {
                    Some(c) => {
                        let (p, m1, m2, c) = Dispatch::adam_step_kahan(p, g, m1, m2, c, step);
                        (p, m1, m2, Some(c))
                    }
                    None => {
                        let (p, m1, m2) = Dispatch::adam_step(p, g, m1, m2, step);
                        (p, m1, m2, None)
                    }
                };
                let (p, g, m1, m2, c) = state();
                let reference = composed::adam_step::<Dispatch>(p, g, m1, m2, c, step);
                let tolerance = tolerance(dtype);
                let outputs = [
                    ("adam param", ours.0, reference.0),
                    ("adam moment 1", ours.1, reference.1),
                    ("adam moment 2", ours.2, reference.2),
                ];
                let compensation = (ours.3.zip(reference.3))
                    .map(|(ours, reference)| ("adam compensation", ours, reference));
                for (name, ours, reference) in outputs.into_iter().chain(compensation) {
                    agree(&mut agrees, dtype, name, (ours, reference), tolerance);
                }
            }
        }
    }
    agrees
}

/// The fp32 accumulation of bf16 and fp32 parts.
pub fn fp32_sums(device: &Device) -> Vec<Agreement> {
    let mut agrees = Vec::new();
    for dtype in DTYPES {
        let sum = || input(device, [33, 65], 1, 3.0, FloatDType::F32);
        let part = || input(device, [33, 65], 2, 1.0, dtype);
        agree(
            &mut agrees,
            dtype,
            "accumulate_f32",
            both!(accumulate_f32(sum(), part())),
            0.0,
        );
        agree(
            &mut agrees,
            dtype,
            "widen_f32",
            (
                Dispatch::widen_f32(part()),
                composed::to_f32::<Dispatch>(part()),
            ),
            0.0,
        );
    }
    agrees
}

/// `a·y + b·x` with either factor 1 and with neither, `x` in fp32 and in `y`'s dtype.
pub fn axpby(device: &Device) -> Vec<Agreement> {
    let mut agrees = Vec::new();
    for dtype in DTYPES {
        for x_dtype in [FloatDType::F32, dtype] {
            for (a, b) in [(1.0, -0.01), (0.95, 1.0), (0.5, 2.0)] {
                let y = || input(device, [33, 65], 1, 3.0, dtype);
                let x = || input(device, [33, 65], 2, 1.0, x_dtype);
                agree(
                    &mut agrees,
                    dtype,
                    "axpby",
                    both!(axpby(y(), x(), a, b)),
                    tolerance(dtype),
                );
            }
        }
    }
    agrees
}

/// The rounding ops (stochastic rounding, stochastic `a·y + b·x`, Kahan addition): bit for bit
/// the composed op's, which draws the CPU kernels' random bits (`dtype` names `x`'s).
pub fn rounding(device: &Device) -> Vec<Agreement> {
    let mut agrees = Vec::new();
    let n = 40_001;
    let key = crate::rounding_key(&[3, 1, 4]);
    let values = || input(device, [n], 1, 3.0, FloatDType::F32);
    agree(
        &mut agrees,
        FloatDType::F32,
        "round_stochastic",
        both!(round_stochastic(values(), key)),
        0.0,
    );
    for dtype in DTYPES {
        let y = || input(device, [n], 2, 1.0, FloatDType::BF16);
        let x = || input(device, [n], 3, 0.01, dtype);
        agree(
            &mut agrees,
            dtype,
            "stochastic_axpby",
            both!(stochastic_axpby(y(), x(), 0.9, -3.0, key)),
            0.0,
        );
    }
    let weight = || input(device, [n], 4, 1.0, FloatDType::BF16);
    let compensation = || input(device, [n], 5, 1e-3, FloatDType::BF16);
    let delta = || input(device, [n], 6, 1e-2, FloatDType::F32);
    let ours = Dispatch::kahan_add(weight(), compensation(), delta());
    let reference = composed::kahan_add::<Dispatch>(weight(), compensation(), delta());
    agree(
        &mut agrees,
        FloatDType::BF16,
        "kahan_add weight",
        (ours.0, reference.0),
        0.0,
    );
    agree(
        &mut agrees,
        FloatDType::BF16,
        "kahan_add compensation",
        (ours.1, reference.1),
        0.0,
    );
    agrees
}

/// The multi-tensor ops ([`crate::adam_steps`], [`crate::axpbys`], [`crate::square_sums`])
/// over a group of four tensors of different sizes and both dtypes against the composed
/// single-tensor op on each member: Adam with equal and with mixed step counts, to nearest and
/// stochastically; `a·y + b·x` for each factor case with `x` in `y`'s dtype and in fp32; the
/// sums of squares.
pub fn groups(device: &Device) -> Vec<Agreement> {
    let mut agrees = Vec::new();
    let members = [
        (40_001, FloatDType::F32),
        (513, FloatDType::BF16),
        (7, FloatDType::F32),
        (2_049, FloatDType::BF16),
    ];
    let tensor =
        |n, seed, scale, dtype| Tensor::<1>::from_dispatch(input(device, [n], seed, scale, dtype));
    let adam = crate::AdamGroup {
        lr: 0.01,
        betas: (0.9, 0.95),
        eps: 1e-8,
        weight_decay: 0.0,
    };
    for steps in [[3, 3, 3, 3], [1, 2, 3, 4]] {
        for stochastic in [false, true] {
            let keys = |i: u64| stochastic.then_some([3 * i, 3 * i + 1, 3 * i + 2]);
            let state = |n, dtype| {
                (
                    tensor(n, 1, 1.0, dtype),
                    tensor(n, 2, 0.5, dtype),
                    tensor(n, 3, 0.1, dtype),
                    tensor(n, 4, 0.01, dtype).abs(),
                )
            };
            let group = (members.iter().zip(steps).zip(0..))
                .map(|((&(n, dtype), step), i)| {
                    let (param, grad, moment_1, moment_2) = state(n, dtype);
                    crate::AdamMember {
                        param,
                        grad,
                        moment_1,
                        moment_2,
                        compensation: None,
                        step,
                        stochastic: keys(i),
                    }
                })
                .collect();
            let ours = crate::adam_steps(group, adam);
            for (((&(n, dtype), step), i), ours) in members.iter().zip(steps).zip(0..).zip(ours) {
                let (p, g, m1, m2) = state(n, dtype);
                let step = brainfloat_kernels::AdamStep {
                    lr: adam.lr,
                    betas: adam.betas,
                    eps: adam.eps,
                    weight_decay: adam.weight_decay,
                    step,
                    stochastic: keys(i),
                };
                let reference = composed::adam_step::<Dispatch>(
                    p.into_dispatch(),
                    g.into_dispatch(),
                    m1.into_dispatch(),
                    m2.into_dispatch(),
                    None,
                    step,
                );
                let [param, moment_1, moment_2] =
                    [ours.param, ours.moment_1, ours.moment_2].map(Tensor::into_dispatch);
                let tolerance = tolerance(dtype);
                agree(
                    &mut agrees,
                    dtype,
                    "group adam param",
                    (param, reference.0),
                    tolerance,
                );
                agree(
                    &mut agrees,
                    dtype,
                    "group adam moment 1",
                    (moment_1, reference.1),
                    tolerance,
                );
                agree(
                    &mut agrees,
                    dtype,
                    "group adam moment 2",
                    (moment_2, reference.2),
                    tolerance,
                );
            }
        }
    }
    for dtype in DTYPES {
        for x_dtype in [dtype, FloatDType::F32] {
            for (a, b) in [(1.0, -0.01), (0.95, 1.0), (0.5, 2.0)] {
                let ys = || members.iter().map(|&(n, _)| tensor(n, 5, 3.0, dtype));
                let xs = || members.iter().map(|&(n, _)| tensor(n, 6, 1.0, x_dtype));
                let ours = crate::axpbys(ys().collect(), xs().collect(), a, b);
                for ((y, x), ours) in ys().zip(xs()).zip(ours) {
                    let reference =
                        composed::axpby::<Dispatch>(y.into_dispatch(), x.into_dispatch(), a, b);
                    agree(
                        &mut agrees,
                        dtype,
                        "group axpby",
                        (ours.into_dispatch(), reference),
                        tolerance(dtype),
                    );
                }
            }
        }
    }
    let xs = || {
        members
            .iter()
            .map(|&(n, dtype)| (tensor(n, 7, 2.0, dtype), dtype))
    };
    let ours = crate::square_sums(xs().map(|(x, _)| x).collect());
    for ((x, dtype), ours) in xs().zip(ours) {
        let reference = composed::square_sum::<Dispatch>(x.into_dispatch());
        agree(
            &mut agrees,
            dtype,
            "group Σx²",
            (ours.into_dispatch(), reference),
            1e-5,
        );
    }
    agrees
}
