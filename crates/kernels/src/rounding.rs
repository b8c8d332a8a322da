//! Rounding fp32 values to bf16 storage: stochastically, with random bits that depend only on
//! (key, element), so that a run and its resumed copy round every value the same way; and
//! Kahan-compensated addition into bf16 weights.
//!
//! Stochastic rounding rounds `x` up to the next bf16 value with probability equal to its
//! distance from the value below, over the gap: `E[round(x)] = x`, so updates far below half an
//! ulp of a weight survive on average instead of vanishing. On the bits it is one addition:
//! the 16 bits bf16 drops are the position of `|x|` between its two neighbours in units of
//! 2⁻¹⁶ of the gap (within a binade and across the subnormals alike), so adding 16 uniform
//! random bits and truncating carries into the kept half with exactly that probability.

use half::bf16;
use rayon::prelude::*;

use crate::elem::Float;

/// Elements per parallel task.
const ELEMENTS_PER_TASK: usize = 1 << 15;

/// SplitMix64's finaliser: a bijection of `u64` whose output bits each depend on every input
/// bit (Steele, Lea & Flood 2014).
#[inline(always)]
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The key of one stream of rounding decisions, from the words that name it (for the
/// optimizer: seed, step, a hash of the parameter's name, which state tensor). Counter-based:
/// element `i` of the stream draws [`random_bits`]`(key, i)`, whatever ran before.
pub fn rounding_key(words: &[u64]) -> u64 {
    words.iter().fold(0x6A09_E667_F3BC_C909, |key, word| {
        mix64(key ^ mix64(word.wrapping_add(0x9E37_79B9_7F4A_7C15)))
    })
}

/// Elements whose bits come from one hash: the four 16-bit quarters of one 64-bit output.
const ELEMENTS_PER_HASH: u64 = 4;

/// The 64 random bits shared by elements `4·group … 4·group + 3` of the stream `key`.
#[inline(always)]
fn group_bits(key: u64, group: u64) -> u64 {
    mix64(key ^ group.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// 16 uniform random bits for element `index` of the stream `key`: quarter `index mod 4` of
/// the hash of `(key, index / 4)`. Four elements share one hash (a quarter of the multiplies);
/// each quarter of a SplitMix64 output is uniform and independent of the others.
#[inline(always)]
pub fn random_bits(key: u64, index: u64) -> u16 {
    let quarter = index % ELEMENTS_PER_HASH;
    (group_bits(key, index / ELEMENTS_PER_HASH) >> (16 * quarter)) as u16
}

/// Elements whose random bits are drawn at once ([`fill_random_bits`]): three streams of them
/// fit in a few KiB of stack.
pub(crate) const BITS_PER_BLOCK: usize = 1024;

/// `out[j] = random_bits(key, first + j)`: the hash vectorised (eight 64-bit multiplies per
/// instruction) where the CPU has AVX-512, the same bits either way. Drawing a block of bits
/// before the arithmetic that uses them keeps a kernel's own loop as it was.
pub(crate) fn fill_random_bits(key: u64, first: u64, out: &mut [u16]) {
    #[cfg(target_arch = "x86_64")]
    if crate::path::avx512() {
        // SAFETY: the CPU reports every feature `fill_random_bits_avx512` is compiled for.
        unsafe { fill_random_bits_avx512(key, first, out) };
        return;
    }
    fill_random_bits_portable(key, first, out);
}

#[inline(always)]
fn fill_random_bits_portable(key: u64, first: u64, out: &mut [u16]) {
    // Element by element up to the first whole group, then a hash per four elements.
    let lead = ((ELEMENTS_PER_HASH - first % ELEMENTS_PER_HASH) % ELEMENTS_PER_HASH) as usize;
    let (lead, grouped) = out.split_at_mut(lead.min(out.len()));
    for (j, bits) in lead.iter_mut().enumerate() {
        *bits = random_bits(key, first + j as u64);
    }
    let first = first + lead.len() as u64;
    let first_group = first / ELEMENTS_PER_HASH;
    let tail_first = first + (grouped.len() as u64 / ELEMENTS_PER_HASH) * ELEMENTS_PER_HASH;
    let mut groups = grouped.chunks_exact_mut(ELEMENTS_PER_HASH as usize);
    for (g, quarters) in (&mut groups).enumerate() {
        let hash = group_bits(key, first_group + g as u64);
        if cfg!(target_endian = "little") {
            // One 8-byte store instead of four shifted 2-byte ones (which vectorise into
            // shuffles; 4 ms of Adam's 25 on 25.8 M elements). On a little-endian CPU quarter
            // `q` of the stored word is bits 16q..16q+16 of `hash`, as below.
            // SAFETY: `quarters` is exactly four `u16`s, eight writable bytes that nothing else
            // borrows; the store is unaligned, and every bit pattern is a valid `u16`.
            unsafe { quarters.as_mut_ptr().cast::<u64>().write_unaligned(hash) };
        } else {
            for (q, bits) in quarters.iter_mut().enumerate() {
                *bits = (hash >> (16 * q)) as u16;
            }
        }
    }
    for (j, bits) in groups.into_remainder().iter_mut().enumerate() {
        *bits = random_bits(key, tail_first + j as u64);
    }
}

/// [`fill_random_bits`] compiled for AVX-512.
///
/// # Safety
/// The CPU must support AVX-512 F, BW, DQ and VL.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
unsafe fn fill_random_bits_avx512(key: u64, first: u64, out: &mut [u16]) {
    fill_random_bits_portable(key, first, out);
}

/// `value` rounded to bf16 up or down, away from zero with probability (the 16 bits bf16 drops
/// from `|value|`) / 2¹⁶, given 16 uniform random `bits`. Values on the bf16 grid are kept
/// exactly; NaN stays NaN and ±∞ stays ±∞; a finite value within one ulp of the largest bf16
/// may round to infinity, as a round-to-nearest addition there would.
#[inline(always)]
pub fn round_stochastic(value: f32, bits: u16) -> bf16 {
    let value_bits = value.to_bits();
    // The sign bit is apart from the magnitude's bits, so the carry rounds the magnitude; ±∞
    // has no low bits to carry. A NaN is kept a quiet NaN (as `bf16::from_f32` keeps it): a
    // carry out of its payload would reach the sign. Branch-free, so that loops vectorise.
    let rounded = if value.is_nan() {
        value_bits | 0x0040_0000
    } else {
        value_bits.wrapping_add(bits as u32) & 0xFFFF_0000
    };
    bf16::from_bits((rounded >> 16) as u16)
}

/// `out[i] = round_stochastic(values[i], random_bits(key, i))`, on all cores.
///
/// # Panics
/// When the slices' lengths differ.
pub fn round_stochastic_into(values: &[f32], out: &mut [bf16], key: u64) {
    assert_eq!(
        values.len(),
        out.len(),
        "round_stochastic_into: input and output must have the same length"
    );
    write_rounded(out, values, key, |_, value| *value);
}

/// `y = SR(a·y + b·x)` in place for a bf16 `y` and `x` of either float type, computed in fp32
/// (`a·y` then `+ b·x`) and rounded stochastically with the stream `key`, element `i` drawing
/// [`random_bits`]`(key, i)`: a momentum buffer's update (`a` the momentum, `b = 1`) or a
/// weight's (`a = 1`, `b = −lr`) in one pass on all cores.
///
/// # Panics
/// When the slices' lengths differ.
pub fn stochastic_axpby<X: Float>(y: &mut [bf16], x: &[X], a: f32, b: f32, key: u64) {
    assert_eq!(
        y.len(),
        x.len(),
        "stochastic_axpby: y and x must have the same length"
    );
    write_rounded(y, x, key, |y, x| a * y.to_f32() + b * x.to_f32());
}

/// `out[i] = round_stochastic(value(out[i], input[i]), random_bits(key, i))` on all cores, the
/// bits drawn a block at a time ([`fill_random_bits`]).
fn write_rounded<X: Sync>(
    out: &mut [bf16],
    input: &[X],
    key: u64,
    value: impl Fn(bf16, &X) -> f32 + Sync,
) {
    out.par_chunks_mut(ELEMENTS_PER_TASK)
        .zip(input.par_chunks(ELEMENTS_PER_TASK))
        .enumerate()
        .for_each(|(task, (out, input))| {
            let mut bits = [0u16; BITS_PER_BLOCK];
            let blocks = out
                .chunks_mut(BITS_PER_BLOCK)
                .zip(input.chunks(BITS_PER_BLOCK));
            for (block, (out, input)) in blocks.enumerate() {
                let first = (task * ELEMENTS_PER_TASK + block * BITS_PER_BLOCK) as u64;
                let bits = &mut bits[..out.len()];
                fill_random_bits(key, first, bits);
                write_block(out, input, bits, &value);
            }
        });
}

/// One block of [`write_rounded`] with its bits drawn: compiled for AVX-512 where the CPU has it
/// (the loop has no branch, so it vectorises), portable elsewhere.
fn write_block<X>(out: &mut [bf16], input: &[X], bits: &[u16], value: &impl Fn(bf16, &X) -> f32) {
    #[cfg(target_arch = "x86_64")]
    if crate::path::avx512() {
        // SAFETY: the CPU reports every feature `write_block_avx512` is compiled for.
        unsafe { write_block_avx512(out, input, bits, value) };
        return;
    }
    write_block_portable(out, input, bits, value);
}

/// [`write_block`] compiled for AVX-512.
///
/// # Safety
/// The CPU must support AVX-512 F, BW, DQ and VL.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
unsafe fn write_block_avx512<X>(
    out: &mut [bf16],
    input: &[X],
    bits: &[u16],
    value: &impl Fn(bf16, &X) -> f32,
) {
    write_block_portable(out, input, bits, value);
}

#[inline(always)]
fn write_block_portable<X>(
    out: &mut [bf16],
    input: &[X],
    bits: &[u16],
    value: &impl Fn(bf16, &X) -> f32,
) {
    for ((out, x), bits) in out.iter_mut().zip(input).zip(bits) {
        *out = round_stochastic(value(*out, x), *bits);
    }
}

/// Adds `delta` to the bf16 `weight` with Kahan compensation: `compensation` carries what each
/// addition's rounding lost into the next one, so that many updates below half an ulp of the
/// weight add up. Per element, in fp32: `c = compensation + delta`, `w' = bf16(weight + c)`,
/// `compensation' = bf16(c − (w' − weight))`.
///
/// # Panics
/// When the slices' lengths differ.
pub fn kahan_add(weight: &mut [bf16], compensation: &mut [bf16], delta: &[f32]) {
    assert!(
        compensation.len() == weight.len() && delta.len() == weight.len(),
        "kahan_add: weight, compensation and delta must have the same length"
    );
    weight
        .par_chunks_mut(ELEMENTS_PER_TASK)
        .zip(compensation.par_chunks_mut(ELEMENTS_PER_TASK))
        .zip(delta.par_chunks(ELEMENTS_PER_TASK))
        .for_each(|((weight, compensation), delta)| {
            for ((w, c), d) in weight.iter_mut().zip(compensation).zip(delta) {
                let (old, carried) = (w.to_f32(), c.to_f32() + d);
                let new = <bf16 as Float>::from_f32(old + carried);
                *c = <bf16 as Float>::from_f32(carried - (new.to_f32() - old));
                *w = new;
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values across bf16's range: normal, subnormal, tiny and huge, both signs, on and off the
    /// grid.
    fn values() -> Vec<f32> {
        let mut values = vec![
            1.0f32,
            -1.0,
            1.0 + 2f32.powi(-10),
            -(3.0 + 2f32.powi(-12)),
            0.1,
            1e-3,
            7.0e-39, // fp32 normal, just above the smallest bf16 normal
            1.0e-39, // subnormal
            -2.5e-40,
            1e30,
            -3.3e37,
            0.0,
        ];
        values.extend(
            (1..40).map(|i| (i as f32 * 0.37).exp() * if i % 2 == 0 { 1.0 } else { -1e-20 }),
        );
        values
    }

    /// The bf16 neighbours of `value`: below and above in magnitude.
    fn neighbours(value: f32) -> (f64, f64) {
        let down = f32::from_bits(value.to_bits() & 0xFFFF_0000);
        let up = f32::from_bits((value.to_bits() & 0xFFFF_0000) + 0x1_0000);
        (down as f64, up as f64)
    }

    #[test]
    fn rounding_is_unbiased_across_the_exponent_range() {
        const DRAWS: u64 = 200_000;
        for (v, &value) in values().iter().enumerate() {
            let key = rounding_key(&[7, v as u64]);
            let (down, up) = neighbours(value);
            let mut sum = 0.0f64;
            for i in 0..DRAWS {
                let r = round_stochastic(value, random_bits(key, i)).to_f32() as f64;
                assert!(r == down || r == up, "{value:e} rounded to {r:e}");
                sum += r;
            }
            let mean = sum / DRAWS as f64;
            // Each draw is down or up: standard deviation of the mean ≤ gap / (2√n); 5σ.
            let bound = 5.0 * (up - down).abs() / (2.0 * (DRAWS as f64).sqrt());
            assert!(
                (mean - value as f64).abs() <= bound,
                "{value:e}: mean {mean:e}, off by {:e} > {bound:e}",
                (mean - value as f64).abs()
            );
        }
    }

    #[test]
    fn values_on_the_grid_and_non_finite_values_are_kept() {
        for value in [
            1.0f32,
            -0.5,
            0.0,
            -0.0,
            2f32.powi(-130),
            f32::INFINITY,
            f32::NEG_INFINITY,
        ] {
            for i in 0..1000 {
                let r = round_stochastic(value, random_bits(3, i));
                assert_eq!(r.to_f32().to_bits(), value.to_bits(), "{value:e}");
            }
        }
        // A NaN whose payload is all ones would carry into the sign if it were rounded.
        for nan in [
            f32::NAN,
            f32::from_bits(0x7FFF_FFFF),
            f32::from_bits(0xFFFF_FFFF),
        ] {
            let r = round_stochastic(nan, 0xFFFF);
            assert!(r.is_nan() && r.is_sign_negative() == nan.is_sign_negative());
        }
    }

    #[test]
    fn a_stream_is_a_function_of_its_key_and_index_only() {
        let values: Vec<f32> = (0..100_003)
            .map(|i| (i as f32).sin() * 1e-3 + 1.0)
            .collect();
        let key = rounding_key(&[1234, 56, 78]);
        let (mut a, mut b) = (
            vec![bf16::ZERO; values.len()],
            vec![bf16::ZERO; values.len()],
        );
        round_stochastic_into(&values, &mut a, key);
        round_stochastic_into(&values, &mut b, key);
        assert_eq!(a, b, "the same key rounds the same way");
        for (i, (value, r)) in values.iter().zip(&a).enumerate() {
            assert_eq!(
                *r,
                round_stochastic(*value, random_bits(key, i as u64)),
                "{i}"
            );
        }
        let mut c = vec![bf16::ZERO; values.len()];
        round_stochastic_into(&values, &mut c, rounding_key(&[1234, 57, 78]));
        let differ = a.iter().zip(&c).filter(|(a, c)| a != c).count();
        assert!(
            differ > values.len() / 10,
            "another step draws other bits ({differ} differ)"
        );
        assert_ne!(rounding_key(&[1, 2]), rounding_key(&[2, 1]));
    }

    /// `n` updates of 5 % to 95 % of `scale` (a fixed pseudo-random sequence).
    fn updates(n: usize, scale: f32) -> Vec<f32> {
        (0..n as u64)
            .map(|i| scale * (0.05 + 0.9 * (random_bits(99, i) as f32 / 65536.0)))
            .collect()
    }

    #[test]
    fn axpby_rounds_the_fp32_result_with_the_streams_bits() {
        let n = 70_001;
        let y0: Vec<bf16> = (0..n)
            .map(|i| bf16::from_f32((i as f32 * 0.37).sin()))
            .collect();
        let x: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos() * 1e-3).collect();
        let mut y = y0.clone();
        stochastic_axpby(&mut y, &x, 0.95, -0.5, 77);
        for i in 0..n {
            let want = 0.95 * y0[i].to_f32() + -0.5 * x[i];
            assert_eq!(
                y[i],
                round_stochastic(want, random_bits(77, i as u64)),
                "{i}"
            );
        }
    }

    #[test]
    fn kahan_recovers_the_float64_sum_of_updates_below_half_an_ulp() {
        // Half an ulp of 1.0 in bf16 is 2⁻⁸; each update is at most a tenth of that.
        let n = 10_000;
        let scales = [0.1f32 * 2f32.powi(-8), -0.02 * 2f32.powi(-8)];
        let columns: Vec<Vec<f32>> = scales.iter().map(|s| updates(n, *s)).collect();
        let mut weight = vec![bf16::ONE; scales.len()];
        let mut compensation = vec![bf16::ZERO; scales.len()];
        let mut naive = vec![bf16::ONE; scales.len()];
        for i in 0..n {
            let delta: Vec<f32> = columns.iter().map(|c| c[i]).collect();
            kahan_add(&mut weight, &mut compensation, &delta);
            for (w, d) in naive.iter_mut().zip(&delta) {
                *w = bf16::from_f32(w.to_f32() + d);
            }
        }
        for k in 0..scales.len() {
            assert_eq!(naive[k], bf16::ONE, "round to nearest loses every update");
            let want = 1.0 + columns[k].iter().map(|u| *u as f64).sum::<f64>();
            let got = weight[k].to_f32() as f64 + compensation[k].to_f32() as f64;
            // Measured (the same arithmetic in PyTorch): 4e-5 and 9e-5 of the updates' sum.
            // Bound: a quarter of an ulp of the result, 0.3 % of the sum in both columns.
            let quarter_ulp = want.abs() * 2f64.powi(-9);
            assert!((got - want).abs() <= quarter_ulp, "{k}: {got} vs {want}");
            // The stored weight alone is the sum to the nearest bf16, or its neighbour.
            let ulp = 4.0 * quarter_ulp;
            assert!(
                (weight[k].to_f32() as f64 - want).abs() <= ulp,
                "{k}: {}",
                weight[k]
            );
        }
    }

    #[test]
    fn kahan_with_bf16_compensation_drifts_under_a_constant_update() {
        // The known limit of a bf16 compensation: adding the same 1e-4 each time, its own
        // rounding errors repeat instead of cancelling. Measured (here and in PyTorch with
        // the same arithmetic): 2.026 for a sum of 2.0, 2.6 % of the updates; round to nearest
        // keeps 1.0 (100 % lost).
        let (mut weight, mut compensation) = ([bf16::ONE], [bf16::ZERO]);
        for _ in 0..10_000 {
            kahan_add(&mut weight, &mut compensation, &[1e-4]);
        }
        let got = weight[0].to_f32() as f64 + compensation[0].to_f32() as f64;
        let want = 1.0 + 10_000.0 * 1e-4f32 as f64;
        assert!((got - want).abs() <= 0.04 * (want - 1.0), "{got} vs {want}");
    }

    /// The block-drawn bits are `random_bits` element by element, on this CPU's path, from any
    /// first index and over a ragged length.
    #[test]
    fn drawn_blocks_of_bits_are_each_element_s_bits() {
        let cases = [
            (0u64, 1usize),
            (1, 2),
            (2, 9),
            (3, 1023),
            (6, 4),
            (1 << 40, 2500),
        ];
        for (first, len) in cases {
            let mut bits = vec![0u16; len];
            fill_random_bits(99, first, &mut bits);
            let want: Vec<u16> = (0..len as u64)
                .map(|j| random_bits(99, first + j))
                .collect();
            assert_eq!(bits, want, "first {first}, length {len}");
        }
    }

    /// The four elements that share a hash get independent bits: neighbours' bits are
    /// uncorrelated, for every pair of quarters, within five standard errors.
    #[test]
    fn elements_sharing_a_hash_draw_uncorrelated_bits() {
        const GROUPS: u64 = 100_000;
        let key = rounding_key(&[5]);
        for (a, b) in [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)] {
            let centred = |q: u64, g: u64| random_bits(key, 4 * g + q) as f64 / 65536.0 - 0.5;
            let covariance: f64 = (0..GROUPS)
                .map(|g| centred(a, g) * centred(b, g))
                .sum::<f64>();
            // Each centred draw has variance 1/12, so the correlation's standard error is 1/√n.
            let correlation = covariance / GROUPS as f64 * 12.0;
            let bound = 5.0 / (GROUPS as f64).sqrt();
            assert!(
                correlation.abs() < bound,
                "quarters {a} and {b}: {correlation}"
            );
        }
    }
}
