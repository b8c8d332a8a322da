//! Median and spread of repeated measurements.

use serde::{Deserialize, Serialize};

/// Order statistics of a sample: what a noisy timing is summarised by.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    /// Middle value (mean of the middle two for an even count).
    pub median: f64,
    /// First quartile.
    pub p25: f64,
    /// Third quartile.
    pub p75: f64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// Number of values.
    pub count: usize,
}

impl Spread {
    /// The statistics of `values` (quantiles by linear interpolation, as NumPy's default);
    /// `None` for an empty sample or one with a NaN.
    pub fn of(values: &[f64]) -> Option<Self> {
        if values.is_empty() || values.iter().any(|v| v.is_nan()) {
            return None;
        }
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let quantile = |q: f64| {
            let position = q * (sorted.len() - 1) as f64;
            let (lower, upper) = (position.floor() as usize, position.ceil() as usize);
            let weight = position - lower as f64;
            sorted[lower] * (1.0 - weight) + sorted[upper] * weight
        };
        Some(Self {
            median: quantile(0.5),
            p25: quantile(0.25),
            p75: quantile(0.75),
            min: sorted[0],
            max: sorted[sorted.len() - 1],
            count: sorted.len(),
        })
    }

    /// Interquartile range relative to the median: the noise of the sample.
    pub fn relative_iqr(&self) -> f64 {
        (self.p75 - self.p25) / self.median
    }
}

/// Mean and sample standard deviation (n − 1 in the denominator; 0 for one value, NaN for none).
pub fn mean_and_sd(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    if values.len() < 2 {
        return (mean, if values.is_empty() { f64::NAN } else { 0.0 });
    }
    let variance = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, variance.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_match_numpy_linear_interpolation() {
        // numpy.percentile([4, 1, 3, 2, 10], [25, 50, 75]) = [2, 3, 4]
        let s = Spread::of(&[4.0, 1.0, 3.0, 2.0, 10.0]).unwrap();
        assert_eq!((s.p25, s.median, s.p75), (2.0, 3.0, 4.0));
        assert_eq!((s.min, s.max, s.count), (1.0, 10.0, 5));
        assert!((s.relative_iqr() - 2.0 / 3.0).abs() < 1e-12);
        // numpy.percentile([1, 2, 3, 4], [25, 50, 75]) = [1.75, 2.5, 3.25]
        let s = Spread::of(&[1.0, 2.0, 3.0, 4.0]).unwrap();
        assert_eq!((s.p25, s.median, s.p75), (1.75, 2.5, 3.25));
        assert_eq!(Spread::of(&[]), None);
        assert_eq!(Spread::of(&[1.0, f64::NAN]), None);
    }

    #[test]
    fn mean_and_sample_standard_deviation() {
        // numpy.std([2, 4, 4, 4, 5, 5, 7, 9], ddof=1) = 2.138089935299395
        let (mean, sd) = mean_and_sd(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]);
        assert_eq!(mean, 5.0);
        assert!((sd - 2.138089935299395).abs() < 1e-12);
        assert_eq!(mean_and_sd(&[3.0]), (3.0, 0.0));
        assert!(mean_and_sd(&[]).1.is_nan());
    }
}
