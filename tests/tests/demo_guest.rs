//! The demo's flow as a test (`hvarch_tests::demo`, the same code `cargo xtask demo` runs):
//! a real arm64 guest (Debian's cloud kernel, a busybox initramfs) boots under TCG through
//! UEFI to its marker; a hot-plugged virtio-blk disk and a pc-dimm are seen by the guest; the
//! disk's unplug is seen too; the guest powers off and QEMU exits 0; no process, socket or
//! runtime directory is left behind. And the guest's console protocol itself: a long command
//! line reaches `/init` whole.
//!
//! The guest files come from `cargo xtask setup` (`target/guest/`). A missing kernel fails
//! the test with a message naming `cargo xtask setup`; it is never skipped.
//!
//! Under `cargo xtask cross` this test binary runs under qemu-aarch64 while QEMU itself runs
//! natively, so the guest boots just as fast: only the host side is emulated.

use std::path::Path;
use std::time::Duration;

use hvarch_tests::demo::{self, Observer, HOTPLUG_MEMORY_MB};
use hvarch_tests::guest::{self, GuestOptions};
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

/// A command line the guest reads slowly (thousands of bytes, one `read` each under TCG)
/// arrives whole: `/init` never reads the console with a deadline that could pass mid-line
/// (busybox's `read -t` then drops what it had read, and a `poweroff` once arrived as
/// `oweroff`). An unknown command is echoed back, so the echo shows what `/init` read.
#[test]
fn a_long_console_line_reaches_the_guest_whole() {
    const BOUND: Duration = Duration::from_secs(240);
    let dir = TempDir::new();
    let mut options = GuestOptions::new("console", dir.path());
    options.uefi = false;
    options.root_ports = 0;
    let (mut vm, console) = guest::boot(&options, BOUND).unwrap_or_else(|e| panic!("{e}"));

    // Under the tty's 4095-byte line limit; distinct ends show a lost head or tail.
    let line = format!("head-{}-tail", "x".repeat(3000));
    for _ in 0..3 {
        console.send(&line).unwrap();
        let echoed = console
            .wait_for("the echo of the long line", BOUND, |l| {
                l.starts_with("HVARCH-UNKNOWN ")
            })
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            echoed.text.strip_prefix("HVARCH-UNKNOWN "),
            Some(line.as_str()),
            "the guest read another line than was sent; it printed:\n{}",
            console.transcript_text()
        );
    }
    console.send("poweroff").unwrap();
    console
        .wait_for("goodbye", BOUND, |l| l.starts_with(guest::BYE_MARKER))
        .unwrap_or_else(|e| panic!("{e}"));
    let outcome = vm.shutdown(BOUND).unwrap();
    assert!(outcome.powered_off(), "{outcome}");
}
