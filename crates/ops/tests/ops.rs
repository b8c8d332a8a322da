//! The extension's ops against Burn's own ops on the same inputs: forward values and both
//! gradients, dtypes asserted. Run on the test backend (`BRAINFLOAT_BACKEND`); on flex they
//! exercise the kernels, elsewhere the default bodies.

mod common;

use brainfloat_kernels::bf16;
use brainfloat_ops::{KernelPath, PATH_VAR, causal_attention, matmul, rms_norm};
use brainfloat_test_support::test_device;
use burn::tensor::activation::softmax;
use burn::tensor::{Bool, DType, Distribution, FloatDType, Tensor, TensorData};
use common::on_each_route;

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.cast(FloatDType::F32)
        .into_data()
        .try_to_vec::<f32>()
        .unwrap()
}

/// Largest absolute difference over the largest magnitude of `want`.
fn relative_error(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(1e-30f64, |m, v| m.max(v.abs() as f64));
    let error = got
        .iter()
        .zip(want)
        .map(|(a, b)| (*a as f64 - *b as f64).abs())
        .fold(0.0, f64::max)
        / scale;
    println!("relative error {error:.2e}");
    error
}

/// `[.., m, k]` and `[.., k, n]` bf16 leaves, random, the same values for both computations.
fn operands<const D: usize>(lhs: [usize; D], rhs: [usize; D]) -> (Tensor<D>, Tensor<D>) {
    let device = test_device().autodiff();
    let make = |dims: [usize; D]| {
        Tensor::<D>::random(dims, Distribution::Normal(0.0, 1.0), (&device, DType::F32))
            .cast(FloatDType::BF16)
    };
    (make(lhs), make(rhs))
}

/// `matmul` and Burn's `Tensor::matmul` on the same bf16 inputs: the products agree to bf16
/// rounding (measured ≤ one bf16 ulp, 2⁻⁸ of the scale: Burn's flex rounds the same fp32
/// accumulator), and so do both gradients, which keep bf16.
#[test]
fn matmul_and_its_gradients_match_burns_matmul() {
    for (lhs, rhs, transpose_rhs) in [
        ([17, 255], [255, 64], false),
        ([3, 1000], [1000, 1], false),
        ([64, 256], [300, 256], true),
    ] {
        let (a, b) = operands(lhs, rhs);
        let b = if transpose_rhs { b.transpose() } else { b };
        let run = |ours: bool| {
            let (a, b) = (a.clone().require_grad(), b.clone().require_grad());
            let y = if ours {
                matmul(a.clone(), b.clone())
            } else {
                a.clone().matmul(b.clone())
            };
            assert_eq!(y.dtype(), DType::BF16);
            // A weighted sum so that each output has its own upstream gradient.
            let weights = y.ones_like().cumsum(1).div_scalar(y.dims()[1] as f64);
            let grads = (y.clone() * weights).sum().backward();
            let (ga, gb) = (a.grad(&grads).unwrap(), b.grad(&grads).unwrap());
            assert_eq!((ga.dtype(), gb.dtype()), (DType::BF16, DType::BF16));
            [values(y), values(ga), values(gb)]
        };
        let (ours, burns) = (run(true), run(false));
        for (name, (o, b)) in ["product", "grad lhs", "grad rhs"]
            .iter()
            .zip(ours.iter().zip(&burns))
        {
            let error = relative_error(o, b);
            assert!(error <= 2f64.powi(-8), "{lhs:?}·{rhs:?} {name}: {error:e}");
        }
    }
}

#[test]
fn batched_matmul_matches_burns_on_a_transposed_batch() {
    let (a, b) = operands([2, 3, 33, 64], [2, 3, 40, 64]);
    let ours = matmul(a.clone(), b.clone().swap_dims(2, 3));
    let burns = a.matmul(b.swap_dims(2, 3));
    assert_eq!(ours.dims(), [2, 3, 33, 40]);
    assert!(relative_error(&values(ours), &values(burns)) <= 2f64.powi(-7));
}

#[test]
fn fp32_matmul_is_burns_matmul() {
    let device = test_device();
    let a = Tensor::<2>::random([9, 31], Distribution::Default, (&device, DType::F32));
    let b = Tensor::<2>::random([31, 5], Distribution::Default, (&device, DType::F32));
    let ours = matmul(a.clone(), b.clone());
    assert_eq!(ours.dtype(), DType::F32);
    assert_eq!(values(ours), values(a.matmul(b)));
}

