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

    /// Achieved FLOP/s as a fraction of this peak.
    pub fn utilisation(&self, achieved_gflops: f64) -> f64 {
        achieved_gflops / self.gflops
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utilisation_is_achieved_over_peak() {
        let peak = Peak::stated(166.144);
        assert!((peak.utilisation(83.072) - 0.5).abs() < 1e-12);
        assert!(peak.source.contains("166.144 GFLOP/s"), "{}", peak.source);
    }
}
