//! The kernels' host twin: `csrc/rounding.cu`'s loops on the CPU over the same per-element
//! functions (`csrc/rounding.cuh`), compiled by the build script with the system's C++
//! compiler. What the tests check the kernels' arithmetic with on a machine without a GPU, and
//! what libtorch's device route runs when it is forced on the CPU. bf16 values are their bits.

use crate::Variant;

macro_rules! twin {
    ($($name:ident($($arg:ident: $ty:ty),*);)*) => {
        unsafe extern "C" {
            $(fn $name($($arg: $ty),*);)*
        }
        #[cfg(feature = "testing")]
        mod wrong {
            unsafe extern "C" {
                $(
                    #[link_name = concat!(stringify!($name), "_wrong")]
                    pub(super) fn $name($($arg: $ty),*);
                )*
            }
        }
    };
}

twin! {
    bf_host_round_stochastic(values: *const f32, out: *mut u16, n: u64, key: u64);
    bf_host_stochastic_axpby_f32(y: *mut u16, x: *const f32, n: u64, a: f32, b: f32, key: u64);
    bf_host_stochastic_axpby_bf16(y: *mut u16, x: *const u16, n: u64, a: f32, b: f32, key: u64);
    bf_host_kahan_add(weight: *mut u16, compensation: *mut u16, delta: *const f32, n: u64);
}

/// `$call` with `$f` bound to the twin of `$name` of `$variant`.
macro_rules! of_variant {
    ($variant:expr, $name:ident, $f:ident => $call:expr) => {
        match $variant {
            Variant::Correct => {
                let $f = $name;
                $call
            }
            #[cfg(feature = "testing")]
            Variant::DeliberatelyWrong => {
                let $f = wrong::$name;
                $call
            }
        }
    };
}

/// `out[i] = SR(values[i])` with the random bits of element `i` of stream `key`.
///
/// # Panics
/// When the lengths differ.
pub fn round_stochastic(values: &[f32], out: &mut [u16], key: u64, variant: Variant) {
    assert_eq!(values.len(), out.len(), "round_stochastic: lengths differ");
    // SAFETY: both slices hold `values.len()` elements of the types the loop reads and writes.
    of_variant!(variant, bf_host_round_stochastic, f => unsafe {
        f(values.as_ptr(), out.as_mut_ptr(), values.len() as u64, key)
    })
}

/// `y[i] = SR(a·y[i] + b·x[i])` for fp32 `x`.
///
/// # Panics
/// When the lengths differ.
pub fn stochastic_axpby_f32(y: &mut [u16], x: &[f32], a: f32, b: f32, key: u64, variant: Variant) {
    assert_eq!(y.len(), x.len(), "stochastic_axpby: lengths differ");
    // SAFETY: both slices hold `y.len()` elements of the types the loop reads and writes.
    of_variant!(variant, bf_host_stochastic_axpby_f32, f => unsafe {
        f(y.as_mut_ptr(), x.as_ptr(), y.len() as u64, a, b, key)
    })
}

/// `y[i] = SR(a·y[i] + b·x[i])` for bf16 `x`.
///
/// # Panics
/// When the lengths differ.
pub fn stochastic_axpby_bf16(y: &mut [u16], x: &[u16], a: f32, b: f32, key: u64, variant: Variant) {
    assert_eq!(y.len(), x.len(), "stochastic_axpby: lengths differ");
    // SAFETY: both slices hold `y.len()` elements of the types the loop reads and writes.
    of_variant!(variant, bf_host_stochastic_axpby_bf16, f => unsafe {
        f(y.as_mut_ptr(), x.as_ptr(), y.len() as u64, a, b, key)
    })
}

/// Kahan-compensated `weight += delta`.
///
/// # Panics
/// When the lengths differ.
pub fn kahan_add(weight: &mut [u16], compensation: &mut [u16], delta: &[f32], variant: Variant) {
    assert!(
        compensation.len() == weight.len() && delta.len() == weight.len(),
        "kahan_add: lengths differ"
    );
    // SAFETY: the three slices hold `weight.len()` elements of the types the loop uses.
    of_variant!(variant, bf_host_kahan_add, f => unsafe {
        f(weight.as_mut_ptr(), compensation.as_mut_ptr(), delta.as_ptr(), weight.len() as u64)
    })
}
