//! What brainfloat's results become for people: the pictures ([`plot`]: loss curves of several
//! runs from their `metrics.jsonl`, a benchmark's memory distribution, the lost-update probe, a
//! study's convergence with its spread over seeds) and [`comparison_markdown`], one table across
//! benchmark reports of several backends and machines with PyTorch's figures beside them.
//! The benchmark and the study (`brainfloat-bench`) make the reports; this crate only reads them.
//!
//! ```
//! use brainfloat_reports::plot::Curves;
//!
//! let curves = Curves::from_losses("bf16", &[10.8, 10.2, 9.9], Some(9.95));
//! assert_eq!(curves.train, [(1.0, 10.8), (2.0, 10.2), (3.0, 9.9)]);
//! assert_eq!(curves.val, [(3.0, 9.95)]);
//! ```

mod compare;
mod error;
pub mod plot;

pub use compare::{PytorchPreset, PytorchReference, comparison_markdown};
pub use error::ReportError;
