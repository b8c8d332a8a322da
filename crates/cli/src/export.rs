//! `brainfloat export`: a model as a Hugging Face folder that `transformers` loads.

use std::path::PathBuf;

use brainfloat_gpt::{ArchWork, LanguageModel};
use brainfloat_trainer::{check_export_destination, export_hf};
use burn::tensor::Device;
use clap::Args;

use crate::error::CliError;
use crate::setup::{RunArgs, Weights, WeightsSource, device, init_logs, load_config};

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
    let weights = Weights::resolve(&args.checkpoint, config, true, args.run.backend)?;
    let export = Export {
        weights,
        device,
        hf: args.hf,
    };
    let written = export.weights.config.shape().clone().dispatch(export)?;
    for path in written {
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// An export of weights, read into their architecture's model type.
struct Export {
    weights: Weights,
    device: Device,
    hf: PathBuf,
}

impl ArchWork for Export {
    type Output = Result<Vec<PathBuf>, CliError>;

    fn run<M: LanguageModel>(self) -> Self::Output {
        let model: M = self.weights.load(&self.device)?;
        Ok(export_hf(&model, &self.hf)?)
    }
}
