//! The lost-update probe: an observer of the weight updates the writer stores.

use brainfloat_precision::{
    UpdateRounding, compensation_in_half_ulps, lost_updates, stochastic_rounded_away,
};

use super::ParamGroup;

/// One parameter's weight update as the writer stored it, on the host.
pub(super) struct WrittenUpdate<'a> {
    pub rounding: UpdateRounding,
    /// The weights before the update (fp32).
    pub before: &'a [f32],
    /// What was subtracted from them, before rounding.
    pub delta: &'a [f32],
    /// The weights as stored after it.
    pub after: &'a [f32],
    /// Kahan's compensation after it, under Kahan.
    pub compensation: Option<&'a [f32]>,
}

/// The lost-update probe of one optimizer step: per group, how many element updates were
/// non-zero and how many of those were below half a bf16 ulp of their weight (lost to bf16
/// storage; see [`lost_updates`]). Under stochastic rounding the count is of updates rounded
/// away, with the number expected beside it; under Kahan, the compensation's size.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LostUpdates {
    counts: [(usize, usize); 4],
    expected: [Option<f64>; 4],
    compensation: [(f64, usize); 4],
}

impl LostUpdates {
    /// Adds `lost` of `updated` element updates to `group`.
    pub fn add(&mut self, group: ParamGroup, lost: usize, updated: usize) {
        let count = &mut self.counts[group as usize];
        count.0 += lost;
        count.1 += updated;
    }

    /// `(lost, updated)` of `group`.
    pub fn counts(&self, group: ParamGroup) -> (usize, usize) {
        self.counts[group as usize]
    }

    /// Fraction of `group`'s non-zero updates that were lost; `None` if none was non-zero.
    pub fn fraction(&self, group: ParamGroup) -> Option<f64> {
        let (lost, updated) = self.counts(group);
        (updated > 0).then(|| lost as f64 / updated as f64)
    }

    /// Adds `expected` updates that stochastic rounding was expected to round away to `group`
    /// (their count went to [`add`](Self::add)).
    pub fn add_expected(&mut self, group: ParamGroup, expected: f64) {
        let slot = &mut self.expected[group as usize];
        *slot = Some(slot.unwrap_or(0.0) + expected);
    }

    /// Under stochastic rounding: the fraction of `group`'s non-zero updates expected to be
    /// rounded away (compare [`fraction`](Self::fraction)); `None` otherwise.
    pub fn expected_fraction(&self, group: ParamGroup) -> Option<f64> {
        let (_, updated) = self.counts(group);
        Some(self.expected[group as usize]? / updated.max(1) as f64)
    }

    /// Adds Kahan compensation of `count` elements, `sum` half-ulps in all, to `group`.
    pub fn add_compensation(&mut self, group: ParamGroup, sum: f64, count: usize) {
        let slot = &mut self.compensation[group as usize];
        slot.0 += sum;
        slot.1 += count;
    }

    /// Under Kahan: `group`'s mean |compensation| in half ulps of its weight; `None` otherwise.
    pub fn compensation_half_ulps(&self, group: ParamGroup) -> Option<f64> {
        let (sum, count) = self.compensation[group as usize];
        (count > 0).then(|| sum / count as f64)
    }

    /// Counts `update` of a parameter of `group`.
    pub(super) fn observe(&mut self, group: ParamGroup, update: &WrittenUpdate) {
        if update.rounding == UpdateRounding::Stochastic {
            let (away, expected, count) =
                stochastic_rounded_away(update.before, update.delta, update.after);
            self.add(group, away, count);
            self.add_expected(group, expected);
        } else {
            let (lost, count) = lost_updates(update.before, update.delta);
            self.add(group, lost, count);
        }
        if let Some(compensation) = update.compensation {
            let (sum, count) = compensation_in_half_ulps(update.after, compensation);
            self.add_compensation(group, sum, count);
        }
    }
}
