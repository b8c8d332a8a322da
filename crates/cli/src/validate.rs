//! `brainfloat validate`: the bf16 pipeline checked end to end.

use std::path::PathBuf;

use brainfloat_bench::validate::{Check, format_checks, validate_pipeline};
use brainfloat_gpt::{ArchWork, LanguageModel};
use brainfloat_trainer::{TrainConfig, TrainError};
use burn::tensor::Device;
use clap::Args;

use crate::error::CliError;
use crate::setup::{RunArgs, Runs, check_training_fits, prepare};

#[derive(Args)]
pub struct ValidateArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// Training steps of each of the fp32 and bf16 runs.
    #[arg(long, default_value_t = 30)]
    pub steps: usize,
    /// Also write the checks as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Runs `brainfloat validate`.
pub fn run(args: ValidateArgs) -> Result<(), CliError> {
    let (config, device) = prepare(&args.run)?;
    let policy = [config.train.precision];
    check_training_fits(args.run.backend, &config, &policy, Runs::InTurn)?;
    let validate = Validate {
        config: &config,
        device: &device,
        steps: args.steps,
    };
    let checks = config.shape().dispatch(validate)?;
    print!("{}", format_checks(&checks));
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&checks).expect("checks serialize to JSON");
        std::fs::write(path, text).map_err(|err| CliError::io(path, "write", err))?;
    }
    let failed = checks.iter().filter(|c| !c.passed).count();
    if failed > 0 {
        return Err(CliError::Refused(format!(
            "{failed} of {} checks failed",
            checks.len()
        )));
    }
    println!("all {} checks passed", checks.len());
    Ok(())
}

/// The pipeline's checks on a config, for its architecture's model type.
struct Validate<'a> {
    config: &'a TrainConfig,
    device: &'a Device,
    steps: usize,
}

impl ArchWork for Validate<'_> {
    type Output = Result<Vec<Check>, TrainError>;

    fn run<M: LanguageModel>(self) -> Self::Output {
        validate_pipeline::<M>(self.config, self.device, self.steps)
    }
}
