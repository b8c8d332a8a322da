//! The benchmark run: the same model, data and seed under each preset, built and warmed up one
//! after the other, then timed with the presets interleaved step by step.

use brainfloat_backend::{Backend, MemoryMeasure};
use brainfloat_gpt::LanguageModel;
use brainfloat_memory as memory;
use brainfloat_precision::PrecisionPolicy;
use brainfloat_trainer::{
    AttentionState, ConfigError, MemoryEstimate, TrainConfig, TrainError, Trainer, TrainerBuilder,
};
use burn::tensor::{Device, FloatDType};

use crate::distribution::measure_distribution;
use crate::matmul::{bench_matmuls, model_matmul_shapes, sync};
use crate::peak::Peak;
use crate::report::{BenchReport, MemoryResult, ModelInfo, PresetResult};
use crate::short_run::{first_batch, short_run_config};
use crate::stats::Spread;

/// What to measure and how.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Precision policies to compare, in order.
    pub presets: Vec<PrecisionPolicy>,
    /// The preset ratios are taken against (the seed's baseline is `autocast`).
    pub baseline: PrecisionPolicy,
    /// Untimed steps per preset before timing (at least 1: the optimizer state is made then).
    pub warmup_steps: usize,
    /// Timed steps per preset.
    pub steps: usize,
    /// Timed runs of each matmul shape and dtype.
    pub matmul_reps: usize,
    /// The peak behind MFU of presets whose matmuls run in fp32.
    pub peak: Peak,
    /// The peak behind MFU of presets whose matmuls run in bf16; `peak` when `None`.
    pub bf16_peak: Option<Peak>,
    /// The backend `device` belongs to: the report names it, and its memory measure picks the
    /// peak-memory figure.
    pub backend: Backend,
    /// The machine in words, for the report.
    pub machine: String,
    /// The command line, for the report.
    pub command: String,
}

impl BenchOptions {
    /// The peak that MFU of matmuls in `dtype` is measured against.
    pub fn peak_for(&self, dtype: FloatDType) -> &Peak {
        match (dtype, &self.bf16_peak) {
            (FloatDType::BF16, Some(peak)) => peak,
            _ => &self.peak,
        }
    }
}

/// One preset while the benchmark runs.
struct Contender<M: LanguageModel> {
    trainer: Trainer<M>,
    step_ms: Vec<f64>,
    losses: Vec<f64>,
    resident: Option<u64>,
    peak: Option<u64>,
    step_extra: u64,
    rss_growth: Option<u64>,
    device_reserved: Option<u64>,
    /// The memory check's estimate of the preset's peak.
    estimate: MemoryEstimate,
}

/// Runs the benchmark of `config` on `device` (not an autodiff device) with the model type `M`
/// (the config's architecture's: [`ModelShape::dispatch`](brainfloat_gpt::ModelShape::dispatch)).
pub fn run_bench<M: LanguageModel>(
    config: &TrainConfig,
    device: &Device,
    options: &BenchOptions,
) -> Result<BenchReport, TrainError> {
    if options.steps == 0 || options.presets.is_empty() {
        return Err(TrainError::Config(ConfigError {
            key: "bench".into(),
            problem: "needs at least one preset and one timed step".into(),
        }));
    }
    let warmup = options.warmup_steps.max(1);
    let config = short_run_config(config, warmup + options.steps, "bench");
    let mut contenders = Vec::with_capacity(options.presets.len());
    for preset in &options.presets {
        tracing::info!(preset = %preset, warmup, "building and warming up");
        contenders.push(warm_up::<M>(
            &config,
            *preset,
            device,
            options.backend,
            warmup,
        )?);
    }
    for round in 0..options.steps {
        if round % 5 == 0 {
            tracing::info!(round, of = options.steps, "timing");
        }
        for offset in 0..contenders.len() {
            let index = (round + offset) % contenders.len();
            timed_step(&mut contenders[index], device)?;
        }
    }

    let shape = config.shape();
    let model = ModelInfo {
        arch: shape.arch(),
        size: config.model.size,
        params: shape.num_params(),
        vocab_size: shape.vocab_size(),
        tokens_per_step: config.tokens_per_step(),
        seq_len: config.train.seq_len,
        flops_per_token: shape.training_flops_per_token(config.train.seq_len),
    };
    let mut presets = Vec::with_capacity(contenders.len());
    for (preset, contender) in options.presets.iter().zip(contenders) {
        tracing::info!(preset = %preset, "evaluating");
        presets.push(finish(*preset, contender, &model, options, device)?);
    }
    tracing::info!("matmul micro-benchmark");
    let shapes = model_matmul_shapes(shape, config.micro_batch_size() * config.train.seq_len);
    let mut report = BenchReport {
        command: options.command.clone(),
        backend: options.backend.to_string(),
        machine: options.machine.clone(),
        model,
        warmup_steps: warmup,
        timed_steps: options.steps,
        baseline: options.baseline,
        peak: options.peak.clone(),
        bf16_peak: options.bf16_peak.clone(),
        presets,
        matmuls: bench_matmuls(&shapes, options.matmul_reps, device),
        figures: Vec::new(),
    };
    report.compute_ratios();
    Ok(report)
}

