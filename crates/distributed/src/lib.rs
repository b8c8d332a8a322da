//! Data-parallel ranks: the collectives a trainer needs, and gradients averaged in fp32.
//!
//! The trainer talks only to the [`Collectives`] trait, typed by what travels (fp32 buffers and
//! float means, integers gathered, flags any rank set, barriers): [`LocalSync`] is one process alone
//! (nothing to exchange), `MpiSync` (feature `mpi`) is OpenMPI across processes and machines.
//! [`all_reduce_gradients`] averages a step's accumulated gradients over the ranks once per
//! optimizer step: every gradient is upcast to fp32 (bf16 gradients of bf16 parameters too),
//! packed into a few large flat buffers, reduced, and cast back to its parameter's dtype.
//!
//! ```
//! use brainfloat_distributed::{Collectives, LocalSync};
//!
//! let mut sync = LocalSync;
//! let mut grads = vec![1.0f32, 2.0];
//! sync.all_reduce_mean(&mut grads).unwrap();
//! assert_eq!((sync.rank(), sync.world_size(), grads), (0, 1, vec![1.0, 2.0]));
//! ```

#[cfg(feature = "mpi")]
mod mpi_sync;
mod sync;

#[cfg(feature = "mpi")]
pub use mpi_sync::MpiSync;
pub use sync::{BUCKET_ELEMENTS, all_reduce_gradients, all_reduce_gradients_in_buckets};
pub use sync::{Collectives, LocalSync, SyncError};
