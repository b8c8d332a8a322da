//! `brainfloat`: train, evaluate and prepare data for the record's GPT in bf16 mixed precision.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use brainfloat_data::{prepare_sotu, shard_paths, text_files, tokenize_to_shards};
use brainfloat_precision::apply_policy;
use brainfloat_trainer::plugins::{
    CheckpointPlugin, LogPlugin, MetricsPlugin, NonFiniteGuard, ProgressPlugin,
};
use brainfloat_trainer::{ConfigSource, Start, TrainConfig, Trainer, validation_loss};
use burn::tensor::Device;
use clap::{Args, Parser, Subcommand};

mod plot;

/// The default configuration, embedded so that `brainfloat train` works anywhere.
const TINY_TOML: &str = include_str!("../../../configs/tiny.toml");

#[derive(Parser)]
#[command(
    name = "brainfloat",
    version,
    about = "bf16 mixed-precision GPT training on Burn"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train the model of a config (default: the embedded tiny config on the SOTU corpus).
    Train(TrainArgs),
    /// Print the validation loss of a checkpoint or of PyTorch-named weights.
    Eval(EvalArgs),
    /// Fetch and tokenize the default corpus, or tokenize your own text.
    Data(DataArgs),
    /// Plot the loss curves of runs (their metrics.jsonl) into one SVG.
    Plot(PlotArgs),
}

#[derive(Args)]
struct PlotArgs {
    /// The metrics files; each run is labelled with its folder's name.
    #[arg(required = true)]
    metrics: Vec<PathBuf>,
    /// The SVG to write.
    #[arg(long)]
    out: PathBuf,
    /// Chart title.
    #[arg(long, default_value = "loss")]
    title: String,
}

#[derive(Args)]
struct RunArgs {
    /// A TOML config (default: the embedded configs/tiny.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Precision policy, replacing train.precision: fp32, autocast, bf16 (+ overrides).
    #[arg(long)]
    precision: Option<String>,
    /// Backend: flex (CPU), tch (libtorch, if built with it), cuda (if built with it).
    #[arg(long, default_value = "flex")]
    backend: String,
    /// Override any config key: --set train.steps=100 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Log format: human or json (replacing output.log_format).
    #[arg(long)]
    log_format: Option<String>,
}

#[derive(Args)]
struct TrainArgs {
    #[command(flatten)]
    run: RunArgs,
    /// Start from these weights (safetensors with PyTorch names).
    #[arg(long, conflicts_with = "resume")]
    init: Option<PathBuf>,
    /// Resume from a checkpoint record (step_*.json), a folder, or the run's newest checkpoint.
    #[arg(long, num_args = 0..=1, default_missing_value = "")]
    resume: Option<PathBuf>,
}

#[derive(Args)]
struct EvalArgs {
    #[command(flatten)]
    run: RunArgs,
    /// A checkpoint record (step_*.json) or a safetensors file of weights.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Validation shards (a path or a pattern with one `*`), replacing data.val.
    #[arg(long)]
    data: Option<PathBuf>,
}

