//! `brainfloat eval`: the validation loss of a checkpoint or of PyTorch-named weights.

use std::path::PathBuf;

use brainfloat_data::shard_paths;
use brainfloat_gpt::LanguageModel;
use brainfloat_trainer::validation_loss;
use clap::Args;

use crate::error::CliError;
use crate::setup::{RunArgs, WeightsSource, load_model, prepare};

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
    let (model, config) = load_model(&args.checkpoint, config, false, args.run.backend, &device)?;
    let policy = *model.policy();
    let paths = shard_paths(&config.data.val)?;
    let started = std::time::Instant::now();
    let (loss, tokens) = validation_loss(&model, &config, paths, &device)?;
    let tokens_per_sec = tokens as f64 / started.elapsed().as_secs_f64().max(1e-9);
    println!(
        "val_loss {loss:.6} ({tokens} tokens of {}, policy {policy}, {tokens_per_sec:.0} tokens/s)",
        config.data.val.display()
    );
    Ok(())
}
