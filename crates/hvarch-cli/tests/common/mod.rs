//! What every CLI test needs: the built `hvarch` binary and the example specs.
// Each test file includes this module and uses part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A command running the built `hvarch`. When the tests run under an emulator (`cargo xtask
/// cross` sets `HVARCH_TEST_RUNNER=qemu-aarch64`), the binary is started through it too.
pub fn command() -> Command {
    let binary = env!("CARGO_BIN_EXE_hvarch");
    match std::env::var_os("HVARCH_TEST_RUNNER") {
        Some(runner) => {
            let mut command = Command::new(runner);
            command.arg(binary);
            command
        }
        None => Command::new(binary),
    }
}

/// Runs `hvarch args` to completion.
pub fn hvarch(args: &[&str]) -> Output {
    command().args(args).output().expect("run hvarch")
}

/// Output bytes as text.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The workspace's `examples/` directory.
pub fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}
