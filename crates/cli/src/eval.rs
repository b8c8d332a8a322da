//! `brainfloat eval`: the validation loss of a checkpoint or of PyTorch-named weights.

use std::path::PathBuf;

use brainfloat_data::shard_paths;
use brainfloat_gpt::{ArchWork, LanguageModel};
use brainfloat_trainer::{TrainConfig, validation_loss};
use clap::Args;

use crate::error::CliError;
use crate::setup::{RunArgs, Weights, WeightsSource, prepare};
use burn::tensor::Device;

#[derive(Args)]
pub struct EvalArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// A checkpoint record (step_*.json), a safetensors file of weights, or hf:DIR (a Hugging
    /// Face GPT-2 folder).
    #[arg(long)]
    pub checkpoint: WeightsSource,
    /// Validation shards (a path or a pattern with one `*`), replacing data.val.
    #[arg(long)]
    pub data: Option<PathBuf>,
}

/// Runs `brainfloat eval`.
pub fn run(args: EvalArgs) -> Result<(), CliError> {
    let (mut config, device) = prepare(&args.run)?;
    if let Some(data) = args.data {
        config.data.val = data;
    }
    let weights = Weights::resolve(&args.checkpoint, config, false, args.run.backend)?;
    weights
        .config
        .shape()
        .clone()
        .dispatch(Eval { weights, device })
}

/// The evaluation of weights, for their architecture's model type.
struct Eval {
    weights: Weights,
    device: Device,
}

impl ArchWork for Eval {
    type Output = Result<(), CliError>;

    fn run<M: LanguageModel>(self) -> Result<(), CliError> {
        let Eval { weights, device } = self;
        let model: M = weights.load(&device)?;
        report_loss(&model, &weights.config, &device)
    }
}

/// Prints `model`'s validation loss over the config's validation shards.
fn report_loss(
    model: &impl LanguageModel,
    config: &TrainConfig,
    device: &Device,
) -> Result<(), CliError> {
    let policy = *model.policy();
    let paths = shard_paths(&config.data.val)?;
    let started = std::time::Instant::now();
    let (loss, tokens) = validation_loss(model, config, paths, device)?;
    let tokens_per_sec = tokens as f64 / started.elapsed().as_secs_f64().max(1e-9);
    println!(
        "val_loss {loss:.6} ({tokens} tokens of {}, policy {policy}, {tokens_per_sec:.0} tokens/s)",
        config.data.val.display()
    );
    Ok(())
}
