//! The peak FLOP/s that utilisation (MFU) is measured against, and where it came from.

use serde::{Deserialize, Serialize};

/// A peak rate and how it was obtained (printed beside every MFU figure).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Peak {
    /// Peak rate in GFLOP/s.
    pub gflops: f64,
    /// How it was obtained.
    pub source: String,
}

impl Peak {
    /// A peak the user states (a GPU's data-sheet bf16 dense rate, say).
    pub fn stated(gflops: f64) -> Self {
        Self {
            gflops,
            source: format!("stated on the command line: {gflops} GFLOP/s"),
        }
    }

    /// The nominal fp32 peak of this CPU: cores × clock × FLOPs per cycle per core, with the
    /// clock from `/proc/cpuinfo` and 32 fp32 FLOPs per cycle for a core with FMA (two 256-bit
    /// FMA pipes: 2 × 8 lanes × 2; AMD Zen 3/4, most AVX2 cores), 16 for AVX without FMA, 8
    /// otherwise. `None` where `/proc/cpuinfo` does not give a clock.
    pub fn nominal_cpu() -> Option<Self> {
        let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
        Self::from_cpuinfo(&info, std::thread::available_parallelism().ok()?.get())
    }

    /// [`nominal_cpu`](Self::nominal_cpu) from the text of `/proc/cpuinfo` and a core count.
    pub fn from_cpuinfo(cpuinfo: &str, cores: usize) -> Option<Self> {
        let field = |name: &str| {
            cpuinfo.lines().find_map(|line| {
                let (key, value) = line.split_once(':')?;
                (key.trim() == name).then(|| value.trim().to_string())
            })
        };
        let mhz: f64 = field("cpu MHz")?.parse().ok()?;
        let flags = field("flags").unwrap_or_default();
        let has = |flag: &str| flags.split_whitespace().any(|f| f == flag);
        let (per_cycle, why) = if has("fma") {
            (32.0, "two 256-bit FMA pipes")
        } else if has("avx") {
            (16.0, "AVX without FMA")
        } else {
            (8.0, "SSE")
        };
        let model = field("model name").unwrap_or_else(|| "CPU".into());
        let gflops = cores as f64 * mhz / 1e3 * per_cycle;
        Some(Self {
            gflops,
            source: format!(
                "nominal fp32 peak of this {model}: {cores} cores × {mhz:.0} MHz × {per_cycle} \
                 FLOP/cycle ({why})"
            ),
        })
    }

    /// Achieved FLOP/s as a fraction of this peak.
    pub fn utilisation(&self, achieved_gflops: f64) -> f64 {
        achieved_gflops / self.gflops
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nominal_peak_is_cores_times_clock_times_flops_per_cycle() {
        let info = "model name\t: AMD EPYC\ncpu MHz\t\t: 2596.000\nflags\t\t: fpu avx fma avx2\n";
        let peak = Peak::from_cpuinfo(info, 2).unwrap();
        assert!((peak.gflops - 2.0 * 2.596 * 32.0).abs() < 1e-9);
        assert!(
            peak.source.contains("2 cores × 2596 MHz × 32"),
            "{}",
            peak.source
        );
        let no_fma = Peak::from_cpuinfo("cpu MHz : 1000\nflags : avx\n", 4).unwrap();
        assert_eq!(no_fma.gflops, 64.0);
        assert_eq!(Peak::from_cpuinfo("flags : fma\n", 2), None);
        assert!((peak.utilisation(83.072) - 0.5).abs() < 1e-12);
    }
}
