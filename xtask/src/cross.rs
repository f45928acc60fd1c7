//! `cargo xtask cross`: the workspace built for another architecture and its tests run under
//! qemu-user.
//!
//! rustup cannot add targets here, so this uses Debian's `rustc-web` toolchain
//! (`/usr/bin/cargo`, `/usr/bin/rustc`, `/usr/bin/rustdoc`) in a target directory of its own so
//! the two compilers never share artifacts. The target's standard library is the one
//! `cargo xtask setup` extracted into `target/cross/<triple>` (`--sysroot`, see
//! [`crate::setup`]); the GNU cross linker links against the cross C library, and qemu-user
//! loads the test binaries' dynamic loader and C library from that same cross C library
//! (`QEMU_LD_PREFIX=/usr/<gnu triple>`), so exactly one glibc build is ever involved.

use crate::run::{workspace_root, Step};
use crate::setup;

/// A target the test suite is cross-built for.
#[derive(Clone, Copy, Debug)]
pub struct CrossTarget {
    /// The Rust target triple.
    pub triple: &'static str,
    /// The GNU triple of the cross linker and C library (`/usr/<gnu>`, `<gnu>-gcc`).
    pub gnu: &'static str,
    /// The qemu-user binary that runs its programs.
    pub runner: &'static str,
}

/// aarch64: the whole workspace's tests.
pub const AARCH64: CrossTarget = CrossTarget {
    triple: "aarch64-unknown-linux-gnu",
    gnu: "aarch64-linux-gnu",
    runner: "qemu-aarch64",
};

/// Builds and tests the workspace for `target`.
pub fn run_target(target: &CrossTarget, cargo_args: &[&str]) -> Result<(), String> {
    let sysroot = setup::cross_sysroot(&setup::dirs().cross.join(target.triple));
    if !sysroot.join("lib/rustlib").join(target.triple).is_dir() {
        return Err(format!(
            "no standard library for {} under {}: run `cargo xtask setup`",
            target.triple,
            sysroot.display()
        ));
    }
    let env_key = target.triple.to_uppercase().replace('-', "_");
    let target_dir = workspace_root()
        .join("target")
        .join(format!("{}-debian", target.triple));
    let mut args = vec!["test", "--target", target.triple, "--no-fail-fast"];
    args.extend_from_slice(cargo_args);
    Step::new("/usr/bin/cargo", &args)
        .current_dir(workspace_root())
        .env("PATH", "/usr/bin:/bin:/usr/sbin:/sbin")
        .env("RUSTC", "/usr/bin/rustc")
        .env("RUSTDOC", "/usr/bin/rustdoc")
        .env("CARGO_TARGET_DIR", &target_dir)
        .env(
            format!("CARGO_TARGET_{env_key}_LINKER"),
            format!("{}-gcc", target.gnu),
        )
        .env(format!("CARGO_TARGET_{env_key}_RUNNER"), target.runner)
        .env(
            format!("CARGO_TARGET_{env_key}_RUSTFLAGS"),
            format!("--sysroot={}", sysroot.display()),
        )
        .env("QEMU_LD_PREFIX", format!("/usr/{}", target.gnu))
        // Tests that start a built binary of ours (the CLI) start it through the same runner.
        .env("HVARCH_TEST_RUNNER", target.runner)
        .run()
}

/// Builds and tests the whole workspace for aarch64.
pub fn run() -> Result<(), String> {
    run_target(&AARCH64, &["--workspace", "--all-features"])
}
