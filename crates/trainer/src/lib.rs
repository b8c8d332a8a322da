//! The record's training recipe on Burn: Muon (Newton–Schulz in the policy's matmul dtype, the
//! `max(1, rows/cols)^0.5` factor of PyTorch's `[out, in]` layout) for the blocks' matrices, Adam
//! for the embedding, head and scalars, explicit gradient scaling over accumulation steps, and
//! the trapezoidal schedule.
//!
//! The training loop, checkpoints, plugins and configuration are still to come; what is here is
//! checked against the PyTorch reference's six-step training curve.
//!
//! ```
//! use brainfloat_trainer::TrapezoidalSchedule;
//!
//! let schedule = TrapezoidalSchedule { total_steps: 6, warmup_steps: 0, warmdown_steps: 3 };
//! assert_eq!(schedule.multiplier(5), 1.0 / 3.0);
//! ```

mod muon;
mod optim;
mod schedule;

pub use muon::{NS_COEFFICIENTS, newton_schulz};
pub use optim::{ParamGroup, RecordOptimizer, RecordOptimizerConfig, param_group};
pub use schedule::TrapezoidalSchedule;
