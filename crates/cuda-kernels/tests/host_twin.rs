//! The kernels' arithmetic (`csrc/rounding.cuh`, through its host twin) against
//! brainfloat-kernels' Rust, bit for bit, on values across bf16's range: what a GPU run of
//! `bf16-sr` rounds is what a CPU run rounds.

use brainfloat_cuda_kernels::{Variant, host_twin};
use brainfloat_kernels::bf16;

/// Values across fp32's range: normal and subnormal, tiny and huge, both signs, on and off the
/// bf16 grid, the infinities and a NaN.
fn values(n: usize, seed: usize) -> Vec<f32> {
    (0..n)
        .map(|i| match (i + seed) % 97 {
            0 => f32::NAN,
            1 => f32::INFINITY,
            2 => f32::NEG_INFINITY,
            3 => 1e-41,
            4 => -3e-39,
            5 => f32::MAX,
            _ => {
                let mantissa = ((i * 7919 + seed * 104_729) % 20011) as f32 / 10005.5 - 1.0;
                mantissa * 2f32.powi(((i * 31 + seed) % 80) as i32 - 40)
            }
        })
        .collect()
}

fn to_bf16(values: &[f32]) -> Vec<bf16> {
    values.iter().map(|v| bf16::from_f32(*v)).collect()
}

fn bits(values: &[bf16]) -> Vec<u16> {
    values.iter().map(|v| v.to_bits()).collect()
}

const N: usize = 10_007;

#[test]
fn stochastic_rounding_is_the_cpu_kernels() {
    for key in [0, 7, u64::MAX, 0x1234_5678_9ABC_DEF0] {
        let values = values(N, key as usize);
        let mut want = vec![bf16::ZERO; N];
        brainfloat_kernels::round_stochastic_into(&values, &mut want, key);
        let mut got = vec![0u16; N];
        host_twin::round_stochastic(&values, &mut got, key, Variant::Correct);
        assert_eq!(got, bits(&want), "key {key}");
    }
}

#[test]
fn stochastic_axpby_is_the_cpu_kernels() {
    for (a, b, key) in [(0.95f32, 1.0f32, 3u64), (1.0, -0.02, 11), (-1.5, 3.25, 99)] {
        let y = to_bf16(&values(N, 1));
        let x32 = values(N, 2);
        let mut want = y.clone();
        brainfloat_kernels::stochastic_axpby(&mut want, &x32, a, b, key);
        let mut got = bits(&y);
        host_twin::stochastic_axpby_f32(&mut got, &x32, a, b, key, Variant::Correct);
        assert_eq!(got, bits(&want), "fp32 x, a {a} b {b}");

        let x16 = to_bf16(&x32);
        let mut want = y.clone();
        brainfloat_kernels::stochastic_axpby(&mut want, &x16, a, b, key);
        let mut got = bits(&y);
        host_twin::stochastic_axpby_bf16(&mut got, &bits(&x16), a, b, key, Variant::Correct);
        assert_eq!(got, bits(&want), "bf16 x, a {a} b {b}");
    }
}

#[test]
fn kahan_addition_is_the_cpu_kernels() {
    let weight = to_bf16(&values(N, 3));
    let compensation = to_bf16(&values(N, 4).iter().map(|v| v / 512.0).collect::<Vec<_>>());
    let delta: Vec<f32> = values(N, 5).iter().map(|v| v / 64.0).collect();
    let (mut want_w, mut want_c) = (weight.clone(), compensation.clone());
    brainfloat_kernels::kahan_add(&mut want_w, &mut want_c, &delta);
    let (mut got_w, mut got_c) = (bits(&weight), bits(&compensation));
    host_twin::kahan_add(&mut got_w, &mut got_c, &delta, Variant::Correct);
    assert_eq!(got_w, bits(&want_w), "weight");
    assert_eq!(got_c, bits(&want_c), "compensation");
}

/// The broken variant the self-test's fallback is tested with is broken: its stochastic
/// rounding draws other bits, its Kahan addition subtracts.
#[cfg(feature = "testing")]
#[test]
fn the_deliberately_wrong_variant_disagrees() {
    let values = values(N, 9);
    let (mut right, mut wrong) = (vec![0u16; N], vec![0u16; N]);
    host_twin::round_stochastic(&values, &mut right, 5, Variant::Correct);
    host_twin::round_stochastic(&values, &mut wrong, 5, Variant::DeliberatelyWrong);
    let differ = right.iter().zip(&wrong).filter(|(r, w)| r != w).count();
    assert!(differ > N / 4, "{differ} of {N} differ");
    let (mut weight, mut compensation) = (vec![0x3F80u16; 4], vec![0u16; 4]);
    host_twin::kahan_add(
        &mut weight,
        &mut compensation,
        &[0.5; 4],
        Variant::DeliberatelyWrong,
    );
    assert_eq!(weight, [0x3F00; 4], "1 − 0.5, not 1 + 0.5");
}
