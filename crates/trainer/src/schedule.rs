//! The learning-rate schedule: a linear warmup, then the record's trapezoid (flat, then a linear
//! warmdown to 0), a cosine decay, or a linear decay, the last two down to a floor.

use serde::{Deserialize, Serialize};

use brainfloat_choice::choice;

/// What follows the warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum ScheduleKind {
    /// The record's: flat, then the last `warmdown_steps` falling linearly to 0.
    #[default]
    Trapezoid,
    /// Half a cosine from 1 to the floor over the steps after the warmup.
    Cosine,
    /// A straight line from 1 to the floor over the steps after the warmup.
    Linear,
}

choice!(ScheduleKind, "schedule", {
    Trapezoid => "trapezoid",
    Cosine => "cosine",
    Linear => "linear",
});

/// The learning-rate multiplier over `total_steps` optimizer steps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    /// What follows the warmup.
    pub kind: ScheduleKind,
    /// Number of optimizer steps.
    pub total_steps: usize,
    /// Linear warmup length (0 in the record).
    pub warmup_steps: usize,
    /// The trapezoid's linear warmdown at the end.
    pub warmdown_steps: usize,
    /// Where the cosine and linear decays end, as a fraction of the peak.
    pub min_ratio: f64,
}

impl Schedule {
    /// The record's trapezoid: `total_steps` optimizer steps, the first `warmup_steps` rising,
    /// the last `warmdown_steps` falling to 0.
    pub const fn trapezoid(total_steps: usize, warmup_steps: usize, warmdown_steps: usize) -> Self {
        Self {
            kind: ScheduleKind::Trapezoid,
            total_steps,
            warmup_steps,
            warmdown_steps,
            min_ratio: 0.0,
        }
    }

    /// `kind` after `warmup_steps` of warmup, decaying to `min_ratio` by the last step.
    pub const fn decay(
        kind: ScheduleKind,
        total_steps: usize,
        warmup_steps: usize,
        min_ratio: f64,
    ) -> Self {
        Self {
            kind,
            total_steps,
            warmup_steps,
            warmdown_steps: 0,
            min_ratio,
        }
    }

    /// The multiplier at optimizer step `step` (0-based): `(step+1)/warmup` during warmup; then
    /// for the trapezoid 1 on the flat part and `(N − step)/W` during the warmdown, as the
    /// reference computes it; for the decays `min + (1 − min)·f(p)` with `p` the fraction of
    /// the steps after the warmup done, `f = (1 + cos πp)/2` or `1 − p`.
    pub fn multiplier(&self, step: usize) -> f64 {
        let (n, warmup) = (self.total_steps, self.warmup_steps);
        if step < warmup {
            return (step + 1) as f64 / warmup as f64;
        }
        let progress = (step - warmup) as f64 / (n - warmup).max(1) as f64;
        let decayed = |f: f64| self.min_ratio + (1.0 - self.min_ratio) * f;
        match self.kind {
            ScheduleKind::Trapezoid if step < n - self.warmdown_steps => 1.0,
            ScheduleKind::Trapezoid => (n - step) as f64 / self.warmdown_steps as f64,
            ScheduleKind::Cosine => decayed(0.5 * (1.0 + (std::f64::consts::PI * progress).cos())),
            ScheduleKind::Linear => decayed(1.0 - progress),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundaries_match_the_reference() {
        let s = Schedule::trapezoid(6, 0, 3);
        let values: Vec<f64> = (0..6).map(|i| s.multiplier(i)).collect();
        assert_eq!(values, [1.0, 1.0, 1.0, 1.0, 2.0 / 3.0, 1.0 / 3.0]);
        let record = Schedule::trapezoid(3242, 0, 926);
        assert_eq!(record.multiplier(2315), 1.0);
        assert_eq!(record.multiplier(2316), 1.0);
        assert_eq!(record.multiplier(2317), 925.0 / 926.0);
        assert_eq!(record.multiplier(3241), 1.0 / 926.0);
        let warm = Schedule::trapezoid(10, 4, 2);
        assert_eq!(warm.multiplier(0), 0.25);
        assert_eq!(warm.multiplier(3), 1.0);
        assert_eq!(warm.multiplier(8), 1.0);
        assert_eq!(warm.multiplier(9), 0.5);
    }

    #[test]
    fn cosine_and_linear_decays_follow_their_formulas_to_the_floor() {
        let cosine = Schedule::decay(ScheduleKind::Cosine, 12, 2, 0.1);
        assert_eq!(cosine.multiplier(0), 0.5);
        assert_eq!(cosine.multiplier(1), 1.0);
        assert!(
            (cosine.multiplier(2) - 1.0).abs() < 1e-15,
            "the peak after warmup"
        );
        // Halfway through the 10 decay steps: the mean of peak and floor.
        assert!((cosine.multiplier(7) - 0.55).abs() < 1e-12);
        let last = 0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * 0.9).cos());
        assert!((cosine.multiplier(11) - last).abs() < 1e-12);
        let linear = Schedule::decay(ScheduleKind::Linear, 10, 0, 0.0);
        let values: Vec<f64> = (0..10).map(|s| linear.multiplier(s)).collect();
        let want: Vec<f64> = (0..10).map(|s| 1.0 - s as f64 / 10.0).collect();
        assert_eq!(values, want);
    }

    #[test]
    fn schedule_names_parse_and_unknown_ones_list_the_choices() {
        assert_eq!(
            ScheduleKind::try_from("cosine".to_string()),
            Ok(ScheduleKind::Cosine)
        );
        let err = ScheduleKind::try_from("step".to_string()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown schedule `step` (valid: trapezoid, cosine, linear)"
        );
    }
}
