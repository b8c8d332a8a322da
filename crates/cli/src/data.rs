//! `brainfloat data`: the default corpus fetched and tokenized, or your own text tokenized.

use std::path::PathBuf;

use brainfloat_data::{DocumentSource, ShardOptions, tokenize_to_shards, tokenizer_at};
use brainfloat_trainer::LogFormat;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use crate::corpus::prepare_sotu;
use crate::error::CliError;
use crate::setup::init_logs;

#[derive(Args)]
pub struct DataArgs {
    /// Where the shards go.
    #[arg(long, default_value = "data/sotu")]
    pub dir: PathBuf,
    /// Tokenize this data set instead of fetching the default corpus: `.txt` files (a file or a
    /// folder; each file a document), a JSON Lines file (`.jsonl`) or a Parquet file
    /// (`.parquet`), whose `--field` holds each document.
    #[arg(long, alias = "text")]
    pub input: Option<PathBuf>,
    /// With a JSON Lines or Parquet --input: the field (column) of the documents' text.
    #[arg(long, default_value = "text")]
    pub field: String,
    /// With --input: close a shard at this many tokens (documents are kept whole, so a shard
    /// may pass it by up to one document), as llm.c's 100M-token shards.
    #[arg(long, default_value_t = 100_000_000)]
    pub shard_tokens: usize,
    /// Shard name prefix for --input.
    #[arg(long, default_value = "corpus")]
    pub name: String,
    /// With --input: every n-th document goes to validation.
    #[arg(long, default_value_t = 10)]
    pub val_every: usize,
    /// With --input: a Hugging Face tokenizer.json instead of GPT-2's BPE (ids over 65,535 go
    /// into 32-bit shards; set model.vocab_size to at least its vocabulary).
    #[arg(long, requires = "input")]
    pub tokenizer: Option<PathBuf>,
}

/// Runs `brainfloat data`.
pub fn run(args: DataArgs) -> Result<(), CliError> {
    init_logs(LogFormat::Human, true);
    let stats = match &args.input {
        Some(input) => {
            let tokenizer = tokenizer_at(args.tokenizer.as_deref())?;
            let documents = DocumentSource::at(input, &args.field)?.documents()?;
            let options = ShardOptions {
                name: args.name.clone(),
                val_every: args.val_every,
                shard_tokens: args.shard_tokens,
            };
            let bar = ProgressBar::new_spinner().with_style(
                ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
                    .expect("a valid template"),
            );
            let stats = tokenize_to_shards(
                tokenizer.as_ref(),
                documents,
                &args.dir,
                &options,
                |documents, tokens| {
                    if documents % 256 == 0 {
                        bar.set_message(format!("{documents} documents, {tokens} tokens"));
                        bar.tick();
                    }
                },
            );
            bar.finish_and_clear();
            Some(stats?)
        }
        None => prepare_sotu(&args.dir)?,
    };
    match stats {
        Some(s) => println!(
            "{} documents → {} train + {} val tokens in {} ({} + {} shards)",
            s.documents,
            s.train_tokens,
            s.val_tokens,
            args.dir.display(),
            s.train_shards,
            s.val_shards
        ),
        None => println!("shards already present in {}", args.dir.display()),
    }
    Ok(())
}
