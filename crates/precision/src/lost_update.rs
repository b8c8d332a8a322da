//! The lost-update probe: which fp32 master-weight updates bf16 storage would have lost; under
//! stochastic rounding, how many were rounded away against how many were expected to be; under
//! Kahan, how large the carried compensation is.

/// Half a bf16 unit in the last place of `w`: an update smaller than this leaves `w` unchanged
/// when `w` is stored in bf16 (round to nearest). bf16 keeps 8 significant bits, so for a normal
/// `w` with exponent `e` the ulp is `2^(e−7)`. For zero and fp32 subnormals bf16 has the same
/// fine spacing as fp32's exponent floor, `2^−133`; `None` for non-finite `w`.
pub fn half_bf16_ulp(w: f32) -> Option<f32> {
    if !w.is_finite() {
        return None;
    }
    let biased = ((w.to_bits() >> 23) & 0xff) as i32;
    // Subnormals and zero share the smallest exponent, −126.
    let exponent = if biased == 0 { -126 } else { biased - 127 };
    Some(2f32.powi(exponent - 8))
}

/// Counts the updates `deltas` to `weights` that are non-zero but smaller in magnitude than half
/// a bf16 ulp of their weight: updates an fp32 master weight keeps and bf16 storage loses (for
/// weights already stored in bf16, the updates that were lost). Zero updates are not counted.
/// Returns `(lost, updated)`.
pub fn lost_updates(weights: &[f32], deltas: &[f32]) -> (usize, usize) {
    assert_eq!(weights.len(), deltas.len(), "one update per weight");
    let mut lost = 0;
    let mut updated = 0;
    for (&w, &delta) in weights.iter().zip(deltas) {
        if delta == 0.0 {
            continue;
        }
        updated += 1;
        if half_bf16_ulp(w).is_some_and(|half| delta.abs() < half) {
            lost += 1;
        }
    }
    (lost, updated)
}

/// What stochastic rounding did with the non-zero updates `deltas` to the bf16 `weights`
/// (widened to fp32), given the stored results `updated`: how many were rounded away (the
/// weight came back unchanged) and how many were expected to be — the sum over updates of the
/// probability that `weight − delta` rounds back to `weight` (`1 −` its distance from `weight`
/// over the gap, when `weight` is one of its two bf16 neighbours; 0 otherwise). Returns
/// `(rounded_away, expected, updated)`.
pub fn stochastic_rounded_away(
    weights: &[f32],
    deltas: &[f32],
    updated: &[f32],
) -> (usize, f64, usize) {
    assert!(
        weights.len() == deltas.len() && updated.len() == deltas.len(),
        "one update and one result per weight"
    );
    let (mut away, mut expected, mut count) = (0, 0.0f64, 0);
    for ((&w, &delta), &new) in weights.iter().zip(deltas).zip(updated) {
        if delta == 0.0 {
            continue;
        }
        count += 1;
        away += usize::from(new == w);
        let target = (w - delta).to_bits();
        // The 16 bits bf16 drops: the target's place between its neighbours, in 2⁻¹⁶ of the gap.
        let up_probability = (target & 0xFFFF) as f64 / 65536.0;
        let below = target & 0xFFFF_0000;
        expected += if w.to_bits() == below {
            1.0 - up_probability
        } else if w.to_bits() == below + 0x1_0000 {
            up_probability
        } else {
            0.0
        };
    }
    (away, expected, count)
}

/// Kahan's compensation in units of half a bf16 ulp of its weight: the sum over elements of
/// `|compensation| / half_ulp(weight)` and the number of elements (the mean is their ratio; by
/// construction it is at most about 1).
pub fn compensation_in_half_ulps(weights: &[f32], compensation: &[f32]) -> (f64, usize) {
    assert_eq!(
        weights.len(),
        compensation.len(),
        "one compensation per weight"
    );
    weights
        .iter()
        .zip(compensation)
        .filter_map(|(&w, &c)| Some((c.abs() / half_bf16_ulp(w)?) as f64))
        .fold((0.0, 0), |(sum, n), v| (sum + v, n + 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::bf16;

    /// What bf16 storage really does: round `w` and `w + delta` to bf16 and compare.
    fn lost_in_bf16(w: f32, delta: f32) -> bool {
        bf16::from_f32(w + delta) == bf16::from_f32(w)
    }

    #[test]
    fn half_ulp_of_powers_of_two_and_between() {
        assert_eq!(half_bf16_ulp(1.0), Some(2f32.powi(-8)));
        assert_eq!(half_bf16_ulp(1.99), Some(2f32.powi(-8)));
        assert_eq!(half_bf16_ulp(2.0), Some(2f32.powi(-7)));
        assert_eq!(half_bf16_ulp(-0.75), Some(2f32.powi(-9)));
        assert_eq!(half_bf16_ulp(0.0), Some(2f32.powi(-134)));
        assert_eq!(half_bf16_ulp(f32::NAN), None);
    }

    #[test]
    fn updates_below_half_an_ulp_are_lost_and_above_are_kept() {
        // w = 1: bf16 neighbours are 1 − 2⁻⁸ below and 1 + 2⁻⁷ above; half an ulp up is 2⁻⁸.
        let half = 2f32.powi(-8);
        let cases = [
            (1.0f32, 0.9 * half, true),
            (1.0, 1.1 * half, false),
            (1.0, -0.4 * half, true),
            (0.3, 1e-4, true), // half ulp of 0.3 is 2⁻¹⁰ ≈ 9.8e-4
            (0.3, 2e-3, false),
            (-3.0, 0.007, true), // half ulp of 3 is 2⁻⁷ ≈ 7.8e-3
            (-3.0, -0.009, false),
        ];
        let weights: Vec<f32> = cases.iter().map(|c| c.0).collect();
        let deltas: Vec<f32> = cases.iter().map(|c| c.1).collect();
        for (w, delta, lost) in cases {
            assert_eq!(
                lost_in_bf16(w, delta),
                lost,
                "bf16 itself: w {w}, Δ {delta}"
            );
            let (l, c) = lost_updates(&[w], &[delta]);
            assert_eq!((l == 1, c), (lost, 1), "probe: w {w}, Δ {delta}");
        }
        assert_eq!(lost_updates(&weights, &deltas), (4, 7));
        // Zero updates are not updates.
        assert_eq!(lost_updates(&[1.0, 2.0], &[0.0, -0.0]), (0, 0));
    }

    #[test]
    fn stochastic_rounding_counts_against_the_probability_of_staying() {
        // w = 1 (gap above 2⁻⁷, below 2⁻⁸): +¼ of the gap above stays with p = ¾; −½ of the
        // gap below stays with p = ½; a whole gap up never stays.
        let (up, down) = (2f32.powi(-7), 2f32.powi(-8));
        let weights = [1.0f32, 1.0, 1.0, 1.0];
        let deltas = [-0.25 * up, 0.5 * down, -up, 0.0];
        let updated = [1.0f32, 1.0 - down, 1.0 + up, 1.0];
        let (away, expected, count) = stochastic_rounded_away(&weights, &deltas, &updated);
        assert_eq!((away, count), (1, 3));
        assert!((expected - (0.75 + 0.5 + 0.0)).abs() < 1e-12, "{expected}");
    }

    #[test]
    fn compensation_is_measured_in_half_ulps() {
        let (sum, n) =
            compensation_in_half_ulps(&[1.0, 2.0, f32::NAN], &[2f32.powi(-9), -2f32.powi(-7), 1.0]);
        assert_eq!(n, 2);
        assert!((sum - 1.5).abs() < 1e-12, "{sum}");
    }
}
