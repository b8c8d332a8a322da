//! `brainfloat generate`: text from a checkpoint, streamed as it is produced.

use std::io::IsTerminal;
use std::path::PathBuf;

use brainfloat_generate::{GenerateOptions, Sampling, generate, inference_model};
use brainfloat_gpt::{ArchWork, LanguageModel};
use burn::tensor::Device;
use clap::Args;

use crate::error::CliError;
use crate::setup::{RunArgs, Weights, WeightsSource, device, init_logs, load_config};

#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// A checkpoint record (step_*.json: the model's shape and precision come from it), a
    /// safetensors file of weights (its shape from the file when written here, else from
    /// --config), or hf:DIR (a Hugging Face GPT-2 folder).
    #[arg(long)]
    pub checkpoint: WeightsSource,
    /// The text to continue; `-` (or no --prompt with text piped in) reads standard input.
    /// Empty: start from <|endoftext|>.
    #[arg(long)]
    pub prompt: Option<String>,
    /// Tokens to generate at most.
    #[arg(long, default_value_t = 200)]
    pub max_tokens: usize,
    /// Sampling temperature; 0 picks the most likely token every time (greedy).
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f32,
    /// Draw only from the k most likely tokens.
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Draw only from the most likely tokens whose probabilities add up to p (nucleus).
    #[arg(long)]
    pub top_p: Option<f32>,
    /// Seed of the draws: the same seed, checkpoint and settings give the same text.
    #[arg(long, default_value_t = 1337)]
    pub seed: u64,
    /// Go on past <|endoftext|> (printed as such) instead of stopping there.
    #[arg(long)]
    pub ignore_eos: bool,
    /// Recompute the whole context for every token instead of using the KV cache (the same
    /// tokens, slower: for comparison).
    #[arg(long)]
    pub no_kv_cache: bool,
    /// A Hugging Face tokenizer.json for the prompt and the text (default: GPT-2's BPE); its
    /// document separator starts an empty prompt and ends generation.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
}

/// `generate`: the prompt, then the model's text as it comes (stdout), then the speed (stderr).
/// Runs `brainfloat generate`.
pub fn run(args: GenerateArgs) -> Result<(), CliError> {
    let config = load_config(&args.run)?;
    init_logs(config.output.log_format, true);
    let device = device(args.run.backend)?;
    // A record's own precision, unless --precision says otherwise.
    let record_precision = args.run.precision.is_none();
    let weights = Weights::resolve(&args.checkpoint, config, record_precision, args.run.backend)?;
    let shape = weights.config.shape().clone();
    shape.dispatch(Generate {
        args,
        weights,
        device,
    })
}

/// A generation from weights, read into their architecture's model type.
struct Generate {
    args: GenerateArgs,
    weights: Weights,
    device: Device,
}

impl ArchWork for Generate {
    type Output = Result<(), CliError>;

    fn run<M: LanguageModel>(self) -> Result<(), CliError> {
        let model: M = self.weights.load(&self.device)?;
        generate_text(model, self.args, &self.device)
    }
}

/// Streams `model`'s text after the prompt `args` give, then its speed.
fn generate_text(
    model: impl LanguageModel,
    args: GenerateArgs,
    device: &Device,
) -> Result<(), CliError> {
    use std::io::{Read, Write};
    let policy = *model.policy();
    let model = inference_model(model, device)?;
    let from_stdin = match args.prompt.as_deref() {
        Some(text) => text == "-",
        None => !std::io::stdin().is_terminal(),
    };
    let prompt = if from_stdin {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|err| CliError::io("standard input", "read the prompt from", err))?;
        text
    } else {
        args.prompt.unwrap_or_default()
    };
    let tokenizer = brainfloat_data::tokenizer_at(args.tokenizer.as_deref())?;
    let prompt_tokens = tokenizer.encode(&prompt);
    let options = GenerateOptions {
        max_tokens: args.max_tokens,
        sampling: Sampling {
            temperature: args.temperature,
            top_k: args.top_k,
            top_p: args.top_p,
            seed: args.seed,
        },
        stop_at_end_of_text: !args.ignore_eos,
        kv_cache: !args.no_kv_cache,
    };
    let mut out = std::io::stdout().lock();
    let _ = write!(out, "{prompt}");
    let _ = out.flush();
    let generation = generate(
        &model,
        tokenizer.as_ref(),
        &prompt_tokens,
        &options,
        device,
        |text| {
            let _ = write!(out, "{text}");
            let _ = out.flush();
        },
    )?;
    let _ = writeln!(out);
    let max_seq_len = model.shape().max_seq_len();
    let end = if generation.stopped_at_end_of_text {
        ", stopped at <|endoftext|>"
    } else {
        ""
    };
    let slides = match generation.slides {
        0 => String::new(),
        n => format!(
            ", context slid {n} time(s) at the model's maximum of {}",
            max_seq_len
        ),
    };
    eprintln!(
        "{} tokens in {:.2} s: {:.1} tokens/s (prompt {} tokens, first token after {:.0} ms; \
         KV cache {}, policy {}){end}{slides}",
        generation.tokens.len(),
        generation.elapsed.as_secs_f64(),
        generation.tokens_per_sec(),
        generation.prompt_tokens,
        generation.prefill.as_secs_f64() * 1e3,
        if options.kv_cache { "on" } else { "off" },
        policy,
    );
    Ok(())
}
