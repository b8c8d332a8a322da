//! Which implementation of the kernels runs: chosen once per process from the CPU's features and
//! [`PATH_VAR`].

use std::sync::OnceLock;

/// Set to `portable` to force the portable path on a CPU that has AVX512-BF16 (for tests).
pub const PATH_VAR: &str = "BRAINFLOAT_KERNELS";

/// The two implementations of the bf16 kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelPath {
    /// x86-64 AVX512-BF16: `vdpbf16ps` multiplies bf16 pairs into fp32 accumulators.
    Avx512Bf16,
    /// Any CPU: bf16 widened to fp32 (exactly), fp32 arithmetic, rounded once to bf16 at the end.
    Portable,
}

impl KernelPath {
    /// The path this process runs: AVX512-BF16 when the CPU has it and [`PATH_VAR`] does not
    /// say `portable`. Decided on the first call.
    pub fn active() -> Self {
        static ACTIVE: OnceLock<KernelPath> = OnceLock::new();
        *ACTIVE.get_or_init(|| {
            let forced = std::env::var(PATH_VAR).is_ok_and(|v| v.eq_ignore_ascii_case("portable"));
            if !forced && Self::cpu_has_avx512_bf16() {
                Self::Avx512Bf16
            } else {
                Self::Portable
            }
        })
    }

    /// Whether this CPU can run [`KernelPath::Avx512Bf16`].
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

    /// The name used in reports: `avx512-bf16` or `portable`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Avx512Bf16 => "avx512-bf16",
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
