//! The precision flow of the record's GPT under each preset: the dtype of every parameter,
//! activation, loss and gradient (asserted against the design's table), bf16 against fp32, and
//! training steps that learn.

use brainfloat_gpt::{Batch, GptConfig, LanguageModel, ModelSize};
use brainfloat_precision::{
    Component, NamedTensor, PrecisionPolicy, PrecisionReport, Preset, apply_policy, named_grads,
    named_params,
};
use brainfloat_tests::*;
use brainfloat_trainer::{RecordOptimizer, RecordOptimizerConfig};
use burn::optim::GradientsParams;
use burn::tensor::{DType, Device};

/// The design's table: storage dtype of each parameter component under each preset.
fn expected_storage(preset: Preset, component: Component) -> DType {
    use Component::*;
    match (preset, component) {
        (Preset::Bf16Pure | Preset::Bf16Sr | Preset::Bf16Kahan, _) => DType::BF16,
        (Preset::Bf16, Embedding | Scalars | Other) => DType::BF16,
        _ => DType::F32,
    }
}

/// Asserts that every tensor (parameters or their gradients) has its storage dtype under `preset`.
fn assert_storage_dtypes(preset: Preset, tensors: &[NamedTensor], what: &str) {
    for t in tensors {
        let want = expected_storage(preset, t.component);
        assert_eq!(t.tensor.dtype(), want, "{preset}: {what} of {}", t.name);
    }
}

/// The design's table: activation dtype under each preset.
fn expected_activation(preset: Preset) -> DType {
    match preset {
        Preset::Bf16 | Preset::Bf16Pure | Preset::Bf16Sr | Preset::Bf16Kahan => DType::BF16,
        Preset::Fp32 | Preset::Autocast => DType::F32,
    }
}

#[test]
fn every_dtype_follows_the_design_table() {
    for preset in Preset::ALL {
        let (model, device) = golden_model(&PrecisionPolicy::preset(preset));
        let params = named_params(&model);
        assert_eq!(params.len(), 18);
        assert_storage_dtypes(preset, &params, "parameter");
        // CastedLinear master weights are fp32 in the record's presets (its bf16 goes to
        // embedding and scalars only) and bf16 in the pure ones.
        let linear = params.iter().filter(|p| p.component == Component::Linear);
        assert_eq!(linear.count(), 2 * 6 + 1);

        let batch = golden_batch(0, &device);
        let cache = model.cache(&device);
        let (hidden, boundaries) = model.hidden_states(batch.inputs().clone(), &cache).unwrap();
        assert_eq!(boundaries.len(), 2);
        for (i, x) in boundaries.iter().enumerate() {
            assert_eq!(
                x.dtype(),
                expected_activation(preset),
                "{preset}: block {i}"
            );
        }
        assert_eq!(hidden.dtype(), expected_activation(preset), "{preset}");
        assert_eq!(model.logits(&batch, &cache).unwrap().dtype(), DType::F32);

        let loss = model.forward(&batch, &cache).unwrap();
        assert_eq!(loss.dtype(), DType::F32, "{preset}: loss");
        let grads = named_grads(&model, &loss.backward());
        assert_eq!(
            grads.len(),
            params.len(),
            "{preset}: every parameter has a gradient"
        );
        // A gradient has its parameter's storage dtype: fp32 for master weights.
        assert_storage_dtypes(preset, &grads, "gradient");
    }
}

#[test]
fn overrides_change_one_component() {
    let policy: PrecisionPolicy = "bf16,embedding=fp32".parse().unwrap();
    let (model, _) = golden_model(&policy);
    for p in named_params(&model) {
        let want = match p.component {
            Component::Embedding | Component::Linear => DType::F32,
            _ => DType::BF16,
        };
        assert_eq!(p.tensor.dtype(), want, "{}", p.name);
    }
}

#[test]
fn report_counts_bytes_per_dtype_per_component() {
    let (model, _) = golden_model(&PrecisionPolicy::bf16());
    let report = PrecisionReport::of(&model);
    println!("{report}");
    let (v, c, layers) = (512, 64, 2);
    let linear_elements = layers * 12 * c * c + v * c;
    let row = |component, dtype| report.rows[&(component, dtype)];
    assert_eq!(row(Component::Linear, "fp32").elements, linear_elements);
    assert_eq!(row(Component::Linear, "fp32").bytes, 4 * linear_elements);
    assert_eq!(row(Component::Embedding, "bf16").bytes, 2 * v * c);
    assert_eq!(row(Component::Scalars, "bf16").elements, layers * 3);
    assert_eq!(row(Component::Scalars, "bf16").tensors, layers * 2);
    assert_eq!(report.rows.len(), 3);
    assert_eq!(
        report.total_bytes(),
        4 * linear_elements + 2 * (v * c + layers * 3)
    );
    // The fp32 model of the same shape is larger by exactly the bf16 savings.
    let (fp32, _) = golden_model(&PrecisionPolicy::fp32());
    assert_eq!(
        PrecisionReport::of(&fp32).total_bytes() - report.total_bytes(),
        2 * (v * c + layers * 3)
    );
}

