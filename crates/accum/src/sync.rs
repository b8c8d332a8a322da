//! The `GradSync` trait and its single-process implementation.

/// A collective that failed: a rank died, hung, or the transport broke.
#[derive(Debug, thiserror::Error)]
#[error("gradient sync (rank {rank} of {world_size}): {problem}")]
pub struct SyncError {
    /// This process's rank.
    pub rank: usize,
    /// Number of ranks.
    pub world_size: usize,
    /// What went wrong.
    pub problem: String,
}

/// What a data-parallel trainer needs from its ranks: who it is, element-wise means of fp32
/// buffers (gradients), means of scalars (losses), and a way to stop everyone.
pub trait GradSync {
    /// This process's rank, `0..world_size`.
    fn rank(&self) -> usize;

    /// Number of ranks.
    fn world_size(&self) -> usize;

    /// Replaces `buffer` on every rank by the element-wise mean over all ranks, computed in
    /// fp32 (sum, then divide by the number of ranks).
    fn all_reduce_mean(&mut self, buffer: &mut [f32]) -> Result<(), SyncError>;

    /// The mean of `value` over all ranks, in fp64.
    fn mean(&mut self, value: f64) -> Result<f64, SyncError>;

    /// Waits until every rank gets here, however long rank 0's own work before it takes (the
    /// corpus fetch, a checkpoint write): a watchdog on collectives does not count this wait.
    fn wait_for_leader(&mut self) -> Result<(), SyncError> {
        self.mean(0.0).map(drop)
    }

    /// Ends every rank's process after a local error, so that none waits forever in a
    /// collective for this one. Returns on a single rank, where there is nobody to stop.
    fn abort(&mut self, code: i32);

    /// Whether this rank writes logs, metrics and checkpoints (rank 0).
    fn is_leader(&self) -> bool {
        self.rank() == 0
    }
}

/// One process alone: every mean is the value itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct LocalSync;

impl GradSync for LocalSync {
    fn rank(&self) -> usize {
        0
    }

    fn world_size(&self) -> usize {
        1
    }

    fn all_reduce_mean(&mut self, _buffer: &mut [f32]) -> Result<(), SyncError> {
        Ok(())
    }

    fn mean(&mut self, value: f64) -> Result<f64, SyncError> {
        Ok(value)
    }

    fn abort(&mut self, _code: i32) {}
}