#[derive(Args)]
struct DataArgs {
    /// Where the shards go.
    #[arg(long, default_value = "data/sotu")]
    dir: PathBuf,
    /// Tokenize these .txt files (a file or a folder) instead of fetching the default corpus.
    #[arg(long)]
    text: Option<PathBuf>,
    /// Shard name prefix for --text.
    #[arg(long, default_value = "corpus")]
    name: String,
    /// With --text: every n-th document goes to validation.
    #[arg(long, default_value_t = 10)]
    val_every: usize,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train(args) => train(args),
        Command::Eval(args) => eval(args),
        Command::Data(args) => data(args),
        Command::Plot(args) => plot(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(run: &RunArgs) -> Result<TrainConfig, String> {
    let source = match &run.config {
        Some(path) => ConfigSource::File(path.clone()),
        None => ConfigSource::Text {
            name: "configs/tiny.toml (embedded)".into(),
            toml: TINY_TOML.into(),
        },
    };
    let mut overrides = run.overrides.clone();
    if let Some(precision) = &run.precision {
        overrides.push(format!("train.precision={precision}"));
    }
    if let Some(format) = &run.log_format {
        overrides.push(format!("output.log_format={format}"));
    }
    TrainConfig::load(&source, &overrides).map_err(|err| err.to_string())
}

fn init_logs(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    if format == "json" {
        builder.json().init();
    } else {
        builder.compact().init();
    }
}

fn device(backend: &str) -> Result<Device, String> {
    match backend {
        "flex" => Ok(Device::flex()),
        #[cfg(feature = "tch")]
        #[allow(deprecated)]
        "tch" => Ok(Device::libtorch()),
        #[cfg(feature = "cuda")]
        "cuda" => Ok(Device::cuda(0)),
        "tch" | "cuda" => Err(format!(
            "this binary was built without the `{backend}` backend; run `cargo xtask train \
             --backend {backend}` to build it"
        )),
        other => Err(format!(
            "unknown backend `{other}` (valid: flex, tch, cuda)"
        )),
    }
}

/// Fetches the default corpus when the config points at it and its shards are missing.
fn ensure_default_corpus(config: &TrainConfig) -> Result<(), String> {
    let dir = config.data.train.parent().unwrap_or(Path::new("."));
    let is_sotu = config
        .data
        .train
        .file_name()
        .is_some_and(|name| name.to_string_lossy().starts_with("sotu_train_"));
    if is_sotu && shard_paths(&config.data.train).is_err() {
        tracing::info!(dir = %dir.display(), "fetching and tokenizing the default corpus (once)");
        if let Some(stats) = prepare_sotu(dir).map_err(|err| err.to_string())? {
            tracing::info!(
                documents = stats.documents,
                train_tokens = stats.train_tokens,
                val_tokens = stats.val_tokens,
                "corpus ready"
            );
        }
    }
    Ok(())
}

fn train(args: TrainArgs) -> Result<(), String> {
    let config = load_config(&args.run)?;
    init_logs(&config.output.log_format);
    ensure_default_corpus(&config)?;
    let device = device(&args.run.backend)?;
    let start = match (args.init, args.resume) {
        (Some(path), _) => Start::Init(path),
        (None, Some(path)) if path.as_os_str().is_empty() => Start::Resume(None),
        (None, Some(path)) => Start::Resume(Some(path)),
        (None, None) => Start::Fresh,
    };
    let progress = config.output.progress;
    let metrics = config.output.dir.join("metrics.jsonl");
    let (steps, every) = (config.train.steps, config.output.checkpoint_every);
    let log_every = if progress {
        steps.max(1)
    } else {
        (steps / 20).max(1)
    };
    let mut trainer = Trainer::new(config, &device, start)
        .map_err(|err| err.to_string())?
        .with_plugin(NonFiniteGuard::default())
        .with_plugin(LogPlugin::new(log_every))
        .with_plugin(MetricsPlugin::new(metrics))
        .with_plugin(CheckpointPlugin::new(every, steps));
    if progress {
        trainer = trainer.with_plugin(ProgressPlugin::default());
    }
    trainer.run().map(|_| ()).map_err(|err| err.to_string())
}

fn eval(args: EvalArgs) -> Result<(), String> {
    let mut config = load_config(&args.run)?;
    init_logs(&config.output.log_format);
    if let Some(data) = args.data {
        config.data.val = data;
    }
    let device = device(&args.run.backend)?;
    let policy = config.policy().map_err(|e| e.to_string())?;
    let model = config
        .gpt()
        .map_err(|e| e.to_string())?
        .init(&device)
        .map_err(|e| e.to_string())?;
    let model = apply_policy(model, &policy, &device).map_err(|e| e.to_string())?;
    let is_record = args.checkpoint.extension().is_some_and(|e| e == "json");
    let model = if is_record {
        let optimizer = brainfloat_trainer::RecordOptimizer::new(Default::default());
        brainfloat_trainer::load_checkpoint(&args.checkpoint, model, optimizer, &device)
            .map_err(|e| e.to_string())?
            .model
    } else {
        model
            .load_safetensors(&args.checkpoint)
            .map_err(|e| e.to_string())?
    };
    let paths = shard_paths(&config.data.val).map_err(|e| e.to_string())?;
    let (loss, tokens) =
        validation_loss(&model, &config, paths, &device).map_err(|e| e.to_string())?;
    println!(
        "val_loss {loss:.6} ({tokens} tokens of {}, policy {policy})",
        config.data.val.display()
    );
    Ok(())
}

fn data(args: DataArgs) -> Result<(), String> {
    init_logs("human");
    let stats = match &args.text {
        Some(text) => {
            let files = text_files(text).map_err(|e| e.to_string())?;
            Some(
                tokenize_to_shards(&files, &args.dir, &args.name, args.val_every)
                    .map_err(|e| e.to_string())?,
            )
        }
        None => prepare_sotu(&args.dir).map_err(|e| e.to_string())?,
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

fn plot(args: PlotArgs) -> Result<(), String> {
    let runs = args
        .metrics
        .iter()
        .map(|path| plot::Curves::read(path))
        .collect::<Result<Vec<_>, _>>()?;
    plot::plot_losses(&runs, &args.out, &args.title)?;
    println!("wrote {}", args.out.display());
    Ok(())
}
