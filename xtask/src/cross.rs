//! `cargo xtask cross`: the workspace built for aarch64 and its tests run under qemu-user.
//!
//! rustup cannot add targets here, so this uses Debian's `rustc-web` toolchain
//! (`/usr/bin/cargo`, `/usr/bin/rustc`, `/usr/bin/rustdoc`) with the arm64 standard library,
//! in a target directory of its own so the two compilers never share artifacts.
//! Linker and runner come from `.cargo/config.toml`.

use crate::run::{workspace_root, Step};

/// The aarch64 target triple.
pub const TARGET: &str = "aarch64-unknown-linux-gnu";

/// Builds and tests the workspace for aarch64.
pub fn run() -> Result<(), String> {
    let target_dir = workspace_root().join("target").join("aarch64-debian");
    Step::new(
        "/usr/bin/cargo",
        &[
            "test",
            "--workspace",
            "--all-features",
            "--target",
            TARGET,
            "--no-fail-fast",
        ],
    )
    .current_dir(workspace_root())
    .env("PATH", "/usr/bin:/bin:/usr/sbin:/sbin")
    .env("RUSTC", "/usr/bin/rustc")
    .env("RUSTDOC", "/usr/bin/rustdoc")
    .env("CARGO_TARGET_DIR", &target_dir)
    .env(
        "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER",
        "aarch64-linux-gnu-gcc",
    )
    .env(
        "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER",
        "qemu-aarch64",
    )
    // Tests that start a built binary of ours (the CLI) start it through the same runner.
    .env("HVARCH_TEST_RUNNER", "qemu-aarch64")
    .run()
}
