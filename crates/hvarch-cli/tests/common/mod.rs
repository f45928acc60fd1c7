//! What every CLI test needs: the built `hvarch` binary and the example specs.
// Each test file includes this module and uses part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub mod pty;

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

/// Standard output whose reader is already gone: the first write fails with `EPIPE`, as in
/// `hvarch … | head` once `head` has exited (deterministically, however fast hvarch is).
pub fn closed_pipe() -> std::process::Stdio {
    use std::os::fd::{FromRawFd, OwnedFd};
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two descriptors on success.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just created and are owned here alone.
    let (reader, writer) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(reader);
    std::process::Stdio::from(writer)
}

/// The exit status of a tool whose output was closed (128 + SIGPIPE), as a shell shows it.
pub const OUTPUT_CLOSED: i32 = 141;

/// Runs `command` with standard output closed; returns its exit code and stderr.
pub fn run_with_closed_stdout(command: &mut Command) -> (Option<i32>, String) {
    let out = command
        .stdout(closed_pipe())
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("run hvarch");
    (out.status.code(), text(&out.stderr))
}
