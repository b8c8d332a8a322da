//! `brainfloat study`: every preset from several seeds, the final losses and the curves.

use std::path::PathBuf;

use brainfloat_bench::{StudyOptions, StudyReport, StudyRun, run_study};
use brainfloat_gpt::{ArchWork, LanguageModel};
use brainfloat_precision::{PrecisionPolicy, Preset};
use brainfloat_reports::plot::plot_convergence;
use brainfloat_trainer::{TrainConfig, TrainError};
use burn::tensor::Device;
use clap::Args;

use crate::error::CliError;
use crate::setup::{RunArgs, Runs, check_training_fits, command_line, prepare};

#[derive(Args)]
pub struct StudyArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// Presets, comma-separated; the first is the reference of the differences.
    #[arg(
        long,
        default_value = "fp32,autocast,bf16,bf16-pure,bf16-sr,bf16-kahan",
        value_delimiter = ','
    )]
    pub presets: Vec<Preset>,
    /// Seeds, comma-separated.
    #[arg(long, default_value = "1,2,3", value_delimiter = ',')]
    pub seeds: Vec<u64>,
    /// Optimizer steps per run.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    pub steps: u64,
    /// Evaluate every this many steps (and after the last).
    #[arg(long, default_value_t = 50)]
    pub eval_every: usize,
    /// Folder of the report (JSON, Markdown, SVG).
    #[arg(long, default_value = "docs/results")]
    pub out: PathBuf,
    /// File stem of the report.
    #[arg(long, default_value = "convergence")]
    pub name: String,
}

/// Runs `brainfloat study`.
pub fn run(args: StudyArgs) -> Result<(), CliError> {
    let (config, device) = prepare(&args.run)?;
    let options = StudyOptions {
        presets: args
            .presets
            .into_iter()
            .map(PrecisionPolicy::preset)
            .collect(),
        seeds: args.seeds,
        steps: args.steps as usize,
        eval_every: args.eval_every,
        machine: crate::setup::machine(args.run.backend),
        command: command_line(),
    };
    check_training_fits(args.run.backend, &config, &options.presets, Runs::InTurn)?;
    let total = options.presets.len() * options.seeds.len();
    let mut done = 0;
    let progress = |run: &StudyRun| {
        done += 1;
        eprintln!(
            "study {done}/{total}: {} seed {}: final val loss {:.4} ({:.0} s)",
            run.preset,
            run.seed,
            run.final_val_loss(),
            run.seconds
        );
    };
    let study = Study {
        config: &config,
        device: &device,
        options: &options,
        progress,
    };
    let report = config.shape().dispatch(study)?;
    std::fs::create_dir_all(&args.out).map_err(|err| CliError::io(&args.out, "create", err))?;
    let figure = args.out.join(format!("{}.svg", args.name));
    plot_convergence(&report, &figure)?;
    let (json, md) = report
        .write(&args.out, &args.name)
        .map_err(|err| CliError::io(&args.out, "write the report", err))?;
    print!("{}", report.to_markdown(&format!("{}.svg", args.name)));
    println!(
        "wrote {}, {} and {}",
        md.display(),
        json.display(),
        figure.display()
    );
    Ok(())
}

/// The study of a config, for its architecture's model type.
struct Study<'a, F> {
    config: &'a TrainConfig,
    device: &'a Device,
    options: &'a StudyOptions,
    progress: F,
}

impl<F: FnMut(&StudyRun)> ArchWork for Study<'_, F> {
    type Output = Result<StudyReport, TrainError>;

    fn run<M: LanguageModel>(self) -> Self::Output {
        run_study::<M>(self.config, self.device, self.options, self.progress)
    }
}
