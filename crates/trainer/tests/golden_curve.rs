//! The record's recipe from the golden weights reproduces the PyTorch reference's six-step
//! training curve (its `train_note`: 2 micro-steps per step, gradients divided by 2, Muon and
//! Adam with the record's rates, LR multipliers 1, 1, 1, 1, 2/3, 1/3), both with the optimizer
//! alone and through the whole `Trainer` (config, loader, accumulation, `--init` weights).

mod common;

use brainfloat_gpt::{Batch, LanguageModel};
use brainfloat_precision::{PrecisionPolicy, Preset};
use brainfloat_tests::*;
use brainfloat_trainer::{RecordOptimizer, RecordOptimizerConfig, Schedule, Start, Trainer};
use burn::optim::{GradientsAccumulator, GradientsParams};

#[test]
fn six_steps_from_the_golden_weights_follow_pytorch() {
    let tokens = golden_tokens();
    let schedule = Schedule::trapezoid(6, 0, 3);
    let grad_accum_steps = 2;
    // Measured: fp32 ≤ 1.4e-7; bf16 ≤ 5.5e-4 on flex and libtorch (the forward pass is
    // PyTorch's bit for bit; the backward's sums and Muon's Newton–Schulz, which amplifies
    // rounding, are not).
    for (preset, tolerance) in CURVE_TOLERANCES {
        let policy = PrecisionPolicy::preset(preset);
        let (mut model, device) = golden_model(&policy);
        let mut optimizer = RecordOptimizer::new(RecordOptimizerConfig {
            ns_dtype: policy.matmul(),
            ..RecordOptimizerConfig::default()
        });
        let mut start = 0;
        let mut curve = Vec::new();
        for step in 0..schedule.total_steps {
            let mut accumulator = GradientsAccumulator::new();
            let mut last_loss = 0.0;
            for _ in 0..grad_accum_steps {
                let batch = Batch::from_window(&tokens[start..start + 65], 2, 32, &device).unwrap();
                start += 64;
                let loss = model.forward(&batch, &model.cache(&device)).unwrap();
                last_loss = scalar(loss.clone());
                accumulator
                    .accumulate(&model, GradientsParams::from_grads(loss.backward(), &model));
            }
            curve.push(last_loss);
            model = optimizer.step(
                model,
                accumulator.grads(),
                1.0 / grad_accum_steps as f64,
                schedule.multiplier(step),
                step,
            );
        }
        assert_follows_pytorch(preset, &curve, tolerance);
    }
}

/// `curve` within `tolerance` of PyTorch's at every step; in bf16 also nearer PyTorch's bf16
/// curve than PyTorch's own fp32 curve lies (at its worst step and on average: measured
/// 5.3e-4 and 2.0e-4 on flex, 5.5e-4 and 1.9e-4 on libtorch, against 1.3e-3 and 4.2e-4),
/// which an fp32 computation (on PyTorch's fp32 curve within 1e-7) cannot be.
fn assert_follows_pytorch(preset: Preset, curve: &[f64], tolerance: f64) {
    let want = expected_curve(preset);
    for (step, (got, want)) in curve.iter().zip(&want).enumerate() {
        println!(
            "{preset} step {step}: {got:.6} vs PyTorch {want:.6} (rel {:.1e})",
            rel(*got, *want)
        );
    }
    for (step, (got, want)) in curve.iter().zip(&want).enumerate() {
        assert!(
            rel(*got, *want) <= tolerance,
            "{preset} step {step}: {got} vs {want}"
        );
    }
    if preset == Preset::Bf16 {
        let ours = distance(curve, &want);
        let pytorch_fp32 = distance(&expected_curve(Preset::Fp32), &want);
        println!(
            "bf16: from PyTorch's bf16 curve {:.2e} at worst, {:.2e} on average; PyTorch's fp32 \
             curve {:.2e}, {:.2e}",
            ours.0, ours.1, pytorch_fp32.0, pytorch_fp32.1
        );
        assert!(
            ours.0 < pytorch_fp32.0 && ours.1 < pytorch_fp32.1,
            "the bf16 curve is no nearer PyTorch's bf16 curve ({ours:?}) than PyTorch's fp32 \
             curve is ({pytorch_fp32:?}): does it compute in fp32?"
        );
    }
}

/// The relative distance of `curve` from `reference`: at the worst step, and on average.
fn distance(curve: &[f64], reference: &[f64]) -> (f64, f64) {
    let rel: Vec<f64> = curve
        .iter()
        .zip(reference)
        .map(|(a, b)| rel(*a, *b))
        .collect();
    let worst = rel.iter().cloned().fold(0.0, f64::max);
    (worst, rel.iter().sum::<f64>() / rel.len() as f64)
}

/// Relative agreement with PyTorch's curve, a few times what was measured (fp32 ≤ 1.4e-7; bf16
/// ≤ 5.5e-4).
const CURVE_TOLERANCES: [(Preset, f64); 2] = [(Preset::Fp32, 1e-6), (Preset::Bf16, 2e-3)];

fn expected_curve(preset: Preset) -> Vec<f64> {
    golden_expected()["train_curve"][preset.name()]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect()
}

#[test]
fn the_trainer_from_the_golden_weights_follows_pytorch() {
    for (preset, tolerance) in CURVE_TOLERANCES {
        let dir = tempfile::tempdir().unwrap();
        // 2 micro-steps of 2 sequences of 32 tokens, windows read sequentially from token 0.
        let config = common::config(
            dir.path(),
            preset.name(),
            &["train.grad_accum_steps=2", "model.size=tiny"],
        );
        let weights = golden_dir().join("init.safetensors");
        let mut trainer = Trainer::builder(config)
            .start(Start::Init(weights))
            .build(&brainfloat_test_support::test_device())
            .unwrap();
        let curve: Vec<f64> = (0..6)
            .map(|_| trainer.train_step().unwrap().last_micro_loss)
            .collect();
        assert_follows_pytorch(preset, &curve, tolerance);
    }
}
