//! The bf16 pipeline's validation, as a user runs it before a long run: train briefly in fp32
//! and bf16 from the same init and data, check both learn and agree within bf16 tolerance, check
//! every dtype of a real bf16 step against the recipe, and round-trip a checkpoint.

use std::collections::HashSet;

use brainfloat_data::shard_paths;
use brainfloat_gpt::LanguageModel;
use brainfloat_precision::{Component, PrecisionPolicy, named_grads, named_params};
use brainfloat_trainer::{
    RecordOptimizer, TrainConfig, TrainError, Trainer, TrainerBuilder, init_model, load_checkpoint,
    validation_loss,
};
use burn::tensor::{DType, Device};
use serde::{Deserialize, Serialize};

use crate::short_run::{first_batch, short_run_config};

/// Relative difference of the fp32 and bf16 validation losses that still counts as agreement.
pub const BF16_TOLERANCE: f64 = 1e-2;

/// Fraction by which the validation loss must fall for a run to count as learning.
pub const MIN_IMPROVEMENT: f64 = 0.1;

/// One line of the pass/fail table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    /// What was checked.
    pub name: String,
    /// Whether it held.
    pub passed: bool,
    /// The numbers behind it.
    pub detail: String,
}

impl Check {
    fn new(name: &str, passed: bool, detail: String) -> Self {
        Self {
            name: name.into(),
            passed,
            detail,
        }
    }
}

/// The checks as a table.
pub fn format_checks(checks: &[Check]) -> String {
    let width = checks.iter().map(|c| c.name.len()).max().unwrap_or(5);
    let mut table = format!("{:<width$}  result  detail\n", "check");
    for c in checks {
        let result = if c.passed { "PASS" } else { "FAIL" };
        table.push_str(&format!("{:<width$}  {result:<6}  {}\n", c.name, c.detail));
    }
    table
}

/// A brief run of one preset: its trainer after `steps` and its validation loss before and after.
struct BriefRun<M: LanguageModel> {
    trainer: Trainer<M>,
    initial_val: f64,
    final_val: f64,
}

fn brief_run<M: LanguageModel>(
    config: &TrainConfig,
    precision: PrecisionPolicy,
    device: &Device,
) -> Result<BriefRun<M>, TrainError> {
    let mut config = config.clone();
    config.train.precision = precision;
    config.output.dir = config.output.dir.join(precision.to_string());
    let mut trainer = TrainerBuilder::<M>::new(config).build(device)?;
    let initial_val = trainer.evaluate()?.val_loss;
    tracing::info!(%precision, initial_val, "training briefly");
    while trainer.step() < trainer.config().train.steps {
        trainer.train_step()?;
    }
    let final_val = trainer.evaluate()?.val_loss;
    Ok(BriefRun {
        trainer,
        initial_val,
        final_val,
    })
}

/// Runs every check on `config`'s model and data for `steps` steps; the run's files go under
/// `<output.dir>/validate`.
pub fn validate_pipeline<M: LanguageModel>(
    config: &TrainConfig,
    device: &Device,
    steps: usize,
) -> Result<Vec<Check>, TrainError> {
    let config = short_run_config(config, steps.max(1), "validate");

    let fp32 = brief_run::<M>(&config, PrecisionPolicy::fp32(), device)?;
    let mut bf16 = brief_run::<M>(&config, PrecisionPolicy::bf16(), device)?;
    let mut checks = Vec::new();
    for (name, run) in [("fp32 learns", &fp32), ("bf16 learns", &bf16)] {
        let fall = 1.0 - run.final_val / run.initial_val;
        checks.push(Check::new(
            name,
            run.final_val.is_finite() && fall >= MIN_IMPROVEMENT,
            format!(
                "val loss {:.4} → {:.4} in {steps} steps ({:.1}% lower; needs {:.0}%)",
                run.initial_val,
                run.final_val,
                100.0 * fall,
                100.0 * MIN_IMPROVEMENT
            ),
        ));
    }
    let same_init = relative(bf16.initial_val, fp32.initial_val);
    checks.push(Check::new(
        "same init and data",
        same_init < BF16_TOLERANCE,
        format!(
            "val loss at step 0: fp32 {:.4}, bf16 {:.4} (rel. diff {same_init:.1e})",
            fp32.initial_val, bf16.initial_val
        ),
    ));
    let agreement = relative(bf16.final_val, fp32.final_val);
    checks.push(Check::new(
        "bf16 agrees with fp32",
        agreement < BF16_TOLERANCE,
        format!(
            "val loss after {steps} steps: fp32 {:.4}, bf16 {:.4} (rel. diff {agreement:.1e}, \
             tolerance {BF16_TOLERANCE:.0e})",
            fp32.final_val, bf16.final_val
        ),
    ));
    checks.extend(dtype_checks(&bf16.trainer)?);
    checks.push(checkpoint_round_trip(&mut bf16.trainer, device)?);
    Ok(checks)
}

/// "`name` is `dtype`" for each of `named` whose dtype is not `want`.
fn not_in(want: DType, named: Vec<(String, DType)>) -> Vec<String> {
    named
        .into_iter()
        .filter(|(_, dtype)| *dtype != want)
        .map(|(name, dtype)| format!("{name} is {dtype:?}"))
        .collect()
}

fn relative(value: f64, reference: f64) -> f64 {
    ((value - reference) / reference).abs()
}

