//! `brainfloat train`: one run (or one rank of an `mpirun`), its plugins, and how it ends.

use std::path::PathBuf;

use brainfloat_distributed::{Collectives, LocalSync};
use brainfloat_gpt::{ArchWork, LanguageModel};
use brainfloat_trainer::plugins::{
    CheckpointPlugin, LogPlugin, MetricsPlugin, ProgressPlugin, StopOnFlag,
};
use brainfloat_trainer::{Start, TrainConfig, TrainerBuilder};
use burn::tensor::Device;
use clap::Args;

use crate::error::CliError;
use crate::setup::{
    RunArgs, Runs, WeightsSource, check_training_fits, device, ensure_default_corpus, init_logs,
    load_config, with_shape,
};
use crate::stop::StopRequest;

/// What `--resume` without a value stands for: the output folder's newest checkpoint.
const NEWEST: &str = "newest";

#[derive(Args)]
pub struct TrainArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// Start from these weights: a safetensors file with PyTorch names (its shape from the file
    /// when written here, else from the config), or hf:DIR, a Hugging Face GPT-2 folder
    /// (config.json + model.safetensors; the model's shape is the folder's).
    #[arg(long, conflicts_with = "resume")]
    pub init: Option<WeightsSource>,
    /// Resume from a checkpoint record (step_*.json), a folder, or the run's newest checkpoint.
    #[arg(long, num_args = 0..=1, default_missing_value = NEWEST)]
    pub resume: Option<PathBuf>,
    /// Start afresh in an output folder that holds another run's checkpoints, moving them and
    /// its metrics into a subfolder (output.overwrite = true).
    #[arg(long, conflicts_with = "resume")]
    pub overwrite: bool,
    /// Under mpirun: seconds a rank waits in one collective before it declares a peer dead.
    #[arg(long, default_value_t = 120)]
    pub sync_timeout: u64,
}

/// The ranks of this run: MPI's when launched by `mpirun` (binary built with `--features mpi`),
/// else this process alone.
fn grad_sync(timeout_s: u64) -> Result<Box<dyn Collectives>, CliError> {
    let under_mpirun = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"]
        .iter()
        .any(|var| std::env::var_os(var).is_some());
    if !under_mpirun {
        return Ok(Box::new(LocalSync));
    }
    #[cfg(feature = "mpi")]
    {
        let timeout = std::time::Duration::from_secs(timeout_s);
        brainfloat_distributed::MpiSync::init(timeout)
            .map(|sync| Box::new(sync) as Box<dyn Collectives>)
            .ok_or_else(|| CliError::Refused("MPI was already initialised".into()))
    }
    #[cfg(not(feature = "mpi"))]
    {
        let _ = timeout_s;
        Err(CliError::Refused(
            "launched by mpirun, but this binary was built without the `mpi` feature; use \
             `cargo xtask train --ranks N`"
                .into(),
        ))
    }
}

/// Runs `brainfloat train`.
pub fn run(args: TrainArgs) -> Result<(), CliError> {
    // First, so that a signal during start-up still ends with a checkpoint after one step.
    let stop = StopRequest::install()?;
    let mut config = load_config(&args.run)?;
    // Weights that carry their shape build that model, whatever the config says.
    if let Some(shape) = args
        .init
        .as_ref()
        .map(WeightsSource::shape)
        .transpose()?
        .flatten()
    {
        config = with_shape(config, &shape)?;
    }
    let start = match (args.init, args.resume) {
        (Some(WeightsSource::Weights(path)), _) => Start::Init(path),
        (Some(WeightsSource::HuggingFace(dir)), _) => Start::InitHf(dir),
        (Some(WeightsSource::Record(path)), _) => {
            return Err(CliError::Refused(format!(
                "--init takes weights (a safetensors file or hf:DIR), not the checkpoint record \
                 {}: continue it with --resume, or start from its weights file (named in it)",
                path.display()
            )));
        }
        (None, Some(path)) if path.as_os_str() == NEWEST => Start::Resume(None),
        (None, Some(path)) => Start::Resume(Some(path)),
        (None, None) => Start::Fresh,
    };
    if args.overwrite {
        config.output.overwrite = true;
    }
    let mut sync = grad_sync(args.sync_timeout)?;
    let (rank, leader, world) = (sync.rank(), sync.is_leader(), sync.world_size());
    init_logs(config.output.log_format, leader);
    // A leader that cannot fetch the corpus ends every rank: the others would wait for it
    // forever in the unwatched wait below. (The trainer does the same for its own start.)
    let aborter = sync.aborter();
    let fail_all = |err: CliError| -> CliError {
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
    sync.wait_for_leader()?;
    let policy = [config.train.precision];
    check_training_fits(args.run.backend, &config, &policy, Runs::InTurn)?;
    let device = device(args.run.backend)?;
    let shape = config.shape().clone();
    shape.dispatch(Run {
        config,
        start,
        sync,
        stop,
        device,
    })
}

/// A run ready to start: what [`Run::run`] needs to build the trainer of the config's
/// architecture and train.
struct Run {
    config: TrainConfig,
    start: Start,
    sync: Box<dyn Collectives>,
    stop: StopRequest,
    device: Device,
}

/// Trains the model type `M` (the config's architecture's) with the plugins of a run: logs,
/// metrics, checkpoints and progress on rank 0, the stop request everywhere.
impl ArchWork for Run {
    type Output = Result<(), CliError>;

    fn run<M: LanguageModel>(self) -> Result<(), CliError> {
        let Run {
            config,
            start,
            sync,
            stop,
            device,
        } = self;
        let (rank, leader, world) = (sync.rank(), sync.is_leader(), sync.world_size());
        let progress = config.output.progress;
        let mut metrics_plugin = MetricsPlugin::new(config.output.dir.join("metrics.jsonl"))
            .with_memory(brainfloat_memory::step_reading);
        if config.output.tensorboard {
            metrics_plugin = metrics_plugin.with_tensorboard(config.output.dir.clone());
        }
        let (steps, every) = (config.train.steps, config.output.checkpoint_every);
        let log_every = if progress {
            steps.max(1)
        } else {
            (steps / 20).max(1)
        };
        // Non-finite losses and gradients are the trainer's (train.on_non_finite): every rank sees
        // the same averaged values, so every rank decides the same.
        let mut builder = TrainerBuilder::<M>::new(config)
            .start(start)
            .sync(sync)
            .plugin(StopOnFlag::new(stop.flag()));
        if leader {
            builder = builder
                .plugin(LogPlugin::new(log_every))
                .plugin(metrics_plugin)
                .plugin(CheckpointPlugin::new(every, steps));
            if progress {
                builder = builder.plugin(ProgressPlugin::default());
            }
        }
        let mut trainer = builder
            .build(&device)
            .map_err(|err| CliError::from(err).within(format!("rank {rank} of {world}")))?;
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
                Err(err.into())
            }
            Err(err) => Err(err.into()),
        }
    }
}
