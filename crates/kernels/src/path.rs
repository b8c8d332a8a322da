//! Which implementation of the kernels runs: chosen once per process from the CPU's features and
//! [`PATH_VAR`].

use std::sync::OnceLock;

/// Set to `portable` to force the portable path (for tests: no CPU runs it otherwise).
pub const PATH_VAR: &str = "BRAINFLOAT_KERNELS";

/// The two implementations of the bf16 GEMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelPath {
    /// The `gemmkit` crate's kernels, chosen for the CPU at run time: `vdpbf16ps` (bf16 pairs
    /// into fp32 accumulators) with AVX512-BF16, its widening fp32 kernels (AVX-512F, AVX2 with
    /// FMA, NEON) elsewhere. bf16 results are rounded and stored a register tile at a time.
    Gemmkit,
    /// Any CPU: both operands widened to fp32 (exactly) whole, the `gemm` crate's fp32 GEMM
    /// (flex's) into an fp32 product the output's size, rounded once to bf16 at the end. Slower
    /// and larger than [`KernelPath::Gemmkit`] on every CPU measured (docs/kernels.md); kept as
    /// an independent implementation to check it against.
    Portable,
}

impl KernelPath {
    /// The path this process runs: [`KernelPath::Gemmkit`] unless [`PATH_VAR`] says
    /// `portable`. Decided on the first call.
    pub fn active() -> Self {
        static ACTIVE: OnceLock<KernelPath> = OnceLock::new();
        *ACTIVE.get_or_init(|| {
            let forced = std::env::var(PATH_VAR).is_ok_and(|v| v.eq_ignore_ascii_case("portable"));
            if forced {
                Self::Portable
            } else {
                Self::Gemmkit
            }
        })
    }

    /// Whether this CPU has AVX512-BF16 (`vdpbf16ps`): gemmkit's bf16 kernels then multiply
    /// bf16 natively, and so do libtorch's (oneDNN).
    pub fn cpu_has_avx512_bf16() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            std::arch::is_x86_feature_detected!("avx512bf16")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }

    /// The name used in reports: `gemmkit` or `portable`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Gemmkit => "gemmkit",
            Self::Portable => "portable",
        }
    }
}

/// Whether this CPU has the AVX-512 subsets (F, BW, DQ, VL) the kernels' `#[target_feature]`
/// loops are compiled for (16 fp32 lanes, 8 lanes of 64-bit multiplies).
#[cfg(target_arch = "x86_64")]
pub(crate) fn avx512() -> bool {
    static AVX512: OnceLock<bool> = OnceLock::new();
    *AVX512.get_or_init(|| {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512dq")
            && is_x86_feature_detected!("avx512vl")
    })
}
