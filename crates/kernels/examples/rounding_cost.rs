//! What stochastic rounding adds to the optimizer's kernels: one Adam step of a bf16 tensor the
//! size of the `small` model's embeddings and head (25.8 M elements) rounded to nearest and
//! stochastically, and `stochastic_axpby` against the same update rounded to nearest, side by
//! side in one process (median of 9 interleaved rounds).
//!
//! ```sh
//! cargo run --release -p brainfloat-kernels --example rounding_cost [-- ELEMENTS]
//! ```

use std::time::Instant;

use brainfloat_kernels::{AdamStep, adam_update, bf16, stochastic_axpby};
use rayon::prelude::*;

const ROUNDS: usize = 9;

fn main() {
    let n: usize = std::env::args().nth(1).map_or(2 * 50304 * 256, |a| {
        a.parse().expect("ELEMENTS is a number")
    });
    println!("threads: {}, elements: {n}", rayon::current_num_threads());
    let value =
        |i: usize, scale: f32| bf16::from_f32(((i * 7919 % 1009) as f32 / 1009.0 - 0.5) * scale);
    let grad: Vec<bf16> = (0..n).map(|i| value(i, 1e-2)).collect();
    let mut param: Vec<bf16> = (0..n).map(|i| value(i, 1.0)).collect();
    let mut moment_1 = vec![bf16::ZERO; n];
    let mut moment_2 = vec![bf16::ZERO; n];
    let adam = |stochastic: Option<[u64; 3]>, step: i32| AdamStep {
        lr: 1e-3,
        betas: (0.9, 0.95),
        eps: 1e-8,
        weight_decay: 0.0,
        step,
        stochastic,
    };
    let cases = [
        "adam nearest",
        "adam stochastic",
        "axpby nearest",
        "axpby stochastic",
    ];
    let mut times = vec![Vec::new(); cases.len()];
    for round in 0..=ROUNDS {
        for (case, case_times) in times.iter_mut().enumerate() {
            let start = Instant::now();
            match case {
                0 | 1 => {
                    let keys = (case == 1).then_some([1, 2, 3]);
                    adam_update(
                        &mut param,
                        &grad,
                        &mut moment_1,
                        &mut moment_2,
                        None,
                        &adam(keys, 1),
                    );
                }
                // The same update rounded to nearest, on all cores.
                2 => param
                    .par_iter_mut()
                    .zip(grad.par_iter())
                    .for_each(|(p, g)| *p = bf16::from_f32(p.to_f32() - 1e-3 * g.to_f32())),
                _ => stochastic_axpby(&mut param, &grad, 1.0, -1e-3, 4),
            }
            if round > 0 {
                case_times.push(start.elapsed().as_secs_f64() * 1e3);
            }
        }
    }
    for (name, mut t) in cases.iter().zip(times) {
        t.sort_by(f64::total_cmp);
        println!("{name:<18} {:>7.1} ms", t[ROUNDS / 2]);
    }
}
