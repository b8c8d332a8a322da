//! The device route runs libtorch's fused operators, not a chain of composed ones: each op's
//! operators and bytes on libtorch's CPU, counted by the traffic ledger, on the device route
//! against the composed route (their values agree: `composed.rs`). One test in this binary,
//! since the ledger counts every thread's operators.
#![cfg(feature = "tch")]

use brainfloat_backend::Backend;
use brainfloat_ops::{
    AdamGroup, AdamMember, KernelBackend, LibTorchRoute, Traffic, adam_steps, axpbys, ledger_start,
    ledger_stop, square_sums, with_libtorch_route,
};
use brainfloat_test_support::test_backend;
use burn::backend::Dispatch;
use burn::backend::tensor::FloatTensor;
use burn::tensor::{DType, Device, FloatDType, Int, Tensor, TensorData};

type Primitive = FloatTensor<Dispatch>;

/// A bf16 tensor of `dims` on libtorch's CPU with values in about ±`scale`.
fn input<const D: usize>(dims: [usize; D], seed: usize, scale: f32) -> Primitive {
    let len = dims.iter().product();
    let values: Vec<f32> = (0..len)
        .map(|i| (((i * 7919 + seed * 104_729) % 1009) as f32 / 504.5 - 1.0) * scale)
        .collect();
    let device = Backend::Tch
        .device()
        .expect("a build with `tch` has libtorch's CPU");
    Tensor::<D>::from_data(TensorData::new(values, dims), (&device, DType::F32))
        .cast(FloatDType::BF16)
        .into_dispatch()
}

/// The traffic of `op` (its inputs made beforehand by `inputs`) on `route`.
fn traffic<I, R>(route: LibTorchRoute, inputs: impl Fn() -> I, op: impl Fn(I) -> R) -> Traffic {
    with_libtorch_route(route, || {
        let inputs = inputs();
        ledger_start();
        let result = op(inputs);
        let traffic = ledger_stop();
        drop(result);
        traffic
    })
}

/// An op's traffic on a route.
type Counted<'a> = dyn Fn(LibTorchRoute) -> Traffic + 'a;

#[test]
fn the_device_route_runs_fewer_operators_and_moves_fewer_bytes() {
    if !matches!(test_backend(), Backend::Tch) {
        println!("the device route is libtorch's: checked on the `tch` pass");
        return;
    }
    let targets = || {
        let device: Device = Backend::Tch.device().unwrap();
        let ids: Vec<i64> = (0..64).map(|i| (i * 37) % 1000).collect();
        Tensor::<1, Int>::from_data(TensorData::new(ids, [64]), &device).into_dispatch()
    };
    let x = || input([4, 16, 256], 1, 2.0);
    let both = || (x(), input([4, 16, 256], 2, 1.0));
    // Each op, and whether libtorch has a fused operator for it (ReLU² is ReLU and a square
    // either way: the device route only makes the square in place).
    let cases: Vec<(&str, bool, Box<Counted<'_>>)> = vec![
        (
            "rms_norm",
            true,
            Box::new(move |r| traffic(r, x, |x| Dispatch::rms_norm(x, 1e-6, true))),
        ),
        (
            "rms_norm backward",
            // libtorch's fused backward is a CUDA kernel only: the CPU runs its composition.
            false,
            Box::new(move |r| {
                let stats = || Dispatch::rms_norm(x(), 1e-6, true).1.expect("asked for");
                traffic(
                    r,
                    || (x(), stats(), input([4, 16, 256], 2, 1.0)),
                    |(x, s, g)| Dispatch::rms_norm_backward(x, s, g),
                )
            }),
        ),
        (
            "rotary",
            true,
            Box::new(move |r| {
                let tables = || (input([1, 16, 1, 32], 3, 1.0), input([1, 16, 1, 32], 4, 1.0));
                traffic(
                    r,
                    || (input([4, 16, 4, 64], 5, 1.0), tables()),
                    |(x, (cos, sin))| Dispatch::rotary(x, cos, sin),
                )
            }),
        ),
        (
            "relu_square",
            false,
            Box::new(move |r| traffic(r, x, Dispatch::relu_square)),
        ),
        (
            "relu_square backward",
            false,
            Box::new(move |r| traffic(r, both, |(x, g)| Dispatch::relu_square_backward(x, g))),
        ),
        (
            "soft-capped loss and gradient",
            true,
            Box::new(move |r| {
                traffic(
                    r,
                    || (input([64, 1000], 6, 30.0), targets()),
                    |(logits, targets)| {
                        Dispatch::softcapped_cross_entropy(logits, targets, Some(15.0), 64, true)
                    },
                )
            }),
        ),
        (
            "axpby",
            true,
            Box::new(move |r| traffic(r, both, |(y, x)| Dispatch::axpby(y, x, 1.0, -0.01))),
        ),
        (
            "adam",
            true,
            Box::new(move |r| {
                let step = brainfloat_kernels::AdamStep {
                    lr: 0.01,
                    betas: (0.9, 0.95),
                    eps: 1e-8,
                    weight_decay: 0.0,
                    step: 3,
                    stochastic: None,
                };
                let state = || {
                    let n = [4096];
                    (
                        input(n, 1, 1.0),
                        input(n, 2, 0.5),
                        input(n, 3, 0.1),
                        input(n, 4, 0.01),
                    )
                };
                traffic(r, state, move |(p, g, m1, m2)| {
                    Dispatch::adam_step(p, g, m1, m2, step)
                })
            }),
        ),
    ];
    for (name, fused, count) in cases {
        let (composed, device) = (count(LibTorchRoute::Composed), count(LibTorchRoute::Device));
        println!("{name}: composed {composed:?}, device route {device:?}");
        assert!(
            device.launches > 0,
            "{name}: the ledger saw the device route's operators"
        );
        let moved = |t: Traffic| t.bytes_read + t.bytes_written;
        if !fused {
            assert!(
                device.launches <= composed.launches,
                "{name}: more operators"
            );
            assert!(moved(device) <= moved(composed), "{name}: more bytes");
            continue;
        }
        assert!(
            device.launches < composed.launches,
            "{name}: {} operators on the device route, {} composed",
            device.launches,
            composed.launches
        );
        assert!(
            moved(device) < moved(composed),
            "{name}: {} bytes on the device route, {} composed",
            moved(device),
            moved(composed)
        );
    }
    // The fused forward is libtorch's one CUDA kernel (a composition on the CPU, which the
    // ledger does not count inside it).
    assert!(
        brainfloat_ops::ledger_counts_gpu_launches(),
        "PyPI's torch is a CUDA build"
    );
    let fused = traffic(LibTorchRoute::Device, x, |x| {
        Dispatch::rms_norm(x, 1e-6, true)
    });
    assert_eq!(fused.launches, 1, "rms_norm: `_fused_rms_norm` alone");
    the_group_ops_launch_as_many_operators_for_any_group_size();
}

