//! The element types the kernels read and write.

use half::bf16;

/// A float element the kernels store: fp32 or bf16, computed in fp32.
pub trait Float: Copy + Send + Sync + 'static {
    /// Widens exactly to fp32.
    fn to_f32(self) -> f32;
    /// Rounds an fp32 value to this type (to nearest, ties to even).
    fn from_f32(value: f32) -> Self;
    /// `value` rounded to this type and widened back: what storing it would keep.
    #[inline(always)]
    fn round(value: f32) -> f32 {
        Self::from_f32(value).to_f32()
    }
    /// Rounds an fp32 value to this type stochastically with 16 random `bits`
    /// ([`round_stochastic`](crate::round_stochastic)); exact for fp32.
    fn from_f32_stochastic(value: f32, bits: u16) -> Self;
}

impl Float for f32 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline(always)]
    fn from_f32(value: f32) -> Self {
        value
    }
    #[inline(always)]
    fn from_f32_stochastic(value: f32, _bits: u16) -> Self {
        value
    }
}

impl Float for bf16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        // bf16 is the top half of an fp32: widening is a shift.
        f32::from_bits((self.to_bits() as u32) << 16)
    }
    #[inline(always)]
    fn from_f32(value: f32) -> Self {
        bf16::from_bits((round_to_bf16_bits(value) >> 16) as u16)
    }
    #[inline(always)]
    fn from_f32_stochastic(value: f32, bits: u16) -> Self {
        crate::round_stochastic(value, bits)
    }
}

/// The fp32 bits of `value` rounded to bf16 (to nearest, ties to even), low half zero.
/// Branch-free so that loops over it vectorise; a NaN stays a NaN (quiet NaNs keep their
/// payload's top bit, so the rounding increment cannot carry them to infinity).
#[inline(always)]
fn round_to_bf16_bits(value: f32) -> u32 {
    let bits = value.to_bits();
    let rounded = bits.wrapping_add(0x7FFF + ((bits >> 16) & 1)) & 0xFFFF_0000;
    if value.is_nan() {
        bits | 0x0040_0000
    } else {
        rounded
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_rounding_matches_the_half_crate_on_every_kind_of_value() {
        let mut values = vec![
            0.0f32,
            -0.0,
            1.0,
            1.0 + 2f32.powi(-8),
            1.0 + 3.0 * 2f32.powi(-9),
            f32::MAX,
            f32::MIN_POSITIVE,
            1e-40,
            f32::INFINITY,
            f32::NEG_INFINITY,
            3.0e38,
        ];
        values.extend((0..100_000u32).map(|i| f32::from_bits(i.wrapping_mul(2_654_435_761))));
        for value in values {
            let ours = <bf16 as Float>::from_f32(value);
            let theirs = bf16::from_f32(value);
            if value.is_nan() {
                assert!(ours.is_nan(), "{value:e}");
            } else {
                assert_eq!(ours.to_bits(), theirs.to_bits(), "{value:e}");
            }
        }
    }
}
