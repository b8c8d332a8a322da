//! The precision benchmark and the pipeline's validation.
//!
//! [`run_bench`] trains the same model on the same data from the same seed under each preset
//! (`fp32`, `autocast`, `bf16`), times the presets interleaved step by step after warm-up, and
//! reports per preset the seed's Table 3.1 columns — step time (median and spread), tokens/s,
//! peak memory (a counting global allocator and the process RSS), validation loss at equal
//! steps, achieved FLOP/s and MFU against a stated [`Peak`] — with ratios to the `autocast`
//! baseline, the memory distribution by part and dtype, and a matmul micro-benchmark of the
//! model's shapes. [`validate`] runs the checks a user wants before a long bf16 run. The reports'
//! pictures and the table across backends are `brainfloat-reports`'.
//!
//! ```
//! use brainfloat_bench::{MatmulShape, Spread};
//!
//! let head = MatmulShape { name: "lm_head forward".into(), m: 1024, k: 64, n: 50304 };
//! assert_eq!(head.flops(), 2 * 1024 * 64 * 50304);
//! let times = Spread::of(&[2.0, 1.0, 3.0]).unwrap();
//! assert_eq!(times.median, 2.0);
//! ```

mod distribution;
mod error;
mod matmul;
mod peak;
mod report;
mod run;
mod short_run;
mod stats;
mod study;
pub mod validate;

pub use distribution::{DistributionRow, Part, RowDtype, measure_distribution, part_bytes};
pub use error::{BenchError, read_json};
pub use matmul::{
    MatmulResult, MatmulShape, PEAK_SIDE, bench_matmuls, measured_peak, model_matmul_shapes,
    time_matmul,
};
pub use peak::Peak;
pub use report::{
    BenchReport, Figure, MemoryResult, ModelInfo, PresetResult, mib, write_json_and_markdown,
};
pub use run::{BenchOptions, run_bench};
pub use short_run::short_run_config;
pub use stats::{Spread, mean_and_sd};
pub use study::{StudyOptions, StudyReport, StudyRun, run_study};