/// RMSNorm written with Burn's ops, as the model had it: fp32 statistics, one rounding.
fn rms_norm_reference(x: Tensor<3>) -> Tensor<3> {
    let dtype = FloatDType::from(x.dtype());
    let x = x.cast(FloatDType::F32);
    let inv_rms = x
        .clone()
        .square()
        .mean_dim(2)
        .add_scalar(f32::EPSILON as f64)
        .sqrt()
        .recip();
    (x * inv_rms).cast(dtype)
}

#[test]
fn rms_norm_and_its_gradient_match_burns_ops_in_both_dtypes() {
    let device = test_device().autodiff();
    // Measured: fp32 agrees to ~1e-7, bf16 to one rounding of the output (2⁻⁸).
    for (dtype, tolerance) in [(DType::F32, 1e-5), (DType::BF16, 2f64.powi(-7))] {
        let x = Tensor::<3>::random(
            [3, 5, 67],
            Distribution::Normal(0.5, 2.0),
            (&device, DType::F32),
        )
        .cast(FloatDType::from(dtype));
        let upstream =
            Tensor::<3>::random([3, 5, 67], Distribution::Default, (&device, DType::F32))
                .cast(FloatDType::from(dtype));
        let run = |ours: bool| {
            let x = x.clone().require_grad();
            let y = if ours {
                rms_norm(x.clone(), f32::EPSILON as f64)
            } else {
                rms_norm_reference(x.clone())
            };
            assert_eq!(y.dtype(), dtype);
            let grads = (y.clone() * upstream.clone()).sum().backward();
            let grad = x.grad(&grads).unwrap();
            assert_eq!(grad.dtype(), dtype);
            [values(y), values(grad)]
        };
        let (ours, burns) = (run(true), run(false));
        for (name, (o, b)) in ["output", "gradient"].iter().zip(ours.iter().zip(&burns)) {
            let error = relative_error(o, b);
            assert!(error <= tolerance, "{dtype:?} {name}: {error:e}");
        }
    }
}

/// Attention written with Burn's ops in fp32 from the same bf16 inputs.
fn attention_reference(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>) -> Tensor<4> {
    let [.., t, d] = q.dims();
    let (q, k, v) = (
        q.cast(FloatDType::F32),
        k.cast(FloatDType::F32),
        v.cast(FloatDType::F32),
    );
    let scores = q.matmul(k.swap_dims(2, 3)).div_scalar((d as f64).sqrt());
    let future = Tensor::<2, Bool>::tril_mask([t, t], 0, &scores.device())
        .unsqueeze::<4>()
        .expand(scores.dims());
    softmax(scores.mask_fill(future, f32::NEG_INFINITY), 3).matmul(v)
}

/// Fixed `[2, 3, 19, 16]` queries, keys and values in `dtype` (a deterministic spread in about
/// ±1.7, so that a measured agreement is one number, not a draw), on the autodiff test device.
fn attention_inputs(dtype: FloatDType) -> [Tensor<4>; 3] {
    let device = test_device().autodiff();
    let dims = [2, 3, 19, 16];
    [1, 2, 3].map(|seed: usize| {
        let values: Vec<f32> = (0..dims.iter().product::<usize>())
            .map(|i| ((i * 7919 + seed * 104_729) % 1009) as f32 / 300.0 - 1.68)
            .collect();
        Tensor::<4>::from_data(TensorData::new(values, dims), (&device, DType::F32)).cast(dtype)
    })
}

/// Output and the gradients of q, k and v of `Σ y²` through [`causal_attention`] (`ours`) or
/// [`attention_reference`]; ours keeps the inputs' dtype in the output and every gradient.
fn attention_and_gradients([q, k, v]: &[Tensor<4>; 3], ours: bool) -> [Vec<f32>; 4] {
    let dtype = q.dtype();
    let (q, k, v) = (
        q.clone().require_grad(),
        k.clone().require_grad(),
        v.clone().require_grad(),
    );
    let y = if ours {
        let y = causal_attention(q.clone(), k.clone(), v.clone());
        assert_eq!(y.dtype(), dtype, "the inputs' dtype out");
        y
    } else {
        attention_reference(q.clone(), k.clone(), v.clone())
    };
    let grads = y.clone().cast(FloatDType::F32).square().sum().backward();
    let grad = |t: &Tensor<4>| {
        let grad = t.grad(&grads).unwrap();
        if ours {
            assert_eq!(grad.dtype(), dtype, "gradients keep the inputs' dtype");
        }
        values(grad)
    };
    [values(y), grad(&q), grad(&k), grad(&v)]
}

