//! Each op as the backend runs it (its kernel on flex and libtorch's CPU) against the composed
//! op (`brainfloat_ops::composed`, the default body that a backend without the kernel runs) on
//! the same device and inputs: values and dtypes. The composed ops are what a GPU runs until
//! it has a kernel, so they must agree with the kernels the CPU tests hold to float64.

use brainfloat_ops::{KernelBackend, composed};
use brainfloat_test_support::test_device;
use burn::backend::Dispatch;
use burn::backend::ops::FloatTensorOps;
use burn::backend::tensor::FloatTensor;
use burn::tensor::{DType, FloatDType, Int, Tensor, TensorData};

type Primitive = FloatTensor<Dispatch>;

/// A deterministic spread of values in about ±`scale`.
fn spread(len: usize, seed: usize, scale: f32) -> Vec<f32> {
    (0..len)
        .map(|i| (((i * 7919 + seed * 104_729) % 1009) as f32 / 504.5 - 1.0) * scale)
        .collect()
}

/// A tensor of `dims` on the test device in `dtype`, as the backend's primitive.
fn input<const D: usize>(
    dims: [usize; D],
    seed: usize,
    scale: f32,
    dtype: FloatDType,
) -> Primitive {
    let values = spread(dims.iter().product(), seed, scale);
    Tensor::<D>::from_data(TensorData::new(values, dims), (&test_device(), DType::F32))
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
        .unwrap();
    (values, dtype)
}

/// `ours` and `reference` have one dtype, and their values agree within `tolerance` of the
/// reference's largest magnitude.
#[track_caller]
fn assert_agrees(name: &str, ours: Primitive, reference: Primitive, tolerance: f64) {
    let ((got, got_dtype), (want, want_dtype)) = (read(ours), read(reference));
    assert_eq!(got_dtype, want_dtype, "{name}: dtype");
    assert_eq!(got.len(), want.len(), "{name}: shape");
    let scale = want.iter().fold(1e-30f64, |m, v| m.max(v.abs() as f64));
    let error = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (*a as f64 - *b as f64).abs())
        .fold(0.0, f64::max)
        / scale;
    println!("{name}: {error:.2e} of the scale");
    assert!(error <= tolerance, "{name}: {error:e} > {tolerance:e}");
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

#[test]
fn rms_norm_and_its_backward_are_the_composed_ops() {
    for dtype in DTYPES {
        let x = || input([3, 5, 64], 1, 2.0, dtype);
        let (y, inv_rms) = Dispatch::rms_norm_with_stats(x(), 1e-6);
        let (want_y, want_inv_rms) = composed::rms_norm_with_stats::<Dispatch>(x(), 1e-6);
        assert_agrees("rms_norm", y, want_y, tolerance(dtype));
        assert_agrees("rms_norm statistic", inv_rms.clone(), want_inv_rms, 1e-6);
        let grad = || input([3, 5, 64], 2, 1.0, dtype);
        assert_agrees(
            "rms_norm backward",
            Dispatch::rms_norm_backward(x(), inv_rms.clone(), grad()),
            composed::rms_norm_backward::<Dispatch>(x(), inv_rms, grad()),
            tolerance(dtype),
        );
    }
}

#[test]
fn rotary_and_relu_square_are_the_composed_ops() {
    for dtype in DTYPES {
        let x = || input([2, 7, 3, 16], 3, 2.0, dtype);
        let table = |seed| input([1, 7, 1, 8], seed, 1.0, dtype);
        for inverse in [false, true] {
            assert_agrees(
                "rotary",
                Dispatch::rotary(x(), table(4), table(5), inverse),
                composed::rotary::<Dispatch>(x(), table(4), table(5), inverse),
                tolerance(dtype),
            );
        }
        let grad = || input([2, 7, 3, 16], 6, 1.0, dtype);
        // relu and doubling are exact: one rounding each way, as the composed ops do.
        assert_agrees(
            "relu_square",
            Dispatch::relu_square(x()),
            composed::relu_square::<Dispatch>(x()),
            0.0,
        );
        assert_agrees(
            "relu_square backward",
            Dispatch::relu_square_backward(x(), grad()),
            composed::relu_square_backward::<Dispatch>(x(), grad()),
            0.0,
        );
    }
}

/// The causal softmax each way, on square scores and on the last queries of longer keys.
#[test]
fn causal_softmax_and_its_backward_are_the_composed_ops() {
    for dtype in DTYPES {
        for (queries, keys) in [(9, 9), (3, 9)] {
            let scores = || input([2, 3, queries, keys], 7, 4.0, dtype);
            let (probs, exact) = Dispatch::causal_softmax_with_probs(scores(), 0.25);
            let (want_probs, want_exact) =
                composed::causal_softmax_with_probs::<Dispatch>(scores(), 0.25);
            assert_agrees("softmax", probs, want_probs, tolerance(dtype));
            assert_agrees("softmax fp32", exact.clone(), want_exact, 1e-6);
            let grad = || input([2, 3, queries, keys], 8, 1.0, dtype);
            assert_agrees(
                "softmax backward",
                Dispatch::causal_softmax_backward(exact.clone(), grad(), 0.25),
                composed::causal_softmax_backward::<Dispatch>(exact, grad(), 0.25),
                tolerance(dtype),
            );
        }
    }
}

