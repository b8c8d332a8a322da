//! `brainfloat export`: a model as a Hugging Face folder that `transformers` loads.

use std::path::PathBuf;

use brainfloat_trainer::{check_export_destination, export_hf};
use clap::Args;

use crate::error::CliError;
use crate::setup::{RunArgs, WeightsSource, device, init_logs, load_config, load_model};

#[derive(Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// The model: a checkpoint record (step_*.json), a safetensors file written here, or
    /// hf:DIR.
    #[arg(long)]
    pub checkpoint: WeightsSource,
    /// The folder to write: config.json and model.safetensors (fp32), for
    /// `GPT2LMHeadModel.from_pretrained(DIR)`. Only GPT-2 (model.arch = "gpt2") exports.
    #[arg(long, value_name = "DIR")]
    pub hf: PathBuf,
}

/// Runs `brainfloat export`.
pub fn run(args: ExportArgs) -> Result<(), CliError> {
    let config = load_config(&args.run)?;
    init_logs(config.output.log_format, true);
    check_export_destination(&args.hf)?;
    let device = device(args.run.backend)?;
    // The weights as stored: the file's own dtypes, widened to fp32 on the way out.
    let (model, _) = load_model(&args.checkpoint, config, true, args.run.backend, &device)?;
    let written = export_hf(&model, &args.hf)?;
    for path in written {
        println!("wrote {}", path.display());
    }
    Ok(())
}