/// Output, grad q, grad k and grad v of [`causal_attention`] on `dtype` inputs each within
/// `tolerance` (relative to the scale) of [`attention_reference`]'s.
fn assert_attention_agrees(dtype: FloatDType, tolerance: f64) {
    let inputs = attention_inputs(dtype);
    let ours = attention_and_gradients(&inputs, true);
    let reference = attention_and_gradients(&inputs, false);
    for (name, (o, r)) in ["output", "grad q", "grad k", "grad v"]
        .iter()
        .zip(ours.iter().zip(&reference))
    {
        let error = relative_error(o, r);
        assert!(error <= tolerance, "{dtype:?} {name}: {error:e}");
    }
}

#[test]
fn causal_attention_and_its_gradients_match_fp32_ops_to_bf16_rounding() {
    // bf16 scores, probabilities and outputs each round to 8 bits: measured 4.8e-3 (output) to
    // 1.1e-2 (grad q) of the scale on flex; libtorch's fused SDPA with its own backward 2.9e-3
    // to 7.3e-3 (Burn's unfused attention there measured up to 2.5e-2). The dtype assertions
    // keep an fp32 path out.
    assert_attention_agrees(FloatDType::BF16, 3e-2);
}

/// In fp32 the fused attention (libtorch's SDPA and its own backward on tch; Burn's attention
/// on flex) agrees with the composed fp32 ops to summation order: measured up to 1.5e-6 of the
/// scale on tch (grad q), 6.3e-7 on flex.
#[test]
fn causal_attention_and_its_gradients_in_fp32_match_burns_ops() {
    assert_attention_agrees(FloatDType::F32, 1e-5);
}

/// Fewer queries than keys (a generation step after cached positions): the queries are the
/// last ones, so their rows equal the last rows of the full attention, in fp32 (to summation
/// order) and bf16 (to bf16 rounding), on every backend. libtorch aligns `is_causal` from the
/// top-left, flex from the bottom-right: the explicit mask must make both the latter.
#[test]
fn queries_after_cached_keys_attend_like_the_last_rows_of_full_attention() {
    let device = test_device();
    let dims = [1, 2, 13, 8];
    let values_of = |seed: usize| -> Vec<f32> {
        (0..dims.iter().product::<usize>())
            .map(|i| ((i * 7919 + seed * 104_729) % 1009) as f32 / 300.0 - 1.68)
            .collect()
    };
    // Measured: flex 0 (the same kernels row by row); libtorch 2.2e-7 (fp32) and 5.5e-3 (bf16)
    // of the scale, its SDPA against the explicit mask. A top-left mask is off by O(1).
    for (dtype, tolerance) in [(FloatDType::F32, 2e-6), (FloatDType::BF16, 2e-2)] {
        let make = |seed| {
            Tensor::<4>::from_data(
                TensorData::new(values_of(seed), dims),
                (&device, DType::F32),
            )
            .cast(dtype)
        };
        let (q, k, v) = (make(1), make(2), make(3));
        let full = values(causal_attention(q.clone(), k.clone(), v.clone()));
        for new in [1, 4] {
            let last = q.clone().narrow(2, dims[2] - new, new);
            let y = causal_attention(last, k.clone(), v.clone());
            assert_eq!(y.dtype(), DType::from(dtype));
            assert_eq!(y.dims(), [1, 2, new, 8]);
            let y = values(y);
            let rows = |t: &[f32], head: usize| {
                let per_head = dims[2] * 8;
                t[head * per_head + (dims[2] - new) * 8..(head + 1) * per_head].to_vec()
            };
            for head in 0..2 {
                let want = rows(&full, head);
                let got = &y[head * new * 8..(head + 1) * new * 8];
                let error = relative_error(got, &want);
                assert!(error <= tolerance, "{dtype:?}, {new} queries: {error:e}");
            }
        }
    }
}

/// Rotary written with Burn's ops, as the model has it where there is no kernel.
fn rotary_reference(x: Tensor<4>, cos: Tensor<4>, sin: Tensor<4>) -> Tensor<4> {
    let half = x.dims()[3] / 2;
    let x1 = x.clone().narrow(3, 0, half);
    let x2 = x.narrow(3, half, half);
    let y1 = x1.clone() * cos.clone() + x2.clone() * sin.clone();
    let y2 = x1 * sin.neg() + x2 * cos;
    Tensor::cat(vec![y1, y2], 3)
}

