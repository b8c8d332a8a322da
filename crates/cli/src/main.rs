//! `brainfloat`: train, evaluate and prepare data for the record's GPT in bf16 mixed precision.

// The arguments' doc comments are clap's help text, where `tch-cuda[:N]` and `bench_<size>` are
// literal, neither a link nor HTML.
#![allow(rustdoc::broken_intra_doc_links, rustdoc::invalid_html_tags)]

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use brainfloat_accum::{GradSync, LocalSync};
use brainfloat_backend::{BACKEND_VAR, Backend};
use brainfloat_bench::plot::{
    Curves, LostUpdateCurves, plot_convergence, plot_distribution, plot_losses, plot_lost_updates,
};
use brainfloat_bench::validate::{format_checks, validate_pipeline};
use brainfloat_bench::{
    BenchOptions, BenchReport, Figure, Peak, PytorchReference, StudyOptions, comparison_markdown,
    measured_peak, run_bench, run_study, step_memory,
};
use brainfloat_data::Gpt2Tokenizer;
use brainfloat_data::{shard_paths, text_files, tokenize_to_shards};
use brainfloat_generate::{GenerateOptions, Sampling, generate, inference_model};
use brainfloat_gpt::Gpt;
use brainfloat_precision::{PrecisionPolicy, Preset};
use brainfloat_trainer::plugins::{
    CheckpointPlugin, LogPlugin, MetricsPlugin, ProgressPlugin, StopOnFlag,
};
use brainfloat_trainer::{
    ConfigSource, LogFormat, Start, TrainConfig, Trainer, init_model, load_checkpoint_weights,
    load_weights, model_notes, read_record, validation_loss,
};
use burn::tensor::{DType, Device, FloatDType};
use clap::{Args, Parser, Subcommand};

mod corpus;
mod stop;

use corpus::prepare_sotu;
use stop::StopRequest;

/// Counts heap bytes so that metrics and the benchmark report measured peak memory.
#[global_allocator]
static HEAP: brainfloat_memory::CountingAllocator = brainfloat_memory::CountingAllocator;

/// What `--resume` without a value stands for: the output folder's newest checkpoint.
const NEWEST: &str = "newest";

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
    /// Generate text from a checkpoint or PyTorch-named weights, streamed as it is produced.
    Generate(GenerateArgs),
    /// Fetch and tokenize the default corpus, or tokenize your own text.
    Data(DataArgs),
    /// Measure fp32, autocast and bf16 side by side: time, memory, loss, utilisation.
    Bench(BenchArgs),
    /// Validate the bf16 pipeline: fp32 and bf16 learn and agree, dtypes, checkpoint round-trip.
    Validate(ValidateArgs),
    /// Plot the loss curves (or the lost-update probe) of runs (their metrics.jsonl) as SVG.
    Plot(PlotArgs),
    /// One table from benchmark reports of several backends, with PyTorch's figures beside.
    Compare(CompareArgs),
    /// Train every preset from several seeds: final validation loss, mean ± sd, and the curves.
    Study(StudyArgs),
}

#[derive(Args)]
struct StudyArgs {
    #[command(flatten)]
    run: RunArgs,
    /// Presets, comma-separated; the first is the reference of the differences.
    #[arg(
        long,
        default_value = "fp32,autocast,bf16,bf16-pure,bf16-sr,bf16-kahan",
        value_delimiter = ','
    )]
    presets: Vec<Preset>,
    /// Seeds, comma-separated.
    #[arg(long, default_value = "1,2,3", value_delimiter = ',')]
    seeds: Vec<u64>,
    /// Optimizer steps per run.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    steps: u64,
    /// Evaluate every this many steps (and after the last).
    #[arg(long, default_value_t = 50)]
    eval_every: usize,
    /// Folder of the report (JSON, Markdown, SVG).
    #[arg(long, default_value = "docs/results")]
    out: PathBuf,
    /// File stem of the report.
    #[arg(long, default_value = "convergence")]
    name: String,
}

