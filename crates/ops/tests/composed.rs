//! Each op as the backend runs it (its kernel on flex and libtorch's CPU) against the composed
//! op on the same device and inputs (`brainfloat_ops::conformance`): values and dtypes. The
//! composed ops must agree with the kernels the CPU tests hold to float64. On libtorch every
//! check runs twice: on the CPU's kernels, and on the device route (libtorch's fused operators
//! and brainfloat's device kernels' host twin, what a GPU runs) forced on the CPU.

mod common;

use brainfloat_ops::conformance::{self, Agreement};
use brainfloat_test_support::test_device;
use burn::tensor::Device;
use common::on_each_route;

/// Every agreement of `check` holds on every route of the test backend.
fn holds(check: fn(&Device) -> Vec<Agreement>) {
    on_each_route(|| {
        for agreement in check(&test_device()) {
            println!("{agreement}");
            assert!(agreement.holds(), "{agreement}");
        }
    });
}

#[test]
fn rms_norm_and_its_backward_are_the_composed_ops() {
    holds(conformance::rms_norm);
}

#[test]
fn rotary_and_relu_square_are_the_composed_ops() {
    holds(conformance::rotary_and_relu_square);
}

/// The causal softmax each way, on square scores and on the last queries of longer keys.
#[test]
fn causal_softmax_and_its_backward_are_the_composed_ops() {
    holds(conformance::causal_softmax);
}

/// Attention as the backend runs it (libtorch: its SDPA; flex: the composition on the kernels).
#[test]
fn causal_attention_and_its_backward_are_the_composed_ops() {
    holds(conformance::causal_attention);
}

#[test]
fn the_loss_and_its_gradient_are_the_composed_ops() {
    holds(conformance::softcapped_cross_entropy);
}

/// Adam's kernel and the composed step use the same fp32 constants and order of operations;
/// libtorch's fused Adam (the device route) computes with the unrounded moments, within a
/// rounding of the stored dtype.
#[test]
fn adam_is_the_composed_step() {
    holds(conformance::adam_step);
}

#[test]
fn fp32_sums_are_the_composed_ops() {
    holds(conformance::fp32_sums);
}

/// `a·y + b·x`: one libtorch `add` on the device route, rounded once.
#[test]
fn axpby_is_the_composed_op() {
    holds(conformance::axpby);
}

/// The rounding ops bit for bit (the device route: the kernels' host twin after its self-test).
#[test]
fn the_rounding_ops_are_the_composed_ops_bit_for_bit() {
    holds(conformance::rounding);
}

/// The multi-tensor ops over a group (one libtorch multi-tensor operator on the device route)
/// against the composed op on each member.
#[test]
fn the_group_ops_are_the_composed_ops_on_each_member() {
    holds(conformance::groups);
}
