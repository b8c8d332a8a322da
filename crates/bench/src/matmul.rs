//! A matmul micro-benchmark on the model's own shapes, fp32 against bf16, so that kernel speed
//! and whole-step speed can be told apart.

use std::time::Instant;

use brainfloat_gpt::ModelShape;
use burn::tensor::{Device, Distribution, FloatDType, Tensor};
use serde::{Deserialize, Serialize};

use crate::peak::Peak;
use crate::stats::Spread;

/// One product `[m, k] × [k, n]` of a training step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MatmulShape {
    /// Which layer and pass: `mlp.c_fc forward`, `lm_head grad-weight`.
    pub name: String,
    /// Rows of the left operand.
    pub m: usize,
    /// Inner dimension.
    pub k: usize,
    /// Columns of the right operand.
    pub n: usize,
}

impl MatmulShape {
    /// Floating-point operations of the product: `2·m·k·n` (a multiply and an add each).
    pub fn flops(&self) -> u64 {
        2 * (self.m * self.k * self.n) as u64
    }
}

/// The three products of each distinct linear layer of the model of `shape` over `tokens` rows
/// (one micro-batch): forward `x·Wᵀ`, grad-input `dy·W` and grad-weight `dyᵀ·x`.
pub fn model_matmul_shapes(shape: &ModelShape, tokens: usize) -> Vec<MatmulShape> {
    let layers = match shape {
        ModelShape::Record(gpt) => {
            let d = gpt.d_model;
            vec![
                ("attn.c_q/k/v/proj", d, d),
                ("mlp.c_fc", d, 4 * d),
                ("mlp.c_proj", 4 * d, d),
                ("lm_head", d, gpt.vocab_size),
            ]
        }
        ModelShape::Gpt2(gpt2) => {
            let (d, m) = (gpt2.d_model, gpt2.mlp_width());
            vec![
                ("attn.c_attn", d, 3 * d),
                ("attn.c_proj", d, d),
                ("mlp.c_fc", d, m),
                ("mlp.c_proj", m, d),
                ("lm_head (tied wte)", d, gpt2.vocab_size),
            ]
        }
    };
    let mut shapes = Vec::with_capacity(3 * layers.len());
    for (layer, fan_in, fan_out) in layers {
        let shape = |pass: &str, m, k, n| MatmulShape {
            name: format!("{layer} {pass}"),
            m,
            k,
            n,
        };
        shapes.push(shape("forward", tokens, fan_in, fan_out));
        shapes.push(shape("grad-input", tokens, fan_out, fan_in));
        shapes.push(shape("grad-weight", fan_out, tokens, fan_in));
    }
    shapes
}

/// One shape's speed in fp32 and bf16.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MatmulResult {
    /// The product.
    pub shape: MatmulShape,
    /// Median GFLOP/s with fp32 operands.
    pub fp32_gflops: f64,
    /// Median GFLOP/s with bf16 operands; `None` where the device has no bf16.
    pub bf16_gflops: Option<f64>,
}

impl MatmulResult {
    /// bf16 speed over fp32 speed.
    pub fn bf16_speedup(&self) -> Option<f64> {
        self.bf16_gflops.map(|bf16| bf16 / self.fp32_gflops)
    }
}

/// Median GFLOP/s of `shape` in `dtype` over `reps` timed runs after one untimed run, with the
/// device synchronised around each.
pub fn time_matmul(shape: &MatmulShape, dtype: FloatDType, reps: usize, device: &Device) -> f64 {
    let operand =
        |rows, cols| Tensor::<2>::random([rows, cols], Distribution::Default, device).cast(dtype);
    let (lhs, rhs) = (operand(shape.m, shape.k), operand(shape.k, shape.n));
    let mut seconds = Vec::with_capacity(reps);
    for rep in 0..=reps {
        sync(device);
        let started = Instant::now();
        // The op the model runs: brainfloat's bf16 GEMM on flex (and on libtorch's CPU without
        // native bf16), Burn's matmul elsewhere.
        let product = brainfloat_ops::matmul(lhs.clone(), rhs.clone());
        sync(device);
        if rep > 0 {
            seconds.push(started.elapsed().as_secs_f64());
        }
        drop(product);
    }
    let median = Spread::of(&seconds).map_or(f64::NAN, |s| s.median);
    shape.flops() as f64 / median.max(1e-12) / 1e9
}

