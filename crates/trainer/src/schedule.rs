//! The record's learning-rate schedule: warmup, flat, linear warmdown to 0.

/// Trapezoidal learning-rate multiplier over `total_steps` optimizer steps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrapezoidalSchedule {
    /// Number of optimizer steps.
    pub total_steps: usize,
    /// Linear warmup length (0 in the record).
    pub warmup_steps: usize,
    /// Linear warmdown length at the end.
    pub warmdown_steps: usize,
}

impl TrapezoidalSchedule {
    /// `total_steps` optimizer steps, the first `warmup_steps` rising, the last `warmdown_steps`
    /// falling to 0.
    pub const fn new(total_steps: usize, warmup_steps: usize, warmdown_steps: usize) -> Self {
        Self {
            total_steps,
            warmup_steps,
            warmdown_steps,
        }
    }

    /// The multiplier at optimizer step `step` (0-based): `(step+1)/warmup` during warmup, 1 on
    /// the flat part, `(N − step)/W` during the warmdown, as the reference computes it.
    pub fn multiplier(&self, step: usize) -> f64 {
        let (n, warmup, warmdown) = (self.total_steps, self.warmup_steps, self.warmdown_steps);
        if step < warmup {
            (step + 1) as f64 / warmup as f64
        } else if step < n - warmdown {
            1.0
        } else {
            (n - step) as f64 / warmdown as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundaries_match_the_reference() {
        let s = TrapezoidalSchedule::new(6, 0, 3);
        let values: Vec<f64> = (0..6).map(|i| s.multiplier(i)).collect();
        assert_eq!(values, [1.0, 1.0, 1.0, 1.0, 2.0 / 3.0, 1.0 / 3.0]);
        let record = TrapezoidalSchedule::new(3242, 0, 926);
        assert_eq!(record.multiplier(2315), 1.0);
        assert_eq!(record.multiplier(2316), 1.0);
        assert_eq!(record.multiplier(2317), 925.0 / 926.0);
        assert_eq!(record.multiplier(3241), 1.0 / 926.0);
        let warm = TrapezoidalSchedule::new(10, 4, 2);
        assert_eq!(warm.multiplier(0), 0.25);
        assert_eq!(warm.multiplier(3), 1.0);
        assert_eq!(warm.multiplier(8), 1.0);
        assert_eq!(warm.multiplier(9), 0.5);
    }
}