/// Builds `preset`'s trainer and runs its warm-up steps, measuring the heap it keeps.
fn warm_up<M: LanguageModel>(
    config: &TrainConfig,
    preset: PrecisionPolicy,
    device: &Device,
    backend: Backend,
    steps: usize,
) -> Result<Contender<M>, TrainError> {
    let mut config = config.clone();
    config.train.precision = preset;
    let estimate = MemoryEstimate::training(
        &config,
        AttentionState::of(backend, config.train.precision.activation()),
    );
    // The presets' trainers live side by side: one output folder each (each claims its own).
    config.output.dir = config.output.dir.join(preset.to_string());
    // Memory is measured with freed blocks handed back, so that the resident set is what is
    // live; the timed steps run with the process's own setting.
    let retaining = memory::retaining_freed_memory();
    memory::retain_freed_memory(false);
    memory::release_free_memory();
    memory::reset_heap_peak();
    let rss_reset = memory::reset_rss_peak();
    let (heap_before, rss_before) = (memory::heap(), memory::rss());
    // The GPU memory libtorch's caching allocator holds only grows: its growth over the build
    // and warm-up is the preset's peak.
    let gpu_memory = || match backend.memory_measure() {
        MemoryMeasure::ProcessGpuMemory => brainfloat_backend::process_gpu_memory(),
        _ => None,
    };
    let gpu_before = gpu_memory();
    let mut trainer = TrainerBuilder::<M>::new(config).build(device)?;
    let mut losses = Vec::new();
    for _ in 0..steps {
        losses.push(trainer.train_step()?.loss);
    }
    sync(device);
    let heap_after = memory::heap();
    let growth = |after: usize, before: usize| after.saturating_sub(before) as u64;
    let (resident, peak) = match (heap_before, heap_after) {
        (Some(b), Some(a)) => (
            Some(growth(a.current, b.current)),
            Some(growth(a.peak, b.current)),
        ),
        _ => (None, None),
    };
    let gpu_growth = match (gpu_before, gpu_memory()) {
        (Some(before), Some(after)) => Some(after.saturating_sub(before)),
        _ => None,
    };
    let rss_growth = match (rss_before, memory::rss()) {
        (Some(b), Some(a)) if rss_reset => Some(growth(a.peak, b.current)),
        _ => None,
    };
    memory::retain_freed_memory(retaining);
    Ok(Contender {
        trainer,
        step_ms: Vec::new(),
        losses,
        resident,
        peak,
        step_extra: 0,
        rss_growth,
        device_reserved: gpu_growth,
        estimate,
    })
}

/// One timed step of a contender, with the heap it adds on top of what it keeps.
fn timed_step<M: LanguageModel>(
    contender: &mut Contender<M>,
    device: &Device,
) -> Result<(), TrainError> {
    sync(device);
    memory::reset_heap_peak();
    let before = memory::heap();
    let stats = contender.trainer.train_step()?;
    sync(device);
    if let (Some(b), Some(a)) = (before, memory::heap()) {
        contender.step_extra = contender
            .step_extra
            .max(a.peak.saturating_sub(b.current) as u64);
    }
    if let Some(usage) = device.memory_pool_usage() {
        let reserved = contender
            .device_reserved
            .unwrap_or(0)
            .max(usage.bytes_reserved);
        contender.device_reserved = Some(reserved);
    }
    contender.step_ms.push(stats.step_time.as_secs_f64() * 1e3);
    contender.losses.push(stats.loss);
    Ok(())
}

/// Validation loss, memory distribution and the derived figures of one contender.
fn finish<M: LanguageModel>(
    preset: PrecisionPolicy,
    mut contender: Contender<M>,
    model: &ModelInfo,
    options: &BenchOptions,
    device: &Device,
) -> Result<PresetResult, TrainError> {
    let val_loss = contender.trainer.evaluate()?.val_loss;
    let trainer = &contender.trainer;
    let matmul_dtype = trainer.model().policy().matmul();
    let batch = first_batch(trainer, &trainer.config().data.val)?;
    let state: Vec<_> = trainer
        .optimizer()
        .state()
        .0
        .into_iter()
        .map(|(_, t)| t)
        .collect();
    let distribution = measure_distribution(
        trainer.model(),
        &state,
        &batch,
        options.backend.memory_measure(),
        device,
    )?;

    let step_time_ms =
        Spread::of(&contender.step_ms).expect("at least one timed step (checked at the start)");
    let tokens_per_sec = model.tokens_per_step as f64 / (step_time_ms.median / 1e3);
    let achieved_gflops = model.flops_per_token as f64 * tokens_per_sec / 1e9;
    let measure = options.backend.memory_measure();
    let heap_peak = match (contender.resident, contender.peak) {
        (Some(resident), Some(warm_peak)) => Some(warm_peak.max(resident + contender.step_extra)),
        _ => None,
    };
    Ok(PresetResult {
        preset,
        step_time_ms,
        tokens_per_sec,
        achieved_gflops,
        mfu: options.peak_for(matmul_dtype).utilisation(achieved_gflops),
        val_loss,
        memory: MemoryResult {
            peak_bytes: match measure {
                MemoryMeasure::Heap => heap_peak,
                MemoryMeasure::ResidentSet => contender.rss_growth,
                MemoryMeasure::DevicePool | MemoryMeasure::ProcessGpuMemory => {
                    contender.device_reserved
                }
            },
            peak_measure: measure.description().into(),
            heap_peak_bytes: heap_peak,
            heap_resident_bytes: contender.resident,
            rss_growth_bytes: contender.rss_growth,
            device_reserved_bytes: contender.device_reserved,
            estimated_bytes: Some(contender.estimate.total()),
        },
        distribution,
        losses: contender.losses,
        ratios: Default::default(),
    })
}
