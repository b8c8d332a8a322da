//! `brainfloat plot`: loss curves, the lost-update probe, or a report's memory, as SVG.

use std::path::PathBuf;

use brainfloat_bench::BenchReport;
use brainfloat_reports::plot::{
    Curves, LostUpdateCurves, plot_distribution, plot_losses, plot_lost_updates,
};
use clap::Args;

use crate::error::CliError;

#[derive(Args)]
pub struct PlotArgs {
    /// The metrics files; each run is labelled with its folder's name.
    #[arg(required_unless_present = "report")]
    pub metrics: Vec<PathBuf>,
    /// The SVG to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Chart title.
    #[arg(long, default_value = "loss")]
    pub title: String,
    /// Plot the lost-update probe per parameter group instead of the losses.
    #[arg(long)]
    pub lost_updates: bool,
    /// Draw a benchmark report's memory distribution (its JSON) instead.
    #[arg(long, conflicts_with_all = ["metrics", "lost_updates"])]
    pub report: Option<PathBuf>,
}

/// Runs `brainfloat plot`.
pub fn run(args: PlotArgs) -> Result<(), CliError> {
    if let Some(report) = &args.report {
        let report = BenchReport::read(report)?;
        plot_distribution(&report, &args.out)?;
    } else if args.lost_updates {
        let runs = args
            .metrics
            .iter()
            .map(|path| LostUpdateCurves::read(path))
            .collect::<Result<Vec<_>, _>>()?;
        plot_lost_updates(&runs, &args.out)?;
    } else {
        let runs = args
            .metrics
            .iter()
            .map(|path| Curves::read(path))
            .collect::<Result<Vec<_>, _>>()?;
        plot_losses(&runs, &args.out, &args.title)?;
    }
    println!("wrote {}", args.out.display());
    Ok(())
}
