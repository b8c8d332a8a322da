//! `Collectives` over MPI (OpenMPI through the `mpi` crate), with a watchdog so that a rank never
//! waits forever for a dead or hung peer.
//!
//! The watchdog times each collective on the monotonic clock (a wall-clock jump cannot fire it
//! or hide a hang). It does not time [`Collectives::wait_for_leader`]: there the other ranks wait
//! for rank 0's own work, which may take minutes (fetching the corpus, writing a 2 GB
//! checkpoint); if rank 0 dies meanwhile, mpirun ends the job.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mpi::collective::SystemOperation;
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;

use crate::sync::{Collectives, SyncError};

/// Exit code of a rank that the watchdog stopped.
pub const WATCHDOG_EXIT: i32 = 3;

/// The ranks of `MPI_COMM_WORLD`.
pub struct MpiSync {
    world: SimpleCommunicator,
    // Finalizes MPI when dropped, after `world` (fields drop in declaration order).
    _universe: Universe,
    /// The watchdog's clock: milliseconds are counted from here.
    clock: Instant,
    /// Milliseconds on `clock` (at least 1) at which the watched collective in flight started;
    /// 0 when none is.
    in_flight_since: Arc<AtomicU64>,
}

/// Milliseconds since `clock`, at least 1 (0 means "idle").
fn millis_since(clock: Instant) -> u64 {
    (clock.elapsed().as_millis() as u64).max(1)
}

impl MpiSync {
    /// Initialises MPI and starts the watchdog: a collective that has not completed after
    /// `timeout` (a peer died, hangs, or the network is gone) ends this process with a message
    /// naming the rank, instead of a silent hang. `None` if MPI was already initialised.
    pub fn init(timeout: Duration) -> Option<Self> {
        let universe = mpi::initialize()?;
        let world = universe.world();
        let clock = Instant::now();
        let in_flight_since = Arc::new(AtomicU64::new(0));
        let watched = Arc::clone(&in_flight_since);
        let (rank, size) = (world.rank(), world.size());
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(Duration::from_millis(250));
                let since = watched.load(Ordering::Relaxed);
                let waited = millis_since(clock).saturating_sub(since);
                if since != 0 && waited > timeout.as_millis() as u64 {
                    eprintln!(
                        "error: rank {rank} of {size}: no answer from the other ranks for {} s in \
                         a collective; a rank has died or hangs. Stopping this rank.",
                        timeout.as_secs()
                    );
                    // `_exit`: the main thread is inside MPI or a tensor op, and exit handlers and
                    // destructors run under it crash (libtorch) or wait (MPI_Finalize) there.
                    // SAFETY: `_exit` ends the process at once; it touches no Rust state.
                    unsafe { libc::_exit(WATCHDOG_EXIT) };
                }
            }
        });
        Some(Self {
            world,
            _universe: universe,
            clock,
            in_flight_since,
        })
    }

    /// Runs `collective` under the watchdog.
    fn watched<T>(&self, collective: impl FnOnce(&SimpleCommunicator) -> T) -> T {
        self.in_flight_since
            .store(millis_since(self.clock), Ordering::Relaxed);
        let result = collective(&self.world);
        self.in_flight_since.store(0, Ordering::Relaxed);
        result
    }
}

impl Collectives for MpiSync {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }

    fn world_size(&self) -> usize {
        self.world.size() as usize
    }

    fn all_reduce_mean(&mut self, buffer: &mut [f32]) -> Result<(), SyncError> {
        if buffer.len() > i32::MAX as usize {
            return Err(SyncError {
                rank: self.rank(),
                world_size: self.world_size(),
                problem: format!("a buffer of {} elements is too large for MPI", buffer.len()),
            });
        }
        let local = buffer.to_vec();
        self.watched(|world| world.all_reduce_into(&local[..], buffer, SystemOperation::sum()));
        let ranks = self.world_size() as f32;
        buffer.iter_mut().for_each(|v| *v /= ranks);
        Ok(())
    }

    fn mean(&mut self, value: f64) -> Result<f64, SyncError> {
        let mut total = 0.0f64;
        self.watched(|world| world.all_reduce_into(&value, &mut total, SystemOperation::sum()));
        Ok(total / self.world_size() as f64)
    }

    fn all_gather(&mut self, value: u64) -> Result<Vec<u64>, SyncError> {
        let mut values = vec![0u64; self.world_size()];
        self.watched(|world| world.all_gather_into(&value, &mut values[..]));
        Ok(values)
    }

    fn barrier(&mut self) -> Result<(), SyncError> {
        self.watched(|world| world.barrier());
        Ok(())
    }

    fn wait_for_leader(&mut self) -> Result<(), SyncError> {
        // Not `watched`: rank 0 works alone until it gets here.
        self.world.barrier();
        Ok(())
    }

    fn abort(&mut self, code: i32) {
        self.world.abort(code)
    }

    fn aborter(&self) -> Option<fn(i32)> {
        Some(abort_world)
    }
}

/// `MPI_Abort` on `MPI_COMM_WORLD`: mpirun ends every rank with `code`.
fn abort_world(code: i32) {
    // SAFETY: reached only through an `MpiSync`, which initialised MPI; MPI_COMM_WORLD is
    // valid from then until finalisation, and MPI_Abort does not return on success.
    unsafe { mpi::ffi::MPI_Abort(mpi::ffi::RSMPI_COMM_WORLD, code) };
    std::process::abort()
}
