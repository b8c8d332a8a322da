//! `brainfloat compare`: one table from the benchmark reports of several backends.

use std::path::PathBuf;

use brainfloat_bench::BenchReport;
use brainfloat_reports::{PytorchReference, comparison_markdown};
use clap::Args;

use crate::error::CliError;

#[derive(Args)]
pub struct CompareArgs {
    /// Benchmark reports (their JSON).
    #[arg(required = true)]
    pub reports: Vec<PathBuf>,
    /// PyTorch's step times for the same model (scripts/pytorch_reference.py --json); repeat
    /// for eager and `--compile` runs.
    #[arg(long)]
    pub pytorch: Vec<PathBuf>,
    /// Also write the table here.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Runs `brainfloat compare`.
pub fn run(args: CompareArgs) -> Result<(), CliError> {
    let reports = args
        .reports
        .iter()
        .map(|path| BenchReport::read(path))
        .collect::<Result<Vec<_>, _>>()?;
    let pytorch = args
        .pytorch
        .iter()
        .map(|path| PytorchReference::read(path))
        .collect::<Result<Vec<_>, _>>()?;
    let table = comparison_markdown(&reports, &pytorch);
    print!("{table}");
    if let Some(path) = &args.out {
        let file = format!("Command: `{}`\n\n{table}", crate::setup::command_line());
        std::fs::write(path, file).map_err(|err| CliError::io(path, "write", err))?;
    }
    Ok(())
}
