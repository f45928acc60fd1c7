//! Allocations per argv render, counted by a global allocator wrapper (criterion cannot
//! count them): prints `argv_allocs <vm> <allocations> <bytes> <args> <devices>` for the
//! VMs of `argv/vms.rs` rendered by `VmConfig::to_argv`, and for the 64-device VM rendered by
//! `VmConfig::to_args` (`64_devices_vec`). Run by `cargo xtask bench argv`
//! (`cargo bench --bench argv_allocs`).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

use hvarch_devices::config::VmConfig;
use hvarch_devices::fd::FdTable;
use hvarch_devices::part::Syntax;

#[path = "argv/vms.rs"]
mod vms;

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; only counters change.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: the caller's contract for `alloc` is the system allocator's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` with `layout` (every allocation is).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        // SAFETY: the caller's contract for `realloc` is the system allocator's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn measure(name: &str, vm: &VmConfig, render: impl Fn(&VmConfig) -> usize) {
    const RENDERS: u64 = 100;
    let mut args = 0;
    // One render before counting (lazy statics, first-use buffers).
    render(vm);
    let (a0, b0) = (
        ALLOCS.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed),
    );
    for _ in 0..RENDERS {
        args = render(vm);
    }
    let allocs = (ALLOCS.load(Ordering::Relaxed) - a0) / RENDERS;
    let bytes = (BYTES.load(Ordering::Relaxed) - b0) / RENDERS;
    println!(
        "argv_allocs {name} {allocs} {bytes} {args} {}",
        vm.devices.len()
    );
}

/// Renders `vm` as the launcher does (one buffer), returning the number of arguments.
fn argv(vm: &VmConfig) -> usize {
    let rendered = vm
        .to_argv(Syntax::Options, &mut FdTable::new())
        .expect("render");
    std::hint::black_box(rendered).len()
}

/// Renders `vm` as one `String` per argument.
fn args_vec(vm: &VmConfig) -> usize {
    let rendered = vm
        .to_args(Syntax::Options, &mut FdTable::new())
        .expect("render");
    std::hint::black_box(rendered).len()
}

fn main() {
    // `cargo bench` passes `--bench`; nothing to parse.
    let (default, big) = (vms::default_vm(), vms::vm_64_devices());
    measure("default_vm", &default, argv);
    measure("64_devices", &big, argv);
    measure("64_devices_vec", &big, args_vec);
}