#[derive(Args)]
struct CompareArgs {
    /// Benchmark reports (their JSON).
    #[arg(required = true)]
    reports: Vec<PathBuf>,
    /// PyTorch's step times for the same model (scripts/pytorch_reference.py --json); repeat
    /// for eager and `--compile` runs.
    #[arg(long)]
    pytorch: Vec<PathBuf>,
    /// Also write the table here.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Args)]
struct PlotArgs {
    /// The metrics files; each run is labelled with its folder's name.
    #[arg(required_unless_present = "report")]
    metrics: Vec<PathBuf>,
    /// The SVG to write.
    #[arg(long)]
    out: PathBuf,
    /// Chart title.
    #[arg(long, default_value = "loss")]
    title: String,
    /// Plot the lost-update probe per parameter group instead of the losses.
    #[arg(long)]
    lost_updates: bool,
    /// Draw a benchmark report's memory distribution (its JSON) instead.
    #[arg(long, conflicts_with_all = ["metrics", "lost_updates"])]
    report: Option<PathBuf>,
}

#[derive(Args)]
struct BenchArgs {
    #[command(flatten)]
    run: RunArgs,
    /// Timed steps per preset.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
    steps: u64,
    /// Untimed warm-up steps per preset.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    warmup: u64,
    /// Presets to compare, comma-separated.
    #[arg(long, default_value = "fp32,autocast,bf16", value_delimiter = ',')]
    presets: Vec<Preset>,
    /// The preset ratios are taken against.
    #[arg(long, default_value = "autocast")]
    baseline: Preset,
    /// Peak GFLOP/s of fp32 matmuls for MFU (default: measured, a dense 2048³ product).
    #[arg(long)]
    peak_gflops: Option<f64>,
    /// Peak GFLOP/s of bf16 matmuls for MFU of bf16-matmul presets (default: measured).
    #[arg(long)]
    bf16_peak_gflops: Option<f64>,
    /// Timed runs per matmul shape and dtype.
    #[arg(long, default_value_t = 5)]
    matmul_reps: usize,
    /// Folder of the report (JSON, Markdown, SVG).
    #[arg(long, default_value = "docs/results")]
    out: PathBuf,
    /// File stem of the report (default: bench_<size>_<backend>).
    #[arg(long)]
    name: Option<String>,
}

#[derive(Args)]
struct ValidateArgs {
    #[command(flatten)]
    run: RunArgs,
    /// Training steps of each of the fp32 and bf16 runs.
    #[arg(long, default_value_t = 30)]
    steps: usize,
    /// Also write the checks as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args)]
struct RunArgs {
    /// A TOML config (default: the embedded configs/tiny.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Precision policy, replacing train.precision: fp32, autocast, bf16 (+ overrides).
    #[arg(long)]
    precision: Option<PrecisionPolicy>,
    /// Backend: flex (CPU), tch (libtorch CPU), tch-cuda[:N] (libtorch GPU), cuda[:N] (Burn's
    /// CUDA); all but flex need the binary built with their feature (`cargo xtask` does it).
    #[arg(long, env = BACKEND_VAR, default_value = "flex")]
    backend: Backend,
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
    #[arg(long, num_args = 0..=1, default_missing_value = NEWEST)]
    resume: Option<PathBuf>,
    /// Start afresh in an output folder that holds another run's checkpoints, moving them and
    /// its metrics into a subfolder (output.overwrite = true).
    #[arg(long, conflicts_with = "resume")]
    overwrite: bool,
    /// Under mpirun: seconds a rank waits in one collective before it declares a peer dead.
    #[arg(long, default_value_t = 120)]
    sync_timeout: u64,
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
struct GenerateArgs {
    #[command(flatten)]
    run: RunArgs,
    /// A checkpoint record (step_*.json: the model's shape and precision come from it) or a
    /// safetensors file of PyTorch-named weights (the shape comes from --config).
    #[arg(long)]
    checkpoint: PathBuf,
    /// The text to continue; `-` (or no --prompt with text piped in) reads standard input.
    /// Empty: start from <|endoftext|>.
    #[arg(long)]
    prompt: Option<String>,
    /// Tokens to generate at most.
    #[arg(long, default_value_t = 200)]
    max_tokens: usize,
    /// Sampling temperature; 0 picks the most likely token every time (greedy).
    #[arg(long, default_value_t = 0.8)]
    temperature: f32,
    /// Draw only from the k most likely tokens.
    #[arg(long)]
    top_k: Option<usize>,
    /// Draw only from the most likely tokens whose probabilities add up to p (nucleus).
    #[arg(long)]
    top_p: Option<f32>,
    /// Seed of the draws: the same seed, checkpoint and settings give the same text.
    #[arg(long, default_value_t = 1337)]
    seed: u64,
    /// Go on past <|endoftext|> (printed as such) instead of stopping there.
    #[arg(long)]
    ignore_eos: bool,
    /// Recompute the whole context for every token instead of using the KV cache (the same
    /// tokens, slower: for comparison).
    #[arg(long)]
    no_kv_cache: bool,
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
    brainfloat_memory::retain_freed_memory(true);
    let result = match cli.command {
        Command::Train(args) => train(args),
        Command::Eval(args) => eval(args),
        Command::Generate(args) => generate_text(args),
        Command::Data(args) => data(args),
        Command::Bench(args) => bench(args),
        Command::Validate(args) => validate(args),
        Command::Plot(args) => plot(args),
        Command::Compare(args) => compare(args),
        Command::Study(args) => study(args),
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
    if let Some(format) = &run.log_format {
        overrides.push(format!("output.log_format={format}"));
    }
    let mut config = TrainConfig::load(&source, &overrides).map_err(|err| err.to_string())?;
    if let Some(precision) = run.precision {
        config.train.precision = precision;
    }
    Ok(config)
}

/// Logs on stderr; ranks other than the leader log warnings and errors only.
fn init_logs(format: LogFormat, leader: bool) {
    let level = if leader { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Human => builder.compact().init(),
    }
}

/// What `eval`, `bench` and `validate` start with: the config, logs, the default corpus if the
/// config wants it, and the device.
fn prepare(run: &RunArgs) -> Result<(TrainConfig, Device), String> {
    let config = load_config(run)?;
    init_logs(config.output.log_format, true);
    ensure_default_corpus(&config)?;
    Ok((config, device(run.backend)?))
}

fn device(backend: Backend) -> Result<Device, String> {
    backend.device().map_err(|err| err.to_string())
}

/// Bytes per parameter that holding a model's weights takes at least: fp32 masters (bf16
/// weights are made from them).
const WEIGHTS_BYTES_PER_PARAM: u64 = 4;

/// Bytes per parameter that training takes at least: fp32 weights and gradients, and two fp32
/// moments of Adam (Muon keeps one; activations come on top).
const TRAINING_BYTES_PER_PARAM: u64 = 16;

/// Refuses, before any tensor is allocated, a model that cannot fit in this machine's memory
/// on a backend whose tensors live there (flex, libtorch on the CPU): its parameter count times
/// `bytes_per_param`, a lower bound of what `purpose` takes, against the memory available to
/// this process. A GPU's own memory is not known here, so GPU backends are not checked.
fn check_fits(
    backend: Backend,
    config: &TrainConfig,
    bytes_per_param: u64,
    purpose: &str,
) -> Result<(), String> {
    use brainfloat_backend::MemoryMeasure;
    if !matches!(
        backend.memory_measure(),
        MemoryMeasure::Heap | MemoryMeasure::ResidentSet
    ) {
        return Ok(());
    }
    let gpt = config.gpt().map_err(|err| err.to_string())?;
    let params = gpt.num_params() as u64;
    let needed = params.saturating_mul(bytes_per_param);
    let Some(available) = brainfloat_memory::available_memory() else {
        return Ok(());
    };
    if needed <= available {
        return Ok(());
    }
    let gib = |bytes: u64| bytes as f64 / (1u64 << 30) as f64;
    Err(format!(
        "the model ({}: {params} parameters) needs at least {:.1} GiB for {purpose} \
         ({bytes_per_param} bytes per parameter), and {:.1} GiB of memory is available; nothing \
         was allocated",
        gpt.describe(),
        gib(needed),
        gib(available)
    ))
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

/// The ranks of this run: MPI's when launched by `mpirun` (binary built with `--features mpi`),
/// else this process alone.
fn grad_sync(timeout_s: u64) -> Result<Box<dyn GradSync>, String> {
    let under_mpirun = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"]
        .iter()
        .any(|var| std::env::var_os(var).is_some());
    if !under_mpirun {
        return Ok(Box::new(LocalSync));
    }
    #[cfg(feature = "mpi")]
    {
        let timeout = std::time::Duration::from_secs(timeout_s);
        brainfloat_accum::MpiSync::init(timeout)
            .map(|sync| Box::new(sync) as Box<dyn GradSync>)
            .ok_or_else(|| "MPI was already initialised".to_string())
    }
    #[cfg(not(feature = "mpi"))]
    {
        let _ = timeout_s;
        Err(
            "launched by mpirun, but this binary was built without the `mpi` feature; use \
             `cargo xtask train --ranks N`"
                .into(),
        )
    }
}

fn train(mut args: TrainArgs) -> Result<(), String> {
    // First, so that a signal during start-up still ends with a checkpoint after one step.
    let stop = StopRequest::install()?;
    if args.overwrite {
        args.run.overrides.push("output.overwrite=true".into());
    }
    let config = load_config(&args.run)?;
    let mut sync = grad_sync(args.sync_timeout)?;
    let (rank, leader, world) = (sync.rank(), sync.is_leader(), sync.world_size());
    init_logs(config.output.log_format, leader);
    // A leader that cannot fetch the corpus ends every rank: the others would wait for it
    // forever in the unwatched wait below. (The trainer does the same for its own start.)
    let aborter = sync.aborter();
    let fail_all = |err: String| -> String {
        if let Some(abort) = aborter {
            eprintln!("error: rank {rank} of {world}: {err}; stopping all ranks");
            abort(1);
        }
        err
    };
    if leader {
        ensure_default_corpus(&config).map_err(fail_all)?;
    }
    // Everyone waits for the leader's corpus (unwatched: a fetch may take minutes).
    sync.wait_for_leader().map_err(|err| err.to_string())?;
    check_fits(
        args.run.backend,
        &config,
        TRAINING_BYTES_PER_PARAM,
        "training",
    )?;
    let device = device(args.run.backend)?;
    let start = match (args.init, args.resume) {
        (Some(path), _) => Start::Init(path),
        (None, Some(path)) if path.as_os_str() == NEWEST => Start::Resume(None),
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
    // Non-finite losses and gradients are the trainer's (train.on_non_finite): every rank sees
    // the same averaged values, so every rank decides the same.
    let mut trainer = Trainer::distributed(config, &device, start, sync)
        .map_err(|err| format!("rank {rank} of {world}: {err}"))?
        .with_plugin(StopOnFlag::new(stop.flag()));
    if leader {
        trainer = trainer
            .with_plugin(LogPlugin::new(log_every))
            .with_plugin(MetricsPlugin::new(metrics).with_memory(step_memory))
            .with_plugin(CheckpointPlugin::new(every, steps));
        if progress {
            trainer = trainer.with_plugin(ProgressPlugin::default());
        }
    }
    match trainer.run() {
        Ok(summary) if summary.stopped_early => {
            // A rank the signal did not reach stopped because another rank was asked to.
            let (signal, code) = stop.received().unwrap_or(("another rank's request", 143));
            let who = if world > 1 {
                format!("rank {rank} of {world}: ")
            } else {
                String::new()
            };
            eprintln!(
                "{who}stopped at step {} on {signal}; resume with --resume",
                summary.steps
            );
            // Dropped first: the output folder's lock is released and MPI finalized.
            drop(trainer);
            std::process::exit(code);
        }
        Ok(summary) => {
            if summary.skipped_steps > 0 {
                eprintln!(
                    "warning: {} step(s) skipped for non-finite loss or gradients",
                    summary.skipped_steps
                );
            }
            Ok(())
        }
        Err(err) if world > 1 => {
            // The other ranks would wait for this one in the next all-reduce: stop them all.
            eprintln!("error: rank {rank} of {world}: {err}; stopping all ranks");
            trainer.abort(1);
            Err(err.to_string())
        }
        Err(err) => Err(err.to_string()),
    }
}

/// Whether `path` names a checkpoint record (`step_*.json`) rather than a weights file.
fn is_record(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "json")
}

/// The model of `checkpoint` and `config` with the model's shape: a record's shape is the
/// record's (whatever `config` says), a safetensors file's is `config`'s (the file carries
/// none). The policy is `config`'s, or with `record_precision` a record's own; a record of
/// another precision is converted, and said so.
fn load_model(
    checkpoint: &Path,
    mut config: TrainConfig,
    record_precision: bool,
    backend: Backend,
    device: &Device,
) -> Result<(Gpt, TrainConfig), String> {
    if !is_record(checkpoint) {
        check_fits(backend, &config, WEIGHTS_BYTES_PER_PARAM, "its weights")?;
        let model = init_model(&config, device).map_err(|e| e.to_string())?;
        let model = load_weights(model, checkpoint).map_err(|e| e.to_string())?;
        return Ok((model, config));
    }
    let record = read_record(checkpoint).map_err(|e| e.to_string())?;
    config.model = record.config.model.clone();
    if record_precision {
        config.train.precision = record.config.train.precision;
    }
    config.validate().map_err(|e| e.to_string())?;
    check_fits(backend, &config, WEIGHTS_BYTES_PER_PARAM, "its weights")
        .map_err(|err| format!("{}: {err}", checkpoint.display()))?;
    let model = init_model(&config, device).map_err(|e| e.to_string())?;
    let model = load_checkpoint_weights(checkpoint, &record, model).map_err(|e| e.to_string())?;
    for note in model_notes(&record.config, &config) {
        tracing::warn!("{}: {note}", checkpoint.display());
    }
    Ok((model, config))
}

fn eval(args: EvalArgs) -> Result<(), String> {
    let (mut config, device) = prepare(&args.run)?;
    if let Some(data) = args.data {
        config.data.val = data;
    }
    let (model, config) = load_model(&args.checkpoint, config, false, args.run.backend, &device)?;
    let policy = *model.policy();
    let paths = shard_paths(&config.data.val).map_err(|e| e.to_string())?;
    let started = std::time::Instant::now();
    let (loss, tokens) =
        validation_loss(&model, &config, paths, &device).map_err(|e| e.to_string())?;
    let tokens_per_sec = tokens as f64 / started.elapsed().as_secs_f64().max(1e-9);
    println!(
        "val_loss {loss:.6} ({tokens} tokens of {}, policy {policy}, {tokens_per_sec:.0} tokens/s)",
        config.data.val.display()
    );
    Ok(())
}

/// `generate`: the prompt, then the model's text as it comes (stdout), then the speed (stderr).
fn generate_text(args: GenerateArgs) -> Result<(), String> {
    use std::io::{Read, Write};
    let config = load_config(&args.run)?;
    init_logs(config.output.log_format, true);
    let device = device(args.run.backend)?;
    // A record's own precision, unless --precision says otherwise.
    let record_precision = args.run.precision.is_none();
    let (model, _) = load_model(
        &args.checkpoint,
        config,
        record_precision,
        args.run.backend,
        &device,
    )?;
    let policy = *model.policy();
    let model = inference_model(model, &device).map_err(|err| err.to_string())?;
    let from_stdin = match args.prompt.as_deref() {
        Some(text) => text == "-",
        None => !std::io::stdin().is_terminal(),
    };
    let prompt = if from_stdin {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|err| format!("cannot read the prompt from standard input: {err}"))?;
        text
    } else {
        args.prompt.unwrap_or_default()
    };
    let tokenizer = Gpt2Tokenizer::new();
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
        &tokenizer,
        &prompt_tokens,
        &options,
        &device,
        |text| {
            let _ = write!(out, "{text}");
            let _ = out.flush();
        },
    )
    .map_err(|err| err.to_string())?;
    let _ = writeln!(out);
    let config = model.config();
    let end = if generation.stopped_at_end_of_text {
        ", stopped at <|endoftext|>"
    } else {
        ""
    };
    let slides = match generation.slides {
        0 => String::new(),
        n => format!(
            ", context slid {n} time(s) at the model's maximum of {}",
            config.max_seq_len
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

fn data(args: DataArgs) -> Result<(), String> {
    init_logs(LogFormat::Human, true);
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
    if let Some(report) = &args.report {
        let report = BenchReport::read(report).map_err(|e| e.to_string())?;
        plot_distribution(&report, &args.out).map_err(|e| e.to_string())?;
    } else if args.lost_updates {
        let runs = args
            .metrics
            .iter()
            .map(|path| LostUpdateCurves::read(path))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        plot_lost_updates(&runs, &args.out).map_err(|e| e.to_string())?;
    } else {
        let runs = args
            .metrics
            .iter()
            .map(|path| Curves::read(path))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        plot_losses(&runs, &args.out, &args.title).map_err(|e| e.to_string())?;
    }
    println!("wrote {}", args.out.display());
    Ok(())
}

fn bench(args: BenchArgs) -> Result<(), String> {
    let (config, device) = prepare(&args.run)?;
    // Each dtype's peak is stated or measured on the device (a dense square product).
    let peak_of = |stated: Option<f64>, dtype| match stated {
        Some(gflops) => Peak::stated(gflops),
        None => measured_peak(dtype, &device),
    };
    let peak = peak_of(args.peak_gflops, FloatDType::F32);
    let bf16_peak = device
        .supports_dtype(DType::BF16)
        .then(|| peak_of(args.bf16_peak_gflops, FloatDType::BF16));
    let command = command_line();
    let options = BenchOptions {
        presets: args
            .presets
            .into_iter()
            .map(PrecisionPolicy::preset)
            .collect(),
        baseline: PrecisionPolicy::preset(args.baseline),
        warmup_steps: args.warmup as usize,
        steps: args.steps as usize,
        matmul_reps: args.matmul_reps,
        peak,
        bf16_peak,
        backend: args.run.backend,
        machine: args.run.backend.machine(),
        command,
    };
    let mut report = run_bench(&config, &device, &options).map_err(|e| e.to_string())?;
    let stem = args
        .name
        .unwrap_or_else(|| format!("bench_{}_{}", config.model.size, args.run.backend));
    std::fs::create_dir_all(&args.out)
        .map_err(|err| format!("{}: cannot create: {err}", args.out.display()))?;
    let loss_file = format!("{stem}_loss.svg");
    let curves: Vec<Curves> = report
        .presets
        .iter()
        .map(|p| Curves::from_losses(&p.preset.to_string(), &p.losses, Some(p.val_loss)))
        .collect();
    plot_losses(
        &curves,
        &args.out.join(&loss_file),
        "training loss per preset (benchmark steps)",
    )
    .map_err(|e| e.to_string())?;
    let memory_file = format!("{stem}_memory.svg");
    plot_distribution(&report, &args.out.join(&memory_file)).map_err(|e| e.to_string())?;
    report.figures = vec![
        Figure {
            title: "loss per preset".into(),
            file: loss_file,
        },
        Figure {
            title: "memory by part and dtype".into(),
            file: memory_file,
        },
    ];
    let (json, md) = report
        .write(&args.out, &stem)
        .map_err(|err| format!("{}: cannot write the report: {err}", args.out.display()))?;
    println!("{}", report.to_markdown());
    println!("wrote {} and {}", md.display(), json.display());
    Ok(())
}

fn study(args: StudyArgs) -> Result<(), String> {
    let (config, device) = prepare(&args.run)?;
    ensure_default_corpus(&config)?;
    let options = StudyOptions {
        presets: args
            .presets
            .into_iter()
            .map(PrecisionPolicy::preset)
            .collect(),
        seeds: args.seeds,
        steps: args.steps as usize,
        eval_every: args.eval_every,
        machine: args.run.backend.machine(),
        command: command_line(),
    };
    let total = options.presets.len() * options.seeds.len();
    let mut done = 0;
    let report = run_study(&config, &device, &options, |run| {
        done += 1;
        eprintln!(
            "study {done}/{total}: {} seed {}: final val loss {:.4} ({:.0} s)",
            run.preset,
            run.seed,
            run.final_val_loss(),
            run.seconds
        );
    })
    .map_err(|e| e.to_string())?;
    std::fs::create_dir_all(&args.out)
        .map_err(|err| format!("{}: cannot create: {err}", args.out.display()))?;
    let figure = args.out.join(format!("{}.svg", args.name));
    plot_convergence(&report, &figure).map_err(|e| e.to_string())?;
    let (json, md) = report
        .write(&args.out, &args.name)
        .map_err(|err| format!("{}: cannot write the report: {err}", args.out.display()))?;
    print!("{}", report.to_markdown(&format!("{}.svg", args.name)));
    println!(
        "wrote {}, {} and {}",
        md.display(),
        json.display(),
        figure.display()
    );
    Ok(())
}

/// The command as a user would type it, for reports.
fn command_line() -> String {
    std::iter::once("cargo xtask".to_string())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ")
}

fn compare(args: CompareArgs) -> Result<(), String> {
    let reports = args
        .reports
        .iter()
        .map(|path| BenchReport::read(path))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let pytorch = args
        .pytorch
        .iter()
        .map(|path| PytorchReference::read(path))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let table = comparison_markdown(&reports, &pytorch);
    print!("{table}");
    if let Some(path) = &args.out {
        std::fs::write(path, &table)
            .map_err(|err| format!("{}: cannot write: {err}", path.display()))?;
    }
    Ok(())
}

fn validate(args: ValidateArgs) -> Result<(), String> {
    let (config, device) = prepare(&args.run)?;
    let checks = validate_pipeline(&config, &device, args.steps).map_err(|e| e.to_string())?;
    print!("{}", format_checks(&checks));
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&checks).map_err(|e| e.to_string())?;
        std::fs::write(path, text)
            .map_err(|err| format!("{}: cannot write: {err}", path.display()))?;
    }
    let failed = checks.iter().filter(|c| !c.passed).count();
    if failed > 0 {
        return Err(format!("{failed} of {} checks failed", checks.len()));
    }
    println!("all {} checks passed", checks.len());
    Ok(())
}