/// A group's tensors (bf16, 4,096 values each), `members` of them.
fn group(members: usize, seed: usize, scale: f32) -> Vec<Tensor<1>> {
    (0..members)
        .map(|i| Tensor::from_dispatch(input([4096], seed + i, scale)))
        .collect()
}

/// The multi-tensor ops launch one set of operators per group on the device route, whatever
/// its size, where the composed route's grow with it.
fn the_group_ops_launch_as_many_operators_for_any_group_size() {
    let adam = |members| {
        move |r| {
            let state = || {
                let (p, g, m1, m2) = (
                    group(members, 1, 1.0),
                    group(members, 2, 0.5),
                    group(members, 3, 0.1),
                    group(members, 4, 0.01),
                );
                (p.into_iter().zip(g).zip(m1).zip(m2))
                    .map(|(((param, grad), moment_1), moment_2)| AdamMember {
                        param,
                        grad,
                        moment_1,
                        moment_2,
                        compensation: None,
                        step: 3,
                        stochastic: None,
                    })
                    .collect::<Vec<_>>()
            };
            traffic(r, state, |members| {
                let group = AdamGroup {
                    lr: 0.01,
                    betas: (0.9, 0.95),
                    eps: 1e-8,
                    weight_decay: 0.0,
                };
                adam_steps(members, group)
            })
        }
    };
    let axpby = |members, (a, b)| {
        move |r| {
            let pairs = || (group(members, 5, 3.0), group(members, 6, 1.0));
            traffic(r, pairs, move |(ys, xs)| axpbys(ys, xs, a, b))
        }
    };
    let squares = |members| move |r| traffic(r, || group(members, 7, 1.0), square_sums);
    let count = |name: &str, members: usize, route: LibTorchRoute| match name {
        "adam_steps" => adam(members)(route),
        "axpbys, a = 1" => axpby(members, (1.0, -0.01))(route),
        "axpbys, b = 1" => axpby(members, (0.95, 1.0))(route),
        "axpbys" => axpby(members, (0.5, 2.0))(route),
        _ => squares(members)(route),
    };
    for name in [
        "adam_steps",
        "axpbys, a = 1",
        "axpbys, b = 1",
        "axpbys",
        "square_sums",
    ] {
        let [device_2, device_8] = [2, 8].map(|n| count(name, n, LibTorchRoute::Device));
        let [composed_2, composed_8] = [2, 8].map(|n| count(name, n, LibTorchRoute::Composed));
        println!(
            "{name}: device route {} / {} operators for 2 / 8 tensors, composed {} / {}",
            device_2.launches, device_8.launches, composed_2.launches, composed_8.launches
        );
        assert!(
            device_2.launches > 0,
            "{name}: the ledger saw the operators"
        );
        assert_eq!(
            device_2.launches, device_8.launches,
            "{name}: one set per group"
        );
        assert!(
            composed_8.launches > composed_2.launches,
            "{name}: the composed op runs per tensor"
        );
        assert!(
            device_8.launches < composed_8.launches,
            "{name}: fewer operators"
        );
    }
}
