//! `cargo xtask demo`: boot a real arm64 guest through hvarch, hot-plug a disk and memory,
//! watch the guest see them, unplug the disk, power off, and print the timings.
//!
//! The flow and the guest live in the `hvarch-tests` library (`guest`, `demo`), shared with
//! the `demo_guest` integration test. It runs `cargo xtask setup --profile demo` first, which
//! installs QEMU, the UEFI firmware and the guest's kernel and busybox when they are missing
//! (and nothing else: the cross toolchains are the `ci` profile's).

use std::time::Instant;

use hvarch_tests::demo::{self, Observer};
use hvarch_tests::guest;

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
    setup::run(setup::Profile::Demo, false)?;
    printer.step(&format!("guest kernel and busybox in {}", dir.display()));
    let files = guest::find(&dir)?;
    let scratch = hvarch_tests::TempDir::new();
    let report = demo::run(&files, scratch.path(), &mut printer)?;
    println!(
        "\nhvarch demo: arm64 guest (Linux {}) under TCG, booted through UEFI\n",
        report.kernel
    );
    print!("{}", report.timings.table());
    Ok(())
}