#[test]
fn bf16_agrees_with_fp32_within_bf16_tolerance() {
    let loss_and_grads = |policy: PrecisionPolicy| {
        let (model, device) = golden_model(&policy);
        let loss = model
            .forward(&golden_batch(0, &device), &model.cache(&device))
            .unwrap();
        let value = scalar(loss.clone());
        let grads = named_grads(&model, &loss.backward());
        let flat: Vec<f64> = grads.into_iter().flat_map(|g| values(g.tensor)).collect();
        (value, flat)
    };
    let (loss32, grad32) = loss_and_grads(PrecisionPolicy::fp32());
    for policy in [PrecisionPolicy::bf16(), PrecisionPolicy::autocast()] {
        let (loss16, grad16) = loss_and_grads(policy);
        let dot: f64 = grad32.iter().zip(&grad16).map(|(a, b)| a * b).sum();
        let norm = |g: &[f64]| g.iter().map(|x| x * x).sum::<f64>().sqrt();
        let cosine = dot / (norm(&grad32) * norm(&grad16));
        println!(
            "{policy}: loss {loss16:.6} vs fp32 {loss32:.6} (rel {:.2e}), grad cosine {cosine:.6}",
            rel(loss16, loss32)
        );
        // Measured: loss 1.2e-4 (bf16), 4.5e-5 (autocast); cosine 0.999915, 0.999954.
        assert!(
            rel(loss16, loss32) <= 5e-4,
            "{policy}: {loss16} vs {loss32}"
        );
        assert!(cosine >= 0.9995, "{policy}: gradient cosine {cosine}");
        // And not closer than bf16 allows: an fp32 path agrees to ~1e-7 in both.
        assert!(
            rel(loss16, loss32) >= 1e-6 && cosine <= 1.0 - 1e-6,
            "{policy}: as close to fp32 as fp32 itself (loss rel {:e}, cosine {cosine}): \
             does it compute in bf16?",
            rel(loss16, loss32)
        );
    }
}

/// The record's optimizers (Muon for the block matrices, Adam for the rest, the policy's
/// rounding of every update) train every preset.
#[test]
fn a_few_steps_of_the_records_optimizers_lower_the_loss_in_every_preset() {
    for preset in Preset::ALL {
        let policy = PrecisionPolicy::preset(preset);
        let (mut model, device) = golden_model(&policy);
        let batch = golden_batch(0, &device);
        let mut optimizer = RecordOptimizer::new(RecordOptimizerConfig {
            ns_dtype: policy.matmul(),
            rounding: policy.update_rounding(),
            ..RecordOptimizerConfig::default()
        });
        let mut losses = Vec::new();
        let cache = model.cache(&device);
        for step in 0..5 {
            let loss = model.forward(&batch, &cache).unwrap();
            losses.push(scalar(loss.clone()));
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optimizer.step(model, grads, 1.0, 1.0, step);
        }
        println!("{preset}: {losses:.4?}");
        for pair in losses.windows(2) {
            assert!(pair[1] < pair[0], "{preset}: loss went up: {losses:?}");
        }
        assert!(losses[4] < losses[0] - 0.1, "{preset}: {losses:?}");
        // The update kept every parameter in its storage dtype.
        assert_storage_dtypes(preset, &named_params(&model), "updated parameter");
    }
}

#[test]
fn invalid_inputs_say_what_is_wrong() {
    let message = |err: &dyn std::fmt::Display| err.to_string();

    let err = "bf15".parse::<PrecisionPolicy>().unwrap_err();
    assert_eq!(
        message(&err),
        "unknown precision preset `bf15` (valid: fp32, autocast, bf16, bf16-pure, bf16-sr, \
         bf16-kahan)"
    );

    // ndarray has no bf16: the policy is refused before any tensor is touched. (ndarray is
    // deprecated upstream; it is here only as a real device without bf16.)
    #[allow(deprecated)]
    let cpu = Device::ndarray();
    let model = GptConfig::tiny().init(&cpu).unwrap();
    let err = apply_policy(model, &PrecisionPolicy::bf16(), &cpu).unwrap_err();
    assert!(message(&err).contains("needs bf16, which device"), "{err}");
    let model = GptConfig::tiny().init(&cpu).unwrap();
    assert!(apply_policy(model, &PrecisionPolicy::fp32(), &cpu).is_ok());

    let device = brainfloat_test_support::test_device();
    let model = GptConfig::tiny().init(&device).unwrap();
    let window: Vec<u32> = (0..2 * 8 + 1)
        .map(|i| if i == 5 { 512 } else { i })
        .collect();
    let batch = Batch::from_window(&window, 2, 8, &device).unwrap();
    let cache = model.cache(&device);
    let err = model.forward(&batch, &cache).unwrap_err();
    assert_eq!(
        message(&err),
        "invalid batch: token id 512 is outside the model's vocabulary of 512 (ids 0..511)"
    );

    let window: Vec<u32> = vec![1; 65 + 1];
    let batch = Batch::from_window(&window, 1, 65, &device).unwrap();
    let err = model.forward(&batch, &cache).unwrap_err();
    assert_eq!(
        message(&err),
        "invalid batch: sequence length 65 exceeds the model's maximum of 64"
    );

    // A cache built before the policy holds fp32 tables; the bf16 model refuses it.
    let bf16 = apply_policy(model, &PrecisionPolicy::bf16(), &device).unwrap();
    let batch = Batch::from_window(&[1u32; 17], 2, 8, &device).unwrap();
    let err = bf16.forward(&batch, &cache).unwrap_err();
    assert!(
        message(&err).contains("the cache was built for F32")
            && message(&err).contains("runs in BF16"),
        "{err}"
    );
    assert!(bf16.forward(&batch, &bf16.cache(&device)).is_ok());

    let err = Batch::from_window(&[1u32; 10], 2, 8, &device).unwrap_err();
    assert!(message(&err).contains("holds 17 tokens, got 10"), "{err}");

    let err = "huge".parse::<ModelSize>().unwrap_err();
    assert!(message(&err).contains("tiny, small, speedrun"), "{err}");
    let err = GptConfig::new(512, 2, 3, 64, 32).init(&device).unwrap_err();
    assert!(message(&err).contains("not divisible by n_head 3"), "{err}");
}
