//! Criterion benchmarks of argv rendering (option syntax): Kata's default arm64 VM and the
//! same VM with 64 more devices (see `argv/vms.rs`), rendered by [`VmConfig::to_argv`] as the
//! launcher renders them, and the 64-device VM by [`VmConfig::to_args`] (a `String` each).
//! `cargo xtask bench argv` runs them and reports the figures; allocations per render are
//! counted by the `argv_allocs` bench binary (criterion cannot count them).
#![allow(missing_docs)] // criterion_group! generates an undocumented function.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use hvarch_devices::argv::Argv;
use hvarch_devices::config::VmConfig;
use hvarch_devices::fd::FdTable;
use hvarch_devices::part::Syntax;

#[path = "argv/vms.rs"]
mod vms;

fn render(vm: &VmConfig) -> Argv {
    vm.to_argv(Syntax::Options, &mut FdTable::new())
        .expect("render")
}

fn render_vec(vm: &VmConfig) -> Vec<String> {
    vm.to_args(Syntax::Options, &mut FdTable::new())
        .expect("render")
}

fn argv(c: &mut Criterion) {
    let default = vms::default_vm();
    let big = vms::vm_64_devices();
    c.bench_function("argv_default_vm", |b| {
        b.iter(|| render(black_box(&default)))
    });
    c.bench_function("argv_64_devices", |b| b.iter(|| render(black_box(&big))));
    c.bench_function("argv_64_devices_vec", |b| {
        b.iter(|| render_vec(black_box(&big)))
    });
}

criterion_group!(benches, argv);
criterion_main!(benches);