/// Attention as the backend runs it (libtorch: its SDPA; flex: the composition on the kernels)
/// against the composed op, forward and backward.
#[test]
fn causal_attention_and_its_backward_are_the_composed_ops() {
    for dtype in DTYPES {
        let qkv = |seed| input([2, 3, 17, 16], seed, 1.7, dtype);
        let (output, saved) = Dispatch::causal_attention(qkv(1), qkv(2), qkv(3), true);
        let (want, want_saved) =
            composed::causal_attention::<Dispatch>(qkv(1), qkv(2), qkv(3), true);
        // flex runs the composed op itself; libtorch's SDPA keeps its scores and
        // probabilities in fp32 where the composed op rounds them to bf16.
        let tolerance = match dtype {
            FloatDType::BF16 => 2e-2,
            _ => 1e-5,
        };
        assert_agrees("attention", output, want, tolerance);
        let grad = || input([2, 3, 17, 16], 4, 1.0, dtype);
        let (q, k, v, kept) = saved.expect("asked for");
        let ours = Dispatch::causal_attention_backward(q, k, v, kept, grad());
        let (q, k, v, kept) = want_saved.expect("asked for");
        let reference = composed::causal_attention_backward::<Dispatch>(q, k, v, kept, grad());
        assert_agrees("attention grad q", ours.0, reference.0, tolerance);
        assert_agrees("attention grad k", ours.1, reference.1, tolerance);
        assert_agrees("attention grad v", ours.2, reference.2, tolerance);
    }
}

#[test]
fn the_loss_and_its_gradient_are_the_composed_ops() {
    let targets = || {
        let ids: Vec<i64> = (0..6).map(|i| (i * 37) % 50).collect();
        Tensor::<1, Int>::from_data(TensorData::new(ids, [6]), &test_device()).into_dispatch()
    };
    for dtype in DTYPES {
        for cap in [None, Some(15.0), Some(50.0)] {
            let logits = || input([6, 50], 9, 30.0, dtype);
            let (loss, grad) =
                Dispatch::softcapped_cross_entropy(logits(), targets(), cap, 12, true);
            let (want_loss, want_grad) =
                composed::softcapped_cross_entropy::<Dispatch>(logits(), targets(), cap, 12, true);
            assert_agrees("loss", loss, want_loss, 1e-5);
            assert_agrees(
                "loss gradient",
                grad.unwrap(),
                want_grad.unwrap(),
                tolerance(dtype),
            );
        }
    }
}

/// Adam's kernel and the composed step use the same fp32 constants and order of operations:
/// to nearest they agree to a rounding of the stored dtype; stochastically they draw the same
/// bits, so they agree as closely.
#[test]
fn adam_is_the_composed_step() {
    let n = 40_001;
    for dtype in DTYPES {
        for stochastic in [None, Some([11, 12, 13])] {
            let step = brainfloat_kernels::AdamStep {
                lr: 0.01,
                betas: (0.9, 0.95),
                eps: 1e-8,
                step: 3,
                stochastic,
            };
            let state = || {
                (
                    input([n], 1, 1.0, dtype),
                    input([n], 2, 0.5, dtype),
                    input([n], 3, 0.1, dtype),
                    Dispatch::float_abs(input([n], 4, 0.01, dtype)),
                )
            };
            let (p, g, m1, m2) = state();
            let ours = Dispatch::adam_step(p, g, m1, m2, step);
            let (p, g, m1, m2) = state();
            let reference = composed::adam_step::<Dispatch>(p, g, m1, m2, step);
            let tolerance = tolerance(dtype);
            assert_agrees("adam param", ours.0, reference.0, tolerance);
            assert_agrees("adam moment 1", ours.1, reference.1, tolerance);
            assert_agrees("adam moment 2", ours.2, reference.2, tolerance);
            assert_agrees("adam Σg²", ours.3, reference.3, 1e-5);
        }
    }
}

/// The fp32 accumulation of bf16 and fp32 parts.
#[test]
fn fp32_sums_are_the_composed_ops() {
    for dtype in DTYPES {
        let sum = || input([33, 65], 1, 3.0, FloatDType::F32);
        let part = || input([33, 65], 2, 1.0, dtype);
        assert_agrees(
            "accumulate_f32",
            Dispatch::accumulate_f32(sum(), part()),
            composed::accumulate_f32::<Dispatch>(sum(), part()),
            0.0,
        );
        assert_agrees(
            "widen_f32",
            Dispatch::widen_f32(part()),
            composed::to_f32::<Dispatch>(part()),
            0.0,
        );
    }
}
