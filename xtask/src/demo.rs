//! `cargo xtask demo`: boot a real arm64 guest through hvarch, hot-plug a disk and memory,
//! watch the guest see them, unplug the disk, power off, and print the timings.
//!
//! The flow and the guest live in the `hvarch-tests` library (`guest`, `demo`), shared with
//! the `demo_guest` integration test. On a fresh machine this runs `cargo xtask setup` first
//! when QEMU, the UEFI firmware or the guest's kernel and busybox are missing.

use std::path::Path;
use std::time::Instant;

use hvarch_tests::demo::{self, Observer};
use hvarch_tests::guest;

use crate::run::Step;
use crate::setup;

struct Printer {
    started: Instant,
}

impl Observer for Printer {
    fn step(&mut self, text: &str) {
        eprintln!(
            "demo [{:>6.1} s] {text}",
            self.started.elapsed().as_secs_f64()
        );
    }

    fn guest(&mut self, line: &str) {
        eprintln!("            guest| {line}");
    }
}

/// Runs the demo.
pub fn run() -> Result<(), String> {
    let mut printer = Printer {
        started: Instant::now(),
    };
    let dir = guest::guest_dir();
    let qemu_ok = Step::new("qemu-system-aarch64", &["--version"])
        .output()
        .is_some()
        && Path::new(guest::AAVMF_CODE).exists();
    if !qemu_ok || guest::find(&dir).is_err() {
        printer.step("QEMU, UEFI firmware or the guest missing: running `cargo xtask setup`");
        setup::run()?;
    }
    printer.step(&format!("guest kernel and busybox in {}", dir.display()));
    let files = guest::fetch(&dir, &mut |line| printer.step(line))?;
    let scratch = hvarch_tests::TempDir::new();
    let report = demo::run(&files, scratch.path(), &mut printer)?;
    println!(
        "\nhvarch demo: arm64 guest (Linux {}) under TCG, booted through UEFI\n",
        report.kernel
    );
    print!("{}", report.timings.table());
    Ok(())
}
