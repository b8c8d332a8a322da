//! Stopping a run on a signal. The first SIGINT (Ctrl-C), SIGTERM (what SLURM, Kubernetes and
//! systemd send before SIGKILL) or SIGUSR1 (what SLURM's `--signal=USR1@<seconds>` sends ahead of
//! a job's time limit) lets the step finish, writes a checkpoint (before any evaluation, which an
//! evaluation in progress abandons) and exits with 128 + the signal's number (130, 143, 138); a
//! second one exits at once. Under mpirun every rank
//! stops at the same step: the trainer averages the stop flag over the ranks each step.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};
use signal_hook::iterator::Signals;

use crate::error::CliError;

/// The signal that asked the run to stop, once one has.
#[derive(Clone)]
pub struct StopRequest {
    signal: Arc<AtomicI32>,
    flag: Arc<AtomicBool>,
}

impl StopRequest {
    /// Handles SIGINT, SIGTERM and SIGUSR1 from now on.
    pub fn install() -> Result<Self, CliError> {
        let mut signals = Signals::new([SIGINT, SIGTERM, SIGUSR1]).map_err(|err| {
            CliError::Refused(format!("cannot handle SIGINT, SIGTERM and SIGUSR1: {err}"))
        })?;
        let request = Self {
            signal: Arc::new(AtomicI32::new(0)),
            flag: Arc::new(AtomicBool::new(false)),
        };
        let seen = request.clone();
        std::thread::spawn(move || {
            for signal in signals.forever() {
                if seen.signal.swap(signal, Ordering::SeqCst) != 0 {
                    // `_exit`: no destructors or atexit handlers, which would run while the main
                    // thread is still inside a tensor op (libtorch's crash the process then).
                    signal_hook::low_level::exit(exit_code(signal));
                }
                seen.flag.store(true, Ordering::SeqCst);
                eprintln!(
                    "{}: stopping after this step with a checkpoint (again: now)",
                    name(signal)
                );
            }
        });
        Ok(request)
    }

    /// The flag a [`StopOnFlag`](brainfloat_trainer::plugins::StopOnFlag) plugin watches.
    pub fn flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.flag)
    }

    /// The first signal received, if any: its name and the exit code it asks for.
    pub fn received(&self) -> Option<(&'static str, i32)> {
        match self.signal.load(Ordering::SeqCst) {
            0 => None,
            signal => Some((name(signal), exit_code(signal))),
        }
    }
}

/// The shell's convention: killed by signal n, status 128 + n.
fn exit_code(signal: i32) -> i32 {
    128 + signal
}

fn name(signal: i32) -> &'static str {
    match signal {
        SIGINT => "Ctrl-C (SIGINT)",
        SIGTERM => "SIGTERM",
        SIGUSR1 => "SIGUSR1",
        _ => "a signal",
    }
}
