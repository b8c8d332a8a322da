//! `brainfloat bench`: the presets side by side, written as JSON, Markdown and SVG.

use std::path::PathBuf;

use brainfloat_bench::{BenchOptions, BenchReport, Figure, Peak, measured_peak, run_bench};
use brainfloat_gpt::{ArchWork, LanguageModel};
use brainfloat_precision::{PrecisionPolicy, Preset};
use brainfloat_reports::plot::{Curves, plot_distribution, plot_losses};
use brainfloat_trainer::{TrainConfig, TrainError};
use burn::tensor::{DType, Device, FloatDType};
use clap::Args;

use crate::error::CliError;
use crate::setup::{RunArgs, Runs, check_training_fits, command_line, prepare};

#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// Timed steps per preset.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
    pub steps: u64,
    /// Untimed warm-up steps per preset.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    pub warmup: u64,
    /// Presets to compare, comma-separated.
    #[arg(long, default_value = "fp32,autocast,bf16", value_delimiter = ',')]
    pub presets: Vec<Preset>,
    /// The preset ratios are taken against.
    #[arg(long, default_value = "autocast")]
    pub baseline: Preset,
    /// Peak GFLOP/s of fp32 matmuls for MFU (default: measured, a dense 2048³ product).
    #[arg(long)]
    pub peak_gflops: Option<f64>,
    /// Peak GFLOP/s of bf16 matmuls for MFU of bf16-matmul presets (default: measured).
    #[arg(long)]
    bf16_peak_gflops: Option<f64>,
    /// Timed runs per matmul shape and dtype.
    #[arg(long, default_value_t = 5)]
    pub matmul_reps: usize,
    /// Folder of the report (JSON, Markdown, SVG).
    #[arg(long, default_value = "docs/results")]
    pub out: PathBuf,
    /// File stem of the report (default: bench_<size>_<backend>).
    #[arg(long)]
    pub name: Option<String>,
}

/// Runs `brainfloat bench`.
pub fn run(args: BenchArgs) -> Result<(), CliError> {
    let (config, device) = prepare(&args.run)?;
    let presets: Vec<PrecisionPolicy> = args
        .presets
        .into_iter()
        .map(PrecisionPolicy::preset)
        .collect();
    // The presets' trainers are built one after another and kept side by side.
    check_training_fits(args.run.backend, &config, &presets, Runs::SideBySide)?;
    // Each dtype's peak is stated or measured on the device (a dense square product).
    let peak_of = |stated: Option<f64>, dtype| match stated {
        Some(gflops) => Peak::stated(gflops),
        None => measured_peak(dtype, &device),
    };
    let peak = peak_of(args.peak_gflops, FloatDType::F32);
    let bf16_peak = device
        .supports_dtype(DType::BF16)
        .then(|| peak_of(args.bf16_peak_gflops, FloatDType::BF16));
    let command = command_line();
    let options = BenchOptions {
        presets,
        baseline: PrecisionPolicy::preset(args.baseline),
        warmup_steps: args.warmup as usize,
        steps: args.steps as usize,
        matmul_reps: args.matmul_reps,
        peak,
        bf16_peak,
        backend: args.run.backend,
        machine: crate::setup::machine(args.run.backend),
        command,
    };
    let bench = Bench {
        config: &config,
        device: &device,
        options: &options,
    };
    let mut report = config.shape().dispatch(bench)?;
    let stem = args
        .name
        .unwrap_or_else(|| format!("bench_{}_{}", config.model.size, args.run.backend));
    std::fs::create_dir_all(&args.out).map_err(|err| CliError::io(&args.out, "create", err))?;
    let loss_file = format!("{stem}_loss.svg");
    let curves: Vec<Curves> = report
        .presets
        .iter()
        .map(|p| Curves::from_losses(&p.preset.to_string(), &p.losses, Some(p.val_loss)))
        .collect();
    plot_losses(
        &curves,
        &args.out.join(&loss_file),
        "training loss per preset (benchmark steps)",
    )?;
    let memory_file = format!("{stem}_memory.svg");
    plot_distribution(&report, &args.out.join(&memory_file))?;
    report.figures = vec![
        Figure {
            title: "loss per preset".into(),
            file: loss_file,
        },
        Figure {
            title: "memory by part and dtype".into(),
            file: memory_file,
        },
    ];
    let (json, md) = report
        .write(&args.out, &stem)
        .map_err(|err| CliError::io(&args.out, "write the report", err))?;
    println!("{}", report.to_markdown());
    println!("wrote {} and {}", md.display(), json.display());
    Ok(())
}

/// The benchmark of a config, for its architecture's model type.
struct Bench<'a> {
    config: &'a TrainConfig,
    device: &'a Device,
    options: &'a BenchOptions,
}

impl ArchWork for Bench<'_> {
    type Output = Result<BenchReport, TrainError>;

    fn run<M: LanguageModel>(self) -> Self::Output {
        run_bench::<M>(self.config, self.device, self.options)
    }
}
