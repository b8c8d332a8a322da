//! `brainfloat data`: the default corpus fetched and tokenized, or your own text tokenized.

use std::path::PathBuf;

use brainfloat_data::{Gpt2Tokenizer, HfTokenizer, Tokenizer, text_files, tokenize_to_shards};
use brainfloat_trainer::LogFormat;
use clap::Args;

use crate::corpus::prepare_sotu;
use crate::error::CliError;
use crate::setup::init_logs;

#[derive(Args)]
pub struct DataArgs {
    /// Where the shards go.
    #[arg(long, default_value = "data/sotu")]
    pub dir: PathBuf,
    /// Tokenize these .txt files (a file or a folder) instead of fetching the default corpus.
    #[arg(long)]
    pub text: Option<PathBuf>,
    /// Shard name prefix for --text.
    #[arg(long, default_value = "corpus")]
    pub name: String,
    /// With --text: every n-th document goes to validation.
    #[arg(long, default_value_t = 10)]
    pub val_every: usize,
    /// With --text: a Hugging Face tokenizer.json instead of GPT-2's BPE (ids over 65,535 go
    /// into 32-bit shards; set model.vocab_size to at least its vocabulary).
    #[arg(long, requires = "text")]
    pub tokenizer: Option<PathBuf>,
}

/// Runs `brainfloat data`.
pub fn run(args: DataArgs) -> Result<(), CliError> {
    init_logs(LogFormat::Human, true);
    let stats = match &args.text {
        Some(text) => {
            let tokenizer: Box<dyn Tokenizer> = match &args.tokenizer {
                Some(path) => Box::new(HfTokenizer::from_file(path)?),
                None => Box::new(Gpt2Tokenizer::new()),
            };
            let files = text_files(text)?;
            Some(tokenize_to_shards(
                tokenizer.as_ref(),
                &files,
                &args.dir,
                &args.name,
                args.val_every,
            )?)
        }
        None => prepare_sotu(&args.dir)?,
    };
    match stats {
        Some(s) => println!(
            "{} documents → {} train + {} val tokens in {}",
            s.documents,
            s.train_tokens,
            s.val_tokens,
            args.dir.display()
        ),
        None => println!("shards already present in {}", args.dir.display()),
    }
    Ok(())
}
