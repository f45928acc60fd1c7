//! The demo's flow as a test (`hvarch_tests::demo`, the same code `cargo xtask demo` runs):
//! a real arm64 guest (Debian's cloud kernel, a busybox initramfs) boots under TCG through
//! UEFI to its marker; a hot-plugged virtio-blk disk and a pc-dimm are seen by the guest; the
//! disk's unplug is seen too; the guest powers off and QEMU exits 0; no process, socket or
//! runtime directory is left behind.
//!
//! The guest files come from `cargo xtask setup` (`target/guest/`). A missing kernel fails
//! the test with a message naming `cargo xtask setup`; it is never skipped.
//!
//! Under `cargo xtask cross` this test binary runs under qemu-aarch64 while QEMU itself runs
//! natively, so the guest boots just as fast: only the host side is emulated.

use std::path::Path;

use hvarch_tests::demo::{self, Observer, HOTPLUG_MEMORY_MB};
use hvarch_tests::guest;
use hvarch_tests::TempDir;

/// Prints the steps, so a failing CI log shows how far the guest got.
struct Log;

impl Observer for Log {
    fn step(&mut self, text: &str) {
        eprintln!("demo_guest: {text}");
    }
}

#[test]
fn boot_hotplug_disk_and_memory_unplug_and_power_off() {
    let files = guest::find(&guest::guest_dir()).unwrap_or_else(|e| panic!("{e}"));
    let scratch = TempDir::new();
    let report = demo::run(&files, scratch.path(), &mut Log).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{}", report.timings.table());

    assert!(report.kernel.starts_with("6."), "{}", report.kernel);
    assert!(report.booted.disks.is_empty(), "{:?}", report.booted);
    assert!(report.booted.mem_kb > 300 * 1024, "{:?}", report.booted);
    assert_eq!(report.with_disk.disks, ["vda"], "{:?}", report.with_disk);
    let added_kb = report.with_memory.mem_kb - report.with_disk.mem_kb;
    assert_eq!(
        added_kb,
        HOTPLUG_MEMORY_MB * 1024,
        "MemTotal grew by exactly the DIMM"
    );
    assert!(
        report.after_unplug.disks.is_empty(),
        "{:?}",
        report.after_unplug
    );
    assert_eq!(report.after_unplug.mem_kb, report.with_memory.mem_kb);
    assert!(report.transcript.contains(guest::BYE_MARKER));

    // Nothing left: QEMU reaped, its runtime directory (sockets) removed.
    assert!(
        !Path::new(&format!("/proc/{}", report.qemu_pid)).exists(),
        "QEMU {} still exists",
        report.qemu_pid
    );
    let run_dir = scratch.join("run");
    assert!(
        !run_dir.exists(),
        "runtime dir left behind: {:?}",
        std::fs::read_dir(&run_dir).map(|d| d.flatten().map(|e| e.path()).collect::<Vec<_>>())
    );
}
