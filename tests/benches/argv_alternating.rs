//! The renders of `argv/vms.rs` timed in alternating rounds, as the other benchmarks alternate
//! with their baselines: each round renders Kata's default VM and the 64-device VM with
//! `VmConfig::to_argv` (the launcher's render) and the 64-device VM with `VmConfig::to_args`,
//! in an order that rotates every round, so a machine whose speed drifts over seconds slows
//! all three alike. Prints `argv_time <vm> <median ns> <p10 ns> <p90 ns>` per render.
//! Run by `cargo xtask bench argv` (`cargo bench --bench argv_alternating`).

use std::hint::black_box;
use std::time::Instant;

use hvarch_devices::config::VmConfig;
use hvarch_devices::fd::FdTable;
use hvarch_devices::part::Syntax;

#[path = "argv/vms.rs"]
mod vms;

/// Rounds measured, after `WARM_UP` unreported ones.
const ROUNDS: usize = 61;
const WARM_UP: usize = 5;
/// Renders per measurement (about 2–10 ms of work for the 64-device VM).
const RENDERS: u32 = 200;

/// A render, returning the number of arguments (so that nothing is optimised away).
type Render = fn(&VmConfig) -> usize;

fn to_argv(vm: &VmConfig) -> usize {
    vm.to_argv(Syntax::Options, &mut FdTable::new())
        .expect("render")
        .len()
}

fn to_args(vm: &VmConfig) -> usize {
    vm.to_args(Syntax::Options, &mut FdTable::new())
        .expect("render")
        .len()
}

/// Nanoseconds per render of `render(vm)`, over `RENDERS` renders.
fn time(vm: &VmConfig, render: Render) -> f64 {
    let start = Instant::now();
    for _ in 0..RENDERS {
        black_box(render(black_box(vm)));
    }
    start.elapsed().as_secs_f64() * 1e9 / f64::from(RENDERS)
}

/// The value at `quantile` (0..=1) of sorted `values` (nearest rank).
fn quantile(sorted: &[f64], quantile: f64) -> f64 {
    let last = sorted.len().saturating_sub(1);
    // A rank within 0..=last: the casts neither truncate meaningfully nor overflow.
    let rank = (quantile * last as f64).round() as usize;
    sorted.get(rank.min(last)).copied().unwrap_or(f64::NAN)
}

fn main() {
    // `cargo bench` passes `--bench`; nothing to parse.
    let (default, big) = (vms::default_vm(), vms::vm_64_devices());
    let renders: [(&str, &VmConfig, Render); 3] = [
        ("default_vm", &default, to_argv),
        ("64_devices", &big, to_argv),
        ("64_devices_vec", &big, to_args),
    ];
    let mut times: [Vec<f64>; 3] = Default::default();
    for round in 0..WARM_UP + ROUNDS {
        for k in 0..renders.len() {
            let i = (round + k) % renders.len();
            let (_, vm, render) = renders[i];
            let ns = time(vm, render);
            if round >= WARM_UP {
                times[i].push(ns);
            }
        }
    }
    for ((name, _, _), mut samples) in renders.into_iter().zip(times) {
        samples.sort_by(f64::total_cmp);
        println!(
            "argv_time {name} {:.0} {:.0} {:.0}",
            quantile(&samples, 0.5),
            quantile(&samples, 0.1),
            quantile(&samples, 0.9)
        );
    }
}