/// A one-input op and Burn's ops on the same input, under autodiff with a random upstream
/// gradient: `[[output, input gradient] of the op, [..] of Burn's ops]`. Dtypes asserted.
fn op_and_reference<const D: usize>(
    x: Tensor<D>,
    op: impl Fn(Tensor<D>) -> Tensor<D>,
    reference: impl Fn(Tensor<D>) -> Tensor<D>,
) -> [[Vec<f32>; 2]; 2] {
    let upstream = x.random_like(Distribution::Default);
    let run = |y: Tensor<D>, x: &Tensor<D>| {
        assert_eq!(y.dtype(), x.dtype());
        let grads = (y.clone() * upstream.clone()).sum().backward();
        [values(y), values(x.grad(&grads).unwrap())]
    };
    let tracked = x.clone().require_grad();
    let ours = run(op(tracked.clone()), &tracked);
    let tracked = x.require_grad();
    [ours, run(reference(tracked.clone()), &tracked)]
}

#[test]
fn rotary_and_its_gradient_match_burns_ops_in_both_dtypes() {
    let device = test_device().autodiff();
    let (batch, positions, heads, head_dim) = (2, 7, 3, 16);
    for dtype in [FloatDType::F32, FloatDType::BF16] {
        let random = |dims: [usize; 4], distribution| {
            Tensor::<4>::random(dims, distribution, (&device, DType::F32)).cast(dtype)
        };
        let table = || {
            random(
                [1, positions, 1, head_dim / 2],
                Distribution::Uniform(-1.0, 1.0),
            )
        };
        let (cos, sin) = (table(), table());
        let x = random(
            [batch, positions, heads, head_dim],
            Distribution::Normal(0.0, 1.0),
        );
        let [ours, reference] = op_and_reference(
            x,
            |x| brainfloat_ops::rotary(x, cos.clone(), sin.clone()),
            |x| rotary_reference(x, cos.clone(), sin.clone()),
        );
        // The same roundings in the same order: equal up to the order of a sum of two.
        for (name, (o, r)) in ["output", "gradient"]
            .iter()
            .zip(ours.iter().zip(&reference))
        {
            let error = relative_error(o, r);
            assert!(error <= 2f64.powi(-8), "{dtype:?} {name}: {error:e}");
        }
    }
}

#[test]
fn relu_square_and_its_gradient_match_burns_ops_in_both_dtypes() {
    let device = test_device().autodiff();
    for dtype in [FloatDType::F32, FloatDType::BF16] {
        let x = Tensor::<2>::random(
            [33, 70],
            Distribution::Normal(0.0, 2.0),
            (&device, DType::F32),
        )
        .cast(dtype);
        let [ours, reference] = op_and_reference(x, brainfloat_ops::relu_square, |x| {
            burn::tensor::activation::relu(x).square()
        });
        // relu and doubling are exact: one rounding each way, as the two ops do.
        assert_eq!(ours, reference, "{dtype:?}");
    }
}

/// The path the environment forces is the one that runs: the test below runs this file with
/// `portable` and with `amx-model` forced (the choice itself is tested in `path.rs`).
#[test]
fn a_forced_kernel_path_is_the_one_that_runs() {
    match std::env::var(PATH_VAR) {
        Ok(forced) => assert_eq!(KernelPath::active().name(), forced),
        Err(_) => assert_ne!(
            KernelPath::active(),
            KernelPath::AmxModel,
            "forced by nobody"
        ),
    }
}

/// Every test of this file again in a child process with the portable path forced, and again
/// with the AMX GEMM on the tiles' software model: no CPU runs either otherwise.
#[test]
fn every_test_passes_with_the_portable_path_and_the_amx_model_forced() {
    if std::env::var_os(PATH_VAR).is_some() {
        return; // this is the child (or a forced run): the other tests are the check
    }
    for path in [KernelPath::Portable, KernelPath::AmxModel] {
        passes_in_a_child((PATH_VAR, path.name()), &["--test-threads", "1"]);
    }
}