/// Times every shape in fp32, then in bf16 (when `device` supports it), shape by shape so the
/// two dtypes of a shape are measured under the same load.
pub fn bench_matmuls(shapes: &[MatmulShape], reps: usize, device: &Device) -> Vec<MatmulResult> {
    let bf16 = device.supports_dtype(FloatDType::BF16);
    shapes
        .iter()
        .map(|shape| MatmulResult {
            shape: shape.clone(),
            fp32_gflops: time_matmul(shape, FloatDType::F32, reps, device),
            bf16_gflops: bf16.then(|| time_matmul(shape, FloatDType::BF16, reps, device)),
        })
        .collect()
}

/// Side of the square product whose best speed stands for a dtype's dense GEMM peak.
pub const PEAK_SIDE: usize = 2048;

/// The dense GEMM peak of `dtype` on `device`, measured: the fastest of 5 runs of a
/// [`PEAK_SIDE`]³ product through the op the model runs, so that utilisation is taken against
/// what this machine's matmuls in that dtype can reach (a step cannot beat it).
pub fn measured_peak(dtype: FloatDType, device: &Device) -> Peak {
    let shape = MatmulShape {
        name: "peak".into(),
        m: PEAK_SIDE,
        k: PEAK_SIDE,
        n: PEAK_SIDE,
    };
    let best = (0..5)
        .map(|_| time_matmul(&shape, dtype, 1, device))
        .fold(0.0, f64::max);
    Peak {
        gflops: best,
        source: format!(
            "measured: the fastest of 5 {PEAK_SIDE}³ {} products on this device",
            brainfloat_precision::dtype_name(dtype)
        ),
    }
}

/// Waits for the device's queued work (eager CPU backends have none).
pub(crate) fn sync(device: &Device) {
    // A failed sync means a failed kernel, which the next read of a result reports.
    let _ = device.sync();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_cover_each_linear_three_times_with_the_models_flops() {
        let gpt = brainfloat_gpt::GptConfig::tiny();
        let tokens = 128;
        let shapes = model_matmul_shapes(&ModelShape::Record(gpt.clone()), tokens);
        assert_eq!(shapes.len(), 12);
        // Per token, one forward product of each distinct layer is 2·fan_in·fan_out FLOPs; the
        // blocks hold 4 of the d×d kind and one each of the MLP kinds, so weighting the forward
        // shapes by layer count gives the model's 2·matmul_params per token.
        let counts = [4, 1, 1, 1];
        let forward: u64 = shapes
            .iter()
            .filter(|s| s.name.ends_with("forward"))
            .zip(counts)
            .map(|(s, count)| {
                let per_layer = if s.name.starts_with("lm_head") {
                    1
                } else {
                    gpt.n_layer
                };
                s.flops() * count * per_layer as u64
            })
            .sum();
        assert_eq!(forward, 2 * gpt.matmul_params() as u64 * tokens as u64);
        // The backward products of a layer cost what its forward does.
        for layer in shapes.chunks(3) {
            assert_eq!(layer[0].flops(), layer[1].flops());
            assert_eq!(layer[0].flops(), layer[2].flops());
        }
        let head = &shapes[9];
        assert_eq!(
            (head.m, head.k, head.n),
            (tokens, gpt.d_model, gpt.vocab_size)
        );
    }

    #[test]
    fn gpt2s_shapes_add_up_to_its_matmul_flops() {
        let gpt2 = brainfloat_gpt::Gpt2Config::new(96, 3, 2, 16, 8).with_d_mlp(Some(40));
        let tokens = 32;
        let shapes = model_matmul_shapes(&ModelShape::Gpt2(gpt2.clone()), tokens);
        let forward: u64 = shapes
            .iter()
            .filter(|s| s.name.ends_with("forward"))
            .map(|s| {
                let layers = if s.name.starts_with("lm_head") {
                    1
                } else {
                    gpt2.n_layer
                };
                s.flops() * layers as u64
            })
            .sum();
        assert_eq!(forward, 2 * gpt2.matmul_params() as u64 * tokens as u64);
    }

    #[test]
    fn a_timed_product_reports_finite_speed_in_both_dtypes() {
        let device = brainfloat_test_support::test_device();
        let shape = MatmulShape {
            name: "square".into(),
            m: 64,
            k: 64,
            n: 64,
        };
        let results = bench_matmuls(&[shape], 2, &device);
        assert!(results[0].fp32_gflops.is_finite() && results[0].fp32_gflops > 0.0);
        assert!(results[0].bf16_speedup().is_some_and(f64::is_finite));
    }
}
