//! `exp` and `tanh` in fp32, branch-free so that loops over them vectorise (the standard
//! library's calls into libm do not), accurate to a few ulp (tested against float64).

/// `e^x` for `x ≤ 88`: Cephes' `expf` — `x = n·ln2 + r`, `e^r` by a degree-6 polynomial on
/// `|r| ≤ ln2/2`, times `2^n` built in the exponent bits. Below −87 it flushes to zero.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // Adding and subtracting 1.5·2²³ rounds to the nearest integer without a libm call.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let shifted = x * LOG2E + ROUND;
    let n = shifted - ROUND;
    // n (an integer in −126..=127) also sits in the low mantissa bits of `shifted`: integer
    // arithmetic on the bits gives it without a float-to-int conversion, whose saturating
    // semantics in Rust would not vectorise.
    let n_bits = shifted.to_bits().wrapping_sub(ROUND.to_bits());
    // ln2 split in a part exact in 9 bits and the rest, so n·ln2 subtracts without error.
    let r = (x - n * 0.693_359_4) - n * -2.121_944_4e-4;
    let z = r * r;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let e_r = p * z + r + 1.0;
    e_r * f32::from_bits(n_bits.wrapping_add(127) << 23)
}

/// `e^x` as PyTorch's vectorised `fexp_u20` forms it, which its CPU flash attention takes its
/// forward exponentials from: `2^(x·log₂e)` with the fraction's `2^f` approximated by a
/// degree-3 polynomial and the result written straight into the float's bits as
/// `(x·log₂e − p(f) + 127)·2²³` (Malossi et al., "Fast exponential computation on SIMD
/// architectures"). Relative error up to 1.1e-4, far above [`exp`]'s: a bf16 rounding of it
/// lands where PyTorch's does only if it is computed exactly so. Zero below `ln(f32::MIN_POSITIVE)`,
/// infinite above `ln(f32::MAX)`. Its multiply-adds are fused: compile it with FMA where speed
/// matters (without the instruction they are libm calls).
#[inline(always)]
pub fn exp_fast(x: f32) -> f32 {
    const C0: f32 = 0.000_107_034_35;
    const C1: f32 = 0.303_542_6;
    const C2: f32 = -0.224_338_37;
    const C3: f32 = -0.079_204_24;
    const LN_MIN: f32 = -87.336_55; // 0xc2aeac50
    const LN_MAX: f32 = 88.722_84; // 0x42b17218
    let log2 = x * std::f32::consts::LOG2_E;
    let fraction = log2 - log2.floor();
    let correction = fraction.mul_add(fraction.mul_add(fraction.mul_add(C3, C2), C1), C0);
    let bits = 8_388_608.0f32.mul_add(log2 - correction, 1_065_353_216.0) as i32;
    if x < LN_MIN {
        0.0
    } else if x > LN_MAX {
        f32::INFINITY
    } else {
        f32::from_bits(bits as u32)
    }
}

/// `tanh(x)`: for `|x| ≤ 0.625` a 13/6 rational approximation (Eigen's fast tanh; the identity
/// near zero), beyond it `1 − 2/(e^(2|x|) + 1)` with the sign of `x`, which has no
/// cancellation there and saturates to ±1.
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    let magnitude = 1.0 - 2.0 / (exp(2.0 * x.abs()) + 1.0);
    let large = magnitude.copysign(x);
    let clamped = x.clamp(-0.625, 0.625);
    let x2 = clamped * clamped;
    let p = ((((((-2.760_768_5e-16 * x2 + 2.000_188e-13) * x2 - 8.604_672e-11) * x2
        + 5.122_297e-8)
        * x2
        + 1.485_722_4e-5)
        * x2
        + 6.372_619_3e-4)
        * x2
        + 4.893_524_6e-3)
        * clamped;
    let q = ((1.198_258_4e-6 * x2 + 1.185_347e-4) * x2 + 2.268_434_6e-3) * x2 + 4.893_525e-3;
    if x.abs() < 4e-4 {
        x
    } else if x.abs() <= 0.625 {
        p / q
    } else {
        large
    }
}

/// Lanes of the partial sums of [`lane_fold`]: a fixed width that vectorises and gives the same
/// result on any CPU.
const LANES: usize = 16;

/// `values` folded with `op` in [`LANES`] independent lanes, then the lanes folded: the same
/// order on every CPU, and a loop the compiler vectorises.
#[inline(always)]
pub fn lane_fold(values: &[f32], init: f32, op: impl Fn(f32, f32) -> f32) -> f32 {
    let mut lanes = [init; LANES];
    let mut chunks = values.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (lane, v) in lanes.iter_mut().zip(chunk) {
            *lane = op(*lane, *v);
        }
    }
    for (lane, v) in lanes.iter_mut().zip(chunks.remainder()) {
        *lane = op(*lane, *v);
    }
    lanes.into_iter().fold(init, op)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Distance in units in the last place of `want` (as an fp32).
    fn ulps(got: f32, want: f64) -> f64 {
        let want32 = want as f32;
        let ulp = (f32::from_bits(want32.abs().to_bits() + 1) - want32.abs()) as f64;
        (got as f64 - want).abs() / ulp
    }

    #[test]
    fn exp_is_within_two_ulp_over_the_range_the_loss_uses() {
        let mut worst = 0.0f64;
        for i in 0..=2_000_000 {
            let x = -80.0 + 88.0 * i as f32 / 2e6;
            worst = worst.max(ulps(exp(x), (x as f64).exp()));
        }
        assert!(worst <= 2.0, "{worst} ulp");
        assert_eq!(exp(-100.0), exp(-87.0));
        assert!(exp(-87.0) > 0.0 && exp(-87.0) < 2e-38);
    }

    /// `exp_fast` is the approximation, not an accurate `exp`: within its 1.1e-4 of e^x over
    /// the range attention's shifted scores take, and farther than a few ulp from it.
    #[test]
    fn exp_fast_is_malossis_approximation() {
        let mut worst = 0.0f64;
        for i in 0..=2_000_000 {
            let x = -87.0 * i as f32 / 2e6;
            let want = (x as f64).exp();
            worst = worst.max((exp_fast(x) as f64 - want).abs() / want);
        }
        println!("worst relative error {worst:.3e}");
        assert!((1e-5..=1.2e-4).contains(&worst), "{worst}");
        assert_eq!(exp_fast(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_fast(-88.0), 0.0);
        assert_eq!(exp_fast(89.0), f32::INFINITY);
    }

    #[test]
    fn tanh_is_within_a_few_ulp_and_saturates() {
        let mut worst = 0.0f64;
        for i in 0..=2_000_000 {
            let x = -10.0 + 20.0 * i as f32 / 2e6;
            worst = worst.max(ulps(tanh(x), (x as f64).tanh()));
        }
        for x in [1e-30f32, 1e-6, 3e-4, 5e-4, 1e-3] {
            worst = worst.max(ulps(tanh(x), (x as f64).tanh()));
            worst = worst.max(ulps(tanh(-x), (-x as f64).tanh()));
        }
        assert!(worst <= 4.0, "{worst} ulp");
        assert_eq!(tanh(1e6), 1.0);
        assert_eq!(tanh(-1e6), -1.0);
        assert_eq!(tanh(0.0), 0.0);
    }
}