/// This test binary run again with `variable` set and `args`: it passes, and its output is
/// returned.
fn passes_in_a_child(variable: (&str, &str), args: &[&str]) -> String {
    let child = std::process::Command::new(std::env::current_exe().unwrap())
        .env(variable.0, variable.1)
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&child.stdout).into_owned();
    assert!(
        child.status.success() && stdout.contains("test result: ok"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&child.stderr)
    );
    stdout
}

/// `len` fp32 values spread over many binades, both signs (a fixed sequence).
fn spread_values(len: usize) -> Vec<f32> {
    (0..len)
        .map(|i| {
            let i = i as f32;
            (i * 0.618).sin() * (0.37 * (i % 53.0) - 9.0).exp()
        })
        .collect()
}

fn bf16_values(t: Tensor<1>) -> Vec<brainfloat_kernels::bf16> {
    assert_eq!(t.dtype(), DType::BF16);
    t.into_data().try_to_vec().unwrap()
}

/// `round_stochastic` rounds as the kernel does on the host, bit for bit, on any backend (on
/// flex through the extension, elsewhere through the host), on a ragged length.
#[test]
fn stochastic_rounding_draws_the_same_bits_on_every_backend() {
    on_each_route(|| {
        let device = test_device();
        let values = spread_values(100_003);
        let key = brainfloat_ops::rounding_key(&[5, 17, 3]);
        let tensor =
            Tensor::<1>::from_data(TensorData::new(values.clone(), [values.len()]), &device);
        let rounded = bf16_values(brainfloat_ops::round_stochastic(tensor, key));
        let mut want = vec![brainfloat_kernels::bf16::ZERO; values.len()];
        brainfloat_kernels::round_stochastic_into(&values, &mut want, key);
        assert_eq!(rounded, want);
        // Not round to nearest: a value at a uniform place between its neighbours goes to the
        // nearer one with probability E[max(p, 1 − p)] = 3/4 (measured 75.0 %), not always.
        let nearest = values
            .iter()
            .zip(&rounded)
            .filter(|(v, r)| brainfloat_kernels::bf16::from_f32(**v) == **r)
            .count();
        assert!(
            nearest < values.len() * 4 / 5,
            "{nearest} of {}",
            values.len()
        );
    });
}

/// `kahan_add` gives the kernel's weight and compensation, bit for bit, on any backend (Burn's
/// ops off flex), dtypes kept.
#[test]
fn kahan_addition_is_the_kernels_on_every_backend() {
    on_each_route(|| {
        let device = test_device();
        let n = 70_001;
        let weight: Vec<f32> = spread_values(n);
        let compensation: Vec<f32> = spread_values(n).iter().map(|v| v * 1e-3).collect();
        let delta: Vec<f32> = spread_values(n).iter().rev().map(|v| v * 1e-2).collect();
        let bf16_tensor = |v: &[f32]| {
            Tensor::<1>::from_data(TensorData::new(v.to_vec(), [n]), &device).cast(FloatDType::BF16)
        };
        let (w, c) = brainfloat_ops::kahan_add(
            bf16_tensor(&weight),
            bf16_tensor(&compensation),
            Tensor::<1>::from_data(TensorData::new(delta.clone(), [n]), &device),
        );
        let mut want_w: Vec<_> = weight
            .iter()
            .map(|v| brainfloat_kernels::bf16::from_f32(*v))
            .collect();
        let mut want_c: Vec<_> = compensation
            .iter()
            .map(|v| brainfloat_kernels::bf16::from_f32(*v))
            .collect();
        brainfloat_kernels::kahan_add(&mut want_w, &mut want_c, &delta);
        assert_eq!(bf16_values(w), want_w);
        assert_eq!(bf16_values(c), want_c);
    });
}

/// `stochastic_axpby` rounds `a·y + b·x` (fp32) as the kernel does, bit for bit, on any backend,
/// for an fp32 and a bf16 `x`.
#[test]
fn stochastic_axpby_is_the_kernels_on_every_backend() {
    on_each_route(|| {
        let device = test_device();
        let n = 50_001;
        let y: Vec<f32> = spread_values(n);
        let x: Vec<f32> = spread_values(n).iter().rev().map(|v| v * 1e-2).collect();
        let key = brainfloat_ops::rounding_key(&[9]);
        for x_dtype in [FloatDType::F32, FloatDType::BF16] {
            let y_tensor = Tensor::<1>::from_data(TensorData::new(y.clone(), [n]), &device)
                .cast(FloatDType::BF16);
            let x_tensor =
                Tensor::<1>::from_data(TensorData::new(x.clone(), [n]), &device).cast(x_dtype);
            let x_values = values(x_tensor.clone());
            let got = brainfloat_ops::stochastic_axpby(y_tensor.clone(), x_tensor, 0.9, -3.0, key);
            let mut want = bf16_values(y_tensor);
            brainfloat_kernels::stochastic_axpby(&mut want, &x_values, 0.9, -3.0, key);
            assert_eq!(bf16_values(got), want, "x in {x_dtype:?}");
        }
    });
}

