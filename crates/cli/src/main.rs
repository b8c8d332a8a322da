//! `brainfloat`: train, evaluate, generate from and export the record's GPT or GPT-2 in bf16
//! mixed precision, and prepare their data.

// The arguments' doc comments are clap's help text, where `tch-cuda[:N]` and `bench_<size>` are
// literal, neither a link nor HTML.
#![allow(rustdoc::broken_intra_doc_links, rustdoc::invalid_html_tags)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::error::CliError;

mod bench;
mod compare;
mod corpus;
mod data;
mod error;
mod eval;
mod export;
mod generate;
mod gpu_check;
mod ledger;
mod plot;
mod setup;
mod stop;
mod study;
mod train;
mod validate;

/// Counts heap bytes so that metrics and the benchmark report measured peak memory.
#[global_allocator]
static HEAP: brainfloat_memory::CountingAllocator = brainfloat_memory::CountingAllocator;

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
    Train(train::TrainArgs),
    /// Print the validation loss of a checkpoint or of PyTorch-named weights.
    Eval(eval::EvalArgs),
    /// Generate text from a checkpoint or PyTorch-named weights, streamed as it is produced.
    Generate(generate::GenerateArgs),
    /// Write a GPT-2 model as a Hugging Face folder (config.json, model.safetensors).
    Export(export::ExportArgs),
    /// Fetch and tokenize the default corpus, or tokenize your own text.
    Data(data::DataArgs),
    /// Measure fp32, autocast and bf16 side by side: time, memory, loss, utilisation.
    Bench(bench::BenchArgs),
    /// Validate the bf16 pipeline: fp32 and bf16 learn and agree, dtypes, checkpoint round-trip.
    Validate(validate::ValidateArgs),
    /// Plot the loss curves (or the lost-update probe) of runs (their metrics.jsonl) as SVG.
    Plot(plot::PlotArgs),
    /// One table from benchmark reports of several backends, with PyTorch's figures beside.
    Compare(compare::CompareArgs),
    /// Train every preset from several seeds: final validation loss, mean ± sd, and the curves.
    Study(study::StudyArgs),
    /// Count one training step's libtorch operators and bytes: composed and device routes.
    Ledger(ledger::LedgerArgs),
    /// Check every op of a GPU's device route against the composed ops, and the device kernels.
    GpuCheck(gpu_check::GpuCheckArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    brainfloat_memory::retain_freed_memory(true);
    // A libtorch route the environment names wrongly is refused before anything runs (the ops
    // would otherwise take the automatic route without a word).
    let route = brainfloat_ops::LibTorchRoute::from_env().map_err(CliError::Refused);
    let result = route.and_then(|_| match cli.command {
        Command::Train(args) => train::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Generate(args) => generate::run(args),
        Command::Export(args) => export::run(args),
        Command::Data(args) => data::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Validate(args) => validate::run(args),
        Command::Plot(args) => plot::run(args),
        Command::Compare(args) => compare::run(args),
        Command::Study(args) => study::run(args),
        Command::Ledger(args) => ledger::run(args),
        Command::GpuCheck(args) => gpu_check::run(args),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}