/// The recipe's dtypes during a real training step of a bf16 run: CastedLinear master weights,
/// their gradients and their optimizer state fp32; activations bf16; logits and loss fp32.
fn dtype_checks<M: LanguageModel>(trainer: &Trainer<M>) -> Result<Vec<Check>, TrainError> {
    let model = trainer.model();
    let batch = first_batch(trainer, &trainer.config().data.train)?;

    let linear: Vec<_> = named_params(model)
        .into_iter()
        .filter(|p| p.component == Component::Linear)
        .collect();
    let linear_names: HashSet<&str> = linear.iter().map(|p| p.name.as_str()).collect();
    let not_fp32 = |named: Vec<(String, DType)>| not_in(DType::F32, named);
    let weights = not_fp32(
        linear
            .iter()
            .map(|p| (p.name.clone(), p.tensor.dtype()))
            .collect(),
    );

    let cache = model.cache(&batch.inputs().device());
    let (hidden, boundaries) = model.hidden_states(batch.inputs().clone(), &cache)?;
    let mut activations: Vec<(String, DType)> = boundaries
        .iter()
        .enumerate()
        .map(|(i, x)| (format!("block {i} output"), x.dtype()))
        .collect();
    activations.push(("final hidden state".into(), hidden.dtype()));
    let logits = model.logits(&batch, &cache)?.dtype();
    let loss = model.forward(&batch, &cache)?;
    let loss_dtype = loss.dtype();
    let grads = named_grads(model, &loss.backward());
    let linear_grads: Vec<_> = grads
        .iter()
        .filter(|g| linear_names.contains(g.name.as_str()))
        .map(|g| (g.name.clone(), g.tensor.dtype()))
        .collect();
    let grad_count = linear_grads.len();
    let gradients = not_fp32(linear_grads);
    let state: Vec<_> = trainer
        .optimizer()
        .state()
        .0
        .into_iter()
        .filter(|(name, _)| linear_names.contains(name.rsplit_once('.').map_or("", |(p, _)| p)))
        .map(|(name, tensor)| (name, tensor.dtype()))
        .collect();
    let state_count = state.len();
    let optimizer = not_fp32(state);
    let activation_count = activations.len();
    let not_bf16 = not_in(DType::BF16, activations);
    let verdict = |problems: &[String], ok: String| {
        if problems.is_empty() {
            ok
        } else {
            problems.join("; ")
        }
    };
    Ok(vec![
        Check::new(
            "CastedLinear weights fp32",
            weights.is_empty() && !linear.is_empty(),
            verdict(
                &weights,
                format!("{} master weights, all fp32", linear.len()),
            ),
        ),
        Check::new(
            "CastedLinear gradients fp32",
            gradients.is_empty() && grad_count == linear.len(),
            verdict(&gradients, format!("{grad_count} gradients, all fp32")),
        ),
        Check::new(
            "CastedLinear optimizer state fp32",
            optimizer.is_empty() && state_count >= linear.len(),
            verdict(&optimizer, format!("{state_count} state tensors, all fp32")),
        ),
        Check::new(
            "activations bf16",
            not_bf16.is_empty(),
            verdict(
                &not_bf16,
                format!("{activation_count} activations, all bf16"),
            ),
        ),
        Check::new(
            "logits and loss fp32",
            logits == DType::F32 && loss_dtype == DType::F32,
            format!("logits {logits:?}, loss {loss_dtype:?}"),
        ),
    ])
}

/// Writes a checkpoint of `trainer`, loads it into a differently initialised model and a fresh
/// optimizer, and compares every weight and state tensor bit for bit, and the validation loss.
fn checkpoint_round_trip<M: LanguageModel>(
    trainer: &mut Trainer<M>,
    device: &Device,
) -> Result<Check, TrainError> {
    let path = trainer.checkpoint()?;
    let config = trainer.config().clone();
    let other: M = init_model(&config, device, config.train.seed.wrapping_add(1))?;
    let fresh = RecordOptimizer::new(Default::default());
    let restored = load_checkpoint(&path, other, fresh, device)?;
    let bits = |t: &burn::tensor::Tensor<1>| t.to_data().as_bytes().to_vec();
    let pairs = named_params(trainer.model())
        .into_iter()
        .zip(named_params(&restored.model));
    let mut differing: Vec<String> = pairs
        .filter(|(a, b)| a.name != b.name || bits(&a.tensor) != bits(&b.tensor))
        .map(|(a, _)| a.name)
        .collect();
    let (saved, _) = trainer.optimizer().state();
    let (loaded, _) = restored.optimizer.state();
    if saved.len() != loaded.len() {
        differing.push(format!(
            "{} state tensors saved, {} loaded",
            saved.len(),
            loaded.len()
        ));
    }
    differing.extend(
        saved
            .iter()
            .zip(&loaded)
            .filter(|(a, b)| a.0 != b.0 || bits(&a.1) != bits(&b.1))
            .map(|(a, _)| a.0.clone()),
    );
    let val_paths = shard_paths(&config.data.val)?;
    let (restored_val, _) = validation_loss(&restored.model, &config, val_paths.clone(), device)?;
    let (trained_val, _) = validation_loss(&trainer.model().valid(), &config, val_paths, device)?;
    let passed = differing.is_empty()
        && restored_val == trained_val
        && restored.record.step == trainer.step();
    let detail = if differing.is_empty() {
        format!(
            "{} at step {}: weights and optimizer state bit-identical, val loss {restored_val:.6} \
             both",
            path.display(),
            restored.record.step
        )
    } else {
        format!("differs after reload: {}", differing.join(", "))
    };
    Ok(Check::new("checkpoint round-trip", passed, detail))
}