/// The device route's rounding kernels check themselves before their first use: on libtorch's
/// CPU (the route forced) their host twin passes and runs; its deliberately wrong variant
/// (`BRAINFLOAT_WRONG_KERNELS=1`, in a child process) fails, is logged, and the composed op
/// runs, so that the rounding tests above still hold bit for bit.
#[cfg(all(feature = "tch", feature = "testing"))]
#[test]
fn a_kernel_that_fails_its_self_test_falls_back_to_the_composed_op() {
    use brainfloat_backend::Backend;
    use brainfloat_ops::{LibTorchRoute, kernel_self_tests, with_libtorch_route};
    if !matches!(brainfloat_test_support::test_backend(), Backend::Tch) {
        println!("the self-test is the libtorch device route's: checked on the `tch` pass");
        return;
    }
    let wrong = std::env::var("BRAINFLOAT_WRONG_KERNELS").is_ok_and(|v| v == "1");
    with_libtorch_route(LibTorchRoute::Device, || {
        stochastic_rounding_draws_the_same_bits_on_every_backend();
        kahan_addition_is_the_kernels_on_every_backend();
        stochastic_axpby_is_the_kernels_on_every_backend();
    });
    let results = kernel_self_tests();
    println!("{results:#?}");
    assert_eq!(
        results.len(),
        4,
        "every kernel tested itself once on the CPU"
    );
    assert!(
        results.iter().all(|r| r.passed != wrong),
        "the host twin passes, its wrong variant fails"
    );
    if wrong {
        return;
    }
    let stdout = passes_in_a_child(
        ("BRAINFLOAT_WRONG_KERNELS", "1"),
        &["a_kernel_that_fails_its_self_test", "--nocapture"],
    );
    assert!(
        stdout.contains("1 passed") && stdout.contains("passed: false"),
        "{stdout}"
    );
}

/// `scale` multiplies a bf16 tensor by its factor in fp32 and rounds once, as PyTorch does
/// with a Python number: every element is `bf16(f32(x) · f32(factor))`, bit for bit, on every
/// backend — not the product with the factor rounded to bf16 first (3.4445 → 3.4375), which
/// differs on a third or more of them.
#[test]
fn scale_keeps_the_factor_in_fp32() {
    let device = test_device();
    let x = Tensor::<1>::random(
        [4096],
        Distribution::Normal(0.0, 1.0),
        (&device, DType::F32),
    )
    .cast(FloatDType::BF16);
    let inputs: Vec<bf16> = x.clone().into_data().try_to_vec().unwrap();
    for factor in [3.4445, -4.7750, 2.0315, 0.95] {
        let scaled = brainfloat_ops::scale(x.clone(), factor);
        assert_eq!(scaled.dtype(), DType::BF16);
        let got: Vec<bf16> = scaled.into_data().try_to_vec().unwrap();
        let rounded_factor = bf16::from_f64(factor).to_f32();
        let (mut same, mut as_rounded_factor) = (0, 0);
        for (g, x) in got.iter().zip(&inputs) {
            assert_eq!(
                *g,
                bf16::from_f32(x.to_f32() * factor as f32),
                "{x} · {factor}"
            );
            same += 1;
            as_rounded_factor += usize::from(*g == bf16::from_f32(x.to_f32() * rounded_factor));
        }
        println!("{factor}: {as_rounded_factor} of {same} as with the factor in bf16");
        if factor == 3.4445 {
            assert!(
                as_rounded_factor < same * 2 / 3,
                "{as_rounded_factor} of {same}"
            );
        }
    }
    let fp32 = Tensor::<1>::from_data(
        TensorData::new(vec![1.5f32, -2.25], [2]),
        (&device, DType::F32),
    );
    assert_eq!(
        values(brainfloat_ops::scale(fp32, 3.4445)),
        [1.5 * 3.4445f32, -2.25 * 3.4445f32]
    );
}
